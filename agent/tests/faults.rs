//! Fault injection around the processes the agent watches: they exit in the
//! middle of an attach by the thousand, their PID is reused, they exec
//! another executable, their executable is deleted or replaced on disk.
//! /proc entries vanish under every one of these reads.

mod support;

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::{Agent, KernelEnv, Metrics, Proc};

const SETTLE: Duration = Duration::from_secs(10);

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// A thousand Go processes living 0–100 ms each, 25 at a time, under
/// `--binary`: many exit while the agent attaches. No attach failure is
/// reported, every one is forgotten, the agent's descriptors stay flat, and
/// a long-lived process of the same binary is counted exactly throughout.
#[test]
fn a_thousand_short_lived_processes() {
    let Some(env) = KernelEnv::get() else { return };
    let binary = env.fixture("spawner", "1.24");
    let agent = Agent::for_binary(&binary, "100ms");
    let mut steady = Proc::spawn_ready(&binary);
    let (_, _, live0) = agent
        .wait_attached(steady.pid(), SETTLE)
        .counts(steady.pid());
    let fds0 = open_fds(agent.proc.pid());

    let begun = Instant::now();
    for wave in 0..40 {
        let mut batch: Vec<Proc> = (0..25)
            .map(|_| Proc::spawn(&mut Command::new(&binary)))
            .collect();
        for (i, p) in batch.iter_mut().enumerate() {
            p.send("spawn 20 2");
            if (i + wave) % 4 == 0 {
                thread::sleep(Duration::from_millis(4));
            }
        }
        for p in &mut batch {
            p.send("quit");
            p.wait_exit(Duration::from_secs(5))
                .expect("short process exits");
        }
    }
    eprintln!("1000 processes in {:?}", begun.elapsed());

    steady.send("spawn 100 10");
    steady.expect_line("done");
    let want = (110, 100, live0 + 10);
    let m = agent.settle_one(steady.pid(), want, "gostray_attached_processes");
    assert_eq!(m.total("gostray_attach_failures_total"), 0, "{}", m.0);
    let fds = open_fds(agent.proc.pid());
    assert!(
        fds <= fds0 + 2,
        "agent descriptors grew from {fds0} to {fds}"
    );
}

/// Starts `binary` as PID `pid` by setting the kernel's last PID just below
/// it (other processes may take it first: retried).
fn spawn_as_pid(binary: &Path, pid: u32) -> Proc {
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("write ns_last_pid");
        let mut p = Proc::spawn(&mut Command::new(binary));
        if p.pid() == pid {
            return p;
        }
        p.kill();
    }
    panic!("could not get PID {pid} again");
}

/// A watched process exits and its PID is handed to a new process of the
/// same executable (so the same probes fire for it) at once: nothing of the
/// old process is carried over to the new one.
#[test]
fn pid_reuse_is_a_new_process() {
    let Some(env) = KernelEnv::get() else { return };
    let binary = env.fixture("spawner", "1.27");
    let agent = Agent::for_binary(&binary, "100ms");
    let mut old = Proc::spawn_ready(&binary);
    let pid = old.pid();
    old.send("spawn 0 100");
    old.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid).2 >= 100);
    assert!(m.counts(pid).2 >= 100, "{}", m.0);
    old.send("quit");
    old.wait_exit(Duration::from_secs(5)).expect("exit");

    let mut new = spawn_as_pid(&binary, pid);
    assert_eq!(new.line(), "ready");
    let fresh = |m: &Metrics| {
        // Attached and scanned (a Go process has its main goroutine), and
        // none of the old process's 100 parked goroutines.
        m.for_pid("gostray_goroutines", pid)
            .is_some_and(|n| n > 0 && n < 100)
    };
    let m = agent.metrics_until(SETTLE, fresh);
    assert!(fresh(&m), "the old process's goroutines stayed:\n{}", m.0);
    // The exec tracepoint attaches before the new runtime has started its
    // own goroutines: take the baseline once the counts hold still.
    let (c0, e0, live0) = steady_counts(&agent, pid);
    new.send("spawn 30 7");
    new.expect_line("done");
    let want = (c0 + 30 + 7, e0 + 30, live0 + 7);
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == want);
    assert_eq!(m.counts(pid), want, "{}", m.0);
}

/// `pid`'s (created, exited, live) once two scrapes 300 ms apart agree.
fn steady_counts(agent: &Agent, pid: u32) -> (u64, u64, u64) {
    let deadline = std::time::Instant::now() + SETTLE;
    let mut last = agent.metrics().counts(pid);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = agent.metrics().counts(pid);
        if now == last || std::time::Instant::now() >= deadline {
            return now;
        }
        last = now;
    }
}

