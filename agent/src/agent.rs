//! The running agent: attaches to targets, drains events, notices exits.
//!
//! Two threads: the control loop owns the kernel handles (attach, watch,
//! detach, rescan); the drain thread owns the ring buffer. Both feed the
//! shared tracker that the HTTP server reads.

use std::{
    collections::HashMap,
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

use gostray_common::ProcEventKind;

use crate::{
    config::RunArgs,
    discovery::{self, BoundedMap, Classifier, ProcWatch, Verdict, VERDICT_CACHE},
    gobin::{GoBinError, GoBinary},
    host::Host,
    k8s::{self, cgroup::Placement},
    kernel::Kernel,
    procfs::{self, FileId},
    scan,
    series::{Counters, SeriesKey},
    state::Shared,
    tracker::{decode_event, ProcessInfo},
};

/// A process being watched.
pub(crate) struct Watched {
    start_time: u64,
    file: FileId,
    /// Where it sits in the cgroup tree; kept to label it once its pod is known.
    pub(crate) placement: Placement,
    /// Its series has pod labels (or never will: not in a container).
    pub(crate) labelled: bool,
}

/// The control loop's state.
pub struct Agent {
    kernel: Kernel,
    pub(crate) shared: Arc<Shared>,
    /// Which executables are Go, by content fingerprint.
    pub(crate) classifier: Classifier,
    /// Analysed executables by file identity and Go build ID: a hundred
    /// processes of one binary cost one parse, and so do a hundred
    /// short-lived runs of it one after another. Bounded.
    binaries: BoundedMap<(FileId, Option<String>), Arc<GoBinary>>,
    /// Go executables that are not watchable, so they are not parsed again.
    rejected: BoundedMap<(FileId, Option<String>), String>,
    pub(crate) watched: HashMap<u32, Watched>,
    /// `--binary` targets, by file identity.
    binary_targets: Vec<(PathBuf, FileId)>,
    /// Exec/exit notices from the kernel (absent if BTF is unavailable).
    procs: Option<ProcWatch>,
    /// Whole-host mode's state; `None` when targets were named.
    pub(crate) host: Option<Host>,
    pid_label: bool,
    /// Executables with probes but no watched process, since when.
    idle_binaries: HashMap<FileId, Instant>,
    detach_grace: Duration,
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
pub(crate) fn failure_reason(err: &anyhow::Error) -> &'static str {
    match err.downcast_ref::<GoBinError>() {
        Some(GoBinError::NotGo | GoBinError::NotElf(_)) => "not_go",
        Some(GoBinError::TooOld { .. }) => "go_too_old",
        Some(GoBinError::Arch(_)) => "unsupported_arch",
        Some(_) => "unreadable_binary",
        None if err.downcast_ref::<Gone>().is_some() => "exited",
        None => "attach_error",
    }
}

/// The process went away while being attached: a race, not a fault.
#[derive(Debug, thiserror::Error)]
#[error("process exited during attach")]
pub(crate) struct Gone;

impl Agent {
    /// Loads the probes and attaches to every target named on the command
    /// line (checked first by [`validate_targets`]), or, with none named,
    /// to every selected Go process on the host. A named target that cannot
    /// be watched is an error here: the user asked for it by name.
    pub fn start(
        args: &RunArgs,
        binary_targets: Vec<(PathBuf, FileId)>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        let (mut kernel, ring) = Kernel::load(args.ring_buffer_bytes, args.kernel_log)?;
        let procs = match ProcWatch::start(kernel.ebpf_mut()) {
            Ok(p) => Some(p),
            Err(e) if args.whole_host() => return Err(e.context("watching process execs")),
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "no exec/exit notices; relying on the rescan"
                );
                None
            }
        };
        let mut agent = Self {
            kernel,
            shared,
            classifier: Classifier::new(),
            binaries: BoundedMap::new(ANALYSIS_CACHE),
            rejected: BoundedMap::new(VERDICT_CACHE),
            watched: HashMap::new(),
            binary_targets,
            procs,
            host: args.whole_host().then(|| Host::new(args)),
            pid_label: args.pid_label,
            idle_binaries: HashMap::new(),
            detach_grace: args.detach_grace,
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
    pub(crate) fn attach(&mut self, pid: u32) -> anyhow::Result<()> {
        let start_time = procfs::start_time(pid).map_err(|_| Gone)?;
        let fp = discovery::fingerprint(pid).map_err(|_| Gone)?;
        let file = fp.file;
        // Opened through /proc/PID/exe: the file in the process's own root.
        let exe = procfs::exe_path(pid);
        let build_id = match self.classifier.classify(pid, fp).map_err(|_| Gone)? {
            Verdict::Go { build_id } => build_id,
            Verdict::NotGo => return Err(GoBinError::NotGo.into()),
        };
        let key = (file, build_id);
        if let Some(why) = self.rejected.get(&key) {
            anyhow::bail!("{why}");
        }
        let bin = match self.binaries.get(&key) {
            Some(bin) => bin.clone(),
            None => match GoBinary::open(&exe) {
                Ok(bin) => {
                    let bin = Arc::new(bin);
                    self.binaries.insert(key, bin.clone());
                    bin
                }
                Err(e) => {
                    self.rejected.insert(key, e.to_string());
                    return Err(e.into());
                }
            },
        };
        self.kernel.attach_binary(file, &exe, &bin)?;
        self.idle_binaries.remove(&file);
        let bias = if bin.pie {
            procfs::image_start(pid, file)
                .map_err(|_| Gone)?
                .context("executable mapping not found in /proc/PID/maps")?
                .wrapping_sub(bin.image_base)
        } else {
            0
        };
        let exe_name = procfs::exe_name(pid).unwrap_or_default();
        let placement = k8s::cgroup::placement(pid);
        let (key, labelled) = self.series_key(pid, &exe_name, &placement);
        let info = ProcessInfo {
            exe: exe_name,
            go_version: bin.version.to_string(),
        };
        self.shared
            .tracker
            .lock()
            .expect("tracker lock")
            .add_process(pid, info);
        self.shared
            .series
            .lock()
            .expect("series lock")
            .assign(pid, key);
        self.watched.insert(
            pid,
            Watched {
                start_time,
                file,
                placement,
                labelled,
            },
        );
        if let Err(e) = self.kernel.watch(pid, &bin) {
            self.forget(pid);
            return Err(e);
        }
        self.shared.stats.lock().expect("stats lock").attaches += 1;
        let begun = Instant::now();
        // A failed scan still leaves the process watched: its counts are then
        // only those of events since attach.
        let scanned = scan::scan(pid, &bin, bias).unwrap_or_else(|e| {
            tracing::warn!(pid, error = %e, "goroutine table scan failed");
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
            create_site = format_args!("{:#x} ({:?})", bin.create_site.address, bin.create_site.kind),
            exit_site = format_args!("{:#x} ({:?})", bin.exit_site.address, bin.exit_site.kind),
            scan_ms = begun.elapsed().as_secs_f64() * 1e3,
            "attached"
        );
        Ok(())
    }

    /// The series a process reports under, and whether its pod labels are
    /// final (known, or not in a pod at all).
    pub(crate) fn series_key(&self, pid: u32, exe: &str, at: &Placement) -> (SeriesKey, bool) {
        let mut key = SeriesKey {
            exe: exe.to_string(),
            pid: self.pid_label.then_some(pid),
            ..SeriesKey::default()
        };
        let in_pod = at.container_id.is_some() || at.pod_uid.is_some();
        match self.shared.kube.lookup(at) {
            Some(c) => {
                key.namespace.clone_from(&c.pod.namespace);
                key.pod.clone_from(&c.pod.pod);
                key.container = c.container;
                // Found by pod UID only: the container ID may still come.
                let done = !key.container.is_empty();
                (key, done)
            }
            None => (key, !in_pod || !self.shared.kube.enabled()),
        }
    }

    /// Attaches to processes of the `--binary` targets, or in whole-host mode
    /// to every selected Go process, that are not watched yet.
    fn discover(&mut self) {
        if self.host.is_some() {
            self.scan_host();
            return;
        }
        if self.binary_targets.is_empty() {
            return;
        }
        for pid in procfs::all_pids() {
            self.consider_target(pid);
        }
    }

    /// In targeted mode: attach `pid` if it runs a `--binary` target.
    fn consider_target(&mut self, pid: u32) {
        if self.watched.contains_key(&pid) || pid == std::process::id() {
            return;
        }
        let Ok(file) = FileId::of(&procfs::exe_path(pid)) else {
            return;
        };
        if !self.binary_targets.iter().any(|(_, f)| *f == file) {
            return;
        }
        if let Err(e) = self.attach(pid) {
            self.count_failure(pid, &e);
        }
    }

    pub(crate) fn count_failure(&self, pid: u32, e: &anyhow::Error) {
        let reason = failure_reason(e);
        *self
            .shared
            .stats
            .lock()
            .expect("stats lock")
            .attach_failures
            .entry(reason)
            .or_default() += 1;
        if reason == "exited" {
            tracing::debug!(pid, "exited during attach");
        } else {
            tracing::warn!(pid, error = format!("{e:#}"), "attach failed");
        }
    }

    /// Stops watching `pid`: kernel filter, goroutine table, series, and the
    /// binary's probes once no watched process runs it.
    pub(crate) fn forget(&mut self, pid: u32) {
        self.kernel.unwatch(pid);
        let state = self
            .shared
            .tracker
            .lock()
            .expect("tracker lock")
            .remove_process(pid);
        let last = state.map(|p| Counters {
            created: p.created_total,
            exited: p.exited_total,
            lost: p.lost_total,
        });
        self.shared
            .series
            .lock()
            .expect("series lock")
            .release(pid, last.unwrap_or_default());
        let Some(w) = self.watched.remove(&pid) else {
            return;
        };
        tracing::info!(pid, "process exited; forgotten");
        if let Some(host) = self.host.as_mut() {
            host.room_freed();
        }
        let still_used = self.watched.values().any(|o| o.file == w.file);
        if !still_used && !self.binary_targets.iter().any(|(_, f)| *f == w.file) {
            self.idle_binaries.insert(w.file, Instant::now());
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
            }
        }
    }

    /// Forgets processes that exited (or whose PID now names another
    /// process): the safety net behind the exit tracepoint.
    fn reap(&mut self) {
        let gone: Vec<u32> = self
            .watched
            .iter()
            .filter(|(pid, w)| procfs::start_time(**pid).ok() != Some(w.start_time))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.forget(pid);
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
                    if self.host.is_some() {
                        self.consider_host(pid);
                    } else {
                        self.consider_target(pid);
                    }
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
            let mut tracker = self.shared.tracker.lock().expect("tracker lock");
            for (pid, n) in lost {
                tracker.set_lost(pid, n);
            }
        }
        let series = self.shared.series.lock().expect("series lock").len();
        let mut stats = self.shared.stats.lock().expect("stats lock");
        stats.attached_binaries = self.kernel.attached_binaries();
        stats.probe_errors = self.kernel.probe_errors();
        stats.proc_events_lost = self.procs.as_ref().map_or(0, ProcWatch::lost);
        stats.tables.insert("watched", self.watched.len());
        stats.tables.insert("binaries", self.binaries.len());
        stats.tables.insert("rejected", self.rejected.len());
        stats.tables.insert("series", series);
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
            self.detach_idle();
            let now = Instant::now();
            if now >= next_scan {
                self.reap();
                self.discover();
                self.relabel();
                next_scan = Instant::now() + every;
            }
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

/// Analyses kept: each is a few hundred bytes (offsets and probe sites).
const ANALYSIS_CACHE: usize = 256;

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
            if let Some(event) = decode_event(&item) {
                batch.push(event);
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
            // A full batch means more is waiting: go round again at once.
            continue;
        }
        thread::sleep(every);
    }
}
