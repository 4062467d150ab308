//! Every map the probes use.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use gostray_common::{
    hit, Closer, CloserKey, GKey, ProcConfig, MAX_BLOCK_SEEN, MAX_CLOSERS, MAX_TARGETS,
    PROBE_ERROR_KINDS,
};

/// Goroutine events for the agent. Sized by the agent at load time
/// (`--ring-buffer-bytes`); this is only the default.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Watched processes (tgid) and the `runtime.g` offsets of their binary.
/// A probe in a process that is not here returns at once: uprobes attach to
/// an inode, so unwatched processes running the same binary also hit them.
#[map(name = "TARGETS")]
pub static TARGETS: HashMap<u32, ProcConfig> = HashMap::with_max_entries(MAX_TARGETS, 0);

/// Probe failures by `ProbeErrorKind`, per CPU; exported by the agent.
#[map(name = "ERRORS")]
pub static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PROBE_ERROR_KINDS, 0);

/// Probe hits per watched process (its `ProcConfig::slot`) and program
/// (`hit::*`), per CPU: the agent prices them to keep each executable
/// within its overhead budget. An array: the lookup is a bounds check.
#[map(name = "HITS")]
pub static HITS: PerCpuArray<[u64; hit::COLUMNS]> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);

/// When each goroutine last sent a block event, to send at most one per
/// `BLOCK_EVENT_GAP_NS`. LRU: a full map forgets the oldest goroutines.
#[map(name = "BLOCK_SEEN")]
pub static BLOCK_SEEN: LruHashMap<GKey, u64> = LruHashMap::with_max_entries(MAX_BLOCK_SEEN, 0);

/// The first closer of each recently closed channel, so that a second close
/// can name both sites. LRU: old channels are forgotten, never a full map.
#[map(name = "CLOSERS")]
pub static CLOSERS: LruHashMap<CloserKey, Closer> = LruHashMap::with_max_entries(MAX_CLOSERS, 0);

/// Every run of the fatal-path program, in any process, watched or not,
/// per CPU (slot 0): the benchmark checks that a healthy workload never
/// reaches the runtime's fatal paths.
#[map(name = "FATAL_HITS")]
pub static FATAL_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Processes whose death was reported: the first fatal-path hit inserts
/// its PID with `BPF_NOEXIST`, which fails for any later one, on any CPU
/// (two goroutines can throw "concurrent map writes" at once). LRU, and
/// cleared by the agent when it starts watching a PID.
#[map(name = "DIED")]
pub static DIED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_TARGETS, 0);

/// Process exec and exit notices for the agent's discovery. Small: execs are
/// rare next to goroutine events, and a missed one is found by the rescan.
#[map(name = "PROC_EVENTS")]
pub static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Process notices dropped because `PROC_EVENTS` was full, per CPU (slot 0).
#[map(name = "PROC_LOST")]
pub static PROC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Words in a [`G_SPAN`] slot. The slot is larger than the read, a power of two, so that a
/// masked index is in bounds for the verifier whatever LLVM makes of it.
pub const G_SPAN_WORDS: usize = 32;

/// Per-CPU scratch for one read of a span of `runtime.g` (goid up to
/// startpc): one `bpf_probe_read_user` instead of one per field, each of
/// which costs about 85 ns here. A map value, not the stack, so that a
/// field at a per-binary offset can be indexed on every kernel.
#[map(name = "G_SPAN")]
pub static G_SPAN: PerCpuArray<[u64; G_SPAN_WORDS]> = PerCpuArray::with_max_entries(1, 0);
