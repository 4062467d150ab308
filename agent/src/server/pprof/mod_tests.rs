//! The endpoint without a kernel: query parsing, selection, labels, and the
//! whole response through a shared state like the agent's.

use super::*;
use crate::tracker::{group::Creator, ProcessInfo};

fn site(function: &str, line: u32) -> Site {
    Site {
        function: function.into(),
        file: "/src/app/main.go".into(),
        line,
    }
}

fn group(verdict: Verdict, function: &str, count: u64) -> Group {
    Group {
        fingerprint: format!("{function}-fp"),
        verdict,
        wait_reason: "chan send".into(),
        wait_class: "chan_send",
        count,
        blocked: count,
        oldest_blocked_seconds: 9.0,
        start_function: function.into(),
        created_at: site("main.main", 10),
        blocked_at: site(function, 20),
        channel: None,
        creator: Creator::Exited,
        trend: vec![count],
        evidence: vec![],
        stack: vec![
            site("runtime.gopark", 1),
            site(function, 20),
            site("runtime.goexit", 2),
        ],
    }
}

fn key(namespace: &str, pod: &str) -> SeriesKey {
    SeriesKey {
        namespace: namespace.into(),
        pod: pod.into(),
        container: "app".into(),
        exe: "api".into(),
        ..SeriesKey::default()
    }
}

/// Three processes: two in pods (one with a suspect too), one outside any.
struct World {
    groups: Vec<(u32, Vec<Group>)>,
    keys: Vec<SeriesKey>,
}

fn world() -> World {
    World {
        groups: vec![
            (
                10,
                vec![
                    group(Verdict::Leak, "main.leakA", 3),
                    group(Verdict::Suspect, "main.maybe", 1),
                ],
            ),
            (20, vec![group(Verdict::Leak, "main.leakB", 7)]),
            (30, vec![group(Verdict::Leak, "main.hostLeak", 1)]),
        ],
        keys: vec![key("shop", "api-1"), key("shop", "api-2")],
    }
}

impl World {
    fn build(&self, query: &str) -> Result<CountProfile, String> {
        let targets = self
            .groups
            .iter()
            .enumerate()
            .map(|(i, (pid, groups))| Target {
                pid: *pid,
                exe: if *pid == 30 { "kubelet" } else { "api" },
                key: self.keys.get(i),
                groups,
            });
        build(targets, &Query::parse(query).unwrap(), 5)
    }
}

fn functions(p: &CountProfile) -> Vec<&str> {
    p.samples
        .iter()
        .map(|s| s.stack[1].function.as_str())
        .collect()
}

#[test]
fn parses_queries() {
    let q = Query::parse("pid=42&suspect=1&debug=1&seconds=30").unwrap();
    assert_eq!(
        q,
        Query {
            pid: Some(42),
            suspects: true,
            debug: 1,
            ..Query::default()
        }
    );
    let q = Query::parse("namespace=shop%2Dprod&pod=api+1").unwrap();
    assert_eq!(q.namespace.as_deref(), Some("shop-prod"));
    assert_eq!(q.pod.as_deref(), Some("api 1"));
    assert_eq!(Query::parse("").unwrap(), Query::default());
    assert!(Query::parse("pid=abc").is_err());
    assert!(Query::parse("debug=x").is_err());
    assert_eq!(
        decode("%zz%4"),
        "%zz%4",
        "malformed escapes stay as they are"
    );
}

#[test]
fn everything_without_a_selector() {
    let w = world();
    let p = w.build("").unwrap();
    // Largest count first; suspects only when asked.
    assert_eq!(functions(&p), ["main.leakB", "main.leakA", "main.hostLeak"]);
    assert_eq!(p.binary, "", "two executables: no single file");
    assert_eq!(p.name, "goroutineleak");
    let p = w.build("suspect=1").unwrap();
    assert_eq!(
        functions(&p),
        ["main.leakB", "main.leakA", "main.hostLeak", "main.maybe"]
    );
    assert!(p.comments[0].contains("suspect"));
}

