//! One tracked goroutine, kept small (a million may be tracked), and the
//! keyed hash its table is indexed by.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hasher},
};

use gostray_common::EVENT_PCS;

use super::input::ChanState;

/// What the last memory scan saw of a goroutine, and the last park the
/// probes saw. Kept inline and small (16 bytes): a scan sees every
/// goroutine, but only a few thousand parked ones get a channel or a
/// walked stack, which live behind the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The runtime status (`_Gwaiting`…; at most 16); 0 when never scanned,
    /// as a scan never keeps an idle g.
    pub status: u8,
    pub waitreason: u8,
    /// The scan pass that last listed it (see `ProcessState::begin_scan`).
    pub(super) mark: u8,
    /// The wait reason of a probed park no scan has seen since
    /// ([`NO_PARK`] if none): then `blocked_since_ns` is that park's time.
    pub(super) park_reason: u8,
    /// The return addresses of the last probed park, interned per process
    /// (`ProcessState::park_stacks`), or [`NO_STACK`].
    pub(super) park_stack: u32,
    pub(super) detail: Option<Box<SeenDetail>>,
}

pub(super) const NO_PARK: u8 = u8::MAX;
pub(super) const NO_STACK: u32 = u32::MAX;

impl Default for Seen {
    fn default() -> Self {
        Self {
            status: 0,
            waitreason: 0,
            mark: 0,
            park_reason: NO_PARK,
            park_stack: NO_STACK,
            detail: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SeenDetail {
    chan: Option<ChanState>,
    stack: Vec<u64>,
}

impl Seen {
    /// What a scan saw: `status` is the runtime's (never idle, so never 0).
    pub fn new(status: u32, waitreason: u8, chan: Option<ChanState>, stack: Vec<u64>) -> Self {
        Self {
            // Statuses are at most G_MAX_STATUS (16); never 0 here.
            status: u8::try_from(status).unwrap_or(u8::MAX).max(1),
            waitreason,
            detail: (chan.is_some() || !stack.is_empty())
                .then(|| Box::new(SeenDetail { chan, stack })),
            ..Self::default()
        }
    }

    /// The channel it is parked on, when the scan followed it.
    pub fn chan(&self) -> Option<ChanState> {
        self.detail.as_ref().and_then(|d| d.chan)
    }

    /// Its walked stack, from the parked PC outward (empty if not walked).
    pub fn stack(&self) -> &[u64] {
        self.detail.as_ref().map_or(&[], |d| &d.stack)
    }
}

/// A live goroutine: 56 bytes, as a million of them may be tracked. Rare
/// parts are boxed: most goroutines never block long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Goroutine {
    /// Kernel monotonic time of creation; 0 when found by a memory scan.
    pub created_ns: u64,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: u64,
    /// Since when it has been parked for its current reason, as far as the
    /// probes and scans can tell; 0 when not known to be parked.
    pub(super) blocked_since_ns: u64,
    pub(super) seen: Seen,
}

impl Goroutine {
    pub(super) fn new(created_ns: u64, gopc: u64, startpc: u64, parent_goid: u64) -> Self {
        Self {
            created_ns,
            gopc,
            startpc,
            parent_goid,
            blocked_since_ns: 0,
            seen: Seen::default(),
        }
    }

    /// A goroutine found by a scan, as `seen` (for tests of the verdicts).
    #[cfg(test)]
    pub fn scanned(startpc: u64, seen: Seen) -> Self {
        Self {
            seen,
            ..Self::new(0, 0, startpc, 0)
        }
    }

    /// What the last scan saw, if a scan has seen it.
    pub fn seen(&self) -> Option<&Seen> {
        (self.seen.status != 0).then_some(&self.seen)
    }

    /// Since when it has been parked for its current reason, if it is.
    pub fn blocked_since(&self) -> Option<u64> {
        (self.blocked_since_ns != 0).then_some(self.blocked_since_ns)
    }

    /// The return addresses of its last probed park, if any.
    pub fn park_stack<'a>(&self, interned: &'a [[u64; EVENT_PCS]]) -> Option<&'a [u64]> {
        interned
            .get(self.seen.park_stack as usize)
            .map(|pcs| &pcs[..])
    }
}

/// Hashes goroutine IDs with one folded multiply by a per-table random
/// key: the default `SipHash` was a tenth of a 100k-goroutine scan. The IDs
/// come from the target's memory, so a hostile process could pick them;
/// the random key and the fold (which mixes every input bit into the low
/// bits the table indexes by) keep it from choosing colliding ones.
#[derive(Clone, Copy)]
pub struct GoidHashing {
    key: u64,
}

impl Default for GoidHashing {
    fn default() -> Self {
        Self {
            key: std::collections::hash_map::RandomState::new().hash_one(0u64) | 1,
        }
    }
}

impl BuildHasher for GoidHashing {
    type Hasher = GoidHasher;

    fn build_hasher(&self) -> GoidHasher {
        GoidHasher(self.key)
    }
}

pub struct GoidHasher(u64);

impl Hasher for GoidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        let product = u128::from(self.0 ^ v) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub type GoidMap<V> = HashMap<u64, V, GoidHashing>;
pub type GoidSet = HashSet<u64, GoidHashing>;
