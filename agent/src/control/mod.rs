//! The running agent: attaches to targets and notices exits.
//!
//! Two threads: the control loop owns the kernel handles (attach, watch,
//! detach, rescan); the drain thread (`drain.rs`) owns the ring buffer.
//! Both feed the shared tracker that the HTTP server reads.

mod host;
mod labels;
mod lifecycle;
pub mod selection;
mod tables;
pub mod target;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};

use crate::lock::lock;
use crate::{
    cli::config::RunArgs,
    control::host::Host,
    control::target::Target,
    discovery::{self, BoundedMap, Classifier, Fingerprint, ProcWatch, Verdict, VERDICT_CACHE},
    gobin::{GoBinError, GoBinary},
    k8s::{self, cgroup::Placement},
    kernel::Kernel,
    proc::procfs::{self, FileId},
    proc::scan,
    state::Shared,
    tracker::ProcessInfo,
};

/// A process being watched.
pub(crate) struct Watched {
    pub(crate) start_time: u64,
    pub(crate) file: FileId,
    /// Added to the binary's link-time addresses in this process (PIE).
    pub(crate) bias: u64,
    /// Its executable, as analysed (shared with its other processes).
    pub(crate) target: Arc<Target>,
    /// Where it sits in the cgroup tree; kept to label it once its pod is known.
    pub(crate) placement: Placement,
    /// Its series has pod labels (or never will: not in a container).
    pub(crate) labelled: bool,
}

/// The control loop's state.
pub struct Agent {
    pub(crate) kernel: Kernel,
    pub(crate) shared: Arc<Shared>,
    /// Which executables are Go, by content fingerprint.
    pub(crate) classifier: Classifier,
    /// Analysed executables by file identity and Go build ID: a hundred
    /// processes of one binary cost one parse, and so do a hundred
    /// short-lived runs of it one after another. Bounded.
    pub(crate) binaries: BoundedMap<(FileId, Option<String>), Arc<GoBinary>>,
    /// Go executables that are not watchable, so they are not parsed again.
    pub(crate) rejected: BoundedMap<(FileId, Option<String>), Rejected>,
    pub(crate) watched: HashMap<u32, Watched>,
    /// `--binary` targets, by file identity.
    pub(crate) binary_targets: Vec<(PathBuf, FileId)>,
    /// Exec/exit notices from the kernel (absent if BTF is unavailable).
    pub(crate) procs: Option<ProcWatch>,
    /// Whole-host mode's state; `None` when targets were named.
    pub(crate) host: Option<Host>,
    pub(crate) pid_label: bool,
    /// `--pid` targets: re-attached when they exec a new executable.
    pub(crate) named_pids: HashSet<u32>,
    /// Executables with probes but no watched process, since when.
    pub(crate) idle_binaries: HashMap<FileId, Instant>,
    pub(crate) detach_grace: Duration,
    /// How long a goroutine must be parked before a verdict, and how often
    /// goroutine tables are scanned to draw them.
    pub(crate) leak_after: Duration,
    pub(crate) scan_every: Duration,
    pub(crate) last_table_scan: Option<Instant>,
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
        Some(e) => e.reason(),
        None if err.downcast_ref::<Gone>().is_some() => "exited",
        None if let Some(known) = err.downcast_ref::<Rejected>() => known.reason,
        None => "attach_error",
    }
}

