//! Least privilege: the agent does its whole job with exactly the
//! capabilities deploy/README.md documents (`SYS_ADMIN`, `SYS_PTRACE`,
//! `DAC_READ_SEARCH`) and no others, against a target of another user, and
//! refuses to start with one line naming whatever is missing. Run as user
//! ID 0 with the bounding set cut by `setpriv`, as a container runtime does
//! (the same way as the deploy checks in xtask/src/deploy/caps.rs).

mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use support::{Agent, KernelEnv, Proc};

/// The documented set, as in deploy/kubernetes/daemonset.yaml.
const LEAST: [&str; 3] = ["sys_admin", "sys_ptrace", "dac_read_search"];

/// `gostray run` under setpriv with only `caps` (setpriv's lower-case names).
fn agent_with_only(caps: &[&str]) -> Command {
    let bounding: String = caps.iter().fold(String::new(), |s, c| s + ",+" + c);
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--bounding-set=-all{bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .arg(support::agent_bin())
        .arg("run");
    cmd
}

fn capabilities_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

/// The kernel tests' exact-count scenario (creation, exit, the memory scan
/// at attach and periodic scans) with only the documented capabilities, the
/// target running as `nobody`.
#[test]
fn exact_counts_with_only_the_documented_capabilities() {
    let Some(env) = KernelEnv::get() else { return };
    let mut target = Proc::spawn(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env.fixture("spawner", "1.27")),
    );
    assert_eq!(target.line(), "ready");
    let pid = target.pid(); // setpriv execs: the same PID runs spawner
    let mut cmd = agent_with_only(&LEAST);
    cmd.args([
        "--pid",
        &pid.to_string(),
        "--scan-interval",
        "1s",
        "--pid-label",
    ]);
    let agent = Agent::start_command(cmd);
    // CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH and nothing else.
    assert_eq!(
        capabilities_of(agent.proc.pid()),
        (1 << 21) | (1 << 19) | (1 << 2)
    );

    let (created0, exited0, live0) = agent.metrics().counts(pid);
    assert_eq!((created0, exited0), (0, 0));
    assert!(live0 >= 3, "scan at attach found {live0}");
    let mut want = (0, 0, live0);
    for (exiting, blocking) in [(500, 50), (0, 25)] {
        target.send(&format!("spawn {exiting} {blocking}"));
        target.expect_line("done");
        want = (
            want.0 + exiting + blocking,
            want.1 + exiting,
            want.2 + blocking,
        );
        let m = agent.metrics_until(Duration::from_secs(10), |m| m.counts(pid) == want);
        assert_eq!(m.counts(pid), want, "{}", m.0);
    }
    // A periodic scan (it reads the target's memory) agrees.
    let scans = agent.metrics().total("gostray_goroutine_scans_total");
    let m = agent.metrics_until(Duration::from_secs(10), |m| {
        m.total("gostray_goroutine_scans_total") > scans
    });
    assert_eq!(m.counts(pid), want, "after a scan:\n{}", m.0);
}

/// Without one of the needed capabilities the agent exits at once with one
/// line naming it. `CAP_BPF` + `CAP_PERFMON` no longer stand in for
/// `CAP_SYS_ADMIN` on this kernel (6.16+).
#[test]
fn a_missing_capability_is_named_at_start() {
    let Some(env) = KernelEnv::get() else { return };
    let target = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.27")));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut cases = vec![
        (vec!["sys_ptrace", "dac_read_search"], "CAP_SYS_ADMIN"),
        (vec!["sys_admin", "dac_read_search"], "CAP_SYS_PTRACE"),
    ];
    let (major, minor) = {
        let mut p = release.split(|c: char| !c.is_ascii_digit());
        let mut n = || p.next().and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
        (n(), n())
    };
    if (major, minor) >= (6, 16) {
        cases.push((vec!["bpf", "perfmon", "sys_ptrace"], "CAP_SYS_ADMIN"));
    }
    for (caps, named) in cases {
        let out = agent_with_only(&caps)
            .args([
                "--pid",
                &target.pid().to_string(),
                "--listen",
                "127.0.0.1:0",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{caps:?}: started");
        assert_eq!(stderr.lines().count(), 1, "{caps:?}: {stderr}");
        assert!(
            stderr.starts_with("gostray: error: ") && stderr.contains(&format!("missing: {named}")),
            "{caps:?}: {stderr}"
        );
    }
}
