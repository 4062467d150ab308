//! Where the heap's tables sit in the target: addresses and field offsets,
//! all plain numbers. The offsets move between Go releases, so they come
//! from DWARF or the generated offsets table, never typed by hand here.

use super::WalkError;

/// `mSpanInUse` in mheap.go's `mSpanState`: a span holding heap objects.
/// Stacks (`mSpanManual`) and free spans are left out of the heap map.
pub const MSPAN_IN_USE: u8 = 1;

/// Largest field offset accepted: the structs read here are a few hundred
/// bytes, so anything beyond means the offsets are wrong.
const MAX_FIELD_OFFSET: u32 = 4096;
/// Largest `mheap` field offset accepted.
const MAX_MHEAP_OFFSET: u32 = 1 << 20;
/// Largest offset of `heapArena.spans` accepted: Go ≤ 1.21 puts the
/// arena's heap bitmap first (2 MiB in 1.19, 1 MiB + 16 KiB in 1.20–1.21).
const MAX_ARENA_SPANS_OFFSET: u32 = 1 << 22;

/// Architecture constants of the heap (malloc.go), not struct offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaGeometry {
    /// `heapArenaBytes`: 64 MiB on 64-bit Linux.
    pub arena_bytes: u64,
    /// `pageSize`: 8 KiB; `heapArena.spans` has one entry per page.
    pub page_bytes: u64,
    /// `arenaBaseOffset`: subtracted (wrapping) from an address before
    /// dividing by `arena_bytes`. On amd64 it is 0xffff800000000000 so that
    /// sign-extended addresses fold into one index range; 0 on arm64.
    pub base_offset: u64,
    /// `arenaL1Bits`: 0 on 64-bit Linux (the L1 array has one entry).
    pub l1_bits: u32,
    /// `arenaL2Bits`: 48 - 26 = 22 on 64-bit Linux (4M L2 entries, read
    /// one at a time: the whole L2 is 32 MiB).
    pub l2_bits: u32,
}

impl ArenaGeometry {
    /// linux/amd64 (malloc.go: heapAddrBits 48, logHeapArenaBytes 26).
    pub const LINUX_AMD64: Self = Self {
        arena_bytes: 64 << 20,
        page_bytes: 8 << 10,
        base_offset: 0xffff_8000_0000_0000,
        l1_bits: 0,
        l2_bits: 22,
    };

    /// linux/arm64: as amd64 but with no base offset.
    pub const LINUX_ARM64: Self = Self {
        base_offset: 0,
        ..Self::LINUX_AMD64
    };

    /// Pages per arena: the length of `heapArena.spans`.
    pub fn pages_per_arena(&self) -> u64 {
        self.arena_bytes / self.page_bytes
    }

    /// The arena index (`arenaIdx`) of an address.
    pub fn arena_index(&self, addr: u64) -> u64 {
        addr.wrapping_sub(self.base_offset) / self.arena_bytes
    }

    /// The first address of arena `index`.
    pub fn arena_base(&self, index: u64) -> u64 {
        index
            .wrapping_mul(self.arena_bytes)
            .wrapping_add(self.base_offset)
    }

    /// Number of valid arena indexes.
    pub fn index_limit(&self) -> u64 {
        1u64 << (self.l1_bits + self.l2_bits)
    }
}

/// Addresses and offsets of the heap tables in one target binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapLayout {
    /// Address of the global `runtime.mheap_`.
    pub mheap: u64,
    /// Offset of `mheap_.arenas`: `[1 << l1_bits]*[1 << l2_bits]*heapArena`.
    pub mheap_arenas: u32,
    /// Offset of `mheap_.allArenas`, a `[]arenaIdx` (ptr, len, cap; 8 bytes
    /// each) listing the arenas in use.
    pub mheap_all_arenas: u32,
    /// Offset of `heapArena.spans`, `[pages_per_arena]*mspan` (0 in Go 1.22+,
    /// after the pointer bitmap before that).
    pub arena_spans: u32,
    /// Offset of `mspan.startAddr` (uintptr): address of the first byte.
    pub span_start: u32,
    /// Offset of `mspan.npages` (uintptr): length in pages.
    pub span_npages: u32,
    /// Offset of `mspan.elemsize` (uintptr): object slot size.
    pub span_elemsize: u32,
    /// Offset of `mspan.limit` (uintptr): end of the last object's data.
    pub span_limit: u32,
    /// Offset of `mspan.spanclass` (u8): size class << 1 | noscan.
    pub span_spanclass: u32,
    /// Offset of `mspan.state` (u8 inside `mSpanStateBox`).
    pub span_state: u32,
    /// Offset of `mspan.specials` (`*special`, the finalizers and cleanups
    /// of its objects), when known (DWARF).
    pub span_specials: Option<u32>,
    /// The architecture's heap constants.
    pub geometry: ArenaGeometry,
}

impl HeapLayout {
    /// Bytes to read per mspan: enough to cover every field used.
    pub(super) fn span_read_len(&self) -> usize {
        let words = [
            self.span_start,
            self.span_npages,
            self.span_elemsize,
            self.span_limit,
            self.span_specials.unwrap_or(0),
        ];
        let bytes = [self.span_spanclass, self.span_state];
        let end_w = words.iter().map(|o| o + 8).max().unwrap_or(0);
        let end_b = bytes.iter().map(|o| o + 1).max().unwrap_or(0);
        end_w.max(end_b) as usize
    }

    /// Rejects offsets and geometry the walk could not use safely.
    pub(super) fn check(&self) -> Result<(), WalkError> {
        let g = &self.geometry;
        let bad = |what| Err(WalkError::BadLayout { what });
        if !g.page_bytes.is_power_of_two() || g.page_bytes < 8 {
            return bad("page size");
        }
        if !g.arena_bytes.is_power_of_two() || g.arena_bytes < g.page_bytes {
            return bad("arena size");
        }
        // Bounds the per-arena span table read (64 KiB on amd64).
        if g.pages_per_arena() > 1 << 20 {
            return bad("pages per arena");
        }
        if g.l1_bits + g.l2_bits > 40 || g.l1_bits > 16 {
            return bad("arena index bits");
        }
        // `mheap` is large (its `central` array alone is tens of KiB), so
        // its own fields get a looser bound than the span's.
        if [self.mheap_arenas, self.mheap_all_arenas]
            .iter()
            .any(|&o| o > MAX_MHEAP_OFFSET)
        {
            return bad("mheap field offset");
        }
        let offsets = [
            self.span_start,
            self.span_npages,
            self.span_elemsize,
            self.span_limit,
            self.span_spanclass,
            self.span_state,
        ];
        if offsets.iter().any(|&o| o > MAX_FIELD_OFFSET)
            || self.arena_spans > MAX_ARENA_SPANS_OFFSET
        {
            return bad("field offset");
        }
        Ok(())
    }
}