/// An executable already found unwatchable: the same answer again, without
/// parsing it again or repeating the warning for each of its processes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{why}")]
pub(crate) struct Rejected {
    reason: &'static str,
    why: String,
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
        let (mut kernel, ring) =
            Kernel::load(args.ring_buffer_bytes, args.kernel_log, args.probes)?;
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
            named_pids: args.pids.iter().copied().collect(),
            idle_binaries: HashMap::new(),
            detach_grace: args.detach_grace,
            leak_after: args.leak_after,
            scan_every: args.scan_interval,
            last_table_scan: None,
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
        let result = self.attach_as(pid, start_time, fp);
        if result.is_err() {
            // Probes attached for a process that then failed must not stay.
            self.release_if_unused(fp.file);
            // A process that exited halfway (its /proc entry, or the PID
            // itself, gone) is a race, not a fault worth a warning.
            if procfs::start_time(pid).ok() != Some(start_time) {
                return Err(Gone.into());
            }
        }
        result
    }

    fn attach_as(&mut self, pid: u32, start_time: u64, fp: Fingerprint) -> anyhow::Result<()> {
        let file = fp.file;
        // Opened through /proc/PID/exe: the file in the process's own root.
        let exe = procfs::exe_path(pid);
        let build_id = match self.classifier.classify(pid, fp).map_err(|_| Gone)? {
            Verdict::Go { build_id } => build_id,
            Verdict::NotGo => return Err(GoBinError::NotGo.into()),
        };
        let key = (file, build_id);
        if let Some(known) = self.rejected.get(&key) {
            return Err(known.clone().into());
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
                    // An unreadable file may be a process gone mid-read: only
                    // verdicts about the binary itself are remembered.
                    if !matches!(e, GoBinError::Io { .. }) {
                        let e = anyhow::Error::from(e);
                        let known = Rejected {
                            reason: failure_reason(&e),
                            why: e.to_string(),
                        };
                        self.rejected.insert(key, known);
                        return Err(e);
                    }
                    return Err(e.into());
                }
            },
        };
        if bin.layout_source.is_guess() {
            tracing::warn!(pid, go = %bin.version, layout = ?bin.layout_source,
                "no DWARF and no offsets for this exact Go release: using another release's layout");
            lock(&self.shared.stats)
                .layout_guessed
                .insert((file.dev, file.ino));
        }
        let target = Arc::new(Target::new(bin.clone()));
        self.kernel.attach_binary(file, &exe, &target)?;
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
        {
            let mut tracker = lock(&self.shared.tracker);
            tracker.add_process(pid, info);
            if let Some(p) = tracker.process_mut(pid) {
                p.bias = bias;
                p.wait_reasons.clone_from(&bin.wait_reasons);
            }
        }
        lock(&self.shared.series).assign(pid, key);
        self.watched.insert(
            pid,
            Watched {
                start_time,
                file,
                bias,
                target: target.clone(),
                placement,
                labelled,
            },
        );
        if let Err(e) = self.kernel.watch(pid, &target) {
            self.forget(pid);
            return Err(e);
        }
        // The exit notice only fires for PIDs in the watch map: a process
        // that exited before it got there would never be forgotten.
        if !procfs::alive(pid, start_time) {
            self.forget(pid);
            return Err(Gone.into());
        }
        lock(&self.shared.stats).attaches += 1;
        let begun = Instant::now();
        // A failed scan still leaves the process watched: its counts are then
        // only those of events since attach.
        let scanned = scan::scan(pid, &bin, None, bias, &|_| false).unwrap_or_else(|e| {
            if procfs::running_since(pid).is_some() {
                tracing::warn!(pid, error = %e, "goroutine table scan failed");
            } else {
                tracing::debug!(pid, "exited during attach");
            }
            Vec::new()
        });
        lock(&self.shared.tracker).merge_scan(pid, &scanned);
        tracing::info!(
            pid,
            go = %bin.version,
            goroutines = scanned.len(),
            leak_probes = target.leak.as_ref().map_or(0, crate::gobin::leaklayout::LeakLayout::probe_count),
            create_site = format_args!("{:#x} ({:?})", bin.create_site.address, bin.create_site.kind),
            exit_site = format_args!("{:#x} ({:?})", bin.exit_site.address, bin.exit_site.kind),
            scan_ms = begun.elapsed().as_secs_f64() * 1e3,
            "attached"
        );
        Ok(())
    }

    /// Attaches to processes of the `--binary` targets, or in whole-host mode
    /// to every selected Go process, that are not watched yet.
    pub(crate) fn discover(&mut self) {
        if self.host.is_some() {
            self.scan_host();
            return;
        }
        if self.binary_targets.is_empty() {
            return;
        }
        self.follow_replaced_binaries();
        for pid in procfs::all_pids() {
            self.consider_target(pid);
        }
    }

    /// Follows `--binary` paths whose file was replaced on disk (a deploy
    /// writes a new file, a new inode): new processes run the new file. The
    /// old file's probes go once no watched process runs it.
    pub(crate) fn follow_replaced_binaries(&mut self) {
        let mut retired = Vec::new();
        for (path, id) in &mut self.binary_targets {
            if let Ok(now) = FileId::of(path) {
                if now != *id {
                    tracing::info!(path = %path.display(), "executable replaced on disk; watching the new file");
                    retired.push(std::mem::replace(id, now));
                }
            }
        }
        for old in retired {
            self.release_if_unused(old);
        }
    }

    /// In targeted mode: attach `pid` if it runs a `--binary` target.
    pub(crate) fn consider_target(&mut self, pid: u32) {
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
        // A process that exited while being attached is a race, not a
        // failure: short-lived processes would page through the
        // attach-failure alert otherwise.
        if reason == "exited" {
            tracing::debug!(pid, "exited during attach");
            return;
        }
        *lock(&self.shared.stats)
            .attach_failures
            .entry(reason)
            .or_default() += 1;
        if reason == "exited" {
            tracing::debug!(pid, "exited during attach");
        } else if e.downcast_ref::<Rejected>().is_some() {
            tracing::debug!(pid, error = %e, "not watchable (known executable)");
        } else {
            tracing::warn!(pid, error = format!("{e:#}"), "attach failed");
        }
    }
}

/// Analyses kept: each is a few hundred bytes (offsets and probe sites).
const ANALYSIS_CACHE: usize = 256;
