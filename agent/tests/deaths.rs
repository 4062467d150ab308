//! Kernel tests of the fatal-path probes (issue 17): a Go process dying of
//! each concurrency bug (and of the other fatal causes) is counted once
//! with the right reason, the runtime's message and the function that did
//! it on top of its stack, on Go 1.19 and 1.27, stripped or not; a program
//! that recovers its panics is never counted; a crash loop keeps the counts
//! exact and the agent's memory flat. Root and `cargo xtask test` fixtures
//! required; under CI=true they fail rather than skip.

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{http_get, Agent, KernelEnv, Proc};

/// (death, reason, message prefix, top function) for each way the
/// `deaths` fixture dies.
const DEATHS: [(&str, &str, &str, &str); 10] = [
    (
        "concurrent_map_access",
        "concurrent_map_access",
        "concurrent map writes",
        "main.mapWriter",
    ),
    (
        "unlock_of_unlocked",
        "unlock_of_unlocked",
        "sync: unlock of unlocked mutex",
        "main.unlockUnlocked",
    ),
    (
        "negative_waitgroup",
        "negative_waitgroup",
        "sync: negative WaitGroup counter",
        "main.negativeWaitGroup",
    ),
    (
        "close_of_closed",
        "close_of_closed",
        "close of closed channel",
        "main.closeTwice",
    ),
    (
        "send_on_closed",
        "send_on_closed",
        "send on closed channel",
        "main.sendOnClosed",
    ),
    (
        "nil_map_write",
        "nil_map_write",
        "assignment to entry in nil map",
        "main.nilMapWrite",
    ),
    (
        "stack_overflow",
        "stack_overflow",
        "stack overflow",
        "main.recurse",
    ),
    ("panic", "panic", "ledger out of balance", "main.plainPanic"),
    (
        "out_of_memory",
        "out_of_memory",
        "out of memory",
        "main.outOfMemory",
    ),
    // The scheduler finds the deadlock on its own stack, with no user
    // goroutine on the M: the probe then reports goroutine 1 (`allgs[0]`)
    // from its saved PC and frame pointer, as the runtime's dump starts
    // with it: where `main` is stuck.
    (
        "all_asleep",
        "all_asleep",
        "all goroutines are asleep - deadlock!",
        "main.waitForever",
    ),
];

const WAIT: Duration = Duration::from_secs(15);

fn report(agent: &Agent) -> Value {
    let raw = http_get(agent.port, "/api/v1/leaks").expect("GET /api/v1/leaks");
    let body = raw.split_once("\r\n\r\n").expect("http body").1;
    serde_json::from_str(body).expect("leak report is JSON")
}

