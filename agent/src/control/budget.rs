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
//! doubles each time it trips again soon after (and within its first
//! seconds back, one window over is enough); the lifecycle group, whose
//! rate the scans still measure (goroutine IDs), only when that rate would
//! cost under half the budget.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use gostray_common::hit;

use crate::{
    gobin::sites::ProbeGroup,
    kernel::{calibrate::Calibration, Hits},
    lock::lock,
    proc::procfs::{self, FileId},
    state::{CalibrationReport, ExeReport, GroupReport, OverheadReport},
};

use super::Agent;

/// Seconds between two looks.
const WINDOW: Duration = Duration::from_secs(1);
/// Consecutive windows over budget before a group is detached.
const HOLD: u32 = 3;
/// First wait before a detached group is re-armed; it doubles up to
/// [`MAX_BACKOFF`] when a re-armed group trips within [`SETTLED`]. The
/// lifecycle group comes back only when the scans' creation rate says it
/// fits; the others have no such estimate and come back blind, on trial,
/// which costs a second of their full price: they wait longer.
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const BLIND_BACKOFF: Duration = Duration::from_mins(1);
const MAX_BACKOFF: Duration = Duration::from_mins(10);
const SETTLED: Duration = Duration::from_mins(5);
/// How long a re-armed group is on trial: over budget within it, it goes
/// at once.
const TRIAL: Duration = Duration::from_secs(3);
/// Probe CPU below this many seconds per second (0.1% of a core) is never
/// acted on: an idle process's own CPU time is too small to divide by.
const MIN_COST_PER_SECOND: f64 = 0.001;
/// A group the budget may switch.
struct GroupSpec {
    group: ProbeGroup,
    name: &'static str,
    /// The hit columns it is made of.
    columns: &'static [u32],
    /// What it would cost while detached, in CPU seconds per second, from
    /// what the table scans still measure. A group with an estimate comes
    /// back when that fits; one without comes back blind, on trial.
    estimate: Option<fn(&Window, &Calibration) -> f64>,
}

/// The groups the budget may switch. `fatal` never fires while a program
/// lives, so it always stays.
const GROUPS: [GroupSpec; 3] = [
    GroupSpec {
        group: ProbeGroup::Lifecycle,
        name: "lifecycle",
        columns: &[hit::CREATE, hit::EXIT],
        estimate: Some(lifecycle_estimate),
    },
    GroupSpec {
        group: ProbeGroup::Park,
        name: "park",
        columns: &[hit::BLOCK],
        estimate: None,
    },
    GroupSpec {
        group: ProbeGroup::Misuse,
        name: "misuse",
        columns: &[hit::CLOSE, hit::SEND_CLOSED],
        estimate: None,
    },
];

/// What the creations the scans see would cost: a create and an exit hit
/// each.
fn lifecycle_estimate(w: &Window, price: &Calibration) -> f64 {
    w.created_rate * (price.cost_ns[hit::CREATE as usize] + price.cost_ns[hit::EXIT as usize]) / 1e9
}

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
    /// The group's cost ratio in the window that detached it.
    tripped_ratio: f64,
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
            tripped_ratio: 0.0,
        }
    }
}

/// What the budget does to an executable's groups after a window.
#[derive(Debug, PartialEq)]
enum Action {
    Keep,
    Detach(usize),
    Rearm(usize),
}

impl FileBudget {
    fn new(exe: String) -> Self {
        Self {
            exe,
            groups: [GroupState::default(); 3],
            over: 0,
            cpu_per_second: 0.0,
        }
    }

    /// Judges one window: `costs` are each group's probe CPU seconds per
    /// second (for a detached lifecycle group, what it would cost), and
    /// `allowed` the most they may cost together. A detach or a re-arm is
    /// applied to the state here; a re-arm the kernel refuses is put off
    /// with [`Self::put_off`].
    fn judge(&mut self, now: Instant, costs: [f64; 3], allowed: f64) -> Action {
        let spent: f64 = (0..3)
            .filter(|&i| self.groups[i].active)
            .map(|i| costs[i])
            .sum();
        self.over = if spent > allowed { self.over + 1 } else { 0 };
        // A group re-armed on trial goes at the first window over: the
        // trial costs a second, not the hold.
        let on_trial = self.groups.iter().any(|g| {
            g.active
                && g.armed_since
                    .is_some_and(|t| now.duration_since(t) <= TRIAL)
        });
        if self.over >= HOLD || (self.over > 0 && on_trial) {
            self.over = 0;
            let costliest = (0..3)
                .filter(|&i| self.groups[i].active)
                .max_by(|&a, &b| costs[a].total_cmp(&costs[b]));
            if let Some(i) = costliest {
                self.detached(i, now);
                return Action::Detach(i);
            }
        }
        for i in 0..3 {
            let g = &self.groups[i];
            if g.active || g.rearm_at.is_none_or(|t| now < t) {
                continue;
            }
            // A group with an estimate comes back only if it would fit.
            if GROUPS[i].estimate.is_some() && spent + costs[i] >= allowed / 2.0 {
                self.put_off(i, now);
                continue;
            }
            self.rearmed(i, now);
            return Action::Rearm(i);
        }
        Action::Keep
    }

