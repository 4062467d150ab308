//! Kernel tests: real probes on real Go programs. They need root and the
//! fixtures that `cargo xtask test` builds; under CI=true they fail rather
//! than skip when they cannot run.

mod support;

use std::{process::Command, time::Duration};

use support::{Agent, KernelEnv, Proc};

const SETTLE: Duration = Duration::from_secs(10);

/// Spawns known numbers of goroutines in a Go program and checks the
/// agent's created/exited/live counts exactly.
fn exact_counts(go_line: &str) {
    let Some(env) = KernelEnv::get() else { return };
    exact_counts_of(&env.fixture("spawner", go_line), go_line);
}

fn exact_counts_of(binary: &std::path::Path, go_line: &str) {
    let mut spawner = Proc::spawn_ready(binary);
    let pid = spawner.pid();
    let agent = Agent::start(&["--pid", &pid.to_string()]);

    let before = agent.metrics();
    let (created0, exited0, live0) = before.counts(pid);
    assert_eq!(
        (created0, exited0),
        (0, 0),
        "nothing created yet:\n{}",
        before.0
    );
    // The memory scan at attach found the goroutines that predate us:
    // main and the runtime's own (at least the GC workers started by runtime.GC()).
    assert!(live0 >= 3, "scan at attach found only {live0} goroutines");

    let mut expected = (0, 0, live0);
    for (exiting, blocking) in [(500, 50), (300, 0), (0, 25)] {
        spawner.send(&format!("spawn {exiting} {blocking}"));
        spawner.expect_line("done");
        expected = (
            expected.0 + exiting + blocking,
            expected.1 + exiting,
            expected.2 + blocking,
        );
        let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == expected);
        assert_eq!(
            m.counts(pid),
            expected,
            "Go {go_line}: (created, exited, live) after spawn {exiting} {blocking}"
        );
        assert_eq!(m.for_pid("gostray_events_lost_total", pid), Some(0));
    }
}

#[test]
fn exact_counts_go_1_19() {
    exact_counts("1.19");
}

#[test]
fn exact_counts_go_1_24() {
    exact_counts("1.24");
}

#[test]
fn exact_counts_go_1_27() {
    exact_counts("1.27");
}

/// A stripped build (`-s -w`: no .symtab, no DWARF) of the same source is
/// counted exactly like the unstripped one: offsets from the table, allgs
/// and probe sites from the function table and decoded runtime code.
#[test]
fn exact_counts_go_1_27_stripped() {
    exact_counts("1.27-stripped");
}

/// A position-independent build: probes by file offset, the memory scan
/// with the process's load bias.
#[test]
fn exact_counts_go_1_27_pie() {
    exact_counts("1.27-pie");
}

/// Stripped and linked by the C linker: Go 1.27's function table has no
/// textStart and .text begins with C code, so functions are anchored
/// through the runtime's module data.
#[test]
fn exact_counts_go_1_27_extlink_stripped() {
    exact_counts("1.27-extlink-stripped");
}

#[test]
fn exact_counts_go_1_21_stripped() {
    exact_counts("1.21-stripped");
}

/// 2000 short goroutines every 10 ms: the agent's counts follow the program
/// exactly, no event is lost, and the program's output is unchanged.
#[test]
fn churn_is_counted_exactly_and_output_is_unchanged() {
    let Some(env) = KernelEnv::get() else { return };
    let (batch, ticks) = (2000u64, 200u64);
    let binary = env.fixture("churn", "1.27");
    let mut churn =
        Proc::spawn(Command::new(&binary).args(["-wait", "-hold", "-ticks", &ticks.to_string()]));
    assert_eq!(churn.line(), "ready");
    let pid = churn.pid();
    // Exact counts from the events are the point: the budget stays out
    // (`counts_stay_exact_when_the_budget_detaches_lifecycle` is the test
    // with it).
    let agent = Agent::start(&["--overhead-budget", "off", "--pid", &pid.to_string()]);
    let (_, _, live0) = agent.metrics().counts(pid);

    churn.send("go");
    // While it runs, the created count rises with the program's own.
    let progress = churn.expect_line("created ");
    let m = agent.metrics();
    let (created_mid, _, _) = m.counts(pid);
    assert!(
        created_mid > 0,
        "{progress}: agent saw nothing yet:\n{}",
        m.0
    );

    let total_line = churn.expect_line("total ");
    let expected_sum: u64 = (0..batch).sum::<u64>() * ticks;
    assert_eq!(
        total_line,
        format!("total {} checksum {expected_sum}", batch * ticks)
    );
    let live_true: u64 = churn
        .expect_line("numgoroutine ")
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();

    let created = batch * ticks;
    let m = agent.metrics_until(SETTLE, |m| {
        m.counts(pid).0 == created && m.counts(pid).1 == created
    });
    let (c, e, live) = m.counts(pid);
    assert_eq!((c, e), (created, created), "created/exited\n{}", m.0);
    assert_eq!(m.for_pid("gostray_events_lost_total", pid), Some(0));
    // Back to where it started: the main goroutine plus the runtime's own.
    assert_eq!(live, live0, "live goroutines after the churn");
    assert!(
        live >= live_true,
        "agent's {live} below runtime.NumGoroutine() = {live_true}"
    );

    // The same program without the agent prints the same thing.
    drop(agent);
    let bare = Command::new(&binary)
        .args(["-ticks", &ticks.to_string()])
        .output()
        .unwrap();
    let bare = String::from_utf8(bare.stdout).unwrap();
    assert!(
        bare.ends_with(&format!("{total_line}\n")),
        "bare run printed {bare}"
    );
}

