//! Finding Go processes: exec and exit notices from BTF tracepoints, a
//! cheap "is it Go?" check per executable, and bounded caches of the answers.
//! Which of them to watch is `selection`'s business; attaching is `agent`'s.

mod cache;
pub mod gocheck;

use std::{fs::File, io, os::unix::fs::MetadataExt};

use anyhow::Context;
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
    Btf, Ebpf,
};
pub use cache::BoundedMap;
pub use gocheck::Verdict;
use gostray_common::{
    ProcEvent, ProcEventKind, MAP_PROC_EVENTS, MAP_PROC_LOST, PROC_EVENT_SIZE, PROG_PROCESS_EXEC,
    PROG_PROCESS_EXIT, TP_PROCESS_EXEC, TP_PROCESS_EXIT,
};

use crate::proc::procfs::{self, FileId};

/// Executables whose verdict is remembered. Each entry is a few dozen bytes.
pub const VERDICT_CACHE: usize = 4096;
/// Notices handled per poll, so one burst cannot stall the control loop.
const MAX_BATCH: usize = 4096;

/// The exec/exit tracepoints and the buffer they fill.
pub struct ProcWatch {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl ProcWatch {
    /// Loads and attaches both tracepoints. Their links live in `ebpf` and
    /// go when it is dropped.
    pub fn start(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let btf = Btf::from_sys_fs().context("reading kernel BTF (/sys/kernel/btf/vmlinux)")?;
        for (prog, tp) in [
            (PROG_PROCESS_EXEC, TP_PROCESS_EXEC),
            (PROG_PROCESS_EXIT, TP_PROCESS_EXIT),
        ] {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .with_context(|| format!("program {prog} missing from the eBPF object"))?
                .try_into()?;
            p.load(tp, &btf)
                .with_context(|| format!("verifying {prog}"))?;
            p.attach()
                .with_context(|| format!("attaching {prog} to {tp}"))?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        Ok(Self {
            ring: RingBuf::try_from(take(ebpf, MAP_PROC_EVENTS)?)?,
            lost: PerCpuArray::try_from(take(ebpf, MAP_PROC_LOST)?)?,
        })
    }

    /// Sleeps until a notice is pending or `timeout` passes.
    pub fn wait(&self, timeout: std::time::Duration) {
        use std::os::fd::AsRawFd;
        let mut fds = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call. An error
        // (EINTR) just ends the wait early.
        unsafe { libc::poll(&raw mut fds, 1, ms) };
    }

    /// Pending notices, oldest first.
    pub fn poll(&mut self, out: &mut Vec<(ProcEventKind, u32)>) {
        while out.len() < MAX_BATCH {
            let Some(item) = self.ring.next() else { break };
            if item.len() < PROC_EVENT_SIZE {
                continue;
            }
            // SAFETY: length checked; ProcEvent is two u32s, any bits are valid.
            let e = unsafe { item.as_ptr().cast::<ProcEvent>().read_unaligned() };
            if let Some(kind) = ProcEventKind::from_u32(e.kind) {
                out.push((kind, e.pid));
            }
        }
    }

    /// Notices the kernel dropped because the buffer was full.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum::<u64>())
    }
}

/// What identifies an executable's content without reading it: the inode,
/// and its size and change time, so a file rewritten in place is a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    pub file: FileId,
    size: u64,
    ctime_ns: i64,
}

/// `stat` through `/proc/PID/exe`: the file in the process's own mount
/// namespace, even if deleted. Fails for kernel threads and vanished PIDs.
pub fn fingerprint(pid: u32) -> io::Result<Fingerprint> {
    let m = std::fs::metadata(procfs::exe_path(pid))?;
    Ok(Fingerprint {
        file: FileId {
            dev: m.dev(),
            ino: m.ino(),
        },
        size: m.size(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    })
}

/// Remembers which executables are Go, bounded.
#[derive(Debug)]
pub struct Classifier {
    verdicts: BoundedMap<Fingerprint, Verdict>,
    /// Executables examined (cache misses), for the metrics.
    pub examined: u64,
}

impl Classifier {
    pub fn new() -> Self {
        Self {
            verdicts: BoundedMap::new(VERDICT_CACHE),
            examined: 0,
        }
    }

    /// Whether `pid`'s executable (with fingerprint `fp`) is Go.
    pub fn classify(&mut self, pid: u32, fp: Fingerprint) -> io::Result<Verdict> {
        if let Some(v) = self.verdicts.get(&fp) {
            return Ok(v.clone());
        }
        let verdict = gocheck::check(&File::open(procfs::exe_path(pid))?)?;
        self.examined += 1;
        self.verdicts.insert(fp, verdict.clone());
        Ok(verdict)
    }

    pub fn len(&self) -> usize {
        self.verdicts.len()
    }
}