    fn detached(&mut self, i: usize, now: Instant) {
        let g = &mut self.groups[i];
        let tripped_soon = g
            .armed_since
            .is_some_and(|t| now.duration_since(t) < SETTLED);
        g.backoff = if tripped_soon {
            (g.backoff * 2).min(MAX_BACKOFF)
        } else if GROUPS[i].estimate.is_some() {
            FIRST_BACKOFF
        } else {
            BLIND_BACKOFF
        };
        g.active = false;
        g.detaches += 1;
        g.tripped_ratio = g.ratio;
        g.rearm_at = Some(now + g.backoff);
    }

    fn rearmed(&mut self, i: usize, now: Instant) {
        let g = &mut self.groups[i];
        g.active = true;
        g.rearm_at = None;
        g.armed_since = Some(now);
    }

    /// Tries again after another back-off: the group stays detached.
    fn put_off(&mut self, i: usize, now: Instant) {
        let g = &mut self.groups[i];
        g.active = false;
        g.armed_since = None;
        g.rearm_at = Some(now + g.backoff);
    }
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
            let state = self.budget.files.entry(file).or_insert_with(|| {
                // A path from the target: printable and bounded, as every
                // string that goes into labels, JSON and terminals.
                let exe = w
                    .pids
                    .first()
                    .and_then(|&pid| std::fs::read_link(procfs::exe_path(pid)).ok())
                    .map(|p| procfs::bounded_to(&p.display().to_string(), 4096))
                    .unwrap_or_default();
                FileBudget::new(exe)
            });
            state.cpu_per_second = w.cpu_seconds / seconds;
            let mut costs = [0f64; 3];
            for (i, spec) in GROUPS.iter().enumerate() {
                let mut hits = [0u64; hit::COLUMNS];
                for &c in spec.columns {
                    hits[c as usize] = w.hits[c as usize];
                }
                let g = &mut state.groups[i];
                g.hits_per_second = hits.iter().sum::<u64>() as f64 / seconds;
                costs[i] = match spec.estimate {
                    Some(estimate) if !g.active => estimate(&w, &price),
                    _ => price.seconds(&hits) / seconds,
                };
                g.ratio = ratio(costs[i], w.cpu_seconds / seconds);
            }
            let Some(limit) = self.budget.limit else {
                continue;
            };
            let allowed = (limit * w.cpu_seconds / seconds).max(MIN_COST_PER_SECOND);
            match state.judge(now, costs, allowed) {
                Action::Keep => {}
                Action::Detach(i) => {
                    let g = &state.groups[i];
                    tracing::warn!(
                        exe = %state.exe,
                        group = GROUPS[i].name,
                        cost_ratio = format!("{:.4}", g.ratio),
                        probe_cpu_per_second = format!("{:.4}", costs[i]),
                        hits_per_second = format!("{:.0}", g.hits_per_second),
                        budget = limit,
                        rearm_in_seconds = g.backoff.as_secs(),
                        processes = w.pids.len(),
                        "probes over the overhead budget; detaching the group from this executable (counts continue from the table scans)"
                    );
                    self.kernel.detach_group(file, GROUPS[i].group);
                    if GROUPS[i].group == ProbeGroup::Lifecycle {
                        self.set_lifecycle(&w.pids, false);
                    }
                }
                Action::Rearm(i) => {
                    let pid = w.pids[0];
                    let Some(target) = self.watched.get(&pid).map(|w| w.target.clone()) else {
                        continue;
                    };
                    let path = procfs::exe_path(pid);
                    match self
                        .kernel
                        .attach_group(file, &path, &target, GROUPS[i].group)
                    {
                        Ok(()) => {
                            state.rearmed(i, now);
                            tracing::info!(
                                exe = %state.exe,
                                group = GROUPS[i].name,
                                estimated_cost_ratio = format!("{:.4}", state.groups[i].ratio),
                                budget = limit,
                                "re-arming probe group"
                            );
                            if GROUPS[i].group == ProbeGroup::Lifecycle {
                                self.set_lifecycle(&w.pids, true);
                            }
                        }
                        Err(e) => {
                            state.put_off(i, now);
                            tracing::warn!(exe = %state.exe, group = GROUPS[i].name, error = format!("{e:#}"), "re-arming probe group failed");
                        }
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
    pub(crate) fn publish_overhead(&self, now: Instant) {
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
                .map(|(spec, g)| GroupReport {
                    group: spec.name,
                    active: g.active,
                    hits_per_second: g.hits_per_second,
                    cost_ratio: g.ratio,
                    detaches: g.detaches,
                    rearm_in_seconds: g
                        .rearm_at
                        .map(|t| t.saturating_duration_since(now).as_secs_f64()),
                    detached_at_cost_ratio: (!g.active).then_some(g.tripped_ratio),
                })
                .collect();
            executables.push(ExeReport {
                name: procfs::bounded(exe_name(&f.exe)),
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: f64 = 0.01;
    const QUIET: [f64; 3] = [0.001, 0.0005, 0.0];
    /// Lifecycle far over, park a little.
    const HOT: [f64; 3] = [0.3, 0.002, 0.0];

    fn at(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn a_quiet_executable_keeps_every_group() {
        let (t0, mut f) = (Instant::now(), FileBudget::new("svc".into()));
        for s in 0..600 {
            assert_eq!(f.judge(at(t0, s), QUIET, ALLOWED), Action::Keep);
        }
        assert!(f.groups.iter().all(|g| g.active && g.detaches == 0));
    }

    #[test]
    fn the_costliest_group_goes_after_the_hold_and_only_it() {
        let (t0, mut f) = (Instant::now(), FileBudget::new("svc".into()));
        assert_eq!(f.judge(at(t0, 0), HOT, ALLOWED), Action::Keep);
        assert_eq!(f.judge(at(t0, 1), HOT, ALLOWED), Action::Keep);
        assert_eq!(f.judge(at(t0, 2), HOT, ALLOWED), Action::Detach(0));
        // What is left (park, 0.2%) fits: nothing more goes.
        for s in 3..9 {
            assert_eq!(f.judge(at(t0, s), HOT, ALLOWED), Action::Keep);
        }
        assert!(!f.groups[0].active && f.groups[1].active && f.groups[2].active);
    }

    #[test]
    fn a_burst_shorter_than_the_hold_changes_nothing() {
        let (t0, mut f) = (Instant::now(), FileBudget::new("svc".into()));
        for s in 0..60 {
            let costs = if s % 3 == 2 { QUIET } else { HOT };
            assert_eq!(f.judge(at(t0, s), costs, ALLOWED), Action::Keep);
        }
    }

    #[test]
    fn lifecycle_comes_back_only_once_the_scans_say_it_fits() {
        let (t0, mut f) = (Instant::now(), FileBudget::new("svc".into()));
        for s in 0..3 {
            f.judge(at(t0, s), HOT, ALLOWED);
        }
        assert!(!f.groups[0].active);
        // Still hot at the end of the back-off (10 s): put off again.
        assert_eq!(f.judge(at(t0, 12), HOT, ALLOWED), Action::Keep);
        assert!(!f.groups[0].active);
        // Quiet: back at the next due time.
        let mut rearmed = None;
        for s in 13..40 {
            if f.judge(at(t0, s), QUIET, ALLOWED) == Action::Rearm(0) {
                rearmed = Some(s);
                break;
            }
        }
        assert_eq!(
            rearmed,
            Some(22),
            "re-armed at the next back-off after the put-off"
        );
        assert!(f.groups[0].active);
    }

    #[test]
    fn a_group_that_trips_on_trial_goes_at_once_and_waits_twice_as_long() {
        let (t0, mut f) = (Instant::now(), FileBudget::new("svc".into()));
        let park_hot = [0.0, 0.3, 0.0];
        for s in 0..3 {
            f.judge(at(t0, s), park_hot, ALLOWED);
        }
        assert!(!f.groups[1].active);
        assert_eq!(f.groups[1].backoff, BLIND_BACKOFF);
        // Park has no estimate while detached: it comes back on trial.
        let back = 2 + BLIND_BACKOFF.as_secs();
        assert_eq!(f.judge(at(t0, back - 1), QUIET, ALLOWED), Action::Keep);
        assert_eq!(f.judge(at(t0, back), QUIET, ALLOWED), Action::Rearm(1));
        // Still hot: one window over is enough on trial.
        assert_eq!(
            f.judge(at(t0, back + 1), park_hot, ALLOWED),
            Action::Detach(1)
        );
        assert_eq!(f.groups[1].backoff, BLIND_BACKOFF * 2);
        assert_eq!(f.groups[1].detaches, 2);
        // Then twice as long each time, up to the cap.
        let mut now = back + 1;
        for _ in 0..10 {
            now += f.groups[1].backoff.as_secs();
            assert_eq!(f.judge(at(t0, now), QUIET, ALLOWED), Action::Rearm(1));
            now += 1;
            assert_eq!(f.judge(at(t0, now), park_hot, ALLOWED), Action::Detach(1));
        }
        assert_eq!(f.groups[1].backoff, MAX_BACKOFF);
        // Re-armed for good once quiet; a later trip after it settled
        // starts the back-off over.
        now += MAX_BACKOFF.as_secs();
        assert_eq!(f.judge(at(t0, now), QUIET, ALLOWED), Action::Rearm(1));
        now += SETTLED.as_secs() + 1;
        for _ in 0..3 {
            now += 1;
            f.judge(at(t0, now), park_hot, ALLOWED);
        }
        assert_eq!(f.groups[1].backoff, BLIND_BACKOFF);
    }
}
