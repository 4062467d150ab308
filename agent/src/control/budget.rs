//! The overhead budget: each executable's probes may cost its processes at
//! most `--overhead-budget` of their CPU time.
//!
//! Every second the kernel's hit counts of each watched process are priced
//! at the calibrated cost per hit and set against the CPU time the process
//! used meanwhile. Uprobes belong to the executable file, so the figures
//! are summed over every watched process that runs it. When the probes of
//! a file stay over budget for [`HOLD`] windows, the group that costs most
//! is detached from the file; the counts carry on from the table scans, as
//! with `--probes none`. A detached group is re-armed after a back-off that
//! doubles each time it trips again soon after; the lifecycle group, whose
//! rate the scans still measure (goroutine IDs), only when that rate would
//! cost under half the budget.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use gostray_common::hit;
use serde::Serialize;

use crate::{
    gobin::sites::ProbeGroup,
    kernel::{calibrate::Calibration, Hits},
    lock::lock,
    proc::procfs::{self, FileId},
};

use super::Agent;

/// Seconds between two looks.
const WINDOW: Duration = Duration::from_secs(1);
/// Consecutive windows over budget before a group is detached.
const HOLD: u32 = 3;
/// First wait before a detached group is re-armed; it doubles up to
/// [`MAX_BACKOFF`] when a re-armed group trips within [`SETTLED`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
const SETTLED: Duration = Duration::from_secs(300);
/// Probe CPU below this many seconds per second (0.1% of a core) is never
/// acted on: an idle process's own CPU time is too small to divide by.
const MIN_COST_PER_SECOND: f64 = 0.001;
/// The groups the budget may switch, and the hit columns each is made of.
/// `fatal` never fires while a program lives, so it always stays.
const GROUPS: [(ProbeGroup, &str, &[u32]); 3] = [
    (
        ProbeGroup::Lifecycle,
        "lifecycle",
        &[hit::CREATE, hit::EXIT],
    ),
    (ProbeGroup::Park, "park", &[hit::BLOCK]),
    (
        ProbeGroup::Misuse,
        "misuse",
        &[hit::CLOSE, hit::SEND_CLOSED],
    ),
];

/// The budget's state, owned by the control loop.
pub(crate) struct Budget {
    /// The fraction allowed; `None` when enforcement is off.
    limit: Option<f64>,
    price: Option<Calibration>,
    last: Instant,
    files: HashMap<FileId, FileBudget>,
    /// The previous look at each watched process.
    samples: HashMap<u32, Sample>,
}

#[derive(Clone, Copy)]
struct Sample {
    hits: Hits,
    cpu_ticks: u64,
    /// Goroutines created, and when the table scan that counted them ran.
    created: u64,
    scanned: Option<Instant>,
    /// Creations per second between the last two table scans.
    created_rate: f64,
}

/// One executable's groups.
struct FileBudget {
    exe: String,
    groups: [GroupState; 3],
    /// Consecutive windows over budget.
    over: u32,
    /// CPU seconds per second its processes used in the last window.
    cpu_per_second: f64,
}

#[derive(Clone, Copy)]
struct GroupState {
    active: bool,
    ratio: f64,
    hits_per_second: f64,
    detaches: u64,
    backoff: Duration,
    rearm_at: Option<Instant>,
    armed_since: Option<Instant>,
}

