//! Whole-host mode at its edges: a PID that becomes another program, an
//! executable deleted or replaced on disk, the cap on watched processes, and
//! processes that exit while discovery reads their /proc entries.

mod support;

use std::{fs, path::Path, process::Command, time::Duration};

use support::{Agent, KernelEnv, Metrics, Proc};

const SETTLE: Duration = Duration::from_secs(10);

fn attached(m: &Metrics, pid: u32) -> bool {
    m.for_pid("gostray_goroutines", pid).is_some()
}

/// A scratch directory for private copies of fixtures, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gostray-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Copies `from` to `name` here, replacing any file of that name by a
    /// new inode (as a package upgrade does), and returns its path.
    fn install(&self, from: &Path, name: &str) -> std::path::PathBuf {
        let tmp = self.0.join(format!(".{name}.new"));
        fs::copy(from, &tmp).unwrap();
        let path = self.0.join(name);
        fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Spawns goroutines and checks the exact counts the agent reports for `p`.
fn counts_follow(agent: &Agent, p: &mut Proc, what: &str) {
    let pid = p.pid();
    let m = agent.metrics_until(SETTLE, |m| attached(m, pid));
    let (c0, e0, live0) = m.counts(pid);
    p.send("spawn 40 4");
    p.expect_line("done");
    let want = (c0 + 44, e0 + 40, live0 + 4);
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == want);
    assert_eq!(
        m.counts(pid),
        want,
        "{what}: (created, exited, live)\n{}",
        m.0
    );
}

/// A watched process execs another Go program (another Go version, so other
/// struct offsets): same PID, new program. The old state goes, the new
/// binary is attached, and counts start afresh and stay exact.
#[test]
fn a_pid_that_execs_another_program_is_reattached() {
    let Some(env) = KernelEnv::get() else { return };
    let dir = Scratch::new("exec");
    let first = dir.install(&env.fixture("spawner", "1.24"), "exec-first");
    let second = dir.install(&env.fixture("spawner", "1.19"), "exec-second");
    let agent = Agent::start(&["--include", "exec-*", "--rescan-interval", "60s"]);
    let mut p = Proc::spawn(&mut Command::new(&first));
    assert_eq!(p.line(), "ready");
    let pid = p.pid();
    counts_follow(&agent, &mut p, "before exec");

    p.send(&format!("exec {}", second.display()));
    assert_eq!(p.line(), "ready");
    let m = agent.metrics_until(SETTLE, |m| {
        m.value(
            "gostray_goroutines",
            &[("pid", &pid.to_string()), ("exe", "exec-second")],
        )
        .is_some()
    });
    let series = m.series("gostray_goroutines");
    assert_eq!(
        series.len(),
        1,
        "exactly the new program's series: {series:?}"
    );
    assert!(series[0].contains("exe=\"exec-second\""), "{series:?}");
    counts_follow(&agent, &mut p, "after exec (Go 1.19)");
}

/// The executable is deleted after start, then a new build is installed
/// under the same name: both processes are attached through
/// /proc/PID/exe, each with its own binary's offsets.
#[test]
fn deleted_and_replaced_executables_are_followed() {
    let Some(env) = KernelEnv::get() else { return };
    let dir = Scratch::new("replace");
    let path = dir.install(&env.fixture("spawner", "1.27"), "edge-replaced");
    let mut old = Proc::spawn(&mut Command::new(&path));
    assert_eq!(old.line(), "ready");
    fs::remove_file(&path).unwrap();
    let agent = Agent::start(&["--include", "edge-replaced", "--rescan-interval", "60s"]);
    counts_follow(&agent, &mut old, "deleted executable");

    let path = dir.install(&env.fixture("spawner", "1.19"), "edge-replaced");
    let mut new = Proc::spawn(&mut Command::new(&path));
    assert_eq!(new.line(), "ready");
    counts_follow(&agent, &mut new, "replacement build");
    // Two different files: two attachments (the gauge is refreshed by
    // the control loop, a moment after the attach).
    let m = agent.metrics_until(Duration::from_secs(5), |m| {
        m.scalar("gostray_attached_binaries") == 2
    });
    assert_eq!(m.scalar("gostray_attached_binaries"), 2);
    // Without --pid-label both report as exe="edge-replaced": summed.
}

/// `--max-processes`: past the cap, processes are skipped and counted, and
/// one is taken as soon as there is room again.
#[test]
fn the_process_cap_holds_and_frees() {
    let Some(env) = KernelEnv::get() else { return };
    let dir = Scratch::new("cap");
    let path = dir.install(&env.fixture("spawner", "1.24"), "edge-capped");
    let agent = Agent::start(&[
        "--include",
        "edge-capped",
        "--max-processes",
        "2",
        "--rescan-interval",
        "300ms",
    ]);
    let mut procs: Vec<Proc> = (0..3)
        .map(|_| {
            let mut p = Proc::spawn(&mut Command::new(&path));
            assert_eq!(p.line(), "ready");
            p
        })
        .collect();
    let m = agent.metrics_until(SETTLE, |m| {
        m.scalar("gostray_watched_processes") == 2
            && m.value(
                "gostray_processes_skipped_total",
                &[("reason", "max_processes")],
            ) == Some(1.0)
    });
    assert_eq!(m.scalar("gostray_watched_processes"), 2, "{}", m.0);
    assert_eq!(
        m.value(
            "gostray_processes_skipped_total",
            &[("reason", "max_processes")]
        ),
        Some(1.0),
        "{}",
        m.0
    );
    let waiting = procs
        .iter()
        .position(|p| !attached(&m, p.pid()))
        .expect("one process left out");
    let first = procs.iter().position(|p| attached(&m, p.pid())).unwrap();
    let waiting_pid = procs[waiting].pid();
    procs[first].send("quit");
    let _ = procs[first].child.wait();
    let m = agent.metrics_until(SETTLE, |m| attached(m, waiting_pid));
    assert!(
        attached(&m, waiting_pid),
        "not taken when room freed:\n{}",
        m.0
    );
    assert_eq!(m.scalar("gostray_watched_processes"), 2);
}

