//! Whole-host mode, for real: the agent started with no target finds Go
//! processes by itself (before and after it starts, inside a stand-in
//! container) and releases everything when they exit.

mod support;

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::{
    host::{fds, probe_fds, spawn_in_container},
    Agent, KernelEnv, Metrics, Proc,
};

const SETTLE: Duration = Duration::from_secs(10);

fn attached(m: &Metrics, pid: u32) -> bool {
    m.for_pid("gostray_goroutines", pid).is_some()
}

/// Polls fast until `pid` is attached; returns how long that took from `since`.
fn time_to_attach(agent: &Agent, pid: u32, since: Instant) -> Duration {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if attached(&agent.metrics(), pid) {
            return since.elapsed();
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "PID {pid} not attached within {SETTLE:?}:\n{}",
        agent.metrics().0
    );
}

/// Spawns known goroutines in `p` and checks the agent's counts exactly.
fn check_counts(agent: &Agent, p: &mut Proc, pid: u32, what: &str) {
    let (_, _, live0) = agent.metrics().counts(pid);
    assert!(
        live0 >= 2,
        "{what}: scan at attach found {live0} goroutines"
    );
    p.send("spawn 100 10");
    p.expect_line("done");
    let want = (110, 100, live0 + 10);
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == want);
    assert_eq!(m.counts(pid), want, "{what}: (created, exited, live)");
}

/// Sends `quit` and checks that the series goes, by the exit notice alone
/// (the rescan interval is far longer than the wait).
fn quit_and_check_gone(agent: &Agent, p: &mut Proc, pid: u32, what: &str) -> Duration {
    p.send("quit");
    let t = Instant::now();
    let m = agent.metrics_until(SETTLE, |m| !attached(m, pid));
    assert!(
        !attached(&m, pid),
        "{what}: stale series after exit:\n{}",
        m.0
    );
    t.elapsed()
}

#[test]
fn whole_host_finds_three_go_versions_including_one_in_a_container() {
    let Some(env) = KernelEnv::get() else { return };
    let mut early = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.19")));
    assert_eq!(early.line(), "ready");
    let early_pid = early.pid();
    // No target at all. A rescan every 60 s: whatever happens within the
    // test is the exec and exit notices' doing (and the first scan's).
    let agent = Agent::start(&["--rescan-interval", "60s"]);
    let m = agent.metrics_until(SETTLE, |m| attached(m, early_pid));
    assert!(
        attached(&m, early_pid),
        "pre-existing Go 1.19 process not found:\n{}",
        m.0
    );

    let t = Instant::now();
    let mut later = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.24")));
    let later_pid = later.pid();
    let later_latency = time_to_attach(&agent, later_pid, t);
    assert_eq!(later.line(), "ready");

    let scratch = std::env::temp_dir().join(format!("gostray-ctr-{}", std::process::id()));
    let t = Instant::now();
    let (mut boxed, boxed_pid) = spawn_in_container(&env.fixture("spawner", "1.27"), &scratch);
    let boxed_latency = time_to_attach(&agent, boxed_pid, t);
    assert_eq!(boxed.line(), "ready");
    // Both were attached well before the 60 s rescan: the exec notice did
    // it. How soon is a figure, not a pass mark on a shared 2-core machine:
    // `cargo xtask bench` measures it (the agent's own cost, attach
    // latency), beside the rescan-only path.
    eprintln!("attach latency after spawn: Go 1.24 {later_latency:?}, Go 1.27 in a container {boxed_latency:?}");
    // Its executable exists only inside its own root: the label is its name there.
    let m = agent.metrics();
    assert!(
        m.value(
            "gostray_goroutines",
            &[("pid", &boxed_pid.to_string()), ("exe", "spawner")]
        )
        .is_some(),
        "{}",
        m.0
    );

    check_counts(&agent, &mut early, early_pid, "Go 1.19 (before the agent)");
    check_counts(&agent, &mut later, later_pid, "Go 1.24 (after)");
    check_counts(&agent, &mut boxed, boxed_pid, "Go 1.27 (container)");

    for (p, pid, what) in [
        (&mut early, early_pid, "1.19"),
        (&mut later, later_pid, "1.24"),
        (&mut boxed, boxed_pid, "1.27"),
    ] {
        let gone = quit_and_check_gone(&agent, p, pid, what);
        eprintln!("Go {what}: series gone {gone:?} after quit");
    }
    drop(boxed);
    let _ = std::fs::remove_dir(&scratch);
}

