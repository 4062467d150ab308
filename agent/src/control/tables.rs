//! The periodic goroutine table scans: what each watched process's
//! goroutines are doing now, reconciled with the events, and the verdicts
//! drawn from it.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use crate::lock::lock;
use crate::{control::target::ProcSymbols, control::Agent, proc::scan};

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
            tracker.evaluate(pid, monotonic_ns(), leak_after_ns, &symbols, &globals);
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
