//! One watched process: its goroutines, counters and last verdicts.

use std::collections::{HashMap, HashSet, VecDeque};

use gostray_common::{ChanEvent, GoroutineEvent, EVENT_PCS};

use super::goroutine::{GoidMap, GoidSet, Goroutine, Seen, NO_PARK, NO_STACK};
use super::input::{ScannedG, G_RUNNING, G_WAITING};
use super::proof::Proofs;
use super::{
    group::{Group, Misuse, MisuseReport},
    histogram::Histogram,
};

/// What the agent knows about a process apart from its goroutines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Executable base name, bounded in length.
    pub exe: String,
    pub go_version: String,
}

/// The pod and container a process runs in, as the API server reported
/// them: empty outside a pod, and until its metadata is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodPlace {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// How far the attach has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Probes fire but the memory scan has not been merged: exits of
    /// goroutines we have not seen yet are remembered, because the scan may
    /// still report them as alive.
    AwaitingScan,
    Ready,
}

/// Scans of history kept per group, for the trend.
pub const TREND_LEN: usize = 8;
/// Groups whose trend is remembered.
const MAX_TRENDS: usize = 512;
/// Exited goroutines whose parent is remembered.
const MAX_EXIT_LINKS: usize = 65_536;
/// Distinct double-close site pairs remembered.
const MAX_MISUSE_SITES: usize = 256;

#[derive(Debug)]
pub struct ProcessState {
    pub info: ProcessInfo,
    /// Where it runs in Kubernetes, for the leak report.
    pub pod: PodPlace,
    pub(super) live: GoidMap<Goroutine>,
    max_goroutines: usize,
    phase: Phase,
    exited_unseen: HashSet<u64>,
    /// Creation events seen.
    pub created_total: u64,
    /// Exit events seen (for any goroutine, tracked or not).
    pub exited_total: u64,
    /// Events the kernel could not submit (ring buffer full).
    pub lost_total: u64,
    /// Goroutines alive but not stored because the table was full.
    pub untracked: u64,
    /// Goroutines the scans found that no event announced, and tracked
    /// goroutines the scans no longer found (lost events, repaired).
    pub reconciled_creates: u64,
    pub reconciled_exits: u64,
    /// Lifetimes of exited goroutines whose creation was seen.
    pub lifetimes: Histogram,
    /// The runtime's wait reason names, by value.
    pub wait_reasons: Vec<String>,
    /// Added to link-time addresses to get this process's addresses.
    pub bias: u64,
    /// Channel misuse, by site pair.
    pub misuse: HashMap<Misuse, u64>,
    pub misuse_total: HashMap<gostray_common::EventKind, u64>,
    /// Verdicts of the last evaluation, and its counts.
    pub groups: Vec<Group>,
    /// Long-parked groups a walk found reachable, and what holds them.
    pub held: Vec<super::Held>,
    pub summary: super::Summary,
    /// Misuse sites named at the last evaluation.
    pub misuse_report: Vec<(gostray_common::EventKind, MisuseReport)>,
    /// Parents of goroutines that exited, so that descendant chains stay
    /// connected through goroutines that are gone. Bounded: cleared whole
    /// when full (an older link only matters for a long-lived grandchild).
    pub(super) exit_links: HashMap<u64, u64>,
    /// Member counts per group fingerprint over the last scans.
    pub(super) trends: HashMap<u64, VecDeque<u64>>,
    /// Counts come from the scans (no lifecycle probes); see [`ScanCounts`].
    pub(super) from_scans: bool,
    scan_counts: ScanCounts,
    pass: ScanPass,
    /// Distinct return-address stacks of probed parks, interned: a million
    /// goroutines parked at one site share one entry.
    pub(super) park_stacks: Vec<[u64; EVENT_PCS]>,
    park_stack_index: HashMap<[u64; EVENT_PCS], u32>,
    /// What the heap walks proved about its parked goroutines.
    pub(super) proofs: Proofs,
}

/// Distinct park stacks remembered per process.
const MAX_PARK_STACKS: usize = 65_536;

/// The periodic scan being applied.
#[derive(Debug, Default)]
struct ScanPass {
    mark: u8,
    top_goid: u64,
    /// Goroutines listed but not stored (past the table's bound).
    beyond: GoidSet,
}

