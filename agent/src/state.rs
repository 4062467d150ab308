//! State shared between the control loop, the drain thread and the server.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{atomic::AtomicBool, Mutex},
};

use crate::tracker::Tracker;

#[derive(Debug)]
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    /// True once every requested target is attached (or none is left);
    /// false again as soon as shutdown starts.
    pub ready: AtomicBool,
    pub stats: Mutex<Stats>,
}

/// Agent self-observation, refreshed by the control loop.
#[derive(Debug, Default)]
pub struct Stats {
    pub attached_binaries: usize,
    pub probe_errors: [u64; 2],
    pub attach_failures: BTreeMap<&'static str, u64>,
    /// Periodic memory scans done, and their total duration.
    pub scans: u64,
    pub scan_seconds: f64,
    /// Attached executables (device, inode) whose struct offsets are a
    /// guess from another Go release (no DWARF, no exact table entry).
    pub layout_guessed: BTreeSet<(u64, u64)>,
}

impl Shared {
    pub fn new(max_goroutines: usize) -> Self {
        Self {
            tracker: Mutex::new(Tracker::new(max_goroutines)),
            ready: AtomicBool::new(false),
            stats: Mutex::new(Stats::default()),
        }
    }
}
