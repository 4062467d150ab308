//! More than the agent can take: a ring buffer that overflows (the loss is
//! counted, the periodic memory scan puts the table right, and a lost exit
//! never turns into a false leak) and a target with a hundred thousand
//! goroutines.
//!
//! A million goroutines is in `million.rs`. The memory scan reads allgs and
//! g records in bounded chunks (`scan::CHUNK`), so its own cost grows
//! linearly: measured here, see the test's output.

mod support;

use std::{process::Command, time::Duration};

use support::{http_get, Agent, KernelEnv, Proc};

const SETTLE: Duration = Duration::from_secs(15);

/// The two tests each load both cores: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The smallest ring buffer (4 KiB, 73 events) drained once a second under
/// 2000 goroutines every 10 ms: most events are lost and counted; scans
/// every second reconcile the table back to the truth, and nothing is
/// called a leak even though most exit events never arrived.
#[test]
fn ring_buffer_overflow_is_counted_and_the_scan_recovers() {
    let Some(env) = KernelEnv::get() else { return };
    let _serial = serial();
    let ticks = 100u64;
    let mut churn = Proc::spawn(Command::new(env.fixture("churn", "1.27")).args([
        "-wait",
        "-hold",
        "-ticks",
        &ticks.to_string(),
    ]));
    assert_eq!(churn.line(), "ready");
    let pid = churn.pid();
    // A full ring buffer is the point: the budget stays out.
    let agent = Agent::start(&[
        "--overhead-budget",
        "off",
        "--pid",
        &pid.to_string(),
        "--ring-buffer-bytes",
        "4096",
        "--drain-interval",
        "1s",
        "--scan-interval",
        "1s",
        "--leak-after",
        "1s",
    ]);
    let (_, _, live0) = agent.metrics().counts(pid);
    churn.send("go");
    let total = churn.expect_line("total ");
    let sum: u64 = (0..2000u64).sum::<u64>() * ticks;
    assert_eq!(total, format!("total {} checksum {sum}", 2000 * ticks));

    // Reconciled creations and exits (two series, by `kind`).
    let reconciled = |m: &support::Metrics| {
        let needle = format!("pid=\"{pid}\"");
        m.0.lines()
            .filter(|l| {
                l.starts_with("gostray_goroutines_reconciled_total{") && l.contains(&needle)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    // Settled: reconciled, and the last events still in the (tiny) ring
    // drained, so that every event is either counted or counted as lost.
    let accounted = |m: &support::Metrics| {
        let (c, e, _) = m.counts(pid);
        c + e + m.for_pid("gostray_events_lost_total", pid).unwrap_or(0) >= 2 * 2000 * ticks
    };
    let settled =
        |m: &support::Metrics| m.counts(pid).2 == live0 && reconciled(m) > 0 && accounted(m);
    let m = agent.metrics_until(SETTLE, settled);
    let lost = m.for_pid("gostray_events_lost_total", pid).unwrap_or(0);
    assert!(lost > 1000, "only {lost} events lost:\n{}", m.0);
    assert!(
        settled(&m),
        "table not reconciled (live0 {live0}):\n{}",
        m.0
    );
    // The counters are of events seen: an exit may arrive whose creation
    // was lost, so only the sum with the losses is bounded.
    let (created, exited, _) = m.counts(pid);
    assert!(created < 2000 * ticks, "created {created}: nothing lost?");
    assert!(
        created + exited + lost >= 2 * 2000 * ticks,
        "{created} + {exited} + {lost}"
    );
    // Two more scans past --leak-after: still no leak for the lost exits.
    std::thread::sleep(Duration::from_millis(2500));
    let m = agent.metrics();
    assert_eq!(
        m.for_pid("gostray_leaked_goroutines", pid).unwrap_or(0),
        0,
        "false leak after lost events:\n{}",
        m.0
    );
    let report = http_get(agent.port, "/api/v1/leaks").unwrap();
    assert!(!report.contains("\"verdict\": \"leak\""), "{report}");
}

/// A hundred thousand parked goroutines before attach (found by the scan)
/// and a hundred thousand more after (seen by the probes), counted exactly,
/// and periodic scans of all 200 000 agree.
///
/// The burst is timed between two scans: a scan round of this size takes
/// seconds in the debug build, and the drain thread waits for the tracker
/// lock while the round's verdicts are drawn, so a burst that overlaps a
/// scan overflows the default ring buffer (measured: 65 000 of 101 000
/// events lost), and a scrape waits for the lock too (over 5 s under load).
/// That loss is counted and reconciled (see the test above).
#[test]
fn a_hundred_thousand_goroutines() {
    let Some(env) = KernelEnv::get() else { return };
    let _serial = serial();
    let n = 100_000u64;
    let mut spawner = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.27")));
    assert_eq!(spawner.line(), "ready");
    let pid = spawner.pid();
    spawner.send(&format!("spawn 0 {n}"));
    spawner.expect_line("done");
    let begun = std::time::Instant::now();
    let agent = Agent::start(&["--pid", &pid.to_string(), "--scan-interval", "12s"]);
    let attach = begun.elapsed();
    let (_, _, live0) = agent.metrics().counts(pid);
    assert!(live0 >= n, "scan at attach found {live0}");
    let scanned =
        |k: u64| move |m: &support::Metrics| m.total("gostray_goroutine_scans_total") >= k;
    assert!(scanned(1)(&agent.metrics_until(SETTLE, scanned(1))));

    spawner.send(&format!("spawn 1000 {n}"));
    spawner.expect_line("done");
    let want = (n + 1000, 1000, live0 + n);
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid) == want);
    assert_eq!(m.counts(pid), want, "{}", m.0);
    assert_eq!(m.for_pid("gostray_events_lost_total", pid), Some(0));
    let m = agent.metrics_until(Duration::from_secs(30), scanned(2));
    assert!(scanned(2)(&m), "no second scan:\n{}", m.0);
    assert_eq!(m.counts(pid), want, "after a scan of 200k:\n{}", m.0);
    let rss = rss_kb(agent.proc.pid());
    let seconds =
        m.0.lines()
            .find_map(|l| l.strip_prefix("gostray_goroutine_scan_seconds_total "));
    eprintln!(
        "100k+100k goroutines: attach (scan of {live0}) in {attach:?}; 2 scan rounds took {seconds:?} s; agent RSS {rss} kB"
    );
    assert!(rss < 512 * 1024, "agent RSS {rss} kB for 200k goroutines");
}