/// 200 short-lived Go processes, each attached and released: the agent ends
/// with the file descriptors and attachments it had before.
#[test]
fn churn_of_short_lived_processes_leaks_nothing() {
    // The catch rate depends on load (122–200 of 200 seen here); the point
    // is that nothing leaks, with most processes really attached.
    churn("gostray-churn-grace", "500ms", 200, 100);
}

/// The same with no detach grace: every process attaches and detaches the
/// binary's probes itself. Fewer of these 50 ms lives are caught (12–41 of
/// 60 here): removing a uprobe waits for RCU, and attaching the same probe
/// again waits for that removal. What matters here is that nothing leaks.
#[test]
fn churn_with_immediate_detach_leaks_nothing() {
    // Without grace most of these die before their probes are in: what
    // matters here is that nothing is left behind, so one attach suffices.
    churn("gostray-churn-nograce", "0ms", 60, 1);
}

fn churn(name: &str, grace: &str, n: usize, min_attached: u64) {
    let Some(env) = KernelEnv::get() else { return };
    // A private copy with a unique name, so that the include rule sees only
    // this test's processes and not those of anything else on the host.
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join(name);
    std::fs::copy(env.fixture("spawner", "1.24"), &binary).unwrap();
    let agent = Agent::start(&[
        "--include",
        name,
        "--rescan-interval",
        "60s",
        "--detach-grace",
        grace,
    ]);
    let agent_pid = agent.proc.pid();
    // One short life; returns the agent's probe fds seen while it ran.
    let run_one = |binary: &Path| {
        let mut p = Proc::spawn(&mut Command::new(binary));
        assert_eq!(p.line(), "ready");
        p.send("spawn 5 0");
        p.expect_line("done");
        let during = probe_fds(&fds(agent_pid));
        p.send("quit");
        let _ = p.child.wait();
        during
    };
    let idle = |agent: &Agent| {
        agent.metrics_until(SETTLE, |m| {
            m.scalar("gostray_watched_processes") == 0 && m.scalar("gostray_attached_binaries") == 0
        })
    };
    // Warm up: lazily allocated things (thread-local buffers, caches) exist
    // before the baseline is taken.
    run_one(&binary);
    idle(&agent);
    // The warm-up's probes are closed on the detach thread: the baseline is
    // taken once only the exec/exit tracepoint links remain.
    let deadline = Instant::now() + SETTLE;
    let mut before = fds(agent_pid);
    while probe_fds(&before) > 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        before = fds(agent_pid);
    }
    let attaches0 = agent.metrics().scalar("gostray_attaches_total");

    let t = Instant::now();
    let most = (0..n).map(|_| run_one(&binary)).max().unwrap_or(0);
    let churn = t.elapsed();
    let m = idle(&agent);
    // Sockets come and go with the scrapes themselves; everything else must
    // end up exactly as before.
    let not_sockets = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter()
            .filter(|(k, _)| !k.starts_with("socket:"))
            .map(|(k, n)| (k.clone(), *n))
            .collect::<Vec<_>>()
    };
    // Detaching finishes on the agent's detach thread, and an executable
    // being classified (any process on the host) holds an fd for a moment:
    // wait for both to settle.
    let deadline = Instant::now() + SETTLE;
    let mut after = fds(agent_pid);
    while (probe_fds(&after) != probe_fds(&before) || not_sockets(&after) != not_sockets(&before))
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
        after = fds(agent_pid);
    }
    let attaches = m.scalar("gostray_attaches_total") - attaches0;
    eprintln!("{name}: {n} processes in {churn:?}: {attaches} attached; probe fds at most {most}; agent fds {before:?} -> {after:?}");
    assert_eq!(m.scalar("gostray_watched_processes"), 0, "{}", m.0);
    assert_eq!(m.scalar("gostray_attached_binaries"), 0, "{}", m.0);
    assert!(
        attaches >= min_attached,
        "only {attaches} of {n} short-lived processes were attached"
    );
    assert!(
        m.series("gostray_goroutines").is_empty(),
        "stale series:\n{}",
        m.0
    );
    assert!(
        probe_fds(&before) >= 2,
        "the exec/exit tracepoint links: {before:?}"
    );
    assert!(
        most > probe_fds(&before),
        "no uprobe fds seen during the churn (max {most})"
    );
    assert_eq!(
        probe_fds(&after),
        probe_fds(&before),
        "probe fds: {before:?} -> {after:?}"
    );
    assert_eq!(
        not_sockets(&after),
        not_sockets(&before),
        "agent fds before/after"
    );
    let sockets =
        |m: &std::collections::BTreeMap<String, usize>| m.get("socket:[]").copied().unwrap_or(0);
    assert!(
        sockets(&after) <= sockets(&before) + 3,
        "sockets: {before:?} -> {after:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