/// Creation and exit counts without lifecycle probes. The runtime hands
/// goroutine IDs out in order, in batches of 16 per P, so the advance of
/// the highest ID a scan sees is the number created since the last scan,
/// short-lived goroutines included, to within 16 per P; exits follow from
/// the live count, counted from where the scans took over (`since`).
#[derive(Debug, Default)]
struct ScanCounts {
    top_goid: u64,
    since: Tally,
    /// Goroutines the last scan with the probes on no longer found while
    /// their exit events were still in the ring. Should the probes go
    /// before those events arrive, they are the exits nothing else counts.
    dropped: GoidSet,
}

/// Created, exited and live at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    created: u64,
    exited: u64,
    live: u64,
}

impl ProcessState {
    pub fn new(info: ProcessInfo, max_goroutines: usize) -> Self {
        Self {
            info,
            pod: PodPlace::default(),
            live: GoidMap::default(),
            max_goroutines,
            phase: Phase::AwaitingScan,
            exited_unseen: HashSet::new(),
            created_total: 0,
            exited_total: 0,
            lost_total: 0,
            untracked: 0,
            reconciled_creates: 0,
            reconciled_exits: 0,
            lifetimes: Histogram::default(),
            wait_reasons: Vec::new(),
            bias: 0,
            misuse: HashMap::new(),
            misuse_total: HashMap::new(),
            groups: Vec::new(),
            held: Vec::new(),
            summary: super::Summary::default(),
            misuse_report: Vec::new(),
            exit_links: HashMap::new(),
            trends: HashMap::new(),
            from_scans: false,
            scan_counts: ScanCounts::default(),
            pass: ScanPass::default(),
            park_stacks: Vec::new(),
            park_stack_index: HashMap::new(),
            proofs: Proofs::default(),
        }
    }

    /// Live goroutines, including those beyond the table's bound.
    pub fn live_count(&self) -> u64 {
        self.live.len() as u64 + self.untracked
    }

    #[cfg(test)]
    pub fn goroutine(&self, goid: u64) -> Option<&Goroutine> {
        self.live.get(&goid)
    }

    #[cfg(test)]
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// The wait reason name for a runtime value ("" when unknown).
    pub fn reason_name(&self, reason: u8) -> &str {
        self.wait_reasons
            .get(usize::from(reason))
            .map_or("", String::as_str)
    }

    /// Switches where creations and exits are counted from: the lifecycle
    /// probes (`on`) or the scans, as when the overhead budget detaches or
    /// re-arms them. The totals carry on from where they are. In scan mode
    /// the exits are the goroutines counted (live at the switch, plus
    /// created since) that the live count no longer holds, which also
    /// counts the exits still in flight when the probes went. Counting from
    /// the switch, not from attach, keeps the exits moving after events
    /// were lost: a lost creation whose exit was counted would otherwise
    /// hold them still.
    pub fn set_lifecycle_probes(&mut self, on: bool) {
        if !on && !self.from_scans {
            self.scan_counts.since = self.tally();
        }
        self.from_scans = !on;
    }

    fn tally(&self) -> Tally {
        Tally {
            created: self.created_total,
            exited: self.exited_total,
            live: self.live_count(),
        }
    }

    /// Whether creations and exits are counted from the lifecycle probes.
    #[cfg(test)]
    pub fn lifecycle_probes(&self) -> bool {
        !self.from_scans
    }

    pub(super) fn created(&mut self, event: &GoroutineEvent) {
        if self.from_scans {
            // An event still in flight when the probes went: counted like a
            // scan would count it, by the advance of the highest ID. If a
            // scan listed the goroutine before its event came, it was live
            // at the switch with its creation not yet counted.
            if self.count_from_top(event.goid) && self.live.contains_key(&event.goid) {
                let since = &mut self.scan_counts.since;
                since.live = since.live.saturating_sub(1);
            }
        } else {
            self.created_total += 1;
            self.scan_counts.top_goid = self.scan_counts.top_goid.max(event.goid);
        }
        let fresh = Goroutine::new(event.ktime_ns, event.gopc, event.startpc, event.parent_goid);
        match self.live.get_mut(&event.goid) {
            // A scan in progress found it before its event arrived: keep
            // what the scan saw (its pass mark above all, or the end of
            // the pass would drop it), take the event's richer record.
            Some(g) => {
                *g = Goroutine {
                    blocked_since_ns: g.blocked_since_ns,
                    seen: std::mem::take(&mut g.seen),
                    ..fresh
                };
            }
            None => self.insert(event.goid, fresh),
        }
    }

