//! The agent going away never harms its targets: SIGTERM and SIGKILL while
//! probes fire leave them running with their code restored, SIGTERM turns
//! /readyz false first and exits within a few seconds, and a restarted agent
//! rebuilds its state from the memory scan without counting anything twice.
//!
//! Detaching is bounded by the kernel, not the agent: closing each uprobe's
//! perf event waits for an RCU grace period under the kernel's global
//! event mutex, about 90 ms each on this 6.18 VM (measured with strace;
//! closing them from parallel threads does not help), so one executable's
//! dozen probes take about a second, and agents detaching at the same time
//! (parallel tests, other checkouts on the machine) wait on each other.

mod support;

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use support::{http_get, Agent, KernelEnv, Proc};

const SETTLE: Duration = Duration::from_secs(10);

/// Breakpoints (int3) in the code of `pid` that its executable file does
/// not have: a uprobe writes one into the target's copy of the page, and
/// unregistering it writes the original byte back.
fn breakpoints(pid: u32) -> usize {
    use std::os::unix::fs::FileExt;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    let file = std::fs::File::open(&exe).expect("open exe");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open mem");
    let mut found = 0;
    for l in maps.lines().filter(|l| l.ends_with(exe.to_str().unwrap())) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f[1] != "r-xp" {
            continue;
        }
        let (start, end) = f[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let len = (u64::from_str_radix(end, 16).unwrap() - start) as usize;
        let offset = u64::from_str_radix(f[2], 16).unwrap();
        let (mut on_disk, mut live) = (vec![0u8; len], vec![0u8; len]);
        let n = file.read_at(&mut on_disk, offset).unwrap();
        mem.read_exact_at(&mut live, start).expect("read code");
        found += (0..n)
            .filter(|&i| live[i] == 0xcc && on_disk[i] != 0xcc)
            .count();
    }
    found
}

fn wait_unpatched(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while breakpoints(pid) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(breakpoints(pid), 0, "probes left in the target's code");
}

/// SIGKILL in the middle of 20 000 goroutine creations: the target carries on
/// with its code restored; a new agent rebuilds the picture from memory and
/// its counts start from zero, then follow the program exactly.
#[test]
fn sigkill_while_probes_fire_then_restart_counts_nothing_twice() {
    let Some(env) = KernelEnv::get() else { return };
    let mut spawner = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.27")));
    assert_eq!(spawner.line(), "ready");
    let pid = spawner.pid();
    spawner.send("spawn 0 100");
    spawner.expect_line("done");
    let pids = ["--pid".to_string(), pid.to_string()];
    let args: Vec<&str> = pids.iter().map(String::as_str).collect();

    let mut first = Agent::start(&args);
    let (_, _, live0) = first.metrics().counts(pid);
    assert!(live0 >= 100, "scan found {live0}");
    assert!(breakpoints(pid) >= 2, "no probe visible in the target");
    spawner.send("spawn 20000 0");
    thread::sleep(Duration::from_millis(30));
    first.proc.kill();
    assert!(spawner.expect_line("done").starts_with("done"));
    wait_unpatched(pid);

    let second = Agent::start(&args);
    let m = second.metrics();
    assert_eq!(m.counts(pid), (0, 0, live0), "restart:\n{}", m.0);
    spawner.send("spawn 50 10");
    spawner.expect_line("done");
    let want = (60, 50, live0 + 10);
    let m = second.metrics_until(SETTLE, |m| m.counts(pid) == want);
    assert_eq!(m.counts(pid), want, "after restart:\n{}", m.0);
}

/// SIGTERM while 500 goroutines a tick churn: /readyz answers 503 before the
/// agent stops answering, the agent exits cleanly within seconds (about one
/// alone; 8 s allows for other agents detaching at the same time), the
/// probes are gone from the target, and the target's result is unchanged.
#[test]
fn sigterm_while_probes_fire_detaches_within_seconds_readyz_first() {
    let Some(env) = KernelEnv::get() else { return };
    let ticks = 300u64;
    let mut churn = Proc::spawn(Command::new(env.fixture("churn", "1.27")).args([
        "-wait",
        "-hold",
        "-batch",
        "500",
        "-ticks",
        &ticks.to_string(),
    ]));
    assert_eq!(churn.line(), "ready");
    let pid = churn.pid();
    let mut agent = Agent::start(&["--pid", &pid.to_string()]);
    churn.send("go");
    agent.metrics_until(SETTLE, |m| m.counts(pid).0 > 10_000);
    assert!(breakpoints(pid) >= 2, "no probe visible in the target");

    // Poll /readyz from another thread through the shutdown.
    let (port, stop) = (agent.port, Arc::new(AtomicBool::new(false)));
    let poller = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let code = http_get(port, "/readyz").map(|r| r[9..12].to_string());
                if seen.last() != Some(&code) {
                    seen.push(code);
                }
                thread::sleep(Duration::from_millis(1));
            }
            seen
        })
    };
    thread::sleep(Duration::from_millis(50));
    let begun = Instant::now();
    let status = agent
        .proc
        .terminate(Duration::from_secs(8))
        .expect("agent exited within 8 s of SIGTERM");
    let took = begun.elapsed();
    stop.store(true, Ordering::Relaxed);
    let seen = poller.join().unwrap();
    assert!(status.success(), "exit status {status}");
    eprintln!("SIGTERM to exit: {took:?}; /readyz answers: {seen:?}");
    let ready = Some("200".to_string());
    let unready = Some("503".to_string());
    assert_eq!(seen.first(), Some(&ready), "{seen:?}");
    assert_eq!(seen.last(), Some(&None), "{seen:?}");
    // Once unready, never ready again; 503 is seen when the window is long
    // enough to be sampled (it always is on this VM: probes detach in ms).
    let after = seen.iter().skip_while(|c| **c == ready).collect::<Vec<_>>();
    assert!(
        !after.contains(&&ready),
        "ready again after SIGTERM: {seen:?}"
    );
    assert!(after.contains(&&unready), "never saw /readyz 503: {seen:?}");
    wait_unpatched(pid);

    let total = churn.expect_line("total ");
    let sum: u64 = (0..500u64).sum::<u64>() * ticks;
    assert_eq!(total, format!("total {} checksum {sum}", 500 * ticks));
}
