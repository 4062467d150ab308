//! The running agent: attaches to targets, drains events, scans goroutine
//! tables, draws verdicts, notices exits.
//!
//! Two threads: the control loop owns the kernel handles (attach, watch,
//! detach, rescan, memory scans); the drain thread owns the ring buffer.
//! Both feed the shared tracker that the HTTP server reads.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};

use crate::{
    config::RunArgs,
    gobin::{cache::BinaryCache, GoBinError, GoBinary},
    kernel::Kernel,
    procfs::{self, FileId},
    scan,
    state::Shared,
    target::{ProcSymbols, Target},
    tracker::{decode_event, waitclass::WaitClass, ProcessInfo},
};

/// A process being watched.
struct Watched {
    start_time: u64,
    file: FileId,
    bias: u64,
    target: Arc<Target>,
    /// The runtime's wait reason names, read once at attach.
    reasons: Arc<Vec<String>>,
}

/// The control loop's state.
pub struct Agent {
    kernel: Kernel,
    shared: Arc<Shared>,
    /// Analysed executables: a hundred processes of one binary cost one
    /// parse, and a refusal is remembered too.
    binaries: BinaryCache,
    watched: HashMap<u32, Watched>,
    /// `--binary` targets, by file identity.
    binary_targets: Vec<(PathBuf, FileId)>,
    /// `--pid` targets: re-attached when they exec a new executable.
    named_pids: HashSet<u32>,
    leak_after: Duration,
    scan_every: Duration,
    last_scan: Option<Instant>,
}

/// Checks the targets named on the command line before anything is loaded,
/// so a typo gets one clear line. Returns the `--binary` file identities.
pub fn validate_targets(args: &RunArgs) -> anyhow::Result<Vec<(PathBuf, FileId)>> {
    let mut binary_targets = Vec::new();
    for path in &args.binaries {
        let file = FileId::of(path).with_context(|| format!("binary {}", path.display()))?;
        GoBinary::open(path).with_context(|| format!("{}", path.display()))?;
        binary_targets.push((path.clone(), file));
    }
    for &pid in &args.pids {
        if procfs::start_time(pid).is_err() {
            anyhow::bail!("no process with PID {pid}");
        }
    }
    Ok(binary_targets)
}