    pub(super) fn exited(&mut self, goid: u64, at_ns: u64) {
        // In scan mode the scan's live count gives the exits.
        self.exited_total += u64::from(!self.from_scans);
        if self.scan_counts.dropped.remove(&goid) {
            if self.from_scans {
                self.exited_total += 1;
                self.scan_counts.since.exited += 1;
            }
            return;
        }
        if let Some(g) = self.live.remove(&goid) {
            if g.created_ns != 0 && at_ns >= g.created_ns {
                self.lifetimes.observe_ns(at_ns - g.created_ns);
            }
            if g.parent_goid != 0 {
                if self.exit_links.len() >= MAX_EXIT_LINKS {
                    self.exit_links.clear();
                }
                self.exit_links.insert(goid, g.parent_goid);
            }
            return;
        }
        if self.phase == Phase::AwaitingScan {
            // Bounded like the table itself: past the bound an exit is only counted.
            if self.exited_unseen.len() < self.max_goroutines {
                self.exited_unseen.insert(goid);
            }
        } else if self.untracked > 0 {
            self.untracked -= 1;
        }
    }

    pub(super) fn blocked(&mut self, e: &ChanEvent) {
        if !self.live.contains_key(&e.goid) {
            return;
        }
        let stack = self.intern_park_stack(e.pcs);
        if let Some(g) = self.live.get_mut(&e.goid) {
            g.blocked_since_ns = e.ktime_ns.max(1);
            g.seen.park_reason = (e.reason as u8).min(NO_PARK - 1);
            g.seen.park_stack = stack;
        }
    }

    /// The index of `pcs` in `park_stacks`; [`NO_STACK`] once the bound is
    /// reached (the scans' own stack walks still name the site then).
    fn intern_park_stack(&mut self, pcs: [u64; EVENT_PCS]) -> u32 {
        if let Some(&i) = self.park_stack_index.get(&pcs) {
            return i;
        }
        if self.park_stacks.len() >= MAX_PARK_STACKS {
            return NO_STACK;
        }
        let i = self.park_stacks.len() as u32;
        self.park_stacks.push(pcs);
        self.park_stack_index.insert(pcs, i);
        i
    }

    pub(super) fn misused(&mut self, kind: gostray_common::EventKind, e: &ChanEvent) {
        *self.misuse_total.entry(kind).or_default() += 1;
        let site = Misuse {
            kind,
            pcs: e.pcs,
            other_pc: e.other_pc,
        };
        if self.misuse.len() < MAX_MISUSE_SITES || self.misuse.contains_key(&site) {
            *self.misuse.entry(site).or_default() += 1;
        }
    }

    /// Merges the scan made at attach.
    pub(super) fn merge_scan(&mut self, scanned: &[ScannedG]) {
        // A torn or lying table may list a goroutine twice: past the bound,
        // each listing would otherwise count as another untracked one.
        let mut listed = HashSet::with_capacity(scanned.len());
        for g in scanned {
            if !listed.insert(g.goid)
                || self.exited_unseen.contains(&g.goid)
                || self.live.contains_key(&g.goid)
            {
                continue;
            }
            self.insert(g.goid, Goroutine::new(0, g.gopc, g.startpc, g.parent_goid));
        }
        self.exited_unseen = HashSet::new();
        self.phase = Phase::Ready;
        self.scan_counts = ScanCounts {
            top_goid: scanned.iter().map(|g| g.goid).max().unwrap_or(0),
            since: self.tally(),
            dropped: GoidSet::default(),
        };
    }

    /// Applies a periodic scan started at `started_ns` at once (see
    /// [`Self::begin_scan`] for the same in parts).
    #[cfg(test)]
    pub(super) fn observe(&mut self, started_ns: u64, scanned: Vec<ScannedG>) {
        self.begin_scan();
        self.observe_part(started_ns, scanned);
        self.end_scan(started_ns);
    }

    /// Starts applying a periodic scan, which then comes in parts
    /// ([`Self::observe_part`]) and ends with [`Self::end_scan`]: each
    /// goroutine it lists is marked, so no set of the whole table is built.
    pub(super) fn begin_scan(&mut self) {
        // 0 is never a pass's mark: goroutines created by events carry it.
        self.pass.mark = self.pass.mark % u8::MAX + 1;
        self.pass.top_goid = 0;
        self.pass.beyond = GoidSet::default();
    }

