//! Soak: the agent under churn, leaks and process turnover for a while
//! (`GOSTRAY_SOAK_SECONDS`, 90 s in `cargo xtask test`, any length with
//! `cargo xtask soak --minutes N`). Its resident memory and open
//! descriptors must stay flat after warm-up, and it must stay healthy.
//!
//! Workload: one program creating 20 000 short goroutines a second; a
//! leaking program (5 goroutines parked for good a second), replaced by a
//! fresh one every minute so that its own state stays bounded; and a short
//! Go process started and ended every half second.

mod support;

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::{Agent, KernelEnv, Proc};

fn sample(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

#[test]
fn memory_and_descriptors_stay_flat_under_churn_and_leaks() {
    let Some(env) = KernelEnv::get() else { return };
    let seconds: u64 = std::env::var("GOSTRAY_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    let (churn, spawner) = (env.fixture("churn", "1.27"), env.fixture("spawner", "1.27"));
    // The event path is what is soaked: the budget stays out.
    let agent = Agent::start(&[
        "--overhead-budget",
        "off",
        "--binary",
        churn.to_str().unwrap(),
        "--binary",
        spawner.to_str().unwrap(),
        "--rescan-interval",
        "200ms",
        "--scan-interval",
        "1s",
        "--leak-after",
        "2s",
    ]);
    let agent_pid = agent.proc.pid();
    let _churn = Proc::spawn(Command::new(&churn).args(["-batch", "200", "-ticks", "0"]));

    let begun = Instant::now();
    let warm_up = Duration::from_secs((seconds / 4).clamp(10, 60));
    let mut baseline = None;
    let mut peak = (0, 0);
    let mut leaker: Option<(Proc, Instant)> = None;
    let mut last_report = Instant::now();
    let (mut short_lived, mut leakers) = (0u64, 0u64);
    while begun.elapsed() < Duration::from_secs(seconds) {
        if leaker
            .as_ref()
            .is_none_or(|(_, t)| t.elapsed() > Duration::from_mins(1))
        {
            let mut p = Proc::spawn(&mut Command::new(&spawner));
            assert_eq!(p.line(), "ready");
            leaker = Some((p, Instant::now()));
            leakers += 1;
        }
        if let Some((p, _)) = leaker.as_mut() {
            p.send("spawn 50 5");
            p.expect_line("done");
        }
        for _ in 0..2 {
            let mut p = Proc::spawn(&mut Command::new(&spawner));
            p.send("spawn 10 0");
            p.send("quit");
            p.wait_exit(Duration::from_secs(5))
                .expect("short process exits");
            short_lived += 1;
            thread::sleep(Duration::from_millis(500));
        }
        let now = sample(agent_pid);
        if begun.elapsed() >= warm_up {
            let base = *baseline.get_or_insert(now);
            peak = (peak.0.max(now.0), peak.1.max(now.1));
            if last_report.elapsed() > Duration::from_secs(15) {
                eprintln!(
                    "soak {:>4}s: agent RSS {} kB (baseline {}), {} fds (baseline {})",
                    begun.elapsed().as_secs(),
                    now.0,
                    base.0,
                    now.1,
                    base.1
                );
                last_report = Instant::now();
            }
        }
    }
    let base = baseline.expect("soak shorter than its warm-up");
    let end = sample(agent_pid);
    let m = agent.metrics();
    eprintln!(
        "soak done: {seconds}s, {short_lived} short processes, {leakers} leakers; \
         RSS {} kB -> {} kB (peak {}), fds {} -> {} (peak {})",
        base.0, end.0, peak.0, base.1, end.1, peak.1
    );
    assert!(
        peak.1 <= base.1 + 4,
        "descriptors grew: {} -> peak {}",
        base.1,
        peak.1
    );
    assert!(
        end.0 <= base.0 + base.0 / 4 + 8 * 1024,
        "RSS grew: {} kB -> {} kB",
        base.0,
        end.0
    );
    assert_eq!(m.total("gostray_attach_failures_total"), 0, "{}", m.0);
    assert_eq!(m.total("gostray_probe_errors_total"), 0, "{}", m.0);
    assert!(
        m.total("gostray_goroutine_scans_total") >= seconds / 2,
        "{}",
        m.0
    );
    // Only the churn program and the current leaker remain watched.
    let m = agent.metrics_until(Duration::from_secs(5), |m| {
        m.total("gostray_attached_processes") == 2
    });
    assert_eq!(m.total("gostray_attached_processes"), 2, "{}", m.0);
}
