//! The live goroutine table: pure state fed by events and memory scans.
//!
//! Nothing here touches the kernel, so it is unit-tested without root.

mod process;

use std::collections::HashMap;

use gostray_common::{EventKind, GoroutineEvent};
pub use process::{ProcessInfo, ProcessState};

use crate::scan::ScannedG;

/// Every watched process, by PID.
#[derive(Debug)]
pub struct Tracker {
    procs: HashMap<u32, ProcessState>,
    /// Per-process bound on tracked goroutines; beyond it goroutines are counted, not stored.
    max_goroutines: usize,
    /// Events whose kind was not understood, or for a PID not watched (a race
    /// with detach); counted so that nothing is dropped silently.
    pub stray_events: u64,
}

impl Tracker {
    pub fn new(max_goroutines: usize) -> Self {
        Self {
            procs: HashMap::new(),
            max_goroutines,
            stray_events: 0,
        }
    }

    /// Starts tracking `pid`. Events for it are accepted from now on; the
    /// first [`Tracker::merge_scan`] completes the picture.
    pub fn add_process(&mut self, pid: u32, info: ProcessInfo) {
        self.procs
            .insert(pid, ProcessState::new(info, self.max_goroutines));
    }

    /// Forgets `pid` and everything about it (its metric series go with it).
    pub fn remove_process(&mut self, pid: u32) -> Option<ProcessState> {
        self.procs.remove(&pid)
    }

    #[cfg(test)]
    pub fn process(&self, pid: u32) -> Option<&ProcessState> {
        self.procs.get(&pid)
    }

    pub fn processes(&self) -> impl Iterator<Item = (u32, &ProcessState)> {
        self.procs.iter().map(|(&pid, p)| (pid, p))
    }

    /// Applies one decoded ring-buffer event.
    pub fn apply(&mut self, event: &GoroutineEvent) {
        let (Some(kind), Some(proc)) = (
            EventKind::from_u32(event.kind),
            self.procs.get_mut(&event.pid),
        ) else {
            self.stray_events += 1;
            return;
        };
        match kind {
            EventKind::Create => proc.created(event),
            EventKind::Exit => proc.exited(event.goid),
        }
    }

    /// Merges a memory scan of `pid`'s goroutine table.
    pub fn merge_scan(&mut self, pid: u32, scanned: &[ScannedG]) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.merge_scan(scanned);
        }
    }

    /// Records the kernel's count of events `pid` could not submit.
    pub fn set_lost(&mut self, pid: u32, lost: u64) {
        if let Some(proc) = self.procs.get_mut(&pid) {
            proc.lost_total = proc.lost_total.max(lost);
        }
    }
}

/// Decodes one ring-buffer record. Short records (never written by our
/// probes, but the bytes come from a shared buffer) are rejected.
pub fn decode_event(bytes: &[u8]) -> Option<GoroutineEvent> {
    if bytes.len() < gostray_common::EVENT_SIZE {
        return None;
    }
    // SAFETY: the length is checked; GoroutineEvent is plain integers, any bit
    // pattern is valid; read_unaligned copes with the buffer's alignment.
    Some(unsafe { bytes.as_ptr().cast::<GoroutineEvent>().read_unaligned() })
}

#[cfg(test)]
mod tests;
