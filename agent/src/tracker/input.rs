//! What the tracker is fed by the memory scans: plain records of goroutines
//! and channels, defined here so the tracker depends on no reader.

/// Goroutine statuses (runtime2.go; stable since Go 1.0): `_Gidle`,
/// `_Grunning` and `_Gsyscall` (their saved SP is stale), `_Gwaiting`,
/// `_Gdead`, and the `_Gscan` bit.
pub const G_IDLE: u32 = 0;
pub const G_RUNNING: u32 = 2;
pub const G_SYSCALL: u32 = 3;
pub const G_WAITING: u32 = 4;
pub const G_DEAD: u32 = 6;
/// Go ≥ 1.26: `_Gleaked`, a parked goroutine the runtime's own leak profile
/// caught (still parked, wait reason kept), and `_Gdeadextra`, a dead g
/// kept for an extra M. Older releases never use these values.
pub const G_LEAKED: u32 = 10;
pub const G_DEAD_EXTRA: u32 = 11;
pub const G_SCAN: u32 = 0x1000;
/// Highest plain status value believed (`_Gpreempted` = 9; later releases add a few).
pub const G_MAX_STATUS: u32 = 16;

/// A channel a goroutine is parked on, as read from memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChanState {
    pub address: u64,
    pub qcount: u64,
    pub dataqsiz: u64,
    pub closed: bool,
    /// Whether goroutines wait to receive from / send to it.
    pub receivers_waiting: bool,
    pub senders_waiting: bool,
}

/// One live goroutine as seen in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScannedG {
    pub goid: u64,
    pub status: u32,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: u64,
    /// The runtime's waitReason value (meaningful while waiting).
    pub waitreason: u8,
    pub chan: Option<ChanState>,
    /// Return addresses from the parked PC outward (runtime addresses).
    pub stack: Vec<u64>,
}

/// What one heap walk found (see `proc/heapwalk.rs`): the parked
/// goroutines no reachable reference can wake, and for the others what
/// first reached their primitive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Walked {
    /// Goroutines judged (parked on a channel or a semaphore).
    pub candidates: usize,
    pub unreachable: Vec<u64>,
    /// `(goid, holder)`, e.g. "a global in .bss", "goroutine 42".
    pub held_by: Vec<(u64, String)>,
    /// No read failed and no span was rejected: a cut chain cannot have
    /// made a live goroutine look unreachable.
    pub trustworthy: bool,
    pub bytes_read: u64,
    pub seconds: f64,
}
