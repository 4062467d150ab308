//! What a heap walker needs to know about one binary: where the runtime's
//! heap metadata and its roots sit, and how they are laid out. Offsets come
//! from DWARF or from the generated table (as [`super::layout::Layout`]
//! does); addresses from `.symtab`, DWARF, or decoding runtime code when
//! the binary is stripped.
//!
//! All of it is plain data. When anything is missing the binary gets no
//! [`HeapLayout`] but the reason, and the walker falls back; nothing here
//! makes a binary unwatchable.

use serde::{Deserialize, Serialize};

use super::{AddressSource, LayoutSource};

/// A field's absolute offset in its struct and its width in bytes: the
/// widths of `mspan.nelems` and `.freeindex` moved (`uintptr` before Go
/// 1.22, `uint16` since).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// `runtime.mheap`: the arena index. On amd64 `arenas` is a one-entry L1
/// array of pointers to 4M-entry L2 arrays of `*heapArena` (32 MiB: read
/// single entries, never the whole array).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MheapOffsets {
    pub arenas: u32,
    /// Entries of the L1 array (`1 << arenaL1Bits`, 1 on amd64).
    pub arenas_l1: u32,
    /// Entries of each L2 array (`1 << arenaL2Bits`, 1<<22 on amd64).
    pub arenas_l2: u32,
    /// `allArenas`: a `[]arenaIdx` of the arenas in use.
    pub all_arenas: u32,
}

/// `runtime.heapArena`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapArenaOffsets {
    /// `spans`: one `*mspan` per page of the arena.
    pub spans: u32,
    /// Entries of `spans` (`pagesPerArena`, 8192 on amd64).
    pub pages: u32,
    /// Size of the whole struct, a sanity check (it shrank when Go 1.22
    /// moved the pointer bitmap out of it).
    pub size: u32,
}

/// `runtime.mspan`, with widths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MspanOffsets {
    pub start_addr: Field,
    pub npages: Field,
    pub nelems: Field,
    pub elemsize: Field,
    pub limit: Field,
    /// `spanclass`: size class << 1 | noscan.
    pub spanclass: Field,
    /// The state byte itself: `state` is an `mSpanStateBox` whose `s` is
    /// the byte (an `atomic.Uint8` since Go 1.21); in use = 1.
    pub state: Field,
    pub freeindex: Field,
    /// `allocBits`: a pointer to the span's allocation bitmap.
    pub alloc_bits: Field,
    pub size: u32,
}

/// `runtime.sudog`, every link a walker follows (the agent's
/// [`super::SudogOffsets`] keeps its own four, whose JSON is frozen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudogLinks {
    pub g: u32,
    pub elem: u32,
    pub c: u32,
    pub waitlink: u32,
    pub next: u32,
    pub prev: u32,
    pub parent: u32,
    pub ticket: u32,
}

/// `runtime.semtable`: `[semTabSize]struct{ root semaRoot; pad … }`, one
/// cache line per entry, each the root of a treap of waiting sudogs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemaOffsets {
    /// `semaRoot.treap` (`*sudog`); `root` is the entry's first field.
    pub root_treap: u32,
    /// Bytes per entry (root plus padding).
    pub entry_size: u32,
    /// `semTabSize` (251).
    pub entries: u32,
}

/// `runtime.moduledata`: the bounds of the module's globals and their
/// pointer bitmaps (`bitvector`s: an `int32` count of bits, then a pointer
/// to the bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuledataOffsets {
    pub noptrdata: u32,
    pub enoptrdata: u32,
    pub data: u32,
    pub edata: u32,
    pub bss: u32,
    pub ebss: u32,
    pub noptrbss: u32,
    pub enoptrbss: u32,
    pub gcdatamask: u32,
    pub gcbssmask: u32,
    pub bitvector_n: u32,
    pub bitvector_bytedata: u32,
}

/// A P's timer heap: timer channels are roots while a goroutine waits on
/// them (Go ≥ 1.23 keeps such a timer in its P's heap with the channel as
/// its argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerOffsets {
    /// Absolute offset in `runtime.p` of the timer slice header: `timers`
    /// (`[]*timer`) before Go 1.23, `timers.heap` (`[]timerWhen`) since.
    pub p_timers: u32,
    /// Bytes per slice element: 8 (`*timer`) or 16 (`timerWhen{timer, when}`,
    /// the pointer first).
    pub entry_size: u32,
    /// `timer.arg`, an `any` (type word, then data word).
    pub timer_arg: u32,
}

/// Every offset a heap walk reads, for one Go release; the table's entries
/// hold these next to [`super::layout::Layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapOffsets {
    pub mheap: MheapOffsets,
    pub heap_arena: HeapArenaOffsets,
    pub mspan: MspanOffsets,
    pub sudog: SudogLinks,
    pub sema: SemaOffsets,
    pub moduledata: ModuledataOffsets,
    pub timers: TimerOffsets,
}

/// A section's link-time `[start, end)` (before any PIE load bias).
pub type Range = (u64, u64);

/// The ELF sections that hold package-level variables. `data` and `bss`
/// hold pointers (scanned with `moduledata.gcdatamask`/`gcbssmask`); the
/// `noptr` ones never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GlobalSections {
    pub data: Range,
    pub noptrdata: Range,
    pub bss: Range,
    pub noptrbss: Range,
}

impl GlobalSections {
    /// Whether `address` is a zero-initialised global (where the runtime's
    /// `mheap_`, `semtable` and `allp` live).
    pub fn in_bss(&self, address: u64) -> bool {
        [self.bss, self.noptrbss]
            .iter()
            .any(|&(lo, hi)| (lo..hi).contains(&address))
    }
}

/// Link-time addresses of the runtime globals a heap walk starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeapRoots {
    /// `runtime.mheap_` (a `runtime.mheap`).
    pub mheap: u64,
    /// `runtime.semtable`.
    pub semtable: u64,
    /// `runtime.firstmoduledata` (a `runtime.moduledata`).
    pub firstmoduledata: u64,
    /// `runtime.allp` (a `[]*p`).
    pub allp: u64,
    /// Where they came from (the least direct source of the four).
    pub source: AddressSource,
}

/// The heap walker's view of one binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeapLayout {
    pub offsets: HeapOffsets,
    /// Where the offsets came from.
    pub offsets_source: LayoutSource,
    pub roots: HeapRoots,
    pub globals: GlobalSections,
}
