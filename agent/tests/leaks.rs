//! Kernel tests of the leak detector: real Go patterns that must be called
//! leaks, patterns that must stay quiet, channel misuse, and a leak that
//! grows with traffic. Root and `cargo xtask test` fixtures required; under
//! CI=true they fail rather than skip.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{http_get, Agent, KernelEnv, Proc};

const WAIT: Duration = Duration::from_secs(20);
const FAST: [&str; 4] = ["--leak-after", "2s", "--scan-interval", "500ms"];

fn report(agent: &Agent) -> Value {
    let raw = http_get(agent.port, "/api/v1/leaks").expect("GET /api/v1/leaks");
    let body = raw.split_once("\r\n\r\n").expect("http body").1;
    serde_json::from_str(body).expect("leak report is JSON")
}

/// Polls the report until `ok` holds for the process's entry.
fn report_until(agent: &Agent, pid: u32, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = report(agent);
        let p = r["processes"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
            .cloned()
            .unwrap_or(Value::Null);
        if ok(&p) || Instant::now() >= deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn groups(p: &Value) -> Vec<(String, String, String)> {
    p["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["verdict"].as_str().unwrap_or_default().to_string(),
                g["start_function"].as_str().unwrap_or_default().to_string(),
                g["wait_reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The leaking patterns of the `patterns` fixture, with their wait reasons.
const LEAKS: [(&str, &str); 6] = [
    ("main.leakySend.func1", "chan send"),
    ("main.leakyRecv.func1", "chan receive"),
    ("main.leakyNil.func1", "chan receive (nil chan)"),
    ("main.leakyWaitGroup.func1", "sync.WaitGroup.Wait"),
    ("main.leakyMutex.func1", "sync.Mutex.Lock"),
    ("main.leakyContext.func1", "chan receive"),
];

fn patterns_are_judged(go_line: &str) {
    patterns_are_judged_with(go_line, &[]);
}

fn patterns_are_judged_with(go_line: &str, args: &[&str]) {
    let Some(env) = KernelEnv::get() else { return };
    let mut fixture = Proc::spawn(&mut Command::new(env.fixture("patterns", go_line)));
    assert_eq!(fixture.line(), "ready");
    let pid = fixture.pid();
    let agent = Agent::start(&[&["--pid", &pid.to_string()][..], &FAST, args].concat());
    for cmd in ["quiet", "leaks"] {
        fixture.send(cmd);
        assert_eq!(fixture.line(), format!("ok {cmd}"));
    }
    let p = report_until(&agent, pid, |p| {
        groups(p).iter().filter(|g| g.0 == "leak").count() >= LEAKS.len()
    });
    let found = groups(&p);
    for (function, reason) in LEAKS {
        let reason = if go_line == "1.19" && reason.starts_with("sync.") {
            "semacquire"
        } else {
            reason
        };
        assert!(
            found
                .iter()
                .any(|g| g.0 == "leak" && g.1 == function && g.2 == reason),
            "Go {go_line}: {function} [{reason}] not called a leak; report: {found:#?}"
        );
    }
    // Nothing else is called anything: the pool, the global channel, the
    // ticker, the sleeper, the signal waiter and the network waiter stay quiet.
    assert_eq!(
        found.len(),
        LEAKS.len(),
        "Go {go_line}: unexpected groups: {found:#?}"
    );
    let metrics = agent.metrics();
    let leaked: u64 = metrics
        .0
        .lines()
        .filter(|l| {
            l.starts_with("gostray_leaked_goroutines{") && l.contains(&format!("pid=\"{pid}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(
        leaked,
        LEAKS.len() as u64,
        "gostray_leaked_goroutines:\n{}",
        metrics.0
    );
}

#[test]
fn patterns_are_judged_go_1_24() {
    patterns_are_judged("1.24");
}

#[test]
fn patterns_are_judged_go_1_27() {
    patterns_are_judged("1.27");
}

/// Without any probe (`--probes none`) the verdicts are the same: they
/// rest on the goroutine table scans, never on an event alone.
#[test]
fn patterns_are_judged_from_scans_alone() {
    patterns_are_judged_with("1.27", &["--probes", "none"]);
}

/// Go 1.19 records no parent goroutine in g; the creation probe reads it
/// from g0.m.curg instead. Its runtime names every sync wait "semacquire".
#[test]
fn patterns_are_judged_go_1_19() {
    patterns_are_judged("1.19");
}

/// A double close that the program recovers from is counted with both
/// closers named; so are a send on a closed channel and a close of nil.
#[test]
fn channel_misuse_is_reported_with_sites() {
    let Some(env) = KernelEnv::get() else { return };
    let mut fixture = Proc::spawn(&mut Command::new(env.fixture("patterns", "1.27")));
    assert_eq!(fixture.line(), "ready");
    let pid = fixture.pid();
    let agent = Agent::start(&[&["--pid", &pid.to_string()][..], &FAST].concat());
    fixture.send("misuse");
    assert_eq!(fixture.line(), "ok misuse");
    let p = report_until(&agent, pid, |p| {
        p["double_closes"].as_array().is_some_and(|d| !d.is_empty())
    });
    let dc = &p["double_closes"][0];
    assert_eq!(dc["count"], 1, "{p:#}");
    assert_eq!(dc["site"]["function"], "main.secondCloser", "{p:#}");
    assert_eq!(dc["first_closer"]["function"], "main.firstCloser", "{p:#}");
    assert_eq!(
        p["sends_on_closed"][0]["site"]["function"], "main.sendOnClosed",
        "{p:#}"
    );
    assert_eq!(
        p["closes_of_nil"][0]["site"]["function"], "main.closeNil",
        "{p:#}"
    );
    let m = agent.metrics();
    assert_eq!(
        m.for_pid("gostray_channel_double_closes_total", pid),
        Some(1)
    );
    assert_eq!(
        m.for_pid("gostray_channel_sends_on_closed_total", pid),
        Some(1)
    );
    assert_eq!(m.for_pid("gostray_channel_nil_closes_total", pid), Some(1));
}

/// A service leaking one goroutine per request: the leak group's count
/// grows in the report and in the metric, naming both functions, within
/// --leak-after plus a scan interval.
#[test]
fn leak_per_request_grows() {
    let Some(env) = KernelEnv::get() else { return };
    let demo = Proc::spawn(&mut Command::new(env.fixture("demo", "1.27")));
    let pid = demo.pid();
    let agent = Agent::start(&[&["--pid", &pid.to_string()][..], &FAST].concat());
    let count = |p: &Value| {
        p["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["verdict"] == "leak" && g["blocked_at"]["function"] == "main.handle.func1")
            .and_then(|g| g["count"].as_u64())
    };
    let first = report_until(&agent, pid, |p| count(p).is_some());
    let n1 = count(&first).expect("leak group within --leak-after + scan interval");
    let g = first["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["blocked_at"]["function"] == "main.handle.func1")
        .unwrap();
    assert_eq!(g["created_at"]["function"], "main.handle");
    assert_eq!(g["wait_reason"], "chan send");
    let later = report_until(&agent, pid, |p| count(p).is_some_and(|n| n > n1 + 2));
    let n2 = count(&later).unwrap_or(0);
    assert!(n2 > n1 + 2, "leak count did not grow: {n1} then {n2}");
    let metric: u64 = agent
        .metrics()
        .0
        .lines()
        .find(|l| {
            l.starts_with("gostray_leaked_goroutines{")
                && l.contains("function=\"main.handle.func1\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        metric >= n2,
        "gostray_leaked_goroutines {metric} < report's {n2}"
    );
}

/// Where a goroutine blocks is named after the innermost function there,
/// as the runtime's traceback does: a sender blocked in `main.slowLookup`,
/// which the compiler inlined into the wrapper of its `go` statement (Go ≥
/// 1.22: `main.fetchWithTimeout.gowrap1`), is blocked at `main.slowLookup`
/// in the report, in the metric's `function` label and in `gostray leaks`;
/// the wrapper appears only in its stack. A sender in a function that is not
/// inlined (`main.stuckSend`) is named the same way.
fn blocking_sites_are_named_as_tracebacks_do(go_line: &str) {
    let Some(env) = KernelEnv::get() else { return };
    let mut fixture = Proc::spawn(Command::new(env.fixture("inline", go_line)).arg("park"));
    assert_eq!(fixture.line(), "ready");
    let pid = fixture.pid();
    let agent = Agent::start(&[&["--pid", &pid.to_string()][..], &FAST].concat());
    fixture.send("park");
    assert_eq!(fixture.line(), "parked");
    let leaks = |p: &Value| -> Vec<Value> {
        p["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["verdict"] == "leak")
            .cloned()
            .collect()
    };
    let p = report_until(&agent, pid, |p| leaks(p).len() >= 2);
    let groups = leaks(&p);
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../xtask/go/inline/main.go"),
    )
    .unwrap();
    let line_of = |text: &str| {
        source
            .lines()
            .position(|l| l.trim() == text)
            .map(|i| i as u64 + 1)
    };
    for (function, send, creator) in [
        ("main.slowLookup", "results <- key", "main.fetchWithTimeout"),
        (
            "main.stuckSend",
            "results <- \"never read\"",
            "main.abandon",
        ),
    ] {
        let g = groups
            .iter()
            .find(|g| g["blocked_at"]["function"] == function)
            .unwrap_or_else(|| panic!("Go {go_line}: no leak blocked at {function}: {groups:#?}"));
        assert_eq!(g["blocked_at"]["line"].as_u64(), line_of(send), "{g:#}");
        assert!(
            g["blocked_at"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("inline/main.go")),
            "{g:#}"
        );
        assert_eq!(g["created_at"]["function"], creator, "{g:#}");
        assert_eq!(g["start_function"], function, "{g:#}");
    }
    // The inlined case really is one on Go ≥ 1.22: the wrapper is in the
    // stack, and nowhere else.
    let wrapped = groups.iter().any(|g| {
        g["stack"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["function"] == "main.fetchWithTimeout.gowrap1")
    });
    assert_eq!(wrapped, go_line != "1.19", "Go {go_line}: {groups:#?}");
    let m = agent.metrics();
    let leaked: Vec<&str> = m
        .series("gostray_leaked_goroutines")
        .into_iter()
        .filter(|l| l.contains(&format!("pid=\"{pid}\"")))
        .collect();
    for function in ["main.slowLookup", "main.stuckSend"] {
        assert!(
            leaked
                .iter()
                .any(|l| l.contains(&format!("function=\"{function}\""))),
            "Go {go_line}: {leaked:#?}"
        );
    }
    let out = agent.leaks_command(&[]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("main.slowLookup (") && table.contains("main.stuckSend ("),
        "{table}"
    );
    assert!(
        !leaked.iter().any(|l| l.contains("gowrap")) && !table.contains("gowrap"),
        "Go {go_line}: a wrapper named:\n{leaked:#?}\n{table}"
    );
}

#[test]
fn blocking_sites_are_named_as_tracebacks_do_go_1_19() {
    blocking_sites_are_named_as_tracebacks_do("1.19");
}

#[test]
fn blocking_sites_are_named_as_tracebacks_do_go_1_24() {
    blocking_sites_are_named_as_tracebacks_do("1.24");
}

#[test]
fn blocking_sites_are_named_as_tracebacks_do_go_1_27() {
    blocking_sites_are_named_as_tracebacks_do("1.27");
}

/// A hot service that leaks: the overhead budget detaches the lifecycle
/// and park probes from it mid-run (it creates goroutines and parks on
/// every handoff hundreds of thousands of times a second), and the
/// verdicts are the same: they rest on the table scans.
#[test]
fn patterns_are_judged_when_the_budget_detaches_probes_mid_run() {
    let Some(env) = KernelEnv::get() else { return };
    let binary = env.fixture("patterns", "1.27");
    let mut fixture = Proc::spawn(&mut Command::new(&binary));
    assert_eq!(fixture.line(), "ready");
    let pid = fixture.pid();
    let agent = Agent::start(&[&["--pid", &pid.to_string()][..], &FAST].concat());
    for cmd in ["quiet", "busy"] {
        fixture.send(cmd);
        assert_eq!(fixture.line(), format!("ok {cmd}"));
    }
    let exe = binary.file_name().unwrap().to_str().unwrap().to_string();
    let detached = |m: &support::Metrics, group: &str| {
        m.value(
            "gostray_probe_group_active",
            &[("exe", exe.as_str()), ("group", group)],
        ) == Some(0.0)
    };
    let m = agent.metrics_until(WAIT, |m| detached(m, "lifecycle") && detached(m, "park"));
    assert!(
        detached(&m, "lifecycle") && detached(&m, "park"),
        "the budget left the probes of a hot service attached:\n{}",
        http_get(agent.port, "/api/v1/overhead").unwrap_or_default()
    );
    fixture.send("leaks");
    assert_eq!(fixture.line(), "ok leaks");
    let p = report_until(&agent, pid, |p| {
        groups(p).iter().filter(|g| g.0 == "leak").count() >= LEAKS.len()
    });
    let found = groups(&p);
    for (function, reason) in LEAKS {
        assert!(
            found
                .iter()
                .any(|g| g.0 == "leak" && g.1 == function && g.2 == reason),
            "{function} [{reason}] not called a leak with the probes detached; report: {found:#?}"
        );
    }
    assert_eq!(found.len(), LEAKS.len(), "unexpected groups: {found:#?}");
    // `gostray leaks` says what the budget did, and why.
    let out = agent.leaks_command(&[]);
    let out = String::from_utf8_lossy(&out.stdout);
    for group in ["lifecycle", "park"] {
        assert!(
            out.contains(&format!(
                "{exe:<16} {group} detached by the overhead budget: cost "
            )),
            "no line for {group} in `gostray leaks`:\n{out}"
        );
    }
}