    /// Part of a scan: refreshes what each goroutine is doing and adds
    /// goroutines whose creation event was lost. Past the table's bound,
    /// the goroutines found but not stored become the untracked count.
    pub(super) fn observe_part(&mut self, started_ns: u64, part: Vec<ScannedG>) {
        let mark = self.pass.mark;
        for sg in part {
            self.pass.top_goid = self.pass.top_goid.max(sg.goid);
            let full = self.live.len() >= self.max_goroutines;
            let g = match self.live.get_mut(&sg.goid) {
                // A torn table may list a goroutine twice.
                Some(g) if g.seen.mark == mark => continue,
                Some(g) => g,
                None if full => {
                    self.pass.beyond.insert(sg.goid);
                    continue;
                }
                // Running and unknown with the probes on: a goroutine whose
                // exit event came, read before the runtime marks it dead
                // (the exit probe fires as it starts to die), or a lost
                // creation that the next scan will find settled.
                None if !self.from_scans && sg.status == G_RUNNING => continue,
                None => {
                    self.reconciled_creates += u64::from(!self.from_scans);
                    self.live.entry(sg.goid).or_insert(Goroutine::new(
                        0,
                        sg.gopc,
                        sg.startpc,
                        sg.parent_goid,
                    ))
                }
            };
            g.blocked_since_ns = if sg.status == G_WAITING {
                parked_since(g, &sg, started_ns).max(1)
            } else {
                0
            };
            let park_stack = g.seen.park_stack;
            g.seen = Seen::new(sg.status, sg.waitreason, sg.chan, sg.stack);
            g.seen.mark = mark;
            g.seen.park_stack = park_stack;
        }
    }

    /// Ends a scan: drops the goroutines it did not list whose exit event
    /// was lost (those created before it began).
    pub(super) fn end_scan(&mut self, started_ns: u64) {
        let mark = self.pass.mark;
        let before = self.live.len();
        let from_scans = self.from_scans;
        let bound = self.max_goroutines;
        let mut dropped = GoidSet::default();
        self.live.retain(|&goid, g| {
            let keep = g.seen.mark == mark || g.created_ns >= started_ns;
            if !keep && !from_scans && dropped.len() < bound {
                dropped.insert(goid);
            }
            keep
        });
        if !from_scans {
            self.scan_counts.dropped = dropped;
        }
        self.untracked = self.pass.beyond.len() as u64;
        self.pass.beyond = GoidSet::default();
        if self.from_scans {
            self.count_from_scan(self.pass.top_goid);
        } else {
            // The highest ID stays the events' own: a scan runs ahead of the
            // ring, and the creations still in it are counted when they
            // arrive, even if the probes go in between.
            self.reconciled_exits += (before - self.live.len()) as u64;
        }
    }

    /// Without lifecycle probes: creations from the advance of the highest
    /// goroutine ID, exits from the live count (see [`ScanCounts`]). Both
    /// only ever grow.
    fn count_from_scan(&mut self, top_goid: u64) {
        self.count_from_top(top_goid);
        let since = self.scan_counts.since;
        let gone = (since.exited + since.live + self.created_total)
            .saturating_sub(since.created + self.live_count());
        self.exited_total = self.exited_total.max(gone);
    }

    /// Counts the creations up to goroutine ID `goid` not counted yet;
    /// whether `goid`'s own was one of them.
    fn count_from_top(&mut self, goid: u64) -> bool {
        let c = &mut self.scan_counts;
        if goid <= c.top_goid {
            return false;
        }
        self.created_total += goid - c.top_goid;
        c.top_goid = goid;
        true
    }

    /// Records this evaluation's group sizes and forgets groups that are gone.
    pub(super) fn record_trends(&mut self, sizes: &HashMap<u64, u64>) {
        self.trends.retain(|fp, _| sizes.contains_key(fp));
        for (&fp, &n) in sizes {
            if !self.trends.contains_key(&fp) && self.trends.len() >= MAX_TRENDS {
                continue;
            }
            let t = self.trends.entry(fp).or_default();
            if t.len() == TREND_LEN {
                t.pop_front();
            }
            t.push_back(n);
        }
    }

    fn insert(&mut self, goid: u64, g: Goroutine) {
        if self.live.len() < self.max_goroutines || self.live.contains_key(&goid) {
            self.live.insert(goid, g);
        } else {
            self.untracked += 1;
        }
    }
}

/// Since when `g`, seen parked by `sg`, has been parked for this reason: a
/// probed park with the same reason is exact; otherwise the earlier scan
/// that already saw it parked the same way; otherwise this scan.
fn parked_since(g: &Goroutine, sg: &ScannedG, started_ns: u64) -> u64 {
    let probed = g.seen.park_reason == sg.waitreason;
    let continued = g
        .seen()
        .is_some_and(|s| u32::from(s.status) == G_WAITING && s.waitreason == sg.waitreason);
    match g.blocked_since() {
        Some(since) if probed || continued => since,
        _ => started_ns,
    }
}
