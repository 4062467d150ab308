//! The HTTP API against hostile clients: oversized requests, request floods,
//! idle connections holding every slot, paths naming files.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use support::{http_get, Agent, KernelEnv, Proc};

fn status(response: Option<&String>) -> &str {
    response
        .map(String::as_str)
        .and_then(|r| r.get(9..12))
        .unwrap_or("---")
}

fn start() -> Option<(Proc, Agent)> {
    let env = KernelEnv::get()?;
    let mut target = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.27")));
    assert_eq!(target.line(), "ready");
    let agent = Agent::start(&["--pid", &target.pid().to_string()]);
    Some((target, agent))
}

/// 300 scrapes as fast as possible: the burst is served, the rest refused
/// with 429 and Retry-After, health probes are never refused, and after a
/// pause scrapes are served again.
#[test]
fn request_floods_are_rate_limited_but_health_is_not() {
    let Some((_target, agent)) = start() else {
        return;
    };
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..300 {
        let r = http_get(
            agent.port,
            if i % 2 == 0 {
                "/metrics"
            } else {
                "/api/v1/leaks"
            },
        );
        if status(r.as_ref()) == "429" {
            assert!(r.as_deref().unwrap().contains("Retry-After: 1\r\n"));
        }
        *codes.entry(status(r.as_ref()).to_string()).or_default() += 1;
        assert_eq!(status(http_get(agent.port, "/healthz").as_ref()), "200");
    }
    assert!(codes.get("429").copied().unwrap_or(0) >= 100, "{codes:?}");
    assert!(codes.get("200").copied().unwrap_or(0) >= 100, "{codes:?}");
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(http_get(agent.port, "/metrics").as_ref()), "200");
}

/// A request head over 8 KiB is refused with 400 without being buffered
/// further; paths and queries naming files serve nothing of them; only GET.
#[test]
fn oversized_and_file_naming_requests_are_refused() {
    let Some((_target, agent)) = start() else {
        return;
    };
    let mut s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    // The server may close before reading it all: a reset is fine.
    let _ = s.write_all(huge.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");

    for path in [
        "/../../../../etc/passwd",
        "/metrics/../../etc/passwd",
        "/api/v1/leaks?file=/etc/passwd",
        "/%2e%2e/etc/passwd",
        "//etc/passwd",
    ] {
        let r = http_get(agent.port, path).unwrap_or_default();
        assert!(!r.contains("root:"), "{path}: {r}");
    }
    let mut s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    write!(s, "PUT /metrics HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
}

/// A hundred connections that never send a byte take every slot; each is
/// dropped after the 5 s read timeout, so a real client is served soon
/// after, and the agent is none the worse.
#[test]
fn idle_connections_cannot_hold_the_server() {
    let Some((_target, agent)) = start() else {
        return;
    };
    let idle: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", agent.port)).ok())
        .collect();
    assert!(idle.len() >= 64, "only {} connections opened", idle.len());
    let begun = Instant::now();
    let deadline = begun + Duration::from_secs(12);
    let mut served = false;
    while Instant::now() < deadline && !served {
        served = status(http_get(agent.port, "/healthz").as_ref()) == "200";
    }
    assert!(served, "not served within 12 s");
    eprintln!(
        "served after {:?} with 100 idle connections",
        begun.elapsed()
    );
    drop(idle);
    assert_eq!(status(http_get(agent.port, "/metrics").as_ref()), "200");
}
