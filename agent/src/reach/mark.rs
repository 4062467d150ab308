//! Conservative marking: one bit per object slot, a work list, and a scan
//! that treats every aligned word resolving to a heap object as a pointer.
//!
//! Each work-list entry carries the id of the root whose scan reached it,
//! so when a watched object (one holding a candidate's primitive) is marked
//! we know which root reached it without storing anything per object.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasherDefault, Hasher},
};

use super::heapmap::HeapMap;
use super::meter::Meter;
use super::roots::{AddrRange, Scan};
use super::{Budget, Memory, WalkError};

/// Hashes slot numbers with one multiply: every newly marked object is
/// looked up in the opaque and watched sets, and `SipHash` was a fifth of a
/// walk. Slots are dense small integers the walk numbered itself, not
/// values a target could choose.
#[derive(Default)]
pub(super) struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type SlotSet = HashSet<u64, BuildHasherDefault<SlotHasher>>;

/// `maxTinySize` (malloc.go): pointer-free values under 16 bytes share
/// 16-byte blocks.
const TINY_BLOCK: u64 = 16;

/// Index into the walk's root labels (input roots, then candidate stacks).
pub(super) type RootId = usize;

#[derive(Debug, Clone, Copy)]
struct Pending {
    base: u64,
    size: u64,
    root: RootId,
}

pub(super) struct Marker<'h> {
    heap: &'h HeapMap,
    bits: Vec<u64>,
    work: Vec<Pending>,
    opaque: SlotSet,
    /// Slots holding some candidate's primitive.
    watched: SlotSet,
    /// Watched slots newly marked, with the root that reached them.
    pub(super) fired: Vec<(u64, RootId)>,
    pub(super) objects_marked: u64,
    max_objects: u64,
    buf: Vec<u8>,
}

impl<'h> Marker<'h> {
    /// `opaque` are object bases (or any address inside them).
    pub(super) fn new(heap: &'h HeapMap, opaque: &[u64], budget: &Budget) -> Self {
        let opaque = opaque
            .iter()
            .filter_map(|&a| heap.slot_of(a))
            .map(|(s, _)| s)
            .collect();
        Self {
            heap,
            // Bounded by the heap map, itself bounded by max_heap_bytes.
            bits: vec![0; heap.slots().div_ceil(64) as usize],
            work: Vec::new(),
            opaque,
            watched: SlotSet::default(),
            fired: Vec::new(),
            objects_marked: 0,
            max_objects: budget.max_objects,
            buf: Vec::new(),
        }
    }

    /// Watches the object holding `addr`; returns its slot if in the heap,
    /// and whether that object is a 16-byte block without pointers (where
    /// the runtime's tiny allocator packs values under 16 bytes together).
    pub(super) fn watch(&mut self, addr: u64) -> Option<(u64, bool)> {
        let (slot, obj) = self.heap.slot_of(addr)?;
        self.watched.insert(slot);
        Some((slot, obj.noscan && obj.size == TINY_BLOCK))
    }

    /// Marks the object `value` points into, if any, and queues it for
    /// scanning unless it is noscan or opaque.
    fn mark(&mut self, value: u64, root: RootId) -> Result<(), WalkError> {
        let Some((slot, obj)) = self.heap.slot_of(value) else {
            return Ok(());
        };
        let Some(word) = self.bits.get_mut((slot / 64) as usize) else {
            return Ok(());
        };
        let bit = 1u64 << (slot % 64);
        if *word & bit != 0 {
            return Ok(());
        }
        *word |= bit;
        self.objects_marked += 1;
        if self.objects_marked > self.max_objects {
            return Err(WalkError::OverBudget { what: "objects" });
        }
        if self.watched.contains(&slot) {
            self.fired.push((slot, root));
        }
        if !obj.noscan && !self.opaque.contains(&slot) {
            self.work.push(Pending {
                base: obj.base,
                size: obj.size,
                root,
            });
        }
        Ok(())
    }

    /// Scans a root (or a woken candidate's stack) and everything it reaches.
    pub(super) fn scan_root<M: Memory + ?Sized>(
        &mut self,
        meter: &mut Meter<'_, M>,
        scan: &Scan,
        root: RootId,
    ) -> Result<(), WalkError> {
        match scan {
            Scan::Range(AddrRange { lo, hi }) => self.scan_range(meter, *lo, *hi, root)?,
            Scan::Slots(slots) => {
                for &at in slots {
                    if let Some(v) = meter.read_u64(at)? {
                        self.mark(v, root)?;
                    }
                }
            }
        }
        self.drain(meter)
    }

    /// Scans queued objects until the work list is empty. Every object is
    /// queued at most once (its mark bit), so this ends.
    fn drain<M: Memory + ?Sized>(&mut self, meter: &mut Meter<'_, M>) -> Result<(), WalkError> {
        while let Some(p) = self.work.pop() {
            let hi = p.base.saturating_add(p.size);
            self.scan_range(meter, p.base, hi, p.root)?;
        }
        Ok(())
    }

    fn scan_range<M: Memory + ?Sized>(
        &mut self,
        meter: &mut Meter<'_, M>,
        lo: u64,
        hi: u64,
        root: RootId,
    ) -> Result<(), WalkError> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = meter.for_each_word(lo, hi, &mut buf, |v| self.mark(v, root));
        self.buf = buf;
        r
    }
}

/// Candidates waiting on each watched slot.
pub(super) type Waiters = HashMap<u64, Vec<usize>>;
