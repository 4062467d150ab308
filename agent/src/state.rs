//! State shared between the control loop, the drain thread and the server.

use serde::Serialize;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{atomic::AtomicBool, Arc, Mutex},
};

use crate::{deaths::DeathLog, k8s::Kube, metrics::series::SeriesTable, tracker::Tracker};

#[derive(Debug)]
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    /// Metric label set of each watched process. Lock after `tracker`.
    pub series: Mutex<SeriesTable>,
    /// True once every requested target is attached (or none is left);
    /// false again as soon as shutdown starts.
    pub ready: AtomicBool,
    pub stats: Mutex<Stats>,
    /// The pod cache (empty and disabled outside Kubernetes).
    pub kube: Arc<Kube>,
    /// Processes that died of a fatal error or an unrecovered panic, per
    /// workload; they outlive the processes. Lock after `series`.
    pub deaths: Mutex<DeathLog>,
    /// The overhead budget's last look, for `/api/v1/overhead` and metrics.
    pub overhead: Mutex<OverheadReport>,
}

/// Agent self-observation, refreshed by the control loop.
#[derive(Debug, Default)]
pub struct Stats {
    pub attached_binaries: usize,
    pub probe_errors: [u64; 2],
    /// Fatal-path probe hits in any process (see `ebpf/src/maps.rs`).
    pub fatal_hits: u64,
    pub attach_failures: BTreeMap<&'static str, u64>,
    /// Processes attached since start.
    pub attaches: u64,
    /// Processes looked at and not watched, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Exec/exit notices the kernel dropped (buffer full).
    pub proc_events_lost: u64,
    /// Full `/proc` scans and the time they took.
    pub scans: u64,
    pub scan_seconds: f64,
    /// Entries in the agent's bounded tables, by table.
    pub tables: BTreeMap<&'static str, usize>,
    /// Goroutine table scans (for leak verdicts) and their total duration.
    pub table_scans: u64,
    pub table_scan_seconds: f64,
    /// Attached executables (device, inode) whose struct offsets are a
    /// guess from another Go release (no DWARF, no exact table entry).
    pub layout_guessed: BTreeSet<(u64, u64)>,
    /// Heap walks by result (`done`, `over_budget`, `failed`), their time
    /// and the bytes they read.
    pub heap_walks: BTreeMap<&'static str, u64>,
    pub heap_walk_seconds: f64,
    pub heap_walk_bytes: u64,
}

/// Every `reason` label of `gostray_attach_failures_total`
/// (`GoBinError::reason`, and the agent's own `attach_error`; a process
/// that exits during attach is not a failure).
pub const ATTACH_FAILURE_REASONS: [&str; 5] = [
    "not_go",
    "go_too_old",
    "unsupported_arch",
    "unreadable_binary",
    "attach_error",
];

/// Results of a heap walk, each exported from the start (`deferred`: not
/// walked yet, spaced after a long walk).
pub const HEAP_WALK_RESULTS: [&str; 4] = ["done", "deferred", "over_budget", "failed"];

impl Shared {
    pub fn new(max_goroutines: usize, max_series: usize) -> Self {
        Self {
            tracker: Mutex::new(Tracker::new(max_goroutines)),
            series: Mutex::new(SeriesTable::new(max_series)),
            ready: AtomicBool::new(false),
            stats: Mutex::new(Stats {
                // Every reason exported from the start, at 0, so that the
                // first failure is an increase and alerts can see it.
                attach_failures: ATTACH_FAILURE_REASONS.iter().map(|&r| (r, 0)).collect(),
                heap_walks: HEAP_WALK_RESULTS.iter().map(|&r| (r, 0)).collect(),
                ..Stats::default()
            }),
            kube: Arc::new(Kube::default()),
            deaths: Mutex::new(DeathLog::default()),
            overhead: Mutex::new(OverheadReport::default()),
        }
    }
}

/// What `/api/v1/overhead` and the metrics show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OverheadReport {
    pub budget: Option<f64>,
    pub calibration: Option<CalibrationReport>,
    pub executables: Vec<ExeReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CalibrationReport {
    pub floor_ns: f64,
    pub programs: BTreeMap<&'static str, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExeReport {
    pub exe: String,
    /// The executable's base name, as in the metric labels.
    pub name: String,
    pub pids: Vec<u32>,
    pub cpu_seconds_per_second: f64,
    pub cost_ratio: f64,
    pub groups: Vec<GroupReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub group: &'static str,
    pub active: bool,
    pub hits_per_second: f64,
    /// Estimated probe CPU time over the processes' CPU time; for a
    /// detached lifecycle group, what it would cost at the rate the scans
    /// measure.
    pub cost_ratio: f64,
    pub detaches: u64,
    pub rearm_in_seconds: Option<f64>,
    /// While detached: the cost ratio that detached it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detached_at_cost_ratio: Option<f64>,
}
