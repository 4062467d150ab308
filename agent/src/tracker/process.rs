//! One watched process: its goroutines and counters.

use std::collections::{HashMap, HashSet};

use gostray_common::GoroutineEvent;

use crate::scan::ScannedG;

/// What the agent knows about a process apart from its goroutines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Executable base name, bounded in length.
    pub exe: String,
    pub go_version: String,
}

/// A live goroutine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Goroutine {
    /// Kernel monotonic time of creation; 0 when found by a memory scan.
    pub created_ns: u64,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: u64,
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

#[derive(Debug)]
pub struct ProcessState {
    pub info: ProcessInfo,
    live: HashMap<u64, Goroutine>,
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
}

impl ProcessState {
    pub fn new(info: ProcessInfo, max_goroutines: usize) -> Self {
        Self {
            info,
            live: HashMap::new(),
            max_goroutines,
            phase: Phase::AwaitingScan,
            exited_unseen: HashSet::new(),
            created_total: 0,
            exited_total: 0,
            lost_total: 0,
            untracked: 0,
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

    pub(super) fn created(&mut self, event: &GoroutineEvent) {
        self.created_total += 1;
        self.insert(
            event.goid,
            Goroutine {
                created_ns: event.ktime_ns,
                gopc: event.gopc,
                startpc: event.startpc,
                parent_goid: event.parent_goid,
            },
        );
    }

    pub(super) fn exited(&mut self, goid: u64) {
        self.exited_total += 1;
        if self.live.remove(&goid).is_some() {
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

    pub(super) fn merge_scan(&mut self, scanned: &[ScannedG]) {
        for g in scanned {
            if self.exited_unseen.contains(&g.goid) || self.live.contains_key(&g.goid) {
                continue;
            }
            self.insert(
                g.goid,
                Goroutine {
                    created_ns: 0,
                    gopc: g.gopc,
                    startpc: g.startpc,
                    parent_goid: g.parent_goid,
                },
            );
        }
        self.exited_unseen = HashSet::new();
        self.phase = Phase::Ready;
    }

    fn insert(&mut self, goid: u64, g: Goroutine) {
        if self.live.len() < self.max_goroutines || self.live.contains_key(&goid) {
            self.live.insert(goid, g);
        } else {
            self.untracked += 1;
        }
    }
}
