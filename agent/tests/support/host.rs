//! Whole-host test helpers: a stand-in container (own mount and PID
//! namespace, own root on a private tmpfs), a cgroup named like a
//! containerd container, and the agent's own file descriptors.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use std::io::Write;

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
    /// `<cgroup2>/gostray-test-<test pid>-<tag>.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`,
    /// the shape the kubelet's systemd driver and containerd give a container.
    pub fn create(tag: &str, pod_uid: &str, container_id: &str) -> Self {
        let slice =
            cgroup2_mount().join(format!("gostray-test-{}-{tag}.slice", std::process::id()));
        let pod = format!("kubepods-besteffort-pod{}.slice", pod_uid.replace('-', "_"));
        let scope = slice
            .join(pod)
            .join(format!("cri-containerd-{container_id}.scope"));
        fs::create_dir_all(&scope).unwrap_or_else(|e| panic!("creating {}: {e}", scope.display()));
        Self { slice, scope }
    }

    pub fn enter(&self, pid: u32) {
        // Never create the file: on anything but a cgroup fs that would
        // "succeed" and move nothing.
        let mut procs = fs::OpenOptions::new()
            .write(true)
            .open(self.scope.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("{}/cgroup.procs: {e}", self.scope.display()));
        write!(procs, "{pid}")
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.scope.display()));
        let now = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        assert!(now.contains("cri-containerd-"), "{pid} not moved: {now}");
    }
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one (as here).
fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .expect("no cgroup2 mount in /proc/self/mountinfo")
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
        if let Some(pod) = self.scope.parent() {
            let _ = fs::remove_dir(pod);
        }
        let _ = fs::remove_dir(&self.slice);
    }
}

/// Open file descriptors of `pid` by kind (link target without its inode
/// number: `anon_inode:bpf_link`, `anon_inode:[perf_event]`, `socket:[]`…).
pub fn fds(pid: u32) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let kind: String = target
            .to_string_lossy()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

/// How many of `fds` hold probes: perf events and BPF links.
pub fn probe_fds(fds: &BTreeMap<String, usize>) -> usize {
    fds.iter()
        .filter(|(k, _)| {
            k.contains("perf_event") || k.contains("bpf_link") || k.contains("bpf-link")
        })
        .map(|(_, n)| n)
        .sum()
}