/// `--binary`: processes started after the agent are found and attached,
/// and their series vanish when they exit.
#[test]
fn binary_mode_attaches_later_processes_and_forgets_exited_ones() {
    let Some(env) = KernelEnv::get() else { return };
    let binary = env.fixture("spawner", "1.24");
    let agent = Agent::for_binary(&binary, "200ms");
    let mut spawner = Proc::spawn_ready(&binary);
    let pid = spawner.pid();
    let m = agent.metrics_until(SETTLE, |m| m.for_pid("gostray_goroutines", pid).is_some());
    let (_, _, live0) = m.counts(pid);
    assert!(live0 > 0, "process {pid} not attached:\n{}", m.0);

    spawner.send("spawn 100 10");
    spawner.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == (110, 100, live0 + 10));
    assert_eq!(m.counts(pid), (110, 100, live0 + 10));

    spawner.send("quit");
    let _ = spawner.child.wait();
    let m = agent.metrics_until(SETTLE, |m| m.for_pid("gostray_goroutines", pid).is_none());
    assert!(
        m.for_pid("gostray_goroutines", pid).is_none(),
        "stale series:\n{}",
        m.0
    );
}

/// SIGTERM detaches within seconds and the target keeps running. Detaching
/// one executable's probes takes about a second alone on this 6.18 VM; the
/// kernel serialises uprobe removal machine-wide (see reliability.rs), so
/// agents of tests running at the same time wait on each other: the bound
/// leaves room for that.
#[test]
fn sigterm_detaches_and_target_survives() {
    let Some(env) = KernelEnv::get() else { return };
    let mut spawner = Proc::spawn_ready(&env.fixture("spawner", "1.27"));
    let mut agent = Agent::start(&["--pid", &spawner.pid().to_string()]);
    let begun = std::time::Instant::now();
    let status = agent
        .proc
        .terminate(Duration::from_secs(8))
        .expect("agent stopped within 8 s");
    eprintln!("SIGTERM to exit: {:?}", begun.elapsed());
    assert!(status.success(), "agent exit status {status}");
    spawner.send("spawn 1000 0");
    assert!(spawner.expect_line("done").starts_with("done"));
}

/// Open BPF links of process `pid`: one per attached uprobe, plus the
/// exec and exit tracepoints.
fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("agent fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.to_string_lossy() == "anon_inode:bpf_link")
        .count()
}

/// `--probes none`: no uprobe in the target at all, yet the live count is
/// exact at each scan and creations (short-lived ones included) are counted
/// from goroutine IDs within 16 per P. (Its verdicts: `leaks.rs`.)
#[test]
fn scan_only_mode_counts_from_the_table_and_attaches_no_probe() {
    let Some(env) = KernelEnv::get() else { return };
    let mut spawner = Proc::spawn_ready(&env.fixture("spawner", "1.27"));
    let pid = spawner.pid();
    let agent = Agent::start(&[
        "--pid",
        &pid.to_string(),
        "--probes",
        "none",
        "--scan-interval",
        "200ms",
    ]);
    let links = bpf_links(agent.proc.pid());
    assert!(links <= 2, "{links} links: a uprobe was attached");
    let (_, _, live0) = agent.wait_attached(pid, SETTLE).counts(pid);
    spawner.send("spawn 500 40");
    spawner.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid).2 == live0 + 40);
    let (created, exited, live) = m.counts(pid);
    assert_eq!(live, live0 + 40, "live count:\n{}", m.0);
    let slack = 16 * std::thread::available_parallelism().map_or(64, |n| n.get() as u64);
    assert!(
        created.abs_diff(540) <= slack,
        "created {created}, expected 540 within {slack}"
    );
    assert_eq!(created - exited, 40, "created - exited = live - live0");

    // The default attaches the probes (creation and exit at least): the
    // check above can fail.
    let with_probes = Agent::start(&["--pid", &pid.to_string()]);
    assert!(bpf_links(with_probes.proc.pid()) >= links + 2);
}

