//! One watched process: its goroutines, counters and last verdicts.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::{BuildHasher, Hasher},
};

use gostray_common::{ChanEvent, GoroutineEvent, EVENT_PCS};

use super::{
    histogram::Histogram,
    verdict::{Group, Misuse},
};
use crate::proc::scan::{ChanState, ScannedG, G_WAITING};

/// What the agent knows about a process apart from its goroutines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Executable base name, bounded in length.
    pub exe: String,
    pub go_version: String,
}

/// What the last memory scan saw of a goroutine, and the last park the
/// probes saw. Kept inline and small (16 bytes): a scan sees every
/// goroutine, but only a few thousand parked ones get a channel or a
/// walked stack, which live behind the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The runtime status (`_Gwaiting`…; at most 16); 0 when never scanned,
    /// as a scan never keeps an idle g.
    pub status: u8,
    pub waitreason: u8,
    /// The scan pass that last listed it (see `ProcessState::begin_scan`).
    mark: u8,
    /// The wait reason of a probed park no scan has seen since
    /// ([`NO_PARK`] if none): then `blocked_since_ns` is that park's time.
    park_reason: u8,
    /// The return addresses of the last probed park, interned per process
    /// (`ProcessState::park_stacks`), or [`NO_STACK`].
    park_stack: u32,
    detail: Option<Box<SeenDetail>>,
}

const NO_PARK: u8 = u8::MAX;
const NO_STACK: u32 = u32::MAX;

impl Default for Seen {
    fn default() -> Self {
        Self {
            status: 0,
            waitreason: 0,
            mark: 0,
            park_reason: NO_PARK,
            park_stack: NO_STACK,
            detail: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenDetail {
    chan: Option<ChanState>,
    stack: Vec<u64>,
}

impl Seen {
    /// What a scan saw: `status` is the runtime's (never idle, so never 0).
    pub fn new(status: u32, waitreason: u8, chan: Option<ChanState>, stack: Vec<u64>) -> Self {
        Self {
            // Statuses are at most G_MAX_STATUS (16); never 0 here.
            status: u8::try_from(status).unwrap_or(u8::MAX).max(1),
            waitreason,
            detail: (chan.is_some() || !stack.is_empty())
                .then(|| Box::new(SeenDetail { chan, stack })),
            ..Self::default()
        }
    }

    /// The channel it is parked on, when the scan followed it.
    pub fn chan(&self) -> Option<ChanState> {
        self.detail.as_ref().and_then(|d| d.chan)
    }

    /// Its walked stack, from the parked PC outward (empty if not walked).
    pub fn stack(&self) -> &[u64] {
        self.detail.as_ref().map_or(&[], |d| &d.stack)
    }
}

/// A live goroutine: 56 bytes, as a million of them may be tracked. Rare
/// parts are boxed: most goroutines never block long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goroutine {
    /// Kernel monotonic time of creation; 0 when found by a memory scan.
    pub created_ns: u64,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: u64,
    /// Since when it has been parked for its current reason, as far as the
    /// probes and scans can tell; 0 when not known to be parked.
    blocked_since_ns: u64,
    seen: Seen,
}

impl Goroutine {
    fn new(created_ns: u64, gopc: u64, startpc: u64, parent_goid: u64) -> Self {
        Self {
            created_ns,
            gopc,
            startpc,
            parent_goid,
            blocked_since_ns: 0,
            seen: Seen::default(),
        }
    }

    /// A goroutine found by a scan, as `seen` (for tests of the verdicts).
    #[cfg(test)]
    pub fn scanned(startpc: u64, seen: Seen) -> Self {
        Self {
            seen,
            ..Self::new(0, 0, startpc, 0)
        }
    }

    /// What the last scan saw, if a scan has seen it.
    pub fn seen(&self) -> Option<&Seen> {
        (self.seen.status != 0).then_some(&self.seen)
    }

    /// Since when it has been parked for its current reason, if it is.
    pub fn blocked_since(&self) -> Option<u64> {
        (self.blocked_since_ns != 0).then_some(self.blocked_since_ns)
    }

    /// The return addresses of its last probed park, if any.
    pub fn park_stack<'a>(&self, proc: &'a ProcessState) -> Option<&'a [u64]> {
        proc.park_stacks
            .get(self.seen.park_stack as usize)
            .map(|pcs| &pcs[..])
    }
}

/// Hashes goroutine IDs with one folded multiply by a per-table random
/// key: the default `SipHash` was a tenth of a 100k-goroutine scan. The IDs
/// come from the target's memory, so a hostile process could pick them;
/// the random key and the fold (which mixes every input bit into the low
/// bits the table indexes by) keep it from choosing colliding ones.
#[derive(Clone, Copy)]
pub struct GoidHashing {
    key: u64,
}

impl Default for GoidHashing {
    fn default() -> Self {
        Self {
            key: std::collections::hash_map::RandomState::new().hash_one(0u64) | 1,
        }
    }
}

impl BuildHasher for GoidHashing {
    type Hasher = GoidHasher;

    fn build_hasher(&self) -> GoidHasher {
        GoidHasher(self.key)
    }
}

pub struct GoidHasher(u64);

impl Hasher for GoidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        let product = u128::from(self.0 ^ v) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type GoidMap<V> = HashMap<u64, V, GoidHashing>;
pub type GoidSet = HashSet<u64, GoidHashing>;

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
    pub summary: super::Summary,
    /// Misuse sites named at the last evaluation.
    pub misuse_report: Vec<(
        gostray_common::EventKind,
        crate::server::report::MisuseReport,
    )>,
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
    park_stacks: Vec<[u64; EVENT_PCS]>,
    park_stack_index: HashMap<[u64; EVENT_PCS], u32>,
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
/// the live count.
#[derive(Debug, Default)]
struct ScanCounts {
    top_goid: u64,
    live_at_attach: u64,
}

impl ProcessState {
    pub fn new(info: ProcessInfo, max_goroutines: usize) -> Self {
        Self {
            info,
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
            summary: super::Summary::default(),
            misuse_report: Vec::new(),
            exit_links: HashMap::new(),
            trends: HashMap::new(),
            from_scans: false,
            scan_counts: ScanCounts::default(),
            pass: ScanPass::default(),
            park_stacks: Vec::new(),
            park_stack_index: HashMap::new(),
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

    pub(super) fn created(&mut self, event: &GoroutineEvent) {
        self.created_total += 1;
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
        self.exited_total += 1;
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
            live_at_attach: self.live_count(),
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
        self.live
            .retain(|_, g| g.seen.mark == mark || g.created_ns >= started_ns);
        self.untracked = self.pass.beyond.len() as u64;
        self.pass.beyond = GoidSet::default();
        if self.from_scans {
            self.count_from_scan(self.pass.top_goid);
        } else {
            self.reconciled_exits += (before - self.live.len()) as u64;
        }
    }

    /// Without lifecycle probes: creations from the advance of the highest
    /// goroutine ID, exits from the live count (see [`ScanCounts`]). Both
    /// only ever grow.
    fn count_from_scan(&mut self, top_goid: u64) {
        let c = &mut self.scan_counts;
        if top_goid > c.top_goid {
            self.created_total += top_goid - c.top_goid;
            c.top_goid = top_goid;
        }
        let gone = (c.live_at_attach + self.created_total).saturating_sub(self.live_count());
        self.exited_total = self.exited_total.max(gone);
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
