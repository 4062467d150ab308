//! The live goroutine table: pure state fed by events and memory scans, and
//! the verdicts drawn from it.
//!
//! Nothing here touches the kernel, so it is unit-tested without root.

mod evidence;
mod goroutine;
pub mod group;
pub mod histogram;
pub mod input;
mod process;
mod proof;
mod site;
mod sitecache;
mod verdict;

use std::collections::{HashMap, HashSet};

use gostray_common::{
    ChanEvent, DeathEvent, EventKind, GoroutineEvent, CHAN_EVENT_SIZE, DEATH_EVENT_SIZE, EVENT_SIZE,
};
pub use group::{Held, MisuseReport, Summary, Verdict};
pub use process::{PodPlace, ProcessInfo, ProcessState};
pub use site::{is_mechanism, Site, Symbols};

use input::ScannedG;

/// One decoded ring-buffer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Goroutine(GoroutineEvent),
    Chan(ChanEvent),
    /// Boxed: it is five times the others, and rare (once per process).
    Death(Box<DeathEvent>),
}

/// Deaths held for the control loop to resolve: at most one per process
/// (the kernel sends only the first), so this bound is only reached when
/// hundreds of processes die within one control tick.
pub const MAX_PENDING_DEATHS: usize = 256;

/// Every watched process, by PID.
#[derive(Debug)]
pub struct Tracker {
    procs: HashMap<u32, ProcessState>,
    /// Per-process bound on tracked goroutines; beyond it goroutines are counted, not stored.
    max_goroutines: usize,
    /// Events whose kind was not understood, or for a PID not watched (a race
    /// with detach); counted so that nothing is dropped silently.
    pub stray_events: u64,
    /// No lifecycle probes (`--probes` without `lifecycle`): creations and
    /// exits are counted from the scans.
    from_scans: bool,
    /// Deaths not yet resolved by the control loop. Kept apart from the
    /// processes: the exit notice often removes the process first.
    pending_deaths: Vec<DeathEvent>,
    /// Deaths dropped because [`MAX_PENDING_DEATHS`] were waiting.
    pub deaths_dropped: u64,
}

impl Tracker {
    pub fn new(max_goroutines: usize) -> Self {
        Self {
            procs: HashMap::new(),
            max_goroutines,
            stray_events: 0,
            from_scans: false,
            pending_deaths: Vec::new(),
            deaths_dropped: 0,
        }
    }

    /// Counts creations and exits from the goroutine table scans, for
    /// processes added from now on (no lifecycle probes are attached).
    pub fn count_from_scans(&mut self) {
        self.from_scans = true;
    }

    /// Starts tracking `pid`. Events for it are accepted from now on; the
    /// first [`Tracker::merge_scan`] completes the picture.
    pub fn add_process(&mut self, pid: u32, info: ProcessInfo) {
        let mut proc = ProcessState::new(info, self.max_goroutines);
        proc.from_scans = self.from_scans;
        self.procs.insert(pid, proc);
    }

    /// Forgets `pid` and everything about it (its metric series go with it).
    pub fn remove_process(&mut self, pid: u32) -> Option<ProcessState> {
        self.procs.remove(&pid)
    }

    #[cfg(test)]
    pub fn process(&self, pid: u32) -> Option<&ProcessState> {
        self.procs.get(&pid)
    }

    pub fn process_mut(&mut self, pid: u32) -> Option<&mut ProcessState> {
        self.procs.get_mut(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = (u32, &ProcessState)> {
        self.procs.iter().map(|(&pid, p)| (pid, p))
    }

    /// The deaths received since the last call, for the control loop.
    pub fn take_deaths(&mut self) -> Vec<DeathEvent> {
        std::mem::take(&mut self.pending_deaths)
    }

    /// Applies one decoded ring-buffer event.
    pub fn apply(&mut self, event: &Event) {
        let (kind, pid) = match event {
            Event::Goroutine(e) => (e.kind, e.pid),
            Event::Chan(e) => (e.kind, e.pid),
            Event::Death(e) => {
                if self.pending_deaths.len() < MAX_PENDING_DEATHS {
                    self.pending_deaths.push(**e);
                } else {
                    self.deaths_dropped += 1;
                }
                return;
            }
        };
        let (Some(kind), Some(proc)) = (EventKind::from_u32(kind), self.procs.get_mut(&pid)) else {
            self.stray_events += 1;
            return;
        };
        match (kind, event) {
            (EventKind::Create, Event::Goroutine(e)) => proc.created(e),
            (EventKind::Exit, Event::Goroutine(e)) => proc.exited(e.goid, e.ktime_ns),
            (EventKind::Block, Event::Chan(e)) => proc.blocked(e),
            (
                EventKind::DoubleClose | EventKind::CloseNil | EventKind::SendClosed,
                Event::Chan(e),
            ) => proc.misused(kind, e),
            _ => self.stray_events += 1,
        }
    }

    /// Merges the memory scan made at attach.
    pub fn merge_scan(&mut self, pid: u32, scanned: &[ScannedG]) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.merge_scan(scanned);
        }
    }

