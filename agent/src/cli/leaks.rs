//! `gostray leaks`: the running agent's leak report, as a table or JSON.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{
    cli::config::LeaksArgs,
    deaths::WorkloadDeaths,
    server::report::{Filter, ProcessReport, Report},
};

/// Largest response accepted from the agent.
const MAX_RESPONSE: u64 = 64 << 20;

pub fn run(args: &LeaksArgs) -> anyhow::Result<()> {
    let filter = args.filter();
    let body = fetch(&args.url, &filter.to_query())?;
    if args.json && filter == Filter::default() {
        println!("{body}");
        return Ok(());
    }
    let mut report: Report =
        serde_json::from_str(&body).context("the agent's answer is not a leak report")?;
    // The agent filtered already; an older one ignores the query.
    filter.apply(&mut report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

/// GETs `<url>/api/v1/leaks<query>` (plain HTTP: the agent serves nothing else).
fn fetch(url: &str, query: &str) -> anyhow::Result<String> {
    let hostport = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/');
    if hostport.contains('/') || url.starts_with("https://") {
        bail!("--url takes http://HOST:PORT, got {url:?}");
    }
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("no address for {hostport}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).with_context(|| {
        format!("connecting to the agent at {addr} (is `gostray run` listening there?)")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /api/v1/leaks{query} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.take(MAX_RESPONSE).read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "agent answered {}: {}",
            head.lines().next().unwrap_or_default(),
            clean(body.trim())
        );
    }
    Ok(body.to_string())
}

/// Printable text: control characters from a target never reach the terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn site(v: &Value) -> String {
    let f = clean(v["function"].as_str().unwrap_or("?"));
    match (v["file"].as_str(), v["line"].as_u64()) {
        (Some(file), Some(line)) if !file.is_empty() && line > 0 => {
            format!("{f} ({}:{line})", clean(file))
        }
        _ => f,
    }
}

/// The columns naming a process: PID, executable and, when any process of
/// the report runs in a pod, `namespace/pod`.
struct Who {
    pods: usize,
}

impl Who {
    fn new(report: &Report) -> Self {
        let pods = report
            .processes
            .iter()
            .filter(|p| !p.pod.is_empty())
            .map(|p| pod_of(p).chars().count() + 1)
            .max()
            .unwrap_or(0);
        Self { pods }
    }

    fn header(&self) -> String {
        format!(
            "{:<8} {:<16} {:<w$}",
            "PID",
            "EXE",
            if self.pods > 0 { "POD" } else { "" },
            w = self.pods
        )
    }

    fn of(&self, p: &ProcessReport) -> String {
        format!(
            "{:<8} {:<16} {:<w$}",
            p.pid,
            clean(&p.exe),
            pod_of(p),
            w = self.pods
        )
    }
}

fn pod_of(p: &ProcessReport) -> String {
    if p.pod.is_empty() {
        String::new()
    } else {
        clean(&format!("{}/{}", p.namespace, p.pod))
    }
}

/// The report as a table, worst first: leaks, then suspects, by count.
pub fn render(report: &Report) -> String {
    let who = Who::new(report);
    let mut rows: Vec<(&ProcessReport, &Value)> = Vec::new();
    for p in &report.processes {
        rows.extend(p.groups.iter().map(|g| (p, g)));
    }
    rows.sort_by_key(|(_, g)| {
        (
            g["verdict"].as_str() != Some("leak"),
            std::cmp::Reverse(g["count"].as_u64().unwrap_or(0)),
        )
    });
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("no leaked or suspect goroutines\n");
    } else {
        let _ = writeln!(
            out,
            "{}{:<8} {:>6} {:>8}  {:<24} BLOCKED AT  <-  CREATED AT",
            who.header(),
            "VERDICT",
            "COUNT",
            "OLDEST",
            "WAIT",
        );
        for (p, g) in rows {
            let _ = writeln!(
                out,
                "{}{:<8} {:>6} {:>7.0}s  {:<24} {}  <-  {}",
                who.of(p),
                g["verdict"].as_str().unwrap_or("?"),
                g["count"].as_u64().unwrap_or(0),
                g["oldest_blocked_seconds"].as_f64().unwrap_or(0.0),
                clean(g["wait_reason"].as_str().unwrap_or("?")),
                site(&g["blocked_at"]),
                site(&g["created_at"]),
            );
            for e in g["evidence"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "{:>10}- {}", "", clean(e.as_str().unwrap_or_default()));
            }
        }
    }
    for p in &report.processes {
        for h in &p.held {
            let _ = writeln!(
                out,
                "{}{:<8} {:>6} {:>7.0}s  {:<24} {}  held by {}{}",
                who.of(p),
                "held",
                h["count"].as_u64().unwrap_or(0),
                h["oldest_blocked_seconds"].as_f64().unwrap_or(0.0),
                clean(h["wait_reason"].as_str().unwrap_or("?")),
                clean(h["start_function"].as_str().unwrap_or("?")),
                clean(h["held_by"].as_str().unwrap_or("?")),
                if h["settled"] == true {
                    ""
                } else {
                    " (one walk so far)"
                },
            );
        }
    }
    for p in &report.processes {
        for (what, list) in [
            ("double close", &p.double_closes),
            ("send on closed channel", &p.sends_on_closed),
            ("close of nil channel", &p.closes_of_nil),
        ] {
            for m in list {
                let first = m
                    .first_closer
                    .as_ref()
                    .map(|f| format!(" (first closed in {})", clean(&f.function)))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{}{what} x{} in {}{first}",
                    who.of(p),
                    m.count,
                    clean(&m.site.function)
                );
            }
        }
    }
    for w in &report.deaths {
        out.push_str(&death_line(w));
    }
    for d in &report.probes_detached {
        let rearm = d
            .rearm_in_seconds
            .map_or(String::new(), |s| format!("; re-arm in {s:.0}s"));
        let _ = writeln!(
            out,
            "probes   {:<16} {} detached by the overhead budget: cost {:.1}% of its CPU, budget {:.1}%{rearm}; counts come from the table scans",
            clean(&d.exe),
            clean(&d.group),
            d.cost_ratio * 100.0,
            d.budget * 100.0,
        );
    }
    out
}

