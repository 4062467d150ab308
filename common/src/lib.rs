//! Types shared by the kernel programs (`ebpf/`) and the agent (`agent/`).
//!
//! Everything here crosses the kernel boundary, so it is `#[repr(C)]`, has
//! explicit padding and uses integers rather than `bool` or `Option`.
#![no_std]

/// Name of the ring buffer that carries [`GoroutineEvent`]s to user space.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the hash map from watched PID (tgid) to its [`ProcConfig`].
pub const MAP_TARGETS: &str = "TARGETS";
/// Name of the map of processes whose death was reported (PID → 1).
pub const MAP_DIED: &str = "DIED";
/// Name of the per-CPU counter of fatal-path probe hits in any process.
pub const MAP_FATAL_HITS: &str = "FATAL_HITS";
/// Name of the per-CPU array of [`ProbeErrorKind`] counters.
pub const MAP_ERRORS: &str = "ERRORS";
/// Probe hits per watched process and program, per CPU (see [`hit`]).
pub const MAP_HITS: &str = "HITS";
/// Name of aya-log-ebpf's global that gates kernel-side log output; the
/// agent sets it at load time (0 = off, 1 = error … 5 = trace).
pub const GLOBAL_LOG_LEVEL: &str = "AYA_LOG_LEVEL";

/// Program fired at the call to `runtime.runqput` inside `runtime.newproc.func1`.
pub const PROG_GOROUTINE_CREATE: &str = "goroutine_create";
/// Program fired early in `runtime.goexit0`.
pub const PROG_GOROUTINE_EXIT: &str = "goroutine_exit";
/// Program fired at the `gopark` calls on the blocking paths of channel and
/// sync operations (never on their fast paths, never on network waits).
pub const PROG_GOROUTINE_BLOCK: &str = "goroutine_block";
/// Program fired early in `runtime.closechan`.
pub const PROG_CHAN_CLOSE: &str = "chan_close";
/// Program fired at the `gopanic` calls in `runtime.chansend`: a send on a
/// closed channel, about to panic.
pub const PROG_SEND_CLOSED: &str = "chan_send_closed";
/// Program fired on the runtime's fatal paths: `runtime.throw`,
/// `runtime.fatal` (a fatal error, with its message) and
/// `runtime.fatalpanic` (an unrecovered panic). Never reached while a
/// program is healthy: each fires at most once, as the process dies.
pub const PROG_FATAL: &str = "fatal_error";
/// Return addresses a [`DeathEvent`] carries, innermost first.
pub const DEATH_PCS: usize = 32;
/// Bytes of the message a [`DeathEvent`] carries (longer ones are cut).
pub const DEATH_MSG: usize = 256;

/// Attach cookie of [`PROG_FATAL`]: what the probed function receives and
/// where it is at the probe.
pub mod death_cookie {
    /// `fatalpanic(msgs *_panic)`; otherwise `throw`/`fatal(s string)`.
    pub const PANIC: u64 = 1;
    /// The site is the function's call to `runtime.systemstack` (no
    /// emulated or simulated instruction before the arguments are
    /// overwritten: amd64 Go 1.19, arm64): the arguments were copied into
    /// the closure the first argument register points at, the first at
    /// the byte offset [`closure_offset`] gives.
    pub const CLOSURE: u64 = 1 << 1;
    const OFFSET_SHIFT: u32 = 8;
    const OFFSET_MASK: u64 = 0xfff;

    /// [`CLOSURE`] with the first argument at `offset` in the closure.
    pub const fn closure_at(offset: u64) -> u64 {
        CLOSURE | ((offset & OFFSET_MASK) << OFFSET_SHIFT)
    }

    /// Where a [`CLOSURE`] site's first argument is in the closure.
    pub const fn closure_offset(cookie: u64) -> u64 {
        (cookie >> OFFSET_SHIFT) & OFFSET_MASK
    }
}

/// Where a [`DeathEvent`]'s message came from.
pub mod death_source {
    /// `throw` or `fatal`: the runtime's fatal error string.
    pub const THROW: u32 = 1;
    /// `fatalpanic`: the unrecovered panic's value (a string, or an
    /// error's or Stringer's text, which the runtime converts before).
    pub const PANIC: u32 = 2;
}

