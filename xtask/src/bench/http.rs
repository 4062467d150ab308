//! The net/http service under `wrk`, with and without the agent.

use std::{path::Path, process::Command};

use anyhow::Context;

use super::proc::{self, Agent, Workload};

/// Requests per second and the 99th percentile latency of one wrk run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Load {
    pub requests: f64,
    pub rps: f64,
    pub p99_us: f64,
    /// Agent events drained per second during the run (0 when bare).
    pub events_per_s: f64,
    pub agent_cpu_s: f64,
    pub lost: f64,
}

/// How the agent runs next to the server: its path and `--probes` groups.
#[derive(Clone, Copy)]
pub struct With<'a> {
    pub agent: &'a Path,
    pub probes: &'a str,
}

/// Serves `binary` on loopback and loads it for `seconds` with wrk;
/// `close` asks for a new connection per request. With `floor`, the agent
/// watches a second, idle server instead: its probes fire but filter out.
pub fn run(
    agent: Option<With>,
    binary: &Path,
    close: bool,
    seconds: u64,
    floor: bool,
) -> anyhow::Result<Load> {
    let server = Workload::start(binary, &[])?;
    let decoy = if floor {
        Some(Workload::start(binary, &[])?)
    } else {
        None
    };
    let watched = decoy.as_ref().unwrap_or(&server).pid();
    let addr = server
        .first
        .strip_prefix("ready ")
        .context("bench-http did not say where it listens")?
        .to_string();
    let agent = match agent {
        Some(a) => Some(Agent::start(
            a.agent,
            &[
                "--pid".into(),
                watched.to_string(),
                "--probes".into(),
                a.probes.into(),
            ],
        )?),
        None => None,
    };
    let counted = |a: &Agent| {
        let m = a.metrics();
        (
            proc::sample(&m, "gostray_goroutines_created_total")
                + proc::sample(&m, "gostray_goroutines_exited_total"),
            proc::cpu_seconds(a.pid()),
            proc::sample(&m, "gostray_events_lost_total"),
        )
    };
    let before = agent.as_ref().map(counted);
    let mut load = wrk(&addr, close, seconds)?;
    if let Some(a) = &agent {
        let what = if close {
            "http (new connections)"
        } else {
            "http (keep-alive)"
        };
        proc::no_fatal_hits(&a.metrics(), what)?;
    }
    if let (Some(a), Some((e0, c0, _))) = (&agent, before) {
        let (e1, c1, lost) = counted(a);
        load.events_per_s = (e1 - e0) / seconds as f64;
        load.agent_cpu_s = c1 - c0;
        load.lost = lost;
    }
    Ok(load)
}

/// Loads `addr` with wrk (1 thread, 8 connections) for `seconds`; `close`
/// asks for a new connection per request.
pub fn wrk(addr: &str, close: bool, seconds: u64) -> anyhow::Result<Load> {
    let mut wrk = Command::new("wrk");
    wrk.args(["-t1", "-c8", &format!("-d{seconds}s"), "--latency"]);
    if close {
        wrk.args(["-H", "Connection: close"]);
    }
    let out = wrk
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// Reads `N requests in`, `Requests/sec:` and the `99%` latency line of
/// wrk's report.
fn parse(text: &str) -> Option<Load> {
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))?
        .0
        .parse()
        .ok()?;
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))?
        .trim();
    let (num, unit) = p99.split_at(p99.find(|c: char| c.is_ascii_alphabetic())?);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        _ => return None,
    };
    Some(Load {
        requests,
        rps,
        p99_us: num.parse::<f64>().ok()? * scale,
        ..Load::default()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_wrk_report() {
        let text = "  Latency Distribution\n     50%  100.00us\n     99%    1.50ms\n\
                    37037 requests in 3.00s, 4.1MB read\n\
                    Requests/sec:  12345.67\nTransfer/sec: 1MB\n";
        let l = super::parse(text).unwrap();
        assert!((l.requests - 37037.0).abs() < 1e-9);
        assert!((l.rps - 12345.67).abs() < 1e-6);
        assert!((l.p99_us - 1500.0).abs() < 1e-6);
    }
}