/// A `--pid` target execs another Go executable: the agent notices (same
/// PID, same start time, another file), drops the old image's state and
/// probes, and watches the new image.
#[test]
fn exec_into_a_watched_pid_is_followed() {
    let Some(env) = KernelEnv::get() else { return };
    let (first, second) = (
        env.fixture("spawner", "1.24"),
        env.fixture("spawner", "1.27"),
    );
    let mut p = Proc::spawn_ready(&first);
    let pid = p.pid();
    // No detach grace: the old image's probes must go at once.
    let agent = Agent::start(&[
        "--pid",
        &pid.to_string(),
        "--rescan-interval",
        "100ms",
        "--detach-grace",
        "0ms",
    ]);
    p.send("spawn 0 50");
    p.expect_line("done");
    assert!(
        agent
            .metrics_until(SETTLE, |m| m.counts(pid).2 >= 50)
            .counts(pid)
            .2
            >= 50
    );

    p.send(&format!("exec {}", second.display()));
    assert_eq!(p.line(), "ready", "exec failed");
    let new_image = |m: &Metrics| {
        m.0.lines()
            .any(|l| l.starts_with("gostray_goroutines{") && l.contains("exe=\"spawner-1.27\""))
    };
    let m = agent.metrics_until(SETTLE, new_image);
    assert!(new_image(&m), "new image not attached:\n{}", m.0);
    // Counts start again for the new image (the old image's 50 parked
    // goroutines are gone); its runtime's own start-up goroutines may be
    // counted if the attach beat them, so the baseline is taken once steady.
    let (c0, e0, live0) = steady_counts(&agent, pid);
    assert!(live0 < 50, "old image's goroutines kept: {live0}");
    assert!(c0 < 50, "old image's counters kept: {c0}\n{}", m.0);
    p.send("spawn 10 5");
    p.expect_line("done");
    let want = (c0 + 15, e0 + 10, live0 + 5);
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == want);
    assert_eq!(m.counts(pid), want, "{}", m.0);
    let m = agent.metrics_until(SETTLE, |m| m.total("gostray_attached_binaries") == 1);
    assert_eq!(
        m.total("gostray_attached_binaries"),
        1,
        "old probes kept:\n{}",
        m.0
    );
}

/// `--binary PATH` whose file is deleted while a process runs it (still
/// watched), then replaced by a new file (new processes run the new file:
/// followed), and the old file's probes go when its last process exits.
#[test]
fn deleted_then_replaced_binary() {
    let Some(env) = KernelEnv::get() else { return };
    let dir = std::env::temp_dir().join(format!("gostray-replaced-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("svc");
    std::fs::copy(env.fixture("spawner", "1.27"), &path).unwrap();
    let agent = Agent::for_binary(&path, "100ms");
    let mut old = Proc::spawn_ready(&path);
    let (_, _, live0) = agent.wait_attached(old.pid(), SETTLE).counts(old.pid());

    std::fs::remove_file(&path).unwrap();
    old.send("spawn 10 1");
    old.expect_line("done");
    let want = (11, 10, live0 + 1);
    let m = agent.metrics_until(SETTLE, |m| m.counts(old.pid()) == want);
    assert_eq!(m.counts(old.pid()), want, "deleted binary:\n{}", m.0);

    std::fs::copy(env.fixture("spawner", "1.24"), &path).unwrap();
    let mut new = Proc::spawn_ready(&path);
    let (_, _, live1) = agent.wait_attached(new.pid(), SETTLE).counts(new.pid());
    new.send("spawn 5 0");
    new.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(new.pid()) == (5, 5, live1));
    assert_eq!(
        m.counts(new.pid()),
        (5, 5, live1),
        "replaced binary:\n{}",
        m.0
    );
    // The gauge is refreshed once a control-loop round ends.
    let m = agent.metrics_until(SETTLE, |m| m.total("gostray_attached_binaries") == 2);
    assert_eq!(m.total("gostray_attached_binaries"), 2, "{}", m.0);

    old.send("quit");
    old.wait_exit(Duration::from_secs(5)).expect("exit");
    let m = agent.metrics_until(SETTLE, |m| m.total("gostray_attached_binaries") == 1);
    assert_eq!(
        m.total("gostray_attached_binaries"),
        1,
        "old probes kept:\n{}",
        m.0
    );
    drop(new);
    let _ = std::fs::remove_dir_all(dir);
}