    /// Applies a periodic scan of `pid` that started at `started_ns`.
    #[cfg(test)]
    pub fn observe_scan(&mut self, pid: u32, started_ns: u64, scanned: Vec<ScannedG>) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.observe(started_ns, scanned);
        }
    }

    /// The same in parts: `begin_scan`, `observe_part`s, `end_scan`.
    pub fn begin_scan(&mut self, pid: u32) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.begin_scan();
        }
    }

    pub fn observe_part(&mut self, pid: u32, started_ns: u64, part: Vec<ScannedG>) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.observe_part(started_ns, part);
        }
    }

    pub fn end_scan(&mut self, pid: u32, started_ns: u64) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.end_scan(started_ns);
        }
    }

    /// Whether `pid` has a goroutine parked on a blocking primitive (one a
    /// heap walk can judge) for at least `parked_ns`.
    pub fn has_parked(&self, pid: u32, now_ns: u64, parked_ns: u64) -> bool {
        self.procs.get(&pid).is_some_and(|p| {
            p.live.values().any(|g| {
                g.seen()
                    .filter(|s| u32::from(s.status) == input::G_WAITING)
                    .is_some_and(|s| {
                        let class =
                            crate::gobin::WaitReason::from_name(p.reason_name(s.waitreason));
                        class.is_blocking() && !class.never_wakes()
                    })
                    && g.blocked_since()
                        .is_some_and(|t| now_ns.saturating_sub(t) >= parked_ns)
            })
        })
    }

    /// Takes what a heap walk of `pid` found at `now_ns`; a goroutine is
    /// proven leaked by two walks at least `min_gap_ns` apart.
    pub fn observe_walk(&mut self, pid: u32, now_ns: u64, walked: input::Walked, min_gap_ns: u64) {
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        let live = &proc.live;
        let since = |goid| {
            live.get(&goid)
                .and_then(goroutine::Goroutine::blocked_since)
                .unwrap_or(0)
        };
        proc.proofs
            .observe(now_ns, walked, since, proc.lost_total, min_gap_ns);
    }

    /// Re-evaluates the verdicts of `pid`.
    pub fn evaluate(
        &mut self,
        pid: u32,
        now_ns: u64,
        leak_after_ns: u64,
        symbols: &dyn Symbols,
        globals: &HashSet<u64>,
    ) {
        let Some(proc) = self.procs.get_mut(&pid) else {
            return;
        };
        let verdict::Evaluation {
            groups,
            held,
            summary,
            sizes,
        } = verdict::evaluate(proc, now_ns, leak_after_ns, symbols, globals);
        proc.groups = groups;
        proc.held = held;
        let site = |pc: u64| {
            symbols
                .site(pc.saturating_sub(1))
                .unwrap_or_default()
                .into()
        };
        let mut misuse: Vec<_> = proc
            .misuse
            .iter()
            .map(|(m, &count)| {
                let report = MisuseReport {
                    site: site::user_site(&m.pcs, symbols).into(),
                    first_closer: (m.kind == EventKind::DoubleClose).then(|| site(m.other_pc)),
                    count,
                };
                (m.kind, report)
            })
            .collect();
        misuse.sort_by_key(|m| std::cmp::Reverse(m.1.count));
        proc.misuse_report = misuse;
        proc.record_trends(&sizes);
        proc.summary = summary;
    }

    /// Records the kernel's count of events `pid` could not submit.
    pub fn set_lost(&mut self, pid: u32, lost: u64) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.lost_total = proc.lost_total.max(lost);
        }
    }
}

/// Decodes one ring-buffer record by its kind. Short or unknown records
/// (never written by our probes, but the bytes come from a shared buffer)
/// are rejected.
pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    let kind = EventKind::from_u32(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))?;
    match kind {
        EventKind::Create | EventKind::Exit if bytes.len() >= EVENT_SIZE => {
            // SAFETY: the length is checked; the struct is plain integers, any
            // bit pattern is valid; read_unaligned copes with alignment.
            Some(Event::Goroutine(unsafe {
                bytes.as_ptr().cast::<GoroutineEvent>().read_unaligned()
            }))
        }
        EventKind::Block | EventKind::DoubleClose | EventKind::CloseNil | EventKind::SendClosed
            if bytes.len() >= CHAN_EVENT_SIZE =>
        {
            // SAFETY: as above.
            Some(Event::Chan(unsafe {
                bytes.as_ptr().cast::<ChanEvent>().read_unaligned()
            }))
        }
        EventKind::Death if bytes.len() >= DEATH_EVENT_SIZE => {
            // SAFETY: as above.
            Some(Event::Death(Box::new(unsafe {
                bytes.as_ptr().cast::<DeathEvent>().read_unaligned()
            })))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod verdict_tests;
