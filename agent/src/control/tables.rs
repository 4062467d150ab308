//! The periodic goroutine table scans: what each watched process's
//! goroutines are doing now, reconciled with the events, and the verdicts
//! drawn from it.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::{target::ProcSymbols, Agent, Watched};
use crate::{
    lock::lock,
    proc::{heapwalk, scan},
    reach::WalkError,
};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`, which outlives the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Agent {
    /// Reads every watched process's goroutine table, reconciles the
    /// tracker with it and re-draws the verdicts.
    pub(crate) fn scan_goroutines(&mut self) {
        let leak_after_ns = self.leak_after.as_nanos() as u64;
        let mut total = Duration::ZERO;
        for (&pid, w) in &self.watched {
            let begun = Instant::now();
            let started_ns = monotonic_ns();
            let bin = &w.target.bin;
            let walk = |r: u8| bin.wait_reason(r).is_blocking();
            // Applied part by part, each under a short hold of the tracker,
            // so neither the table nor the lock is held whole.
            let mut chans = HashSet::new();
            let mut observing = Duration::ZERO;
            lock(&self.shared.tracker).begin_scan(pid);
            let mut apply = |part: Vec<crate::tracker::input::ScannedG>| {
                chans.extend(part.iter().filter_map(|g| g.chan.map(|c| c.address)));
                let mut tracker = lock(&self.shared.tracker);
                let locked = Instant::now();
                tracker.observe_part(pid, started_ns, part);
                observing += locked.elapsed();
            };
            let leak = w.target.leak.as_ref();
            if let Err(e) = scan::scan_into(pid, bin, leak, w.bias, &walk, &mut apply) {
                tracing::debug!(pid, error = %e, "scan failed (process exiting?)");
                continue;
            }
            lock(&self.shared.tracker).end_scan(pid, started_ns);
            // One instant for the walk's ripeness test and the verdicts, so
            // no goroutine ripens between them unwalked.
            let now_ns = monotonic_ns();
            self.walk_heap(pid, w, now_ns, leak_after_ns);
            let globals = if chans.is_empty() {
                HashSet::new()
            } else {
                scan::referenced_from_globals(pid, &bin.data_ranges, w.bias, &chans)
            };
            let symbols = ProcSymbols {
                bin: bin.clone(),
                bias: w.bias,
            };
            let read = begun.elapsed();
            let mut tracker = lock(&self.shared.tracker);
            let locked = Instant::now();
            tracker.evaluate(pid, now_ns, leak_after_ns, &symbols, &globals);
            drop(tracker);
            tracing::debug!(
                pid,
                read_ms = read.as_secs_f64() * 1e3,
                observe_ms = observing.as_secs_f64() * 1e3,
                evaluate_ms = locked.elapsed().as_secs_f64() * 1e3,
                "goroutine table scanned"
            );
            total += begun.elapsed();
        }
        // A scan's buffers (a record per goroutine) are freed by now; hand
        // the pages back rather than keep them as the allocator's slack.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory.
        unsafe {
            libc::malloc_trim(0);
        }
        let mut stats = lock(&self.shared.stats);
        stats.table_scans += 1;
        stats.table_scan_seconds += total.as_secs_f64();
    }
}

/// A process's next heap walk waits this many times the last one's length.
const WALK_SPACING: f64 = 10.0;

impl Agent {
    /// Walks the heap of `pid` when one of its goroutines has been parked
    /// on a blocking primitive for nearly `--leak-after`: what it proves
    /// goes to the tracker before the verdicts are drawn.
    fn walk_heap(&self, pid: u32, w: &Watched, now_ns: u64, leak_after_ns: u64) {
        let Some(budget) = self.walk_budget else {
            return;
        };
        // Walks start before --leak-after, so that the two a proof needs
        // are done by the time a goroutine is ripe for a verdict.
        let scan_ns = self.scan_every.as_nanos() as u64;
        let early = leak_after_ns
            .saturating_sub(2 * scan_ns)
            .max(leak_after_ns / 2);
        if !lock(&self.shared.tracker).has_parked(pid, now_ns, early) {
            return;
        }
        if w.next_walk.get().is_some_and(|t| Instant::now() < t) {
            *lock(&self.shared.stats)
                .heap_walks
                .entry("deferred")
                .or_default() += 1;
            return;
        }
        let (bin, bias) = (&w.target.bin, w.bias);
        let is_user = |startpc: u64| {
            bin.symbolize(startpc.wrapping_sub(bias))
                .is_none_or(|f| !f.function.starts_with("runtime."))
        };
        let result = heapwalk::walk(pid, bin, bias, &budget, &is_user);
        let mut stats = lock(&self.shared.stats);
        let outcome = match result {
            Ok(walked) => {
                let spacing = Duration::from_secs_f64(walked.seconds * WALK_SPACING);
                w.next_walk.set(Some(Instant::now() + spacing));
                stats.heap_walk_seconds += walked.seconds;
                stats.heap_walk_bytes += walked.bytes_read;
                drop(stats);
                tracing::debug!(
                    pid,
                    candidates = walked.candidates,
                    unreachable = walked.unreachable.len(),
                    bytes = walked.bytes_read,
                    trustworthy = walked.trustworthy,
                    ms = walked.seconds * 1e3,
                    "heap walked"
                );
                for (goid, holder) in &walked.held_by {
                    tracing::trace!(pid, goid, holder = holder.as_str(), "primitive held");
                }
                // Two walks a scan apart prove a leak; allow the timer's jitter.
                let gap = self.scan_every.as_nanos() as u64 * 9 / 10;
                lock(&self.shared.tracker).observe_walk(pid, now_ns, walked, gap);
                stats = lock(&self.shared.stats);
                "done"
            }
            Err(WalkError::OverBudget { what }) => {
                tracing::info!(
                    pid,
                    over = what,
                    "heap walk over budget: weaker verdicts stand"
                );
                "over_budget"
            }
            Err(e) => {
                tracing::debug!(pid, error = %e, "heap walk failed");
                "failed"
            }
        };
        *stats.heap_walks.entry(outcome).or_default() += 1;
    }
}