/// The overhead budget detaches the lifecycle probes from a process that
/// starts goroutines at a high rate, and re-arms them once it is quiet.
/// Counts stay exact at each scan while they are off, and exact from the
/// events once they are back.
#[test]
fn counts_stay_exact_when_the_budget_detaches_lifecycle() {
    let Some(env) = KernelEnv::get() else { return };
    let binary = env.fixture("spawner", "1.27");
    let exe = binary.file_name().unwrap().to_str().unwrap().to_string();
    let mut spawner = Proc::spawn_ready(&binary);
    let pid = spawner.pid();
    let agent = Agent::start(&["--pid", &pid.to_string(), "--scan-interval", "1s"]);
    let lifecycle = |m: &support::Metrics| {
        m.value(
            "gostray_probe_group_active",
            &[("exe", exe.as_str()), ("group", "lifecycle")],
        )
    };
    let m = agent.metrics_until(SETTLE, |m| lifecycle(m) == Some(1.0));
    assert_eq!(
        lifecycle(&m),
        Some(1.0),
        "a quiet process keeps its probes:\n{}",
        m.0
    );
    let (ci, ei, live0) = m.counts(pid);

    // Hot: batches of 100k goroutines until the budget acts.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lifecycle(&agent.metrics()) != Some(0.0) && std::time::Instant::now() < deadline {
        spawner.send("spawn 100000 0");
        spawner.expect_line("done");
    }
    let m = agent.metrics();
    assert_eq!(
        lifecycle(&m),
        Some(0.0),
        "lifecycle never detached:\n{}",
        m.0
    );

    // Off: the scans keep the live count exact and the totals consistent.
    let (c0, e0, _) = m.counts(pid);
    spawner.send("spawn 100 10");
    spawner.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid).2 == live0 + 10);
    let (c1, e1, live1) = m.counts(pid);
    assert_eq!(live1, live0 + 10, "live count with lifecycle detached");
    // Creations come from the advance of the highest goroutine ID, which
    // the runtime hands out in batches of 16 per P: exact to within that.
    let slack = 16 * std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    assert!(
        c1 + slack >= c0 + 110 && e1 + slack >= e0 + 100,
        "totals ({c0},{e0}) -> ({c1},{e1}), within {slack}\n{}",
        m.0
    );
    // Every goroutine counted created is counted exited or live, unless the
    // hot phase filled the ring: then the events lost stay uncounted.
    let lost = m.for_pid("gostray_events_lost_total", pid).unwrap_or(0);
    let net = |c: u64, e: u64, l: u64| i128::from(c) - i128::from(e) - i128::from(l);
    if lost == 0 {
        assert_eq!(
            net(c1, e1, live1),
            net(ci, ei, live0),
            "created - exited - live: ({ci},{ei},{live0}) -> ({c1},{e1},{live1})\n{}",
            m.0
        );
    } else {
        eprintln!("{lost} events lost in the hot phase: created - exited - live not compared");
    }
    spawner.send("release");
    spawner.expect_line("released");
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid).2 == live0);
    assert_eq!(m.counts(pid).2, live0, "live count after release");

    // Quiet again: re-armed after the back-off, and events count exactly.
    let m = agent.metrics_until(Duration::from_secs(40), |m| lifecycle(m) == Some(1.0));
    assert_eq!(
        lifecycle(&m),
        Some(1.0),
        "lifecycle never re-armed:\n{}",
        m.0
    );
    let (c2, e2, live2) = m.counts(pid);
    spawner.send("spawn 100 10");
    spawner.expect_line("done");
    let want = (c2 + 110, e2 + 100, live2 + 10);
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == want);
    assert_eq!(m.counts(pid), want, "counts after re-arming");
}
