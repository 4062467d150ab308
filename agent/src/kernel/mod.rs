//! The thin layer that touches the kernel: loading the probes, attaching them
//! per binary, and the map of watched processes.

pub mod calibrate;
pub mod drain;
pub mod privileges;

use std::{collections::HashMap, path::Path, sync::mpsc};

use anyhow::{bail, Context};
use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
        UProbe,
    },
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use gostray_common::{
    hit, ProbeErrorKind, ProcConfig, GLOBAL_LOG_LEVEL, MAP_DIED, MAP_ERRORS, MAP_EVENTS,
    MAP_FATAL_HITS, MAP_HITS, MAP_TARGETS, OFFSET_ABSENT,
};

use crate::{
    cli::config::{KernelLog, ProbeGroups},
    control::target::Target,
    gobin::sites::ProbeGroup,
    proc::procfs::FileId,
};

/// The kernel object, embedded at build time (see `build.rs`).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gostray.bpf.o"));

/// One probe to attach: its group, program, file offset, attach cookie.
type Placement = (ProbeGroup, &'static str, u64, Option<u64>);

/// Where each program of the groups `wanted` accepts goes in one binary:
/// the probe registry's sites found in it.
fn placements(target: &Target, wanted: impl Fn(ProbeGroup) -> bool) -> Vec<Placement> {
    target
        .bin
        .sites
        .iter()
        .filter(|s| s.attach && wanted(s.spec.group))
        .map(|s| (s.spec.group, s.spec.program, s.site.file_offset, s.cookie))
        .collect()
}

/// One attached probe.
type Link = (ProbeGroup, &'static str, UProbeLinkId);

/// Probe hits of one watched process by program (`hit::*` columns).
pub type Hits = [u64; hit::COLUMNS];

/// Loaded probes and their attachments. Dropping it detaches everything.
pub struct Kernel {
    ebpf: Ebpf,
    targets: BpfHashMap<MapData, u32, ProcConfig>,
    /// PIDs whose death the kernel reported (see `ebpf/src/maps.rs`).
    died: BpfHashMap<MapData, u32, u64>,
    errors: PerCpuArray<MapData, u64>,
    fatal_hits: PerCpuArray<MapData, u64>,
    hits: PerCpuArray<MapData, Hits>,
    /// The `HITS` row of each watched PID, and the rows free.
    slots: HashMap<u32, u32>,
    free_slots: Vec<u32>,
    /// Attachments per executable file: one set shared by all its processes.
    links: HashMap<FileId, Vec<Link>>,
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    /// Links to drop (detach) off the control thread; see [`Self::detach_links`].
    detacher: mpsc::Sender<Vec<UProbeLink>>,
    /// The probe groups attached to each executable (`--probes`).
    groups: ProbeGroups,
}

/// Starts the thread that drops detached links. It ends when the sender
/// (the `Kernel`) is dropped, after dropping whatever was queued.
fn spawn_detacher() -> anyhow::Result<mpsc::Sender<Vec<UProbeLink>>> {
    let (tx, rx) = mpsc::channel::<Vec<UProbeLink>>();
    std::thread::Builder::new()
        .name("gostray-detach".into())
        .spawn(move || {
            for links in rx {
                drop_in_parallel(links);
            }
        })
        .context("starting the detach thread")?;
    Ok(tx)
}

/// Closes uprobe links side by side: each close waits for an RCU grace
/// period, and closes that overlap share one, so N links cost about one
/// wait instead of N (a binary has ~15 probe sites).
fn drop_in_parallel(links: Vec<UProbeLink>) {
    const THREADS: usize = 16;
    if links.len() <= 1 {
        return;
    }
    let per = links.len().div_ceil(THREADS);
    let mut links = links;
    std::thread::scope(|s| {
        while !links.is_empty() {
            let chunk: Vec<UProbeLink> = links.drain(..per.min(links.len())).collect();
            s.spawn(move || drop(chunk));
        }
    });
}

impl Kernel {
    /// Loads and verifies the programs. Returns the event ring buffer
    /// separately so that a drain thread can own it.
    pub fn load(
        ring_bytes: u32,
        log_level: KernelLog,
        groups: ProbeGroups,
    ) -> anyhow::Result<(Self, RingBuf<MapData>)> {
        if OBJECT.is_empty() {
            bail!(
                "this gostray was built without its eBPF object; build it with `cargo xtask build`"
            );
        }
        let level = log_level as u8;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .override_global(GLOBAL_LOG_LEVEL, &level, true)
            .load(OBJECT)
            .context("loading the eBPF object (needs root, or CAP_BPF and CAP_PERFMON)")?;
        // Kernel log records reach `tracing` through the `log` bridge.
        let logger = match log_level {
            KernelLog::Off => None,
            _ => Some(EbpfLogger::init(&mut ebpf).context("starting the kernel log reader")?),
        };
        for name in crate::gobin::sites::programs() {
            let prog: &mut UProbe = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifying program {name}"))?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        let ring = RingBuf::try_from(take(&mut ebpf, MAP_EVENTS)?)?;
        let targets = BpfHashMap::try_from(take(&mut ebpf, MAP_TARGETS)?)?;
        let errors = PerCpuArray::try_from(take(&mut ebpf, MAP_ERRORS)?)?;
        let died = BpfHashMap::try_from(take(&mut ebpf, MAP_DIED)?)?;
        let fatal_hits = PerCpuArray::try_from(take(&mut ebpf, MAP_FATAL_HITS)?)?;
        let hits = PerCpuArray::try_from(take(&mut ebpf, MAP_HITS)?)?;
        Ok((
            Self {
                ebpf,
                targets,
                died,
                errors,
                fatal_hits,
                hits,
                slots: HashMap::new(),
                free_slots: (0..gostray_common::MAX_TARGETS).rev().collect(),
                links: HashMap::new(),
                detacher: spawn_detacher()?,
                logger,
                groups,
            },
            ring,
        ))
    }

    /// Attaches every probe to the executable `id`, reachable at `path`
    /// (`/proc/PID/exe`, so a file inside a container resolves in the
    /// process's own mount namespace). Idempotent per file.
    pub fn attach_binary(
        &mut self,
        id: FileId,
        path: &Path,
        target: &Target,
    ) -> anyhow::Result<()> {
        if self.links.contains_key(&id) {
            return Ok(());
        }
        let groups = self.groups;
        let links = self.attach_placements(path, placements(target, |g| groups.has(g)))?;
        self.links.insert(id, links);
        Ok(())
    }

    /// Attaches `group`'s probes to an executable that has the others
    /// (the overhead budget re-arming it). A no-op when it has it already,
    /// when `--probes` left it out, or when the file has no probes at all.
    pub fn attach_group(
        &mut self,
        id: FileId,
        path: &Path,
        target: &Target,
        group: ProbeGroup,
    ) -> anyhow::Result<()> {
        let has = |links: &Vec<Link>| links.iter().any(|(g, _, _)| *g == group);
        if !self.groups.has(group) || self.links.get(&id).is_none_or(has) {
            return Ok(());
        }
        let new = self.attach_placements(path, placements(target, |g| g == group))?;
        if let Some(links) = self.links.get_mut(&id) {
            links.extend(new);
        }
        Ok(())
    }

    /// Detaches `group`'s probes from one executable, for all its processes.
    pub fn detach_group(&mut self, id: FileId, group: ProbeGroup) {
        let Some(links) = self.links.get_mut(&id) else {
            return;
        };
        let (gone, kept) = std::mem::take(links)
            .into_iter()
            .partition(|(g, _, _)| *g == group);
        *links = kept;
        self.detach_links(gone);
    }

    /// Attaches each placement; on a failure, detaches the ones made.
    fn attach_placements(
        &mut self,
        path: &Path,
        wanted: Vec<Placement>,
    ) -> anyhow::Result<Vec<Link>> {
        let mut links = Vec::with_capacity(wanted.len());
        for (group, name, offset, cookie) in wanted {
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .context("program vanished")?
                .try_into()?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie,
            };
            match prog.attach(point, path, UProbeScope::AllProcesses) {
                Ok(link) => links.push((group, name, link)),
                Err(e) => {
                    self.detach_links(links);
                    return Err(anyhow::Error::new(e)
                        .context(format!("attaching {name} to {}", path.display())));
                }
            }
        }
        Ok(links)
    }

    /// Detaches the probes of an executable no watched process runs any more.
    pub fn detach_binary(&mut self, id: FileId) {
        if let Some(links) = self.links.remove(&id) {
            self.detach_links(links);
        }
    }

    /// Hands the links to the detach thread: closing a uprobe waits for an
    /// RCU grace period (tens of milliseconds here), which must not hold up
    /// attaching the next process.
    fn detach_links(&mut self, links: Vec<Link>) {
        let mut owned = Vec::with_capacity(links.len());
        for (_, name, link) in links {
            let prog: Option<&mut UProbe> =
                self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
            if let Some(prog) = prog {
                match prog.take_link(link) {
                    Ok(link) => owned.push(link),
                    Err(e) => tracing::warn!(program = name, error = %e, "detach failed"),
                }
            }
        }
        if let Err(unsent) = self.detacher.send(owned) {
            // The detach thread is gone: detach here instead.
            drop(unsent.0);
        }
    }

    /// The loaded object, for programs managed elsewhere (discovery's
    /// tracepoints); their links live as long as the object.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Forwards pending kernel log records.
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    /// Number of executables with probes attached.
    pub fn attached_binaries(&self) -> usize {
        self.links.len()
    }

    /// Starts reporting events from `pid`.
    pub fn watch(&mut self, pid: u32, target: &Target, bias: u64) -> anyhow::Result<()> {
        // A PID reused after a death: this process's own death must be sent.
        let _ = self.died.remove(&pid);
        let o = target.bin.offsets;
        let chan = target.leak.as_ref().map(|l| l.chan);
        let g = target.leak.as_ref().map(|l| l.g);
        let cfg = ProcConfig {
            g_goid: o.goid,
            g_parent_goid: o.parent_goid.unwrap_or(OFFSET_ABSENT),
            g_gopc: o.gopc,
            g_startpc: o.startpc,
            g_m: g.map_or(OFFSET_ABSENT, |g| g.m),
            m_curg: g.map_or(OFFSET_ABSENT, |g| g.m_curg),
            hchan_qcount: chan.map_or(0, |c| c.qcount),
            hchan_dataqsiz: chan.map_or(0, |c| c.dataqsiz),
            hchan_closed: chan.map_or(0, |c| c.closed),
            hchan_lock: chan.map_or(0, |c| c.lock),
            g_sched_pc: g.map_or(OFFSET_ABSENT, |g| g.sched_pc),
            g_sched_bp: g.map_or(OFFSET_ABSENT, |g| g.sched_bp),
            panic_arg: panic_arg_offset(target.bin.version),
            slot: self.slot_for(pid)?,
            allgs: target.bin.allgs.wrapping_add(bias),
            lost: 0,
        };
        self.targets.insert(pid, cfg, 0).with_context(|| {
            format!(
                "adding PID {pid} to the watch map (full at {} processes?)",
                gostray_common::MAX_TARGETS
            )
        })
    }

    /// Stops reporting events from `pid`.
    pub fn unwatch(&mut self, pid: u32) {
        // A PID that is already gone from the map is fine.
        let _ = self.targets.remove(&pid);
        if let Some(slot) = self.slots.remove(&pid) {
            self.free_slots.push(slot);
        }
    }

    /// The `HITS` row for `pid`, zeroed when it is newly taken.
    fn slot_for(&mut self, pid: u32) -> anyhow::Result<u32> {
        if let Some(&slot) = self.slots.get(&pid) {
            return Ok(slot);
        }
        let slot = self
            .free_slots
            .pop()
            .context("no free probe-hit row (the watch map is full)")?;
        let zero = PerCpuValues::try_from(vec![[0u64; hit::COLUMNS]; nr_cpus()?])?;
        self.hits
            .set(slot, zero, 0)
            .context("clearing a probe-hit row")?;
        self.slots.insert(pid, slot);
        Ok(slot)
    }

    /// Zeroes the probe failure counts.
    fn clear_probe_errors(&mut self) -> anyhow::Result<()> {
        for kind in [ProbeErrorKind::ReadUser, ProbeErrorKind::RingFull] {
            let zero = PerCpuValues::try_from(vec![0u64; nr_cpus()?])?;
            self.errors
                .set(kind as u32, zero, 0)
                .context("clearing the probe failure counts")?;
        }
        Ok(())
    }

    /// Probe hits in `pid` since it was watched, by program, summed over CPUs.
    pub fn hits(&self, pid: u32) -> Option<Hits> {
        let slot = *self.slots.get(&pid)?;
        let per_cpu = self.hits.get(&slot, 0).ok()?;
        let mut sum = [0u64; hit::COLUMNS];
        for row in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(row) {
                *s += v;
            }
        }
        Some(sum)
    }

    /// Events `pid` lost to a full ring buffer, as counted by the probes.
    pub fn lost(&self, pid: u32) -> u64 {
        self.targets.get(&pid, 0).map_or(0, |c| c.lost)
    }

    /// Fatal-path probe hits in any process, summed over CPUs.
    pub fn fatal_hits(&self) -> u64 {
        self.fatal_hits
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum::<u64>())
    }

    /// Probe failures summed over CPUs, indexed by [`ProbeErrorKind`].
    pub fn probe_errors(&self) -> [u64; 2] {
        let sum = |kind: ProbeErrorKind| {
            self.errors
                .get(&(kind as u32), 0)
                .map_or(0, |per_cpu| per_cpu.iter().sum::<u64>())
        };
        [sum(ProbeErrorKind::ReadUser), sum(ProbeErrorKind::RingFull)]
    }
}

/// CPUs the kernel keeps per-CPU map values for.
fn nr_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting possible CPUs")
}

/// Offset of `arg` in `runtime._panic`: Go 1.26 removed the `argp` word
/// before it (runtime2.go, checked on 1.19 and 1.21–1.27).
fn panic_arg_offset(v: crate::gobin::GoVersion) -> u32 {
    if (v.major, v.minor) >= (1, 26) {
        0
    } else {
        8
    }
}

impl Drop for Kernel {
    /// Detaches every probe at once rather than one grace period per link
    /// as the programs' own drop would: SIGTERM must be quick.
    fn drop(&mut self) {
        let files: Vec<FileId> = self.links.keys().copied().collect();
        let mut owned = Vec::new();
        for file in files {
            for (_, name, link) in self.links.remove(&file).unwrap_or_default() {
                let prog: Option<&mut UProbe> =
                    self.ebpf.program_mut(name).and_then(|p| p.try_into().ok());
                if let Some(link) = prog.and_then(|p| p.take_link(link).ok()) {
                    owned.push(link);
                }
            }
        }
        drop_in_parallel(owned);
    }
}