/// `--max-series`: a label set beyond the bound is folded into
/// `exe="_folded"` and counted, never dropped.
#[test]
fn label_sets_beyond_the_bound_are_folded() {
    let Some(env) = KernelEnv::get() else { return };
    let dir = Scratch::new("fold");
    let a = dir.install(&env.fixture("spawner", "1.27"), "fold-a");
    let b = dir.install(&env.fixture("spawner", "1.27"), "fold-b");
    // No --pid-label: series are per executable name here.
    let agent = Agent::start_with(
        &[
            "--include",
            "fold-*",
            "--max-series",
            "1",
            "--rescan-interval",
            "60s",
        ],
        false,
        &[],
    );
    let mut pa = Proc::spawn(&mut Command::new(&a));
    assert_eq!(pa.line(), "ready");
    let m = agent.metrics_until(SETTLE, |m| m.scalar("gostray_watched_processes") == 1);
    assert_eq!(m.scalar("gostray_watched_processes"), 1, "{}", m.0);
    let mut pb = Proc::spawn(&mut Command::new(&b));
    assert_eq!(pb.line(), "ready");
    let m = agent.metrics_until(SETTLE, |m| m.scalar("gostray_series_folded_total") == 1);
    assert_eq!(m.scalar("gostray_series_folded_total"), 1, "{}", m.0);
    assert!(
        m.value("gostray_goroutines", &[("exe", "fold-a")])
            .is_some(),
        "{}",
        m.0
    );
    assert!(
        m.value("gostray_goroutines", &[("exe", "_folded")])
            .is_some(),
        "{}",
        m.0
    );
    assert!(
        m.value("gostray_goroutines", &[("exe", "fold-b")])
            .is_none(),
        "{}",
        m.0
    );
    // The folded process is still counted exactly.
    pb.send("spawn 30 0");
    pb.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| {
        m.value("gostray_goroutines_created_total", &[("exe", "_folded")]) == Some(30.0)
    });
    assert_eq!(
        m.value("gostray_goroutines_created_total", &[("exe", "_folded")]),
        Some(30.0)
    );
    pa.send("quit");
    pb.send("quit");
}

/// Node-wide discovery under churn: 600 short-lived Go processes (0–60 ms
/// each, 20 at a time) exit while the agent finds, classifies and attaches
/// them, so /proc/PID/{exe,maps,cgroup,stat} and their memory vanish in the
/// middle of its reads. The agent stays up and logs no panic, counts no
/// attach failure (an exit mid-attach is a race, not a failure), forgets
/// every one of them, leaks no descriptor, and still counts a long-lived
/// process of the same executable exactly.
#[test]
fn processes_vanishing_during_discovery() {
    let Some(env) = KernelEnv::get() else { return };
    let dir = Scratch::new("churn");
    let path = dir.install(&env.fixture("spawner", "1.24"), "edge-churn");
    let log = dir.0.join("agent.log");
    let mut cmd = Command::new(support::agent_bin());
    cmd.args([
        "run",
        "--include",
        "edge-churn",
        "--rescan-interval",
        "100ms",
        "--pid-label",
    ])
    .stderr(fs::File::create(&log).unwrap());
    let mut agent = Agent::start_command(cmd);
    let mut steady = Proc::spawn_ready(&path);
    let m = agent.metrics_until(SETTLE, |m| attached(m, steady.pid()));
    let (c0, e0, live0) = m.counts(steady.pid());
    let fds0 = open_fds(agent.proc.pid());

    for wave in 0..30u64 {
        let mut batch: Vec<Proc> = (0..20)
            .map(|_| Proc::spawn(&mut Command::new(&path)))
            .collect();
        for (i, p) in batch.iter_mut().enumerate() {
            p.send("spawn 20 2");
            // Exits spread over the agent's walk, exec notice and attach.
            std::thread::sleep(Duration::from_millis((i as u64 * 7 + wave) % 4));
        }
        for p in &mut batch {
            p.send("quit");
            p.wait_exit(Duration::from_secs(5))
                .expect("short process exits");
        }
    }

    steady.send("spawn 100 10");
    steady.expect_line("done");
    let want = (c0 + 110, e0 + 100, live0 + 10);
    let m = agent.settle_one(steady.pid(), want, "gostray_watched_processes");
    assert_eq!(m.total("gostray_attach_failures_total"), 0, "{}", m.0);
    let attaches = m.total("gostray_attaches_total");
    eprintln!("600 short-lived processes: {attaches} attached before they exited");
    assert!(attaches > 1, "churn never attached:\n{}", m.0);
    let fds = open_fds(agent.proc.pid());
    assert!(
        fds <= fds0 + 2,
        "agent descriptors grew from {fds0} to {fds}"
    );
    assert!(
        matches!(agent.proc.child.try_wait(), Ok(None)),
        "agent exited"
    );
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(!logged.contains("panicked"), "agent panicked:\n{logged}");
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}
