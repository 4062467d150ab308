//! The leak report: what `/api/v1/leaks` serves and `gostray leaks` prints.

use serde::{Deserialize, Serialize};

use crate::tracker::{MisuseReport, ProcessState, Tracker};

/// The whole report, one entry per watched process.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub processes: Vec<ProcessReport>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    pub goroutines: u64,
    pub groups: Vec<serde_json::Value>,
    /// Goroutines parked past `--leak-after` that are not leaked: a heap
    /// walk found what can still wake them (`held_by`).
    #[serde(default)]
    pub held: Vec<serde_json::Value>,
    pub double_closes: Vec<MisuseReport>,
    pub sends_on_closed: Vec<MisuseReport>,
    pub closes_of_nil: Vec<MisuseReport>,
}

/// Builds the report from the tracker's last evaluation.
pub fn build(tracker: &Tracker) -> Report {
    let mut processes: Vec<ProcessReport> = tracker
        .processes()
        .map(|(pid, p)| process(pid, p))
        .collect();
    processes.sort_by_key(|p| p.pid);
    Report { processes }
}

fn process(pid: u32, p: &ProcessState) -> ProcessReport {
    let misuse = |kind| {
        p.misuse_report
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| r.clone())
            .collect()
    };
    ProcessReport {
        pid,
        exe: p.info.exe.clone(),
        go_version: p.info.go_version.clone(),
        goroutines: p.live_count(),
        groups: p
            .groups
            .iter()
            .filter_map(|g| serde_json::to_value(g).ok())
            .collect(),
        held: p
            .held
            .iter()
            .filter_map(|h| serde_json::to_value(h).ok())
            .collect(),
        double_closes: misuse(gostray_common::EventKind::DoubleClose),
        sends_on_closed: misuse(gostray_common::EventKind::SendClosed),
        closes_of_nil: misuse(gostray_common::EventKind::CloseNil),
    }
}
