//! What the tracker is fed by the memory scans: plain records of goroutines
//! and channels, defined here so the tracker depends on no reader.

/// `runtime._Gwaiting` (runtime2.go; stable since Go 1.0).
pub const G_WAITING: u32 = 4;

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
