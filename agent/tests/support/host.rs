//! Whole-host test helpers: a stand-in container (own mount and PID
//! namespace, own root on a private tmpfs), a cgroup named like a
//! containerd container, and the agent's own file descriptors.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use super::Proc;

/// Starts `binary` as PID 1 of new mount and PID namespaces, chrooted into
/// a tmpfs mounted only inside them: from the host its path does not exist,
/// like a container's. Returns the guard (for the unshare process, whose
/// stdin/stdout are the program's) and the program's host PID.
pub fn spawn_in_container(binary: &Path, scratch: &Path) -> (Proc, u32) {
    fs::create_dir_all(scratch).unwrap();
    let script =
        r#"mount -t tmpfs gostray-test "$0" && cp "$1" "$0/spawner" && exec chroot "$0" /spawner"#;
    let proc = Proc::spawn(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
            ])
            .args(["sh", "-c", script])
            .arg(scratch)
            .arg(binary),
    );
    let outer = proc.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children =
            fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .find_map(|p| p.parse::<u32>().ok())
        {
            return (proc, pid);
        }
        assert!(Instant::now() < deadline, "no child of unshare {outer}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// A cgroup v2 leaf named like a containerd container's systemd scope,
/// removed (after its processes have gone) when dropped.
pub struct FakeContainerCgroup {
    slice: PathBuf,
    scope: PathBuf,
}

impl FakeContainerCgroup {
    pub fn create(container_id: &str) -> Self {
        let slice = PathBuf::from(format!(
            "/sys/fs/cgroup/gostray-test-{}.slice",
            std::process::id()
        ));
        let scope = slice.join(format!("cri-containerd-{container_id}.scope"));
        fs::create_dir_all(&scope).unwrap_or_else(|e| panic!("creating {}: {e}", scope.display()));
        Self { slice, scope }
    }

    pub fn enter(&self, pid: u32) {
        fs::write(self.scope.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.scope.display()));
    }
}

impl Drop for FakeContainerCgroup {
    fn drop(&mut self) {
        // A killed process leaves its cgroup a moment after it is reaped.
        for _ in 0..100 {
            if fs::remove_dir(&self.scope).is_ok() || !self.scope.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = fs::remove_dir(&self.slice);
    }
}

/// Open file descriptors of `pid`, and how many of them are perf events
/// (each uprobe attachment holds one).
pub fn fds(pid: u32) -> (usize, usize) {
    let mut total = 0;
    let mut perf = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        total += 1;
        if fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().contains("perf_event")) {
            perf += 1;
        }
    }
    (total, perf)
}
