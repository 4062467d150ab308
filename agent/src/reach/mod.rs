//! Reachability leak prover: which parked goroutines can never be woken.
//!
//! Go's own `goroutineleak` profile (mgc.go `findGoroutineLeaks`) calls a
//! blocked goroutine leaked when no goroutine that can still run, no global
//! and no runtime-held reference reaches ANY of the concurrency primitives it
//! waits on. This module does the same from outside the process: it maps the
//! heap from the runtime's span tables ([`HeapMap`]), marks conservatively
//! from the roots the caller gives it, and wakes candidates whose primitives
//! get marked until nothing changes ([`prove`]).
//!
//! It is pure: memory comes through [`Memory`], offsets through
//! [`HeapLayout`], and goroutines, globals and stack slots as plain data in
//! [`Input`]. The target keeps running while we read, so every word may be
//! torn or a lie: each table is validated, every loop is bounded by the
//! [`Budget`], and nothing here panics on what it reads.
//!
//! Soundness leans one way on purpose: conservative scanning, unresolved
//! primitive addresses and stale slots only ever make more things reachable
//! (fewer leaks). What can make a live goroutine look leaked is a chain cut
//! by a failed read or a rejected span; [`WalkStats::reads_failed`] and
//! [`WalkStats::spans_rejected`] say when that may have happened, and the
//! caller should weaken its verdict when either is non-zero.

mod heapmap;
mod layout;
mod mark;
mod meter;
mod roots;
mod walk;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod place_tests;
#[cfg(test)]
mod testmem;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

pub use self::heapmap::HeapMap;
pub use self::layout::{ArenaGeometry, HeapLayout};
pub use self::roots::{AddrRange, Candidate, Input, Root, RootKind, Scan, StackBounds};
pub use self::walk::prove;
#[cfg(test)]
pub use self::walk::run;
#[cfg(test)]
pub use self::{heapmap::Object, roots::Outcome};

/// The target's memory. In production `process_vm_readv`; in tests a sparse
/// synthetic memory with holes.
pub trait Memory {
    /// Fills `buf` with the bytes at `addr`, or fails as a whole.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;
}

/// A read of the target's memory failed (unmapped, process gone, short read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadError;

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("target memory unreadable")
    }
}

impl std::error::Error for ReadError {}

/// Why no verdict could be reached; the caller falls back to a weaker one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError {
    /// A [`Budget`] limit would be exceeded; `what` names it.
    OverBudget { what: &'static str },
    /// A table the whole walk depends on could not be read.
    Unreadable { what: &'static str },
    /// The [`HeapLayout`] itself is inconsistent (a bug in the offsets).
    BadLayout { what: &'static str },
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OverBudget { what } => write!(f, "heap walk over budget: {what}"),
            Self::Unreadable { what } => write!(f, "heap walk could not read {what}"),
            Self::BadLayout { what } => write!(f, "heap layout inconsistent: {what}"),
        }
    }
}

impl std::error::Error for WalkError {}

/// Limits on one walk. Memory held is bounded by these too: the mark bitmap
/// is one bit per 8 heap bytes at most (`max_heap_bytes / 64` bytes), the
/// span table is `max_spans` entries, the work list `max_objects`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::struct_field_names,
    reason = "each field is a maximum, and says so where it is read"
)]
pub struct Budget {
    /// Bytes requested from [`Memory`] over the whole walk, failed reads included.
    pub max_bytes_read: u64,
    /// Heap address space mapped: in-use arenas times the arena size.
    pub max_heap_bytes: u64,
    /// Distinct spans read from the arenas' span tables.
    pub max_spans: u64,
    /// Objects marked.
    pub max_objects: u64,
    /// Goroutines gathered into one walk's input (the caller checks it: each
    /// costs its stack's live slots and a few records, so a million parked
    /// goroutines would cost the agent hundreds of MiB).
    pub max_goroutines: u64,
}

impl Default for Budget {
    /// Sized for a service with a few GiB of heap: reading every arena's span
    /// table costs 64 KiB per 64 MiB, so the reads are dominated by scanning.
    fn default() -> Self {
        Self {
            max_bytes_read: 1 << 30,
            max_heap_bytes: 16 << 30,
            max_spans: 1 << 20,
            max_objects: 1 << 24,
            max_goroutines: 100_000,
        }
    }
}

/// What a walk cost and how much of it may be unreliable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalkStats {
    /// In-use spans accepted into the heap map.
    pub spans: u64,
    /// Spans read but rejected as inconsistent (wrong state excluded).
    pub spans_rejected: u64,
    /// Heap objects marked reachable.
    pub objects_marked: u64,
    /// Bytes requested from [`Memory`], failed reads included.
    pub bytes_read: u64,
    /// Reads that failed; their bytes were treated as holding no pointers.
    pub reads_failed: u64,
    /// Wall time of the heap map build plus the marking.
    pub elapsed: Duration,
}
