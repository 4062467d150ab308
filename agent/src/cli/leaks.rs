//! `gostray leaks`: the running agent's leak report, as a table or JSON.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    time::Duration,
};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{cli::config::LeaksArgs, server::report::Report};

/// Largest response accepted from the agent.
const MAX_RESPONSE: u64 = 64 << 20;

pub fn run(args: &LeaksArgs) -> anyhow::Result<()> {
    let body = fetch(&args.url)?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let report: Report =
        serde_json::from_str(&body).context("the agent's answer is not a leak report")?;
    print!("{}", render(&report));
    Ok(())
}

/// GETs `<url>/api/v1/leaks` (plain HTTP: the agent serves nothing else).
fn fetch(url: &str) -> anyhow::Result<String> {
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
        "GET /api/v1/leaks HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.take(MAX_RESPONSE).read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("agent answered {}", head.lines().next().unwrap_or_default());
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

/// The report as a table, worst first: leaks, then suspects, by count.
pub fn render(report: &Report) -> String {
    let mut rows: Vec<(u32, &str, &Value)> = Vec::new();
    for p in &report.processes {
        rows.extend(p.groups.iter().map(|g| (p.pid, p.exe.as_str(), g)));
    }
    rows.sort_by_key(|(_, _, g)| {
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
            "{:<8} {:<16} {:<8} {:>6} {:>8}  {:<24} {}",
            "PID", "EXE", "VERDICT", "COUNT", "OLDEST", "WAIT", "BLOCKED AT  <-  CREATED AT"
        );
        for (pid, exe, g) in rows {
            let _ = writeln!(
                out,
                "{:<8} {:<16} {:<8} {:>6} {:>7.0}s  {:<24} {}  <-  {}",
                pid,
                clean(exe),
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
                "{:<8} {:<16} {:<8} {:>6} {:>7.0}s  {:<24} {}  held by {}{}",
                p.pid,
                clean(&p.exe),
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
                    "{:<8} {:<16} {what} x{} in {}{first}",
                    p.pid,
                    clean(&p.exe),
                    m.count,
                    clean(&m.site.function)
                );
            }
        }
    }
    out
}
