//! The least-privilege profile, proven: the agent attaches to a process of
//! another user with exactly the capabilities deploy/kubernetes/daemonset.yaml
//! grants, and fails without any one of them. Run as root (user ID 0, like
//! the container) with the bounding set cut down by `setpriv`, as a
//! container runtime does.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{http, Tally};
use crate::util::{free_port, root, Guard};

/// `nobody`: the target runs as another user, as workloads do.
const TARGET_UID: u32 = 65534;

/// The capabilities the least-privilege `DaemonSet` adds, in file order.
pub fn daemonset_capabilities() -> anyhow::Result<Vec<String>> {
    let path = root().join("deploy/kubernetes/daemonset.yaml");
    let text = fs::read_to_string(&path)?;
    let mut lines = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "add:")
        .skip(1);
    let mut caps = Vec::new();
    for l in lines.by_ref() {
        if l.starts_with('#') {
            continue;
        }
        match l.strip_prefix("- ") {
            Some(cap) => caps.push(cap.to_string()),
            None => break,
        }
    }
    if caps.is_empty() {
        bail!("no capabilities.add list in {}", path.display());
    }
    Ok(caps)
}

/// A command running `program` as user ID 0 with only `caps` (names as in
/// Kubernetes: `SYS_ADMIN`) in its bounding set, hence in its permitted and
/// effective sets after exec, and no way to gain more.
pub fn with_only(caps: &[String], program: &Path) -> Command {
    let bounding: String = caps.iter().fold(String::new(), |mut s, c| {
        s.push_str(",+");
        s.push_str(&c.to_lowercase());
        s
    });
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all{bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .arg(program);
    cmd
}

pub fn check(tally: &mut Tally, agent: &Path, fixtures: &Path) -> anyhow::Result<()> {
    let caps = daemonset_capabilities()?;
    let dir = TempDir::new()?;
    // The target's executable is readable by its owner only, as in images
    // that install binaries 0700 or 0500.
    let exe = dir.0.join("spawner");
    fs::copy(fixtures.join("spawner-1.27"), &exe)?;
    std::os::unix::fs::chown(&exe, Some(TARGET_UID), Some(TARGET_UID))?;
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o700))?;
    let mut target = Guard(
        Command::new("setpriv")
            .arg(format!("--reuid={TARGET_UID}"))
            .arg(format!("--regid={TARGET_UID}"))
            .args(["--clear-groups", "--"])
            .arg(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the target as nobody")?,
    );
    let mut out = BufReader::new(target.0.stdout.take().expect("piped"));
    let mut ready = String::new();
    out.read_line(&mut ready)?;
    if ready.trim() != "ready" {
        bail!("target said {ready:?}, not ready");
    }
    let pid = target.0.id();

    tally.check(
        &format!(
            "agent attaches with only {} (least-privilege set)",
            caps.join(", ")
        ),
        || {
            let (port, mut run) = start_agent(&caps, agent, pid, &dir.0)?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok((200, body)) = http::get(port, "/metrics") {
                    let needle = format!("pid=\"{pid}\"");
                    if body
                        .lines()
                        .any(|l| l.starts_with("gostray_goroutines{") && l.contains(&needle))
                    {
                        return Ok(());
                    }
                }
                if let Ok(Some(status)) = run.0.try_wait() {
                    bail!("agent exited ({status}): {}", last_error(&dir.0));
                }
                if Instant::now() > deadline {
                    bail!("no series for PID {pid} within 20 s");
                }
                thread::sleep(Duration::from_millis(100));
            }
        },
    );
    observe_uprobe_capability(agent, pid, &dir.0)?;
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        tally.check(&format!("agent cannot attach without {missing}"), || {
            let (_, mut run) = start_agent(&fewer, agent, pid, &dir.0)?;
            match run.terminate_after(Duration::from_secs(15)) {
                Some(status) if !status.success() => {
                    println!("    refused as expected: {}", last_error(&dir.0));
                    Ok(())
                }
                Some(status) => bail!("agent exited with {status}, expected a failure"),
                None => bail!("agent still running after 15 s without {missing}"),
            }
        });
    }
    Ok(())
}

/// Says whether this kernel still lets `CAP_BPF` + `CAP_PERFMON` attach
/// uprobes (before Linux 6.16 and the July 2025 stable updates) or wants
/// `CAP_SYS_ADMIN`: a fact about the kernel, printed, not asserted.
fn observe_uprobe_capability(agent: &Path, pid: u32, dir: &Path) -> anyhow::Result<()> {
    let caps = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"].map(String::from);
    let (port, mut run) = start_agent(&caps, agent, pid, dir)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let verdict = loop {
        if let Ok(Some(_)) = run.0.try_wait() {
            break format!("needs CAP_SYS_ADMIN for uprobes ({})", last_error(dir));
        }
        if http::get(port, "/readyz").is_ok_and(|(status, _)| status == 200) {
            break "attaches uprobes with CAP_BPF + CAP_PERFMON (no CAP_SYS_ADMIN needed)".into();
        }
        if Instant::now() > deadline {
            break "undecided within 15 s".into();
        }
        thread::sleep(Duration::from_millis(100));
    };
    println!("    observed: this kernel {verdict}");
    Ok(())
}

fn start_agent(
    caps: &[String],
    agent: &Path,
    pid: u32,
    dir: &Path,
) -> anyhow::Result<(u16, Guard)> {
    let port = free_port()?;
    let log = fs::File::create(dir.join("agent.log"))?;
    let child = with_only(caps, agent)
        .args(["run", "--pid-label", "--pid", &pid.to_string()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the agent under setpriv")?;
    Ok((port, Guard(child)))
}

/// The agent's last error line.
fn last_error(dir: &Path) -> String {
    fs::read_to_string(dir.join("agent.log"))
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.contains("error"))
        .unwrap_or("(no error line)")
        .to_string()
}

impl Guard {
    /// Waits up to `within` for the process to exit by itself.
    fn terminate_after(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        crate::util::wait_exit(&mut self.0, within)
    }
}

/// A directory under the system temp dir (world-traversable, unlike the
/// checkout may be), removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("gostray-caps-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
