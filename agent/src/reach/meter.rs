//! Every read of the target goes through a [`Meter`]: it charges the bytes
//! to the budget before reading, so a lying length can never make the walk
//! read (or allocate) more than it was allowed, and it counts failures so the
//! caller can tell a clean walk from one with holes.

use super::{Memory, WalkError};

/// Largest single read while scanning: big objects (a 100 MiB slice backing
/// array) are scanned through one reused buffer of this size.
pub(super) const CHUNK: usize = 16 << 10;

pub(super) struct Meter<'m, M: Memory + ?Sized> {
    mem: &'m mut M,
    max_bytes: u64,
    pub(super) bytes_read: u64,
    pub(super) reads_failed: u64,
}

impl<'m, M: Memory + ?Sized> Meter<'m, M> {
    /// Starts a meter that has already spent `bytes_read` (the heap map
    /// build), so that the whole walk stays inside one budget.
    pub(super) fn new(mem: &'m mut M, max_bytes: u64, bytes_read: u64) -> Self {
        Self {
            mem,
            max_bytes,
            bytes_read,
            reads_failed: 0,
        }
    }

    /// Charges `len` bytes, or fails if the budget would be exceeded.
    pub(super) fn charge(&mut self, len: u64) -> Result<(), WalkError> {
        match self.bytes_read.checked_add(len) {
            Some(total) if total <= self.max_bytes => {
                self.bytes_read = total;
                Ok(())
            }
            _ => Err(WalkError::OverBudget { what: "bytes read" }),
        }
    }

    /// Reads `buf.len()` bytes at `addr`. `Ok(false)` is a failed read
    /// (counted); `Err` means the budget is spent.
    pub(super) fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<bool, WalkError> {
        self.charge(buf.len() as u64)?;
        // A range wrapping past the top of the address space is a lie; the
        // Memory implementation need not handle it.
        if addr.checked_add(buf.len() as u64).is_none() || self.mem.read(addr, buf).is_err() {
            self.reads_failed += 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// Reads a little-endian u64; `None` when unreadable.
    pub(super) fn read_u64(&mut self, addr: u64) -> Result<Option<u64>, WalkError> {
        let mut b = [0u8; 8];
        Ok(self.read(addr, &mut b)?.then(|| u64::from_le_bytes(b)))
    }

    /// Calls `f` with every 8-byte-aligned word of `[lo, hi)`, reading in
    /// chunks of at most [`CHUNK`]. A chunk that cannot be read is skipped
    /// (it holds no pointers as far as the walk can tell).
    pub(super) fn for_each_word(
        &mut self,
        lo: u64,
        hi: u64,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(u64) -> Result<(), WalkError>,
    ) -> Result<(), WalkError> {
        // Go keeps pointers word-aligned; an unaligned start is rounded up.
        let mut at = lo.checked_add(7).map_or(hi, |v| v & !7);
        while at < hi && hi - at >= 8 {
            let len = ((hi - at) & !7).min(CHUNK as u64) as usize;
            buf.resize(len, 0);
            if self.read(at, &mut buf[..len])? {
                for w in buf[..len].chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(w);
                    f(u64::from_le_bytes(b))?;
                }
            }
            at += len as u64;
        }
        Ok(())
    }
}