impl Default for GroupState {
    fn default() -> Self {
        Self {
            active: true,
            ratio: 0.0,
            hits_per_second: 0.0,
            detaches: 0,
            backoff: FIRST_BACKOFF,
            rearm_at: None,
            armed_since: None,
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
    pub programs: std::collections::BTreeMap<&'static str, f64>,
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
}

impl Budget {
    pub(crate) fn new(limit: Option<f64>, price: Option<Calibration>) -> Self {
        Self {
            limit: limit.filter(|_| price.is_some()),
            price,
            last: Instant::now(),
            files: HashMap::new(),
            samples: HashMap::new(),
        }
    }

    /// Whether the lifecycle probes of `file` are attached (they are
    /// unless the budget detached them).
    pub(crate) fn lifecycle_active(&self, file: FileId) -> bool {
        self.files.get(&file).is_none_or(|f| f.groups[0].active)
    }

    /// Forgets an executable whose probes are all gone.
    pub(crate) fn forget_file(&mut self, file: FileId) {
        self.files.remove(&file);
    }
}

/// One window's totals for an executable.
#[derive(Default)]
struct Window {
    hits: Hits,
    cpu_seconds: f64,
    created_rate: f64,
    pids: Vec<u32>,
}

impl Agent {
    /// Prices the last window's probe hits and acts on the budget; at most
    /// once per [`WINDOW`].
    pub(crate) fn enforce_budget(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.budget.last);
        if elapsed < WINDOW {
            return;
        }
        self.budget.last = now;
        let Some(price) = self.budget.price else {
            return;
        };
        let windows = self.measure();
        let seconds = elapsed.as_secs_f64();
        for (file, w) in windows {
            let exe = w
                .pids
                .first()
                .and_then(|&pid| std::fs::read_link(procfs::exe_path(pid)).ok())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let state = self.budget.files.entry(file).or_insert_with(|| FileBudget {
                exe,
                groups: [GroupState::default(); 3],
                over: 0,
                cpu_per_second: 0.0,
            });
            state.cpu_per_second = w.cpu_seconds / seconds;
            let mut costs = [0f64; 3];
            for (i, (_, _, columns)) in GROUPS.iter().enumerate() {
                let mut hits = [0u64; hit::COLUMNS];
                for &c in *columns {
                    hits[c as usize] = w.hits[c as usize];
                }
                let g = &mut state.groups[i];
                g.hits_per_second = hits.iter().sum::<u64>() as f64 / seconds;
                costs[i] = price.seconds(&hits) / seconds;
                if i == 0 && !g.active {
                    // What the creations the scans see would cost.
                    costs[i] = w.created_rate
                        * (price.cost_ns[hit::CREATE as usize] + price.cost_ns[hit::EXIT as usize])
                        / 1e9;
                }
                g.ratio = ratio(costs[i], w.cpu_seconds / seconds);
            }
            let Some(limit) = self.budget.limit else {
                continue;
            };
            let allowed = (limit * w.cpu_seconds / seconds).max(MIN_COST_PER_SECOND);
            let spent: f64 = (0..3)
                .filter(|&i| state.groups[i].active)
                .map(|i| costs[i])
                .sum();
            state.over = if spent > allowed { state.over + 1 } else { 0 };
            let mut detach = None;
            if state.over >= HOLD {
                state.over = 0;
                detach = (0..3)
                    .filter(|&i| state.groups[i].active)
                    .max_by(|&a, &b| costs[a].total_cmp(&costs[b]));
            }
            let mut rearm = None;
            for i in 0..3 {
                let g = &state.groups[i];
                let due = !g.active && g.rearm_at.is_some_and(|t| now >= t);
                // Lifecycle comes back only if the scans say it would fit.
                if due && (i != 0 || spent + costs[0] < allowed / 2.0) {
                    rearm = Some(i);
                    break;
                }
                if due {
                    state.groups[i].rearm_at = Some(now + state.groups[i].backoff);
                }
            }
            if let Some(i) = detach {
                let g = &mut state.groups[i];
                let tripped_soon = g
                    .armed_since
                    .is_some_and(|t| now.duration_since(t) < SETTLED);
                g.backoff = if tripped_soon {
                    (g.backoff * 2).min(MAX_BACKOFF)
                } else {
                    FIRST_BACKOFF
                };
                g.active = false;
                g.detaches += 1;
                g.rearm_at = Some(now + g.backoff);
                tracing::warn!(
                    exe = %state.exe,
                    group = GROUPS[i].1,
                    cost_ratio = format!("{:.4}", g.ratio),
                    probe_cpu_per_second = format!("{:.4}", costs[i]),
                    hits_per_second = format!("{:.0}", g.hits_per_second),
                    budget = limit,
                    rearm_in_seconds = g.backoff.as_secs(),
                    processes = w.pids.len(),
                    "probes over the overhead budget; detaching the group from this executable (counts continue from the table scans)"
                );
                self.kernel.detach_group(file, GROUPS[i].0);
                if i == 0 {
                    self.set_lifecycle(&w.pids, false);
                }
            } else if let Some(i) = rearm {
                let pid = w.pids.first().copied();
                let target = pid
                    .and_then(|p| self.watched.get(&p))
                    .map(|w| w.target.clone());
                let (Some(pid), Some(target)) = (pid, target) else {
                    continue;
                };
                let g = &mut state.groups[i];
                match self
                    .kernel
                    .attach_group(file, &procfs::exe_path(pid), &target, GROUPS[i].0)
                {
                    Ok(()) => {
                        g.active = true;
                        g.rearm_at = None;
                        g.armed_since = Some(now);
                        tracing::info!(
                            exe = %state.exe,
                            group = GROUPS[i].1,
                            estimated_cost_ratio = format!("{:.4}", g.ratio),
                            budget = limit,
                            "re-arming probe group"
                        );
                        if i == 0 {
                            self.set_lifecycle(&w.pids, true);
                        }
                    }
                    Err(e) => {
                        g.rearm_at = Some(now + g.backoff);
                        tracing::warn!(exe = %state.exe, group = GROUPS[i].1, error = format!("{e:#}"), "re-arming probe group failed");
                    }
                }
            }
        }
        self.publish_overhead(now);
    }

    /// Samples every watched process and sums the window per executable.
    fn measure(&mut self) -> HashMap<FileId, Window> {
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let created: HashMap<u32, u64> = {
            let tracker = lock(&self.shared.tracker);
            tracker
                .processes()
                .map(|(pid, p)| (pid, p.created_total))
                .collect()
        };
        let scanned = self.last_table_scan;
        let mut windows: HashMap<FileId, Window> = HashMap::new();
        let mut samples = HashMap::with_capacity(self.watched.len());
        for (&pid, watched) in &self.watched {
            let w = windows.entry(watched.file).or_default();
            w.pids.push(pid);
            let (Some(hits), Some(cpu_ticks)) =
                (self.kernel.hits(pid), procfs::cpu_ticks(&pid.to_string()))
            else {
                continue;
            };
            let created = created.get(&pid).copied().unwrap_or(0);
            let mut sample = Sample {
                hits,
                cpu_ticks,
                created,
                scanned,
                created_rate: 0.0,
            };
            if let Some(prev) = self.budget.samples.get(&pid) {
                for (sum, (now, before)) in w.hits.iter_mut().zip(hits.iter().zip(prev.hits)) {
                    *sum += now.saturating_sub(before);
                }
                w.cpu_seconds += cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / tick;
                // The creation rate moves when a table scan ran.
                sample.created_rate = prev.created_rate;
                if let (Some(now_scan), Some(prev_scan)) = (scanned, prev.scanned) {
                    let span = now_scan.duration_since(prev_scan).as_secs_f64();
                    if span > 0.0 {
                        sample.created_rate = created.saturating_sub(prev.created) as f64 / span;
                    } else {
                        sample.created = prev.created;
                        sample.scanned = prev.scanned;
                    }
                }
                w.created_rate += sample.created_rate;
            }
            samples.insert(pid, sample);
        }
        self.budget.samples = samples;
        windows
    }

    /// Moves the tracker of each of `pids` to counting from the lifecycle
    /// probes (`on`) or from the table scans.
    fn set_lifecycle(&self, pids: &[u32], on: bool) {
        let mut tracker = lock(&self.shared.tracker);
        for &pid in pids {
            if let Some(p) = tracker.process_mut(pid) {
                p.set_lifecycle_probes(on);
            }
        }
    }

    /// Copies the budget's view into the shared state for the server.
    fn publish_overhead(&self, now: Instant) {
        let b = &self.budget;
        let mut executables = Vec::with_capacity(b.files.len());
        for (file, f) in &b.files {
            let pids: Vec<u32> = self
                .watched
                .iter()
                .filter(|(_, w)| w.file == *file)
                .map(|(&p, _)| p)
                .collect();
            if pids.is_empty() {
                continue;
            }
            let groups: Vec<GroupReport> = GROUPS
                .iter()
                .zip(&f.groups)
                .map(|((_, name, _), g)| GroupReport {
                    group: name,
                    active: g.active,
                    hits_per_second: g.hits_per_second,
                    cost_ratio: g.ratio,
                    detaches: g.detaches,
                    rearm_in_seconds: g
                        .rearm_at
                        .map(|t| t.saturating_duration_since(now).as_secs_f64()),
                })
                .collect();
            executables.push(ExeReport {
                name: exe_name(&f.exe).to_string(),
                exe: f.exe.clone(),
                pids,
                cpu_seconds_per_second: f.cpu_per_second,
                cost_ratio: f.groups.iter().filter(|g| g.active).map(|g| g.ratio).sum(),
                groups,
            });
        }
        executables.sort_by(|a, b| a.exe.cmp(&b.exe));
        let report = OverheadReport {
            budget: b.limit,
            calibration: b.price.map(|c| CalibrationReport {
                floor_ns: c.floor_ns,
                programs: c.programs().into_iter().collect(),
            }),
            executables,
        };
        *lock(&self.shared.overhead) = report;
    }
}

/// `cost` over `cpu`, 0 when the process used no CPU time at all.
fn ratio(cost: f64, cpu: f64) -> f64 {
    if cpu > 0.0 {
        cost / cpu
    } else {
        0.0
    }
}

/// The file name of an executable's path.
fn exe_name(exe: &str) -> &str {
    exe.rsplit('/')
        .next()
        .unwrap_or(exe)
        .trim_end_matches(" (deleted)")
}
