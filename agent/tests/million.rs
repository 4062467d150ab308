//! A target holding a million parked goroutines, attached by the agent.
//!
//! The million costs the target about 2.5 GB (a 2 KiB stack, the Go
//! minimum, and a g record each) and the probes about 4 µs each to create;
//! the agent has to keep answering, count every one of them, keep its
//! memory bounded (at most 192 bytes per tracked goroutine over its idle
//! RSS once its scans settle, twice that at the peak, which includes the
//! event backlog of the creation burst and a scan's verdicts in flight; the
//! bench checks the release build's absolute goal, 64 MiB + 128 B each),
//! and call none of them a leak once they are released.

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

use support::{http_get, Agent, KernelEnv, Metrics, Proc};

const MILLION: u64 = 1_000_000;

/// A field of /proc/PID/status in kB (`VmRSS`, `VmHWM`), 0 if unreadable.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the prober saw while the agent worked.
#[derive(Debug, Default)]
struct Probed {
    requests: u64,
    /// Requests that got no answer, or not a 200.
    failures: Vec<String>,
    slowest: Duration,
    max_rss_kb: u64,
}

/// Asks /healthz and /metrics in turn every 100 ms until `stop`, and
/// samples the agent's resident memory between requests.
fn probe(port: u16, agent_pid: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<Probed> {
    thread::spawn(move || {
        let mut p = Probed::default();
        for path in ["/healthz", "/metrics"].into_iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let begun = Instant::now();
            let reply = http_get(port, path);
            p.slowest = p.slowest.max(begun.elapsed());
            p.requests += 1;
            match reply {
                Some(r) if r.starts_with("HTTP/1.1 200") => {}
                Some(r) => p
                    .failures
                    .push(format!("{path}: {}", r.lines().next().unwrap_or(""))),
                None => p.failures.push(format!("{path}: no answer")),
            }
            p.max_rss_kb = p.max_rss_kb.max(status_kb(agent_pid, "VmRSS"));
            thread::sleep(Duration::from_millis(100));
        }
        p
    })
}

fn scans(m: &Metrics) -> u64 {
    m.total("gostray_goroutine_scans_total")
}

/// Attached first, then a million goroutines spawned (every creation a probe
/// event, scans every 3 s running through the burst): the live count reaches
/// exactly a million plus the runtime's own, with every event delivered or
/// counted lost and the scans reconciling; /healthz and /metrics answer
/// throughout; the agent stays within its memory bound. Then the million
/// are released: the count falls back, no leak is reported, and the target
/// exits normally.
#[test]
fn a_million_goroutines() {
    let Some(env) = KernelEnv::get() else { return };
    let mut spawner = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.27")));
    assert_eq!(spawner.line(), "ready");
    let pid = spawner.pid();
    // The burst's events are what is measured: the budget stays out.
    let agent = Agent::start(&[
        "--overhead-budget",
        "off",
        "--pid",
        &pid.to_string(),
        "--scan-interval",
        "3s",
        "--leak-after",
        "2s",
    ]);
    let agent_pid = agent.proc.pid();
    let (_, _, live0) = agent.metrics().counts(pid);
    let idle_kb = status_kb(agent_pid, "VmRSS");
    assert!(live0 > 0, "nothing found at attach");

    let stop = Arc::new(AtomicBool::new(false));
    let prober = probe(agent.port, agent_pid, stop.clone());
    let begun = Instant::now();
    spawner.send(&format!("spawn 0 {MILLION}"));
    assert!(spawner.expect_line("done ").starts_with("done "));
    let spawn_time = begun.elapsed();

    // Every creation either arrived or was counted lost and then found by a
    // scan: the live count is exact once a scan has run after the burst.
    let scans0 = scans(&agent.metrics());
    let want = live0 + MILLION;
    let settled = |m: &Metrics| m.counts(pid).2 == want && scans(m) > scans0;
    let m = agent.metrics_until(Duration::from_mins(1), settled);
    let counted = begun.elapsed();
    let (created, _, live) = m.counts(pid);
    let lost = m.for_pid("gostray_events_lost_total", pid).unwrap_or(0);
    assert_eq!(live, want, "live count after a million:\n{}", m.0);
    assert!(
        created + lost >= MILLION,
        "{created} created + {lost} lost < {MILLION}"
    );
    // A second full scan of the million agrees with the first.
    let m = agent.metrics_until(Duration::from_secs(30), |m| scans(m) >= scans0 + 2);
    assert!(scans(&m) >= scans0 + 2, "no second scan:\n{}", m.0);
    assert_eq!(m.counts(pid).2, want, "after another scan:\n{}", m.0);
    let rss_at_million = status_kb(agent_pid, "VmRSS");

    // Released: every one exits, none is left tracked or called a leak.
    spawner.send("release");
    assert_eq!(spawner.expect_line("released "), "released 1");
    let scans1 = scans(&agent.metrics());
    let back = |m: &Metrics| m.counts(pid).2 == live0 && scans(m) >= scans1 + 2;
    let m = agent.metrics_until(Duration::from_mins(1), back);
    stop.store(true, Ordering::Relaxed);
    let seen = prober.join().expect("prober");
    assert_eq!(m.counts(pid).2, live0, "after release:\n{}", m.0);
    assert!(scans(&m) >= scans1 + 2, "no scans after release:\n{}", m.0);
    assert_eq!(
        m.for_pid("gostray_leaked_goroutines", pid).unwrap_or(0),
        0,
        "false leak after release:\n{}",
        m.0
    );
    let report = http_get(agent.port, "/api/v1/leaks").expect("leak report");
    assert!(!report.contains("\"verdict\": \"leak\""), "{report}");

    // The target came through unharmed and the agent is still up.
    spawner.send("quit");
    let status = spawner.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "spawner exit: {status:?}"
    );
    assert!(
        http_get(agent.port, "/healthz").is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "agent not healthy at the end"
    );

    let peak_kb = status_kb(agent_pid, "VmHWM");
    let bound_kb = idle_kb + 192 * want / 1024;
    let peak_bound_kb = idle_kb + 384 * want / 1024;
    let lost = m.for_pid("gostray_events_lost_total", pid).unwrap_or(0);
    let scan_s = m
        .value("gostray_goroutine_scan_seconds_total", &[])
        .unwrap_or(0.0);
    eprintln!(
        "1M goroutines: spawned in {spawn_time:?}, counted exactly after {counted:?}; \
         {} scans took {scan_s:.2} s; {lost} events lost; \
         agent RSS {idle_kb} kB idle, {rss_at_million} kB at 1M, sampled max {} kB, peak (VmHWM) {peak_kb} kB, bound {bound_kb} kB; \
         {} requests, slowest {:?}",
        scans(&m),
        seen.max_rss_kb,
        seen.requests,
        seen.slowest,
    );
    assert!(
        seen.failures.is_empty(),
        "unanswered while scanning a million: {:?}",
        seen.failures
    );
    assert!(
        rss_at_million <= bound_kb,
        "agent RSS {rss_at_million} kB at a million over the bound {bound_kb} kB"
    );
    assert!(
        peak_kb <= peak_bound_kb,
        "agent peak RSS {peak_kb} kB over {peak_bound_kb} kB"
    );
}
