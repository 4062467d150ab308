//! The agent's overhead-budget status (`GET /api/v1/overhead`), read as
//! the bench needs it: per probe group of one watched process, whether it is
//! attached and what the agent estimates it costs.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::Value;

use super::proc::{http_get, Agent};

/// The probe groups the budget may detach (`fatal` never is).
pub const BUDGETED: [&str; 3] = ["lifecycle", "park", "misuse"];

/// One probe group of one executable.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub name: String,
    pub active: bool,
    pub hits_per_second: f64,
    /// Estimated probe CPU over the process's CPU, last window.
    pub cost_ratio: f64,
    pub detaches: u64,
    pub rearm_in_seconds: Option<f64>,
}

/// The status as it concerns one watched process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// The budget as a fraction of the process's CPU; `None` when off.
    pub budget: Option<f64>,
    /// The groups of the executable the process runs; empty when the agent
    /// does not list it (yet).
    pub groups: Vec<Group>,
}

impl Status {
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Whether `name` is attached; `None` when the agent does not list it.
    pub fn active(&self, name: &str) -> Option<bool> {
        self.group(name).map(|g| g.active)
    }

    /// The estimated cost of the attached groups together, as a ratio to
    /// the process's CPU. (A detached lifecycle group's own ratio is what
    /// it would cost at the creation rate the table scans see.)
    pub fn cost_ratio(&self) -> f64 {
        self.groups
            .iter()
            .filter(|g| g.active)
            // A fold from +0.0: an empty f64 sum is -0.0.
            .fold(0.0, |sum, g| sum + g.cost_ratio)
    }

    /// Every budgeted group is listed and attached.
    pub fn all_active(&self) -> bool {
        BUDGETED.iter().all(|g| self.active(g) == Some(true))
    }
}

/// The status of the executable `pid` runs, from the agent's JSON.
pub fn parse(json: &str, pid: u32) -> anyhow::Result<Status> {
    let v: Value = serde_json::from_str(json).context("/api/v1/overhead is not JSON")?;
    let budget = match &v["budget"] {
        Value::Null => None,
        b => Some(b.as_f64().context("budget is neither a number nor null")?),
    };
    let exes = v["executables"]
        .as_array()
        .context("/api/v1/overhead has no executables list")?;
    let ours = exes.iter().find(|e| {
        e["pids"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p.as_u64() == Some(u64::from(pid))))
    });
    let groups = match ours {
        Some(e) => e["groups"]
            .as_array()
            .context("an executable without groups")?
            .iter()
            .map(group)
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    Ok(Status { budget, groups })
}

fn group(g: &Value) -> anyhow::Result<Group> {
    let num = |k: &str| g[k].as_f64().with_context(|| format!("group without {k}"));
    Ok(Group {
        name: g["group"].as_str().context("group without a name")?.into(),
        active: g["active"].as_bool().context("group without active")?,
        hits_per_second: num("hits_per_second")?,
        cost_ratio: num("cost_ratio")?,
        detaches: g["detaches"].as_u64().context("group without detaches")?,
        rearm_in_seconds: g["rearm_in_seconds"].as_f64(),
    })
}

/// Reads the status for `pid` from the agent serving on `port`, now.
pub fn status(port: u16, pid: u32) -> anyhow::Result<Status> {
    let response = http_get(port, "/api/v1/overhead").context("GET /api/v1/overhead")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET /api/v1/overhead: {}",
        head.lines().next().unwrap_or_default()
    );
    parse(body, pid)
}

/// Reads the status once a second on a thread of its own, until stopped.
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<anyhow::Result<Vec<Status>>>,
}

impl Poller {
    pub fn start(agent: &Agent, pid: u32) -> Self {
        let port = agent.port;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut polls = Vec::new();
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    polls.push(status(port, pid)?);
                    next += Duration::from_secs(1);
                }
                thread::sleep(Duration::from_millis(20));
            }
            Ok(polls)
        });
        Self { stop, thread }
    }

    /// Stops polling and returns every status read.
    pub fn stop(self) -> anyhow::Result<Vec<Status>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the status poller panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    const JSON: &str = r#"{"budget":0.01,"calibration":{"floor_ns":300.0,"programs":{"goroutine_create":500.0}},
        "executables":[{"exe":"/a","pids":[7],"cpu_seconds_per_second":0.5,"groups":[]},
        {"exe":"/b","pids":[8,9],"cpu_seconds_per_second":1.0,"groups":[
          {"group":"lifecycle","active":false,"hits_per_second":0.0,"cost_ratio":0.25,"detaches":1,"rearm_in_seconds":12.5},
          {"group":"park","active":true,"hits_per_second":10.0,"cost_ratio":0.001,"detaches":0,"rearm_in_seconds":null},
          {"group":"misuse","active":true,"hits_per_second":0.0,"cost_ratio":0.0,"detaches":0,"rearm_in_seconds":null}]}]}"#;

    #[test]
    fn reads_the_groups_of_the_process_executable() {
        let s = parse(JSON, 9).unwrap();
        assert_eq!(s.budget, Some(0.01));
        assert_eq!(s.active("lifecycle"), Some(false));
        assert_eq!(s.group("lifecycle").unwrap().rearm_in_seconds, Some(12.5));
        assert_eq!(s.group("park").unwrap().rearm_in_seconds, None);
        assert!((s.cost_ratio() - 0.001).abs() < 1e-12);
        assert!(!s.all_active());
    }

    #[test]
    fn an_unlisted_process_has_no_groups_and_off_has_no_budget() {
        let off = JSON.replace("\"budget\":0.01", "\"budget\":null");
        let s = parse(&off, 42).unwrap();
        assert_eq!(s.budget, None);
        assert!(s.groups.is_empty());
        assert_eq!(s.active("park"), None);
        assert!(parse("{}", 1).is_err());
    }
}
