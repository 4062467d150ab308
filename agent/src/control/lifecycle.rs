//! The control loop: exec and exit notices, the periodic rescan, releasing
//! what a departed process held, and the self-metrics refresh.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use gostray_common::ProcEventKind;

use crate::lock::lock;
use crate::{
    control::Agent,
    discovery::{self, ProcWatch},
    metrics::series::Counters,
    proc::procfs::{self, FileId},
};

impl Agent {
    /// Stops watching `pid`: kernel filter, goroutine table, series, and the
    /// binary's probes once no watched process runs it.
    pub(crate) fn forget(&mut self, pid: u32) {
        self.kernel.unwatch(pid);
        let key = lock(&self.shared.series).key(pid).cloned();
        self.remember_departed(pid, key);
        let state = lock(&self.shared.tracker).remove_process(pid);
        let last = state.map(|p| Counters {
            created: p.created_total,
            exited: p.exited_total,
            lost: p.lost_total,
        });
        lock(&self.shared.series).release(pid, last.unwrap_or_default());
        let Some(w) = self.watched.remove(&pid) else {
            return;
        };
        tracing::info!(pid, "process exited; forgotten");
        if let Some(host) = self.host.as_mut() {
            host.room_freed();
        }
        self.release_if_unused(w.file);
    }

    /// Starts the detach grace of `file` if no watched process runs it and
    /// it is not a `--binary` target.
    pub(crate) fn release_if_unused(&mut self, file: FileId) {
        let used = self.watched.values().any(|o| o.file == file)
            || self.binary_targets.iter().any(|(_, f)| *f == file);
        if !used {
            self.idle_binaries.insert(file, Instant::now());
        }
    }

    /// Detaches the probes of executables no watched process has run for
    /// `--detach-grace`. The grace keeps a binary that is started again
    /// and again (a cron job, a crash loop) from paying an attach and a
    /// detach each time: uprobe removal waits for an RCU grace period.
    fn detach_idle(&mut self) {
        let now = Instant::now();
        let grace = self.detach_grace;
        let expired: Vec<FileId> = self
            .idle_binaries
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= grace)
            .map(|(f, _)| *f)
            .collect();
        for file in expired {
            self.idle_binaries.remove(&file);
            if !self.watched.values().any(|w| w.file == file) {
                self.kernel.detach_binary(file);
                self.budget.forget_file(file);
            }
        }
    }

    /// Forgets processes that exited (zombies included) or whose PID now
    /// names another process: the safety net behind the exit tracepoint.
    fn reap(&mut self) {
        // Gone, or still there but running another executable (an exec
        // keeps the PID and start time; probes and layout were the old
        // file's).
        let gone: Vec<(u32, bool)> = self
            .watched
            .iter()
            .filter_map(|(&pid, w)| {
                if !procfs::alive(pid, w.start_time) {
                    return Some((pid, false));
                }
                let now = FileId::of(&procfs::exe_path(pid)).ok();
                (now.is_some() && now != Some(w.file)).then_some((pid, true))
            })
            .collect();
        for (pid, execd) in gone {
            self.forget(pid);
            if execd {
                self.reconsider(pid);
            }
        }
    }

    /// After `pid` exec'd a new program: a named `--pid` is followed into
    /// it; otherwise the usual selection decides.
    fn reconsider(&mut self, pid: u32) {
        if self.named_pids.contains(&pid) {
            tracing::info!(pid, "process exec'd a new executable; attaching to it");
            if let Err(e) = self.attach(pid) {
                self.count_failure(pid, &e);
            }
        } else if self.host.is_some() {
            self.consider_host(pid);
        } else {
            self.consider_target(pid);
        }
    }

    /// Acts on exec/exit notices: an exit is forgotten at once; an exec may
    /// be a new Go process, or a watched PID now running another program.
    fn handle_notices(&mut self, buf: &mut Vec<(ProcEventKind, u32)>) {
        let Some(procs) = self.procs.as_mut() else {
            return;
        };
        procs.poll(buf);
        for (kind, pid) in buf.drain(..) {
            tracing::trace!(pid, ?kind, "notice");
            match kind {
                ProcEventKind::Exit => self.forget(pid),
                ProcEventKind::Exec => {
                    // Several execs of one PID (sh, then chroot, then the
                    // program) can arrive in one batch after the first
                    // attach already saw the final program: only a change
                    // of executable is a new program.
                    if let Some(w) = self.watched.get(&pid) {
                        if discovery::fingerprint(pid).is_ok_and(|fp| fp.file == w.file) {
                            continue;
                        }
                        self.forget(pid);
                    }
                    self.reconsider(pid);
                }
            }
        }
    }

    /// Copies kernel-side counters into the shared state.
    fn refresh_stats(&mut self) {
        self.kernel.flush_logs();
        let lost: Vec<(u32, u64)> = self
            .watched
            .keys()
            .map(|&pid| (pid, self.kernel.lost(pid)))
            .collect();
        {
            let mut tracker = lock(&self.shared.tracker);
            for (pid, n) in lost {
                tracker.set_lost(pid, n);
            }
        }
        let series = lock(&self.shared.series).len();
        let deaths = lock(&self.shared.deaths).len();
        let mut stats = lock(&self.shared.stats);
        stats.attached_binaries = self.kernel.attached_binaries();
        stats.probe_errors = self.kernel.probe_errors();
        stats.fatal_hits = self.kernel.fatal_hits();
        stats.proc_events_lost = self.procs.as_ref().map_or(0, ProcWatch::lost);
        stats.tables.insert("watched", self.watched.len());
        stats.tables.insert("binaries", self.binaries.len());
        stats.tables.insert("rejected", self.rejected.len());
        stats.tables.insert("series", series);
        stats.tables.insert("deaths", deaths);
        stats.tables.insert("verdicts", self.classifier.len());
        if let Some(host) = &self.host {
            stats.tables.insert("declined", host.declined_len());
        }
    }

    /// Runs the control loop until `stop` is set; dropping `self` then
    /// detaches every probe. It sleeps on the exec/exit notices (at most
    /// [`TICK`]); `/proc` is rescanned every `every`.
    pub fn run(mut self, every: Duration, stop: &AtomicBool) {
        let mut buf = Vec::new();
        let mut next_scan = Instant::now() + every;
        let mut next_stats = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.handle_notices(&mut buf);
            self.resolve_deaths();
            self.detach_idle();
            let now = Instant::now();
            if now >= next_scan {
                self.follow_replaced_binaries();
                self.reap();
                self.discover();
                self.relabel();
                next_scan = Instant::now() + every;
            }
            if self
                .last_table_scan
                .is_none_or(|t| t.elapsed() >= self.scan_every)
            {
                self.last_table_scan = Some(Instant::now());
                self.scan_goroutines();
            }
            self.enforce_budget();
            if now >= next_stats {
                self.refresh_stats();
                next_stats = now + TICK;
            }
            match &self.procs {
                Some(procs) => procs.wait(TICK),
                None => sleep_unless(stop, TICK),
            }
        }
    }
}

/// Longest sleep of the control loop: how stale self-metrics and idle
/// attachments may get, and how soon a stop request is seen.
const TICK: Duration = Duration::from_millis(100);

/// Sleeps for `d`, waking early when `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}