#[test]
fn labels_name_the_process_and_its_pod() {
    let p = world().build("suspect=1").unwrap();
    let labels = |f: &str| {
        p.samples
            .iter()
            .find(|s| s.stack[1].function == f)
            .unwrap()
            .labels
            .clone()
    };
    let l = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
    };
    assert_eq!(
        labels("main.maybe"),
        l(&[
            ("pid", "10"),
            ("exe", "api"),
            ("namespace", "shop"),
            ("pod", "api-1"),
            ("container", "app"),
            ("verdict", "suspect"),
            ("wait_reason", "chan send"),
        ])
    );
    assert_eq!(
        labels("main.hostLeak"),
        l(&[
            ("pid", "30"),
            ("exe", "kubelet"),
            ("verdict", "leak"),
            ("wait_reason", "chan send"),
        ])
    );
}

#[test]
fn selects_by_pid_or_pod() {
    let w = world();
    let p = w.build("pid=20").unwrap();
    assert_eq!(functions(&p), ["main.leakB"]);
    assert_eq!(p.binary, "api");
    assert_eq!(p.comments[1], "selected: pid=20");
    assert_eq!(
        functions(&w.build("namespace=shop").unwrap()),
        ["main.leakB", "main.leakA"]
    );
    assert_eq!(
        functions(&w.build("namespace=shop&pod=api-1").unwrap()),
        ["main.leakA"]
    );
    assert_eq!(functions(&w.build("pod=api-2").unwrap()), ["main.leakB"]);
    // A watched process without leaks is an empty profile, not an error.
    let mut w2 = world();
    w2.groups[2].1.clear();
    assert!(w2.build("pid=30").unwrap().samples.is_empty());
}

#[test]
fn unknown_selections_are_refused() {
    let w = world();
    assert_eq!(
        w.build("pid=99").unwrap_err(),
        "no watched process with pid=99"
    );
    assert_eq!(
        w.build("namespace=shop&pod=nope").unwrap_err(),
        "no watched process with namespace=\"shop\" pod=\"nope\""
    );
    assert!(w.build("pid=30&namespace=shop").is_err(), "both must match");
}

#[test]
fn stacks_end_above_goexit_as_the_runtimes_do() {
    let mut g = group(Verdict::Leak, "main.leakA", 1);
    assert_eq!(
        stack(&g),
        vec![site("runtime.gopark", 1), site("main.leakA", 20)]
    );
    // Never walked: the blocking site alone.
    g.stack.clear();
    assert_eq!(stack(&g), vec![site("main.leakA", 20)]);
}

#[test]
fn responds_over_http() {
    let shared = Shared::new(10, 10);
    {
        let mut tracker = lock(&shared.tracker);
        tracker.add_process(
            77,
            ProcessInfo {
                exe: "api".into(),
                go_version: "go1.27".into(),
            },
        );
        tracker.process_mut(77).unwrap().groups = vec![group(Verdict::Leak, "main.leakA", 4)];
    }
    let get = |target: &str| respond(target, &shared);
    let body = |r: &[u8]| {
        let at = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        r[at..].to_vec()
    };
    let r = get("/debug/pprof/goroutineleak?pid=77");
    assert!(r.starts_with(b"HTTP/1.1 200"));
    assert!(String::from_utf8_lossy(&r).contains("application/octet-stream"));
    assert_eq!(&body(&r)[..2], &[0x1f, 0x8b], "gzip");
    let r = String::from_utf8(get("/debug/pprof/goroutineleak?debug=1")).unwrap();
    assert!(
        r.contains("goroutineleak profile: total 4\n4 @ 0x1 0x2\n"),
        "{r}"
    );
    assert!(
        r.contains("#\t0x2\tmain.leakA\t/src/app/main.go:20\n"),
        "{r}"
    );
    let r = String::from_utf8(get("/debug/pprof/goroutineleak?pid=78")).unwrap();
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(r.ends_with("no watched process with pid=78\n"), "{r}");
    let r = String::from_utf8(get("/debug/pprof/goroutineleak?pid=-1")).unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}