/// Every death of the report, flattened.
fn deaths(agent: &Agent) -> Vec<Value> {
    report(agent)["deaths"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["recent"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Starts the fixture, waits until the agent watches it, and returns it.
fn spawn_watched(agent: &Agent, binary: &std::path::Path) -> Proc {
    let mut fixture = Proc::spawn(Command::new(binary).stderr(Stdio::null()));
    assert_eq!(fixture.line(), "ready");
    agent.wait_attached(fixture.pid(), WAIT);
    fixture
}

/// Each death of the fixture built with Go `line` (and `variant`): counted
/// once, with its reason, message and top frame.
fn each_death_is_named(line: &str, variant: &str) {
    let Some(env) = KernelEnv::get() else { return };
    let binary = env.fixture("deaths", &format!("{line}{variant}"));
    let agent = Agent::for_binary(&binary, "200ms");
    let mut failures = Vec::new();
    for (death, reason, message, top) in DEATHS {
        let mut fixture = spawn_watched(&agent, &binary);
        let pid = fixture.pid();
        fixture.send(death);
        let status = fixture.wait_exit(WAIT).expect("fixture died");
        assert!(!status.success(), "{death}: exited cleanly");
        let deadline = Instant::now() + WAIT;
        let found = loop {
            let mine: Vec<Value> = deaths(&agent)
                .into_iter()
                .filter(|d| d["pid"] == pid)
                .collect();
            if !mine.is_empty() || Instant::now() >= deadline {
                break mine;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let m = agent.metrics();
        let pid_s = pid.to_string();
        let counted = m.value(
            "gostray_process_deaths_total",
            &[("pid", pid_s.as_str()), ("reason", reason)],
        );
        let all = m.value("gostray_process_deaths_total", &[("pid", pid_s.as_str())]);
        let ok = found.len() == 1
            && found[0]["reason"] == reason
            && found[0]["message"]
                .as_str()
                .is_some_and(|s| s.starts_with(message))
            && found[0]["top"]["function"] == top
            && (death != "all_asleep" || found[0]["goroutine"] == 1)
            && counted == Some(1.0)
            && all == Some(1.0);
        if !ok {
            failures.push(format!(
                "{death}: report {found:#?}, counter {counted:?}/{all:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "Go {line}{variant}:\n{}",
        failures.join("\n")
    );
    let table = agent.leaks_command(&[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("died x1 (") && text.contains("in main."),
        "gostray leaks:\n{text}"
    );
}

#[test]
fn each_death_is_named_go_1_19() {
    each_death_is_named("1.19", "");
}

#[test]
fn each_death_is_named_go_1_19_stripped() {
    each_death_is_named("1.19", "-stripped");
}

#[test]
fn each_death_is_named_go_1_27() {
    each_death_is_named("1.27", "");
}

#[test]
fn each_death_is_named_go_1_27_stripped() {
    each_death_is_named("1.27", "-stripped");
}

/// The Go lines between (`GOSTRAY_GO_LINES` other than 1.19 and 1.27).
#[test]
fn each_death_is_named_other_go_lines() {
    let Some(env) = KernelEnv::get() else { return };
    for line in env.go_lines() {
        if line != "1.19" && line != "1.27" {
            each_death_is_named(&line, "");
        }
    }
}

/// Panics recovered, in every way the fixture dies of a panic, two hundred
/// times each, then a clean exit: no death, and the fatal-path probes never
/// even ran (the kernel's count, before any filter).
#[test]
fn recovered_panics_are_never_counted() {
    let Some(env) = KernelEnv::get() else { return };
    for line in ["1.19", "1.27"] {
        // A private copy, by PID: other tests run the same executable
        // meanwhile, and its probes count hits in every process running it.
        let dir = private_dir("recover");
        let binary = dir.join(format!("recover-{line}"));
        std::fs::copy(env.fixture("deaths", line), &binary).expect("copying the fixture");
        let mut fixture = Proc::spawn(Command::new(&binary).stderr(Stdio::null()));
        assert_eq!(fixture.line(), "ready");
        let pid = fixture.pid().to_string();
        let agent = Agent::start(&["--pid", &pid]);
        agent.wait_attached(fixture.pid(), WAIT);
        fixture.send("recover");
        assert_eq!(fixture.line(), "ok recover");
        fixture.send("");
        let status = fixture.wait_exit(WAIT).expect("fixture exits");
        assert!(status.success(), "{status}");
        // Give a stray event time to arrive.
        std::thread::sleep(Duration::from_millis(500));
        let m = agent.metrics();
        assert_eq!(m.total("gostray_process_deaths_total"), 0, "{}", m.0);
        assert_eq!(m.scalar("gostray_process_deaths_unrecorded_total"), 0);
        assert_eq!(m.scalar("gostray_fatal_probe_hits_total"), 0, "{}", m.0);
        assert!(deaths(&agent).is_empty(), "{:#}", report(&agent));
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A fresh directory of this test process for copies of a fixture.
fn private_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gostray-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A service dying once a second, alternately of a double close and of
/// concurrent map writes, for `seconds`: every death counted, in one
/// workload's series (no PID label), the last eight kept, the agent's
/// memory flat.
fn crash_loop(seconds: u64) {
    let Some(env) = KernelEnv::get() else { return };
    // A private copy: the agent watches every process of the executable,
    // and other tests run the fixture meanwhile.
    // Named by its length: the minute-long run may run beside the short one.
    let dir = private_dir(&format!("crashloop{seconds}"));
    let binary = dir.join(format!("crashloop{seconds}-1.27"));
    std::fs::copy(env.fixture("deaths", "1.27"), &binary).expect("copying the fixture");
    let path = binary.to_str().expect("UTF-8 path");
    let agent = Agent::start_with(
        &["--binary", path, "--rescan-interval", "200ms"],
        false,
        &[],
    );
    let attaches = |a: &Agent| a.metrics().scalar("gostray_attaches_total");
    let mut rss = Vec::new();
    let start = Instant::now();
    for i in 0..seconds {
        let tick = start + Duration::from_secs(i);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let before = attaches(&agent);
        let mut fixture = Proc::spawn(Command::new(&binary).stderr(Stdio::null()));
        assert_eq!(fixture.line(), "ready");
        let m = agent.metrics_until(WAIT, |m| m.scalar("gostray_attaches_total") > before);
        assert!(m.scalar("gostray_attaches_total") > before, "not attached");
        let death = if i % 2 == 0 {
            "close_of_closed"
        } else {
            "concurrent_map_access"
        };
        fixture.send(death);
        fixture.wait_exit(WAIT).expect("fixture died");
        rss.push(rss_kib(agent.proc.pid()));
    }
    let exe = binary.file_name().unwrap().to_str().unwrap().to_string();
    let want_close = seconds.div_ceil(2);
    let want_map = seconds / 2;
    let count = |m: &support::Metrics, reason: &str| {
        m.value(
            "gostray_process_deaths_total",
            &[("exe", exe.as_str()), ("reason", reason)],
        )
        .unwrap_or(0.0) as u64
    };
    let m = agent.metrics_until(WAIT, |m| {
        count(m, "close_of_closed") == want_close && count(m, "concurrent_map_access") == want_map
    });
    assert_eq!(count(&m, "close_of_closed"), want_close, "{}", m.0);
    assert_eq!(count(&m, "concurrent_map_access"), want_map, "{}", m.0);
    assert_eq!(m.total("gostray_process_deaths_total"), seconds, "{}", m.0);
    assert_eq!(m.scalar("gostray_process_deaths_unrecorded_total"), 0);
    let r = report(&agent);
    let w = &r["deaths"][0];
    assert_eq!(w["total"], seconds, "{r:#}");
    assert_eq!(w["recent"].as_array().map(Vec::len), Some(8), "{r:#}");
    // Flat: after a few deaths of warm-up, no growth beyond allocator noise.
    let warm = rss[3.min(rss.len() - 1)];
    let last = *rss.last().unwrap();
    eprintln!("agent RSS over the crash loop (KiB): {rss:?}");
    assert!(
        last <= warm + 2048,
        "agent RSS grew from {warm} KiB to {last} KiB: {rss:?}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The crash loop, shortened for the test command.
#[test]
fn crash_loop_keeps_counts_exact_and_memory_flat() {
    crash_loop(15);
}

/// The full minute: `cargo test --test deaths -- --ignored`.
#[test]
#[ignore = "a minute long; the test command runs the 15 s version"]
fn crash_loop_for_a_minute() {
    crash_loop(60);
}