/// Bound on remembered first closers (the kernel's `CLOSERS` LRU map), across processes.
pub const MAX_CLOSERS: u32 = 16384;
/// Bound on goroutines whose last block event time is remembered.
pub const MAX_BLOCK_SEEN: u32 = 65536;
/// A goroutine's block events closer together than this are not sent:
/// a goroutine parking thousands of times a second (a busy pipeline) costs
/// one event per interval, and "blocked since" is at most this much early.
pub const BLOCK_EVENT_GAP_NS: u64 = 100_000_000;

/// Return addresses a [`ChanEvent`] carries, innermost first.
pub const EVENT_PCS: usize = 4;

/// Attach cookie of [`PROG_GOROUTINE_BLOCK`]: which call form the site is
/// and whether its lock is `hchan.lock`. `gopark(unlockf, lock, reason, …)`
/// has the lock in RBX and the reason in RCX; `goparkunlock(lock, reason, …)`
/// (when not inlined) has them in RAX and RBX.
pub mod block_cookie {
    pub const UNLOCK_FORM: u64 = 1;
    pub const CHAN_LOCK: u64 = 1 << 1;

    pub const fn encode(unlock_form: bool, chan_lock: bool) -> u64 {
        (if unlock_form { UNLOCK_FORM } else { 0 }) | if chan_lock { CHAN_LOCK } else { 0 }
    }
}

/// Name of the ring buffer that carries [`ProcEvent`]s (exec, exit) to user space.
pub const MAP_PROC_EVENTS: &str = "PROC_EVENTS";
/// Name of the per-CPU array counting [`ProcEvent`]s dropped because
/// [`MAP_PROC_EVENTS`] was full (the periodic `/proc` rescan still finds them).
pub const MAP_PROC_LOST: &str = "PROC_LOST";

/// BTF tracepoint program fired when any process execs.
pub const PROG_PROCESS_EXEC: &str = "process_exec";
/// BTF tracepoint program fired when a watched process's main thread exits.
pub const PROG_PROCESS_EXIT: &str = "process_exit";
/// The kernel tracepoint [`PROG_PROCESS_EXEC`] attaches to.
pub const TP_PROCESS_EXEC: &str = "sched_process_exec";
/// The kernel tracepoint [`PROG_PROCESS_EXIT`] attaches to.
pub const TP_PROCESS_EXIT: &str = "sched_process_exit";

/// Upper bound on processes the kernel side tracks at once.
pub const MAX_TARGETS: u32 = 4096;

/// Marks an absent struct field in [`ProcConfig`] (e.g. `g.parentGoid` before Go 1.21).
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// What a [`GoroutineEvent`] reports.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A goroutine was created and is about to be queued.
    Create = 1,
    /// A goroutine finished and its g is being freed.
    Exit = 2,
    /// A goroutine parks on a channel or sync primitive ([`ChanEvent`]).
    Block = 3,
    /// A channel is closed a second time, about to panic ([`ChanEvent`]).
    DoubleClose = 4,
    /// `close(nil)`, about to panic ([`ChanEvent`]).
    CloseNil = 5,
    /// A send on a closed channel, about to panic ([`ChanEvent`]).
    SendClosed = 6,
    /// The process is dying of a fatal error or an unrecovered panic ([`DeathEvent`]).
    Death = 7,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Create),
            2 => Some(Self::Exit),
            3 => Some(Self::Block),
            4 => Some(Self::DoubleClose),
            5 => Some(Self::CloseNil),
            6 => Some(Self::SendClosed),
            7 => Some(Self::Death),
            _ => None,
        }
    }
}

/// One goroutine lifecycle event, as written to the ring buffer.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GoroutineEvent {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Process (thread group) ID.
    pub pid: u32,
    /// `g.goid`.
    pub goid: u64,
    /// `g.parentGoid` (Go ≥ 1.21), else 0. Create events only.
    pub parent_goid: u64,
    /// `g.gopc`: PC of the `go` statement. Create events only.
    pub gopc: u64,
    /// `g.startpc`: PC of the goroutine's function. Create events only.
    pub startpc: u64,
    /// `bpf_ktime_get_ns()` at the probe.
    pub ktime_ns: u64,
}