/// Why one process could not be attached, as a metric label.
fn failure_reason(err: &anyhow::Error) -> &'static str {
    err.downcast_ref::<GoBinError>()
        .map_or("attach_error", GoBinError::reason)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
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
    /// Loads the probes and attaches to every target named on the command
    /// line (checked first by [`validate_targets`]). A target that cannot be
    /// watched is an error here: the user asked for it by name.
    pub fn start(
        args: &RunArgs,
        binary_targets: Vec<(PathBuf, FileId)>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        let (kernel, ring) = Kernel::load(args.ring_buffer_bytes, args.kernel_log)?;
        let mut agent = Self {
            kernel,
            shared,
            binaries: BinaryCache::default(),
            watched: HashMap::new(),
            binary_targets,
            named_pids: args.pids.iter().copied().collect(),
            leak_after: args.leak_after,
            scan_every: args.scan_interval,
            last_scan: None,
        };
        for &pid in &args.pids {
            agent.attach(pid).with_context(|| format!("PID {pid}"))?;
        }
        agent.discover();
        agent.shared.ready.store(true, Ordering::Relaxed);
        Ok((agent, ring))
    }

    /// Attaches to one process: analyse its executable (cached), attach the
    /// probes to that executable once, start the kernel's filter for the
    /// PID, then read its goroutine table so goroutines that predate us count.
    fn attach(&mut self, pid: u32) -> anyhow::Result<()> {
        let start_time = procfs::start_time(pid).context("process exited")?;
        let exe = procfs::exe_path(pid);
        let file = FileId::of(&exe).context("reading /proc/PID/exe")?;
        let bin = self.binaries.get(&exe)?;
        if bin.layout_source.is_guess() {
            tracing::warn!(pid, go = %bin.version, layout = ?bin.layout_source,
                "no DWARF and no offsets for this exact Go release: using another release's layout");
            self.stats().layout_guessed.insert((file.dev, file.ino));
        }
        let target = Arc::new(Target::new(bin));
        self.kernel.attach_binary(file, &exe, &target)?;
        let bin = &target.bin;
        let bias = if bin.pie {
            procfs::image_start(pid, file)?
                .context("executable mapping not found in /proc/PID/maps")?
                .wrapping_sub(bin.image_base)
        } else {
            0
        };
        let reasons = bin.wait_reasons.clone();
        let reasons = Arc::new(reasons);
        let info = ProcessInfo {
            exe: procfs::exe_name(pid).unwrap_or_default(),
            go_version: bin.version.to_string(),
        };
        {
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            tracker.add_process(pid, info);
            if let Some(p) = tracker.process_mut(pid) {
                p.bias = bias;
                p.wait_reasons = reasons.as_ref().clone();
            }
        }
        if let Err(e) = self.kernel.watch(pid, &target) {
            self.shared
                .tracker
                .lock()
                .expect("tracker lock")
                .remove_process(pid);
            return Err(e);
        }
        let begun = Instant::now();
        // A failed scan still leaves the process watched: its counts are then
        // only those of events since attach.
        let scanned = scan::scan(pid, bin, None, bias, &|_| false).unwrap_or_else(|e| {
            if procfs::running_since(pid).is_some() {
                tracing::warn!(pid, error = %e, "goroutine table scan failed");
            } else {
                tracing::debug!(pid, "exited during attach");
            }
            Vec::new()
        });
        self.shared
            .tracker
            .lock()
            .expect("tracker lock")
            .merge_scan(pid, &scanned);
        tracing::info!(
            pid,
            go = %bin.version,
            goroutines = scanned.len(),
            leak_probes = target.leak.as_ref().map_or(0, crate::leakbin::LeakLayout::probe_count),
            create_site = format_args!("{:#x} ({:?})", bin.create_site.address, bin.create_site.kind),
            exit_site = format_args!("{:#x} ({:?})", bin.exit_site.address, bin.exit_site.kind),
            scan_ms = begun.elapsed().as_secs_f64() * 1e3,
            "attached"
        );
        self.watched.insert(
            pid,
            Watched {
                start_time,
                file,
                bias,
                target,
                reasons,
            },
        );
        Ok(())
    }

    /// Follows `--binary` paths whose file was replaced on disk (a deploy
    /// writes a new file, a new inode): new processes run the new file. The
    /// old file's probes stay while a watched process still runs it.
    fn follow_replaced_binaries(&mut self) {
        let mut retired = Vec::new();
        for (path, id) in &mut self.binary_targets {
            match FileId::of(path) {
                Ok(now) if now != *id => {
                    tracing::info!(path = %path.display(), "executable replaced on disk; watching the new file");
                    retired.push(std::mem::replace(id, now));
                }
                _ => {}
            }
        }
        for old in retired {
            if !self.watched.values().any(|w| w.file == old) {
                self.kernel.detach_binary(old);
                self.binaries.forget(old.dev, old.ino);
            }
        }
    }

    /// Attaches to processes of the `--binary` targets that are not watched yet.
    fn discover(&mut self) {
        if self.binary_targets.is_empty() {
            return;
        }
        self.follow_replaced_binaries();
        for pid in procfs::all_pids() {
            if self.watched.contains_key(&pid) || pid == std::process::id() {
                continue;
            }
            let Ok(file) = FileId::of(&procfs::exe_path(pid)) else {
                continue;
            };
            if !self.binary_targets.iter().any(|(_, f)| *f == file) {
                continue;
            }
            let Some(started) = procfs::running_since(pid) else {
                continue; // a zombie: nothing left to watch
            };
            if let Err(e) = self.attach(pid) {
                // A process that exited (or whose PID was reused) while we
                // attached is no failure: short-lived processes would
                // otherwise page through the attach-failure alert.
                if procfs::running_since(pid) != Some(started) {
                    tracing::debug!(
                        pid,
                        error = format!("{e:#}"),
                        "process exited during attach"
                    );
                    continue;
                }
                let reason = failure_reason(&e);
                *self
                    .shared
                    .stats
                    .lock()
                    .expect("stats lock")
                    .attach_failures
                    .entry(reason)
                    .or_default() += 1;
                tracing::warn!(pid, error = format!("{e:#}"), "attach failed");
            }
        }
    }

    /// Forgets processes that exited, whose PID now names another process,
    /// or that exec'd another executable (same PID and start time, another
    /// file: the probes and the memory layout were the old file's).
    fn reap(&mut self) {
        let gone: Vec<(u32, bool)> = self
            .watched
            .iter()
            .filter_map(|(&pid, w)| {
                if procfs::running_since(pid) != Some(w.start_time) {
                    return Some((pid, false));
                }
                let now = FileId::of(&procfs::exe_path(pid)).ok();
                (now.is_some() && now != Some(w.file)).then_some((pid, true))
            })
            .collect();
        for (pid, execd) in gone {
            self.forget(pid);
            if execd && self.named_pids.contains(&pid) {
                tracing::info!(pid, "process exec'd a new executable; attaching to it");
                if let Err(e) = self.attach(pid) {
                    tracing::warn!(pid, error = format!("{e:#}"), "re-attach after exec failed");
                }
            }
        }
    }

    /// Stops watching `pid`; detaches its executable's probes if nothing
    /// else runs it.
    fn forget(&mut self, pid: u32) {
        self.kernel.unwatch(pid);
        let Some(w) = self.watched.remove(&pid) else {
            return;
        };
        self.shared
            .tracker
            .lock()
            .expect("tracker lock")
            .remove_process(pid);
        tracing::info!(pid, "process exited; forgotten");
        let still_used = self.watched.values().any(|o| o.file == w.file);
        if !still_used && !self.binary_targets.iter().any(|(_, f)| *f == w.file) {
            self.kernel.detach_binary(w.file);
            self.binaries.forget(w.file.dev, w.file.ino);
            self.stats()
                .layout_guessed
                .remove(&(w.file.dev, w.file.ino));
        }
    }

    /// Reads every watched process's goroutine table, reconciles the
    /// tracker with it and re-draws the verdicts.
    fn scan_all(&mut self) {
        let leak_after_ns = self.leak_after.as_nanos() as u64;
        let mut total = Duration::ZERO;
        for (&pid, w) in &self.watched {
            let begun = Instant::now();
            let started_ns = monotonic_ns();
            let reasons = w.reasons.clone();
            let walk = move |r: u8| {
                WaitClass::from_name(reasons.get(usize::from(r)).map_or("", String::as_str))
                    .is_blocking()
            };
            let scanned =
                match scan::scan(pid, &w.target.bin, w.target.leak.as_ref(), w.bias, &walk) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(pid, error = %e, "scan failed (process exiting?)");
                        continue;
                    }
                };
            let chans: HashSet<u64> = scanned
                .iter()
                .filter_map(|g| g.chan.map(|c| c.address))
                .collect();
            let globals = if chans.is_empty() {
                HashSet::new()
            } else {
                scan::referenced_from_globals(pid, &w.target.bin.data_ranges, w.bias, &chans)
            };
            let symbols = ProcSymbols {
                bin: w.target.bin.clone(),
                bias: w.bias,
            };
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            tracker.observe_scan(pid, started_ns, scanned);
            tracker.evaluate(pid, monotonic_ns(), leak_after_ns, &symbols, &globals);
            drop(tracker);
            total += begun.elapsed();
        }
        let mut stats = self.shared.stats.lock().expect("stats lock");
        stats.scans += 1;
        stats.scan_seconds += total.as_secs_f64();
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, crate::state::Stats> {
        self.shared.stats.lock().expect("stats lock")
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
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            for (pid, n) in lost {
                tracker.set_lost(pid, n);
            }
        }
        let mut stats = self.shared.stats.lock().expect("stats lock");
        stats.attached_binaries = self.kernel.attached_binaries();
        stats.probe_errors = self.kernel.probe_errors();
    }

    /// Runs the control loop until `stop` is set; dropping `self` then
    /// detaches every probe. `every` paces the exit/new-process checks; the
    /// memory scans run every `--scan-interval`.
    pub fn run(mut self, every: Duration, stop: &AtomicBool) {
        let tick = every.min(self.scan_every);
        while !stop.load(Ordering::Relaxed) {
            self.reap();
            self.discover();
            if self
                .last_scan
                .is_none_or(|t| t.elapsed() >= self.scan_every)
            {
                self.last_scan = Some(Instant::now());
                self.scan_all();
            }
            self.refresh_stats();
            sleep_unless(stop, tick);
        }
    }
}

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

/// Drains the ring buffer every `every` into the tracker until `stop`.
pub fn drain(mut ring: RingBuf<MapData>, shared: &Shared, every: Duration, stop: &AtomicBool) {
    let mut batch = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        while let Some(item) = ring.next() {
            match decode_event(&item) {
                Some(event) => batch.push(event),
                None => shared.tracker.lock().expect("tracker lock").stray_events += 1,
            }
            if batch.len() == batch.capacity() {
                break;
            }
        }
        if !batch.is_empty() {
            let mut tracker = shared.tracker.lock().expect("tracker lock");
            for event in batch.drain(..) {
                tracker.apply(&event);
            }
            // More may be waiting: go round again at once.
            continue;
        }
        thread::sleep(every);
    }
}
