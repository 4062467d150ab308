//! The drain thread: moves events from the kernel's ring buffer into the
//! tracker, and keeps the ring flowing while a table scan holds the tracker.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        TryLockError,
    },
    thread,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

use crate::{
    state::Shared,
    tracker::{decode_event, Event},
};

/// Drains the ring buffer every `every` into the tracker until `stop`.
pub fn drain(mut ring: RingBuf<MapData>, shared: &Shared, every: Duration, stop: &AtomicBool) {
    /// Ring records read per round before the tracker is tried.
    const ROUND: usize = 4096;
    /// Events held while a table scan holds the tracker (a scan of a
    /// million goroutines takes a while): about 28 MiB at most, and the
    /// kernel's ring buffer behind it. Past it the ring fills and its
    /// losses are counted.
    const MAX_BACKLOG: usize = 262_144;
    let mut backlog: Vec<Event> = Vec::with_capacity(ROUND);
    while !stop.load(Ordering::Relaxed) {
        let mut read = 0;
        while read < ROUND && backlog.len() < MAX_BACKLOG {
            let Some(item) = ring.next() else { break };
            read += 1;
            backlog.extend(decode_event(&item));
        }
        if !backlog.is_empty() {
            let tracker = match shared.tracker.try_lock() {
                Ok(t) => Some(t),
                // As every reader of shared state does: keep going.
                Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
                // A scan holds it: keep the ring flowing into the backlog.
                Err(TryLockError::WouldBlock) => None,
            };
            if let Some(mut tracker) = tracker {
                for event in backlog.drain(..) {
                    tracker.apply(&event);
                }
                drop(tracker);
                backlog.shrink_to(ROUND);
            }
        }
        // A full round means more is waiting: go round again at once.
        if read < ROUND {
            let pause = if backlog.is_empty() {
                every
            } else {
                every.min(Duration::from_millis(1))
            };
            thread::sleep(pause);
        }
    }
}
