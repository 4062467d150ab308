//! The running agent: attaches to targets and notices exits.
//!
//! Two threads: the control loop owns the kernel handles (attach, watch,
//! detach, rescan); the drain thread (`drain.rs`) owns the ring buffer.
//! Both feed the shared tracker that the HTTP server reads.

mod attach;
mod budget;
mod deaths;

pub use attach::validate_targets;
use attach::Rejected;
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

use crate::{
    cli::config::RunArgs,
    control::host::Host,
    control::target::Target,
    discovery::{BoundedMap, Classifier, ProcWatch, VERDICT_CACHE},
    gobin::GoBinary,
    k8s::cgroup::Placement,
    kernel::Kernel,
    proc::procfs::{self, FileId},
    state::Shared,
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
    /// No heap walk before this instant: walks of a large heap are spaced
    /// by ten times their own length, so they cost at most a tenth of a core.
    pub(crate) next_walk: std::cell::Cell<Option<Instant>>,
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
    /// Bounds of one heap walk; `None` when walks are off.
    pub(crate) walk_budget: Option<crate::reach::Budget>,
    pub(crate) last_table_scan: Option<Instant>,
    /// Processes forgotten lately, for deaths still in the ring buffer.
    pub(crate) departed: std::collections::VecDeque<deaths::Departed>,
    /// Deaths received for a process not known yet (or any more), since when.
    pub(crate) deaths_waiting: Vec<(gostray_common::DeathEvent, Instant)>,
    /// The overhead budget (`--overhead-budget`).
    pub(crate) budget: budget::Budget,
}

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
        let (mut kernel, mut ring) =
            Kernel::load(args.ring_buffer_bytes, args.kernel_log, args.probes)?;
        let calibrating = Instant::now();
        let price = match kernel.calibrate(&mut ring) {
            Ok(c) => {
                tracing::info!(
                    took_ms = calibrating.elapsed().as_millis(),
                    floor_ns = format!("{:.0}", c.floor_ns),
                    create_ns = format!("{:.0}", c.cost_ns[gostray_common::hit::CREATE as usize]),
                    exit_ns = format!("{:.0}", c.cost_ns[gostray_common::hit::EXIT as usize]),
                    park_ns = format!("{:.0}", c.cost_ns[gostray_common::hit::BLOCK as usize]),
                    close_ns = format!("{:.0}", c.cost_ns[gostray_common::hit::CLOSE as usize]),
                    "probe cost per hit measured on this kernel"
                );
                Some(c)
            }
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not measure the probe cost per hit; the overhead budget is off"
                );
                None
            }
        };
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
            walk_budget: (args.walk_max_bytes > 0).then(|| crate::reach::Budget {
                max_bytes_read: args.walk_max_bytes,
                max_heap_bytes: args.walk_max_heap,
                // One mark bit per object slot: a heap the byte bound allows
                // to be read has at most a slot per 16 bytes read (the
                // smallest scanned size class), so 8 MiB of bits per GiB.
                max_objects: (args.walk_max_bytes / 16).max(1 << 24),
                max_spans: (args.walk_max_bytes / 1024).max(1 << 20),
                ..crate::reach::Budget::default()
            }),
            last_table_scan: None,
            departed: std::collections::VecDeque::new(),
            deaths_waiting: Vec::new(),
            budget: budget::Budget::new(args.overhead_budget.0, price),
        };
        for &pid in &args.pids {
            agent.attach(pid).with_context(|| format!("PID {pid}"))?;
        }
        agent.discover();
        // The budget and the price are in the status before it says ready.
        agent.publish_overhead(Instant::now());
        agent.shared.ready.store(true, Ordering::Relaxed);
        Ok((agent, ring))
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
}

/// Analyses kept: each is a few hundred bytes (offsets and probe sites).
const ANALYSIS_CACHE: usize = 256;