/// One line per workload that died: how often and of what, then the last
/// death's reason, message and where the program did it.
fn death_line(w: &WorkloadDeaths) -> String {
    let Some(last) = w.recent.front() else {
        return String::new();
    };
    let counts: Vec<String> = w
        .counts
        .iter()
        .map(|(r, n)| format!("{} x{n}", r.as_str()))
        .collect();
    let pod = if w.pod.is_empty() {
        String::new()
    } else {
        format!(" {}/{}", w.namespace, w.pod)
    };
    let top = serde_json::to_value(&last.top).unwrap_or_default();
    format!(
        "{:<8} {:<16}{} died x{} ({}); last: {} {:?} in {}\n",
        last.pid,
        clean(&w.exe),
        clean(&pod),
        w.total,
        counts.join(", "),
        last.reason.as_str(),
        clean(&last.message),
        site(&top),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pod: &str) -> Report {
        let group = serde_json::json!({
            "verdict": "leak", "count": 3, "oldest_blocked_seconds": 9.0,
            "wait_reason": "chan send",
            "blocked_at": {"function": "main.slowLookup", "file": "/src/main.go", "line": 7},
            "created_at": {"function": "main.fetch", "file": "/src/main.go", "line": 12},
        });
        serde_json::from_value(serde_json::json!({"processes": [{
            "pid": 42, "exe": "api", "namespace": "shop", "pod": pod,
            "go_version": "go1.27.3", "goroutines": 9, "groups": [group],
            "double_closes": [], "sends_on_closed": [], "closes_of_nil": [],
        }]}))
        .unwrap()
    }

    #[test]
    fn a_detached_probe_group_is_a_line_saying_why() {
        let mut r = report("");
        r.probes_detached
            .push(crate::server::report::DetachedGroup {
                exe: "api".into(),
                group: "lifecycle".into(),
                cost_ratio: 0.388,
                budget: 0.01,
                rearm_in_seconds: Some(7.6),
            });
        let table = render(&r);
        assert!(
            table.ends_with("probes   api              lifecycle detached by the overhead budget: cost 38.8% of its CPU, budget 1.0%; re-arm in 8s; counts come from the table scans\n"),
            "{table}"
        );
    }

    #[test]
    fn a_pod_column_only_when_some_process_is_in_one() {
        let table = render(&report("cart-0"));
        let mut lines = table.lines();
        let (head, row) = (lines.next().unwrap(), lines.next().unwrap());
        assert!(
            head.starts_with("PID      EXE              POD         VERDICT"),
            "{table}"
        );
        assert!(
            row.starts_with("42       api              shop/cart-0 leak"),
            "{table}"
        );
        assert!(
            row.ends_with("main.slowLookup (/src/main.go:7)  <-  main.fetch (/src/main.go:12)"),
            "{table}"
        );
        let mut r = report("");
        r.deaths = serde_json::from_value(serde_json::json!([{
            "exe": "api", "total": 3,
            "counts": {"concurrent_map_access": 2, "panic": 1},
            "recent": [{
                "time": 1, "pid": 77, "reason": "concurrent_map_access",
                "message": "concurrent map writes", "kind": "fatal_error",
                "goroutine": 19, "go_version": "go1.27.3",
                "top": {"function": "main.mapWriter", "file": "/src/main.go", "line": 25},
                "stack": [],
            }],
        }]))
        .unwrap();
        let table = render(&r);
        assert!(
            table.ends_with(
                "77       api              died x3 (concurrent_map_access x2, panic x1); last: concurrent_map_access \"concurrent map writes\" in main.mapWriter (/src/main.go:25)\n"
            ),
            "{table}"
        );
        assert!(
            table.starts_with("PID      EXE              VERDICT"),
            "{table}"
        );
        assert!(
            table.contains("\n42       api              leak "),
            "{table}"
        );
    }
}
