//! Runs that load a workload continuously and measure only a final window:
//! long enough for the agent's overhead budget to act first, with the
//! watched process's own CPU per operation and the agent's estimate of
//! what its probes cost, polled once a second over the window.

use std::{path::Path, time::Duration};

use anyhow::Context;

use super::{
    http,
    overhead::{Poller, Status},
    proc::{self, Agent, Workload},
};

/// How the agent watches the workload, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// No agent.
    Bare,
    /// The agent as it ships: `--overhead-budget` left at its default.
    Default,
    /// `--overhead-budget off`: every probe group stays attached.
    Off,
}

/// How long to load before the window, and the window itself.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Before the window with the default budget: the time it needs to
    /// see a group over budget for its ~3 s and detach it.
    pub warmup: Duration,
    /// Before the window bare and with the budget off: only the agent's
    /// first status window and the workload's own start.
    pub settle: Duration,
    pub window: Duration,
}

impl Timing {
    fn before(&self, budget: Budget) -> Duration {
        if budget == Budget::Default {
            self.warmup
        } else {
            self.settle
        }
    }
}

/// One measured window.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Wall ns per operation (for net/http: per request, 8 connections).
    pub ns_per_op: f64,
    /// The watched process's CPU (utime + stime) per operation, ns.
    pub cpu_ns_per_op: f64,
    /// The agent's status, once a second over the window (none when bare).
    pub polls: Vec<Status>,
}

impl Window {
    /// The agent's estimated cost ratio, all groups, averaged over the window.
    pub fn estimate(&self) -> f64 {
        self.polls.iter().map(Status::cost_ratio).sum::<f64>() / self.polls.len().max(1) as f64
    }

    /// Whether `group` was detached at any poll of the window.
    pub fn detached(&self, group: &str) -> bool {
        self.polls.iter().any(|p| p.active(group) == Some(false))
    }
}

fn watch(agent: &Path, budget: Budget, pid: u32) -> anyhow::Result<Option<Agent>> {
    let args = ["--pid".to_string(), pid.to_string()];
    Ok(match budget {
        Budget::Bare => None,
        Budget::Default => Some(Agent::start_budgeted(agent, &args)?),
        Budget::Off => Some(Agent::start(agent, &args)?),
    })
}

/// `binary -mode mode` (bench-micro) run continuously under `budget`.
pub fn micro(
    agent: &Path,
    budget: Budget,
    binary: &Path,
    mode: &str,
    timing: Timing,
) -> anyhow::Result<Window> {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let mut w = Workload::start(
        binary,
        &[
            "-mode".into(),
            mode.into(),
            "-warmup".into(),
            secs(timing.before(budget)),
            "-window".into(),
            secs(timing.window),
        ],
    )?;
    let pid = w.pid();
    let a = watch(agent, budget, pid)?;
    w.go()?;
    let line = w.line()?;
    anyhow::ensure!(line == "window", "unexpected workload output {line:?}");
    let poller = a.as_ref().map(|a| Poller::start(a, pid));
    let line = w.line()?;
    let polls = poller.map(Poller::stop).transpose()?.unwrap_or_default();
    if let Some(a) = &a {
        proc::no_fatal_hits(&a.metrics(), mode)?;
    }
    let (ns_per_op, cpu_ns_per_op) =
        parse_window(&line).with_context(|| format!("unexpected workload output {line:?}"))?;
    Ok(Window {
        ns_per_op,
        cpu_ns_per_op,
        polls,
    })
}

/// Reads `ns_per_op <f> cpu_ns_per_op <f>`.
fn parse_window(line: &str) -> Option<(f64, f64)> {
    let rest = line.strip_prefix("ns_per_op ")?;
    let (wall, cpu) = rest.split_once(" cpu_ns_per_op ")?;
    Some((wall.parse().ok()?, cpu.parse().ok()?))
}

/// The net/http service loaded by wrk under `budget`: wrk for the warm-up,
/// then again for the window, the server's CPU read from /proc around it.
pub fn http(
    agent: &Path,
    budget: Budget,
    binary: &Path,
    close: bool,
    timing: Timing,
) -> anyhow::Result<Window> {
    let server = Workload::start(binary, &[])?;
    let pid = server.pid();
    let addr = server
        .first
        .strip_prefix("ready ")
        .context("bench-http did not say where it listens")?;
    let a = watch(agent, budget, pid)?;
    http::wrk(addr, close, timing.before(budget).as_secs().max(1))?;
    let poller = a.as_ref().map(|a| Poller::start(a, pid));
    let cpu0 = proc::cpu_seconds(pid);
    let load = http::wrk(addr, close, timing.window.as_secs().max(1))?;
    let cpu = proc::cpu_seconds(pid) - cpu0;
    let polls = poller.map(Poller::stop).transpose()?.unwrap_or_default();
    if let Some(a) = &a {
        proc::no_fatal_hits(&a.metrics(), "http")?;
    }
    anyhow::ensure!(load.requests > 0.0, "wrk made no request");
    Ok(Window {
        ns_per_op: 1e9 / load.rps,
        cpu_ns_per_op: cpu * 1e9 / load.requests,
        polls,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_window_line() {
        assert_eq!(
            super::parse_window("ns_per_op 431.92 cpu_ns_per_op 388.68"),
            Some((431.92, 388.68))
        );
        assert_eq!(super::parse_window("ns_per_op 431.92"), None);
    }
}