/// Size of [`GoroutineEvent`] on the wire.
pub const EVENT_SIZE: usize = core::mem::size_of::<GoroutineEvent>();

/// A channel or sync event: a block, or a misuse about to panic.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ChanEvent {
    /// An [`EventKind`] value (`Block`, `DoubleClose`, `CloseNil`, `SendClosed`).
    pub kind: u32,
    pub pid: u32,
    /// The goroutine doing it.
    pub goid: u64,
    /// The `hchan` address, or 0 (select, sync primitives, nil channel).
    pub hchan: u64,
    /// The runtime's waitReason value (Block only; its meaning is per binary).
    pub reason: u32,
    /// 1 if `hchan` fields below were read.
    pub has_chan: u32,
    /// `hchan.qcount` and `hchan.dataqsiz` at the event.
    pub qcount: u64,
    pub dataqsiz: u64,
    /// DoubleClose: the first closer's goid and call site (0 if forgotten).
    pub other_goid: u64,
    pub other_pc: u64,
    /// Return addresses from the frame-pointer chain, innermost first.
    pub pcs: [u64; EVENT_PCS],
    pub ktime_ns: u64,
}

/// Size of [`ChanEvent`] on the wire.
pub const CHAN_EVENT_SIZE: usize = core::mem::size_of::<ChanEvent>();

/// A process dying: a fatal error or an unrecovered panic, caught on the
/// runtime's fatal path before anything is printed. At most one per process
/// (the first probe hit claims the PID in [`MAP_DIED`]; later ones send nothing).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DeathEvent {
    /// [`EventKind::Death`].
    pub kind: u32,
    pub pid: u32,
    /// The goroutine that died (the one on the M when it ran on g0: a
    /// stack overflow is thrown from the system stack), or 0.
    pub goid: u64,
    /// A [`death_source`] value.
    pub source: u32,
    /// Bytes of `msg` that hold the message.
    pub msg_len: u32,
    /// The message's full length (it may be longer than `msg`).
    pub full_len: u64,
    /// Panics: the address of the value's type descriptor and its kind
    /// (`abi.Kind`: 24 is a string); 0 for a throw.
    pub value_type: u64,
    pub value_kind: u32,
    /// Return addresses in `pcs`.
    pub npcs: u32,
    /// The dying goroutine's stack, innermost first (frame pointers).
    pub pcs: [u64; DEATH_PCS],
    pub ktime_ns: u64,
    pub msg: [u8; DEATH_MSG],
}

/// Size of [`DeathEvent`] on the wire.
pub const DEATH_EVENT_SIZE: usize = core::mem::size_of::<DeathEvent>();

/// Key of the kernel's `CLOSERS` map.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct CloserKey {
    pub pid: u32,
    pub _pad: u32,
    pub hchan: u64,
}

/// Key of the kernel's `BLOCK_SEEN` map: a goroutine by the address of its `runtime.g`,
/// which the probe has in a register, so a throttled park reads nothing. A
/// g reused by a new goroutine within the gap loses that goroutine's first
/// block event; the scans still see it parked.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct GKey {
    pub pid: u32,
    pub _pad: u32,
    pub g: u64,
}

/// Value of the kernel's `CLOSERS` map: who closed the channel first.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Closer {
    pub goid: u64,
    pub pc: u64,
}

/// Per-process configuration the probes need: where fields live in this
/// binary's `runtime.g`, plus counters the kernel bumps for this process.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcConfig {
    /// Offset of `runtime.g.goid`.
    pub g_goid: u32,
    /// Offset of `runtime.g.parentGoid`, or [`OFFSET_ABSENT`].
    pub g_parent_goid: u32,
    /// Offset of `runtime.g.gopc`.
    pub g_gopc: u32,
    /// Offset of `runtime.g.startpc`.
    pub g_startpc: u32,
    /// Offsets of `runtime.g.m` and `runtime.m.curg`, or [`OFFSET_ABSENT`]:
    /// before Go 1.21 g has no parentGoid, but the creating goroutine is
    /// g0.m.curg while newproc runs on the system stack.
    pub g_m: u32,
    pub m_curg: u32,
    /// Offsets in `runtime.hchan`.
    pub hchan_qcount: u32,
    pub hchan_dataqsiz: u32,
    pub hchan_closed: u32,
    pub hchan_lock: u32,
    /// Offsets of `runtime.g.sched.pc` and `.bp`, to find the stack of the
    /// goroutine a fatal error on the system stack was about.
    pub g_sched_pc: u32,
    pub g_sched_bp: u32,
    /// Offset of `arg` in `runtime._panic` (8 before Go 1.26, then 0).
    pub panic_arg: u32,
    /// This process's row of [`MAP_HITS`], given by the agent.
    pub slot: u32,
    /// Runtime address of `runtime.allgs` (a `[]*g` whose first entry is
    /// goroutine 1), or 0: the goroutine a fatal error on the system stack
    /// with no user goroutine on the M (a deadlock found by the scheduler)
    /// is reported about.
    pub allgs: u64,
    /// Events this process could not submit because the ring buffer was full.
    /// Incremented atomically by the probes; read by the agent.
    pub lost: u64,
}

/// What a [`ProcEvent`] reports.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProcEventKind {
    /// A process called execve (any process: the agent decides whether to watch it).
    Exec = 1,
    /// The main thread of a watched process exited.
    Exit = 2,
}

impl ProcEventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Exec),
            2 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// One process lifecycle event, as written to [`MAP_PROC_EVENTS`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    /// A [`ProcEventKind`] value.
    pub kind: u32,
    /// Process (thread group) ID in the initial PID namespace.
    pub pid: u32,
}

/// Size of [`ProcEvent`] on the wire.
pub const PROC_EVENT_SIZE: usize = core::mem::size_of::<ProcEvent>();

/// Which program a probe hit ran, as a column of a [`MAP_HITS`] row: the
/// agent prices each at its own calibrated cost.
pub mod hit {
    pub const CREATE: u32 = 0;
    pub const EXIT: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const CLOSE: u32 = 3;
    pub const SEND_CLOSED: u32 = 4;
    pub const FATAL: u32 = 5;
    /// Columns of a row (a power of two, so a masked index is in bounds).
    pub const COLUMNS: usize = 8;
}

/// Why a probe failed; indexes the [`MAP_ERRORS`] per-CPU array.
#[repr(u32)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ProbeErrorKind {
    /// `bpf_probe_read_user` failed on a g field.
    ReadUser = 0,
    /// The ring buffer had no room (also counted per process in [`ProcConfig::lost`]).
    RingFull = 1,
}

/// Number of [`ProbeErrorKind`] slots.
pub const PROBE_ERROR_KINDS: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both are `#[repr(C)]`, contain only integers and have no
    // implicit padding (checked by the size asserts below).
    unsafe impl aya::Pod for super::GoroutineEvent {}
    unsafe impl aya::Pod for super::ProcConfig {}
    unsafe impl aya::Pod for super::ChanEvent {}
    unsafe impl aya::Pod for super::CloserKey {}
    unsafe impl aya::Pod for super::Closer {}
    unsafe impl aya::Pod for super::ProcEvent {}
    unsafe impl aya::Pod for super::GKey {}
    unsafe impl aya::Pod for super::DeathEvent {}
}

const _: () = assert!(core::mem::size_of::<GoroutineEvent>() == 48);
const _: () = assert!(core::mem::size_of::<ProcConfig>() == 72);
const _: () = assert!(core::mem::size_of::<DeathEvent>() == 48 + 8 * DEATH_PCS + 8 + DEATH_MSG);
const _: () = assert!(core::mem::size_of::<ChanEvent>() == 104);
const _: () = assert!(core::mem::size_of::<ProcEvent>() == 8);
const _: () = assert!(core::mem::size_of::<CloserKey>() == 16);
const _: () = assert!(core::mem::size_of::<GKey>() == 16);
const _: () = assert!(core::mem::size_of::<Closer>() == 16);
