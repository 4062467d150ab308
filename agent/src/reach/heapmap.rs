//! The heap's in-use spans, read once from the runtime's arena tables and
//! kept sorted, so any address resolves to its object by binary search.
//!
//! Path through the target (mheap.go): `mheap_.allArenas` lists arena
//! indexes; `mheap_.arenas[l1][l2]` gives each arena's `*heapArena`, whose
//! `spans[page]` names the `*mspan` owning that page. Only the L2 entries of
//! arenas in use are read, never the 32 MiB L2 array.

use std::time::Instant;

use super::layout::{HeapLayout, MSPAN_IN_USE};
use super::meter::Meter;
use super::{Budget, Memory, WalkError, WalkStats};

/// A heap object as the map sees it: its slot, not its allocated size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    /// First byte of the object's slot.
    pub base: u64,
    /// Slot size (`mspan.elemsize`).
    pub size: u64,
    /// The span's size class holds no pointers: never scanned.
    pub noscan: bool,
}

/// One accepted span. Slots are numbered globally (`slot_base` + index) so
/// the mark bitmap is one bit per object slot.
#[derive(Debug, Clone, Copy)]
struct SpanEntry {
    start: u64,
    /// End of the last slot, never past the span's pages.
    end: u64,
    elemsize: u64,
    noscan: bool,
    slot_base: u64,
    /// `mspan.specials`: 0 when none or unknown.
    specials: u64,
}

/// Sorted, non-overlapping in-use spans of one target.
#[derive(Debug, Clone, Default)]
pub struct HeapMap {
    spans: Vec<SpanEntry>,
    total_slots: u64,
    /// `[lo, hi)` covering every span: most scanned words are no pointer
    /// (zeros, counts), rejected here without a search.
    lo: u64,
    hi: u64,
    /// What building the map cost; [`super::prove`] adds to it.
    pub stats: WalkStats,
}

impl HeapMap {
    /// Reads the span tables of every arena in use and keeps the in-use
    /// spans that are consistent with the table that named them.
    /// Spans whose objects have specials (finalizers, cleanups…): their
    /// start, slot size and the head of their `special` list.
    pub fn with_specials(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.spans
            .iter()
            .filter(|s| s.specials != 0)
            .map(|s| (s.start, s.elemsize, s.specials))
    }

    pub fn build<M: Memory + ?Sized>(
        mem: &mut M,
        layout: &HeapLayout,
        budget: &Budget,
    ) -> Result<Self, WalkError> {
        let started = Instant::now();
        layout.check()?;
        let mut meter = Meter::new(mem, budget.max_bytes_read, 0);
        let arenas = read_arena_indexes(&mut meter, layout, budget)?;
        let pages = read_span_tables(&mut meter, layout, &arenas)?;
        let (mut spans, mut rejected) = read_spans(&mut meter, layout, budget, &arenas, pages)?;
        spans.sort_unstable_by_key(|s| s.start);
        // A torn read can make two spans claim the same pages: keep the
        // first, so every address has at most one owner.
        let mut kept: Vec<SpanEntry> = Vec::with_capacity(spans.len());
        let mut total_slots = 0u64;
        for mut s in spans {
            if kept.last().is_some_and(|p| s.start < p.end) {
                rejected += 1;
                continue;
            }
            s.slot_base = total_slots;
            total_slots += (s.end - s.start) / s.elemsize;
            kept.push(s);
        }
        let stats = WalkStats {
            spans: kept.len() as u64,
            spans_rejected: rejected,
            bytes_read: meter.bytes_read,
            reads_failed: meter.reads_failed,
            elapsed: started.elapsed(),
            ..WalkStats::default()
        };
        Ok(Self {
            lo: kept.first().map_or(0, |s| s.start),
            hi: kept.last().map_or(0, |s| s.end),
            spans: kept,
            total_slots,
            stats,
        })
    }

    /// The object whose slot holds `addr` (interior pointers included).
    #[allow(dead_code)] // the walk resolves addresses by span index; tests ask by address
    pub fn object_of(&self, addr: u64) -> Option<Object> {
        let (i, slot) = self.locate(addr)?;
        let s = &self.spans[i];
        Some(Object {
            base: s.start + slot * s.elemsize,
            size: s.elemsize,
            noscan: s.noscan,
        })
    }

    /// Number of object slots in the map (the mark bitmap's length in bits).
    pub fn slots(&self) -> u64 {
        self.total_slots
    }

    /// Span index and slot index within it.
    fn locate(&self, addr: u64) -> Option<(usize, u64)> {
        if addr < self.lo || addr >= self.hi {
            return None;
        }
        let i = self
            .spans
            .partition_point(|s| s.start <= addr)
            .checked_sub(1)?;
        let s = &self.spans[i];
        (addr < s.end).then(|| (i, (addr - s.start) / s.elemsize))
    }

    /// Global slot number and the object of `addr`.
    pub(super) fn slot_of(&self, addr: u64) -> Option<(u64, Object)> {
        let (i, slot) = self.locate(addr)?;
        let s = &self.spans[i];
        let obj = Object {
            base: s.start + slot * s.elemsize,
            size: s.elemsize,
            noscan: s.noscan,
        };
        Some((s.slot_base + slot, obj))
    }
}

/// Sorted, deduplicated arena indexes from `mheap_.allArenas`.
fn read_arena_indexes<M: Memory + ?Sized>(
    meter: &mut Meter<'_, M>,
    layout: &HeapLayout,
    budget: &Budget,
) -> Result<Vec<u64>, WalkError> {
    let g = &layout.geometry;
    let header = layout
        .mheap
        .wrapping_add(u64::from(layout.mheap_all_arenas));
    let unreadable = WalkError::Unreadable {
        what: "mheap_.allArenas",
    };
    let ptr = meter.read_u64(header)?.ok_or(unreadable.clone())?;
    let len = meter
        .read_u64(header.wrapping_add(8))?
        .ok_or(unreadable.clone())?;
    // Checked before allocating: a torn length must not size a buffer.
    if len > budget.max_heap_bytes / g.arena_bytes {
        return Err(WalkError::OverBudget { what: "heap bytes" });
    }
    let mut raw = vec![0u8; (len * 8) as usize];
    if !meter.read(ptr, &mut raw)? {
        return Err(unreadable);
    }
    let mut arenas: Vec<u64> = raw
        .chunks_exact(8)
        .filter_map(|w| w.try_into().ok().map(u64::from_le_bytes))
        .filter(|&i| i < g.index_limit())
        .collect();
    arenas.sort_unstable();
    arenas.dedup();
    Ok(arenas)
}

/// For every arena, the runs of its span table: (span pointer, first page
/// address of the run). Adjacent pages of one span collapse into one entry.
fn read_span_tables<M: Memory + ?Sized>(
    meter: &mut Meter<'_, M>,
    layout: &HeapLayout,
    arenas: &[u64],
) -> Result<Vec<Run>, WalkError> {
    let g = &layout.geometry;
    let pages = g.pages_per_arena();
    let mut table = vec![0u8; (pages * 8) as usize];
    // At most one entry per page read: 24 bytes held per 8 read, so the
    // byte budget bounds this too.
    let mut runs: Vec<Run> = Vec::new();
    for &idx in arenas {
        let l1 = (layout.mheap.wrapping_add(u64::from(layout.mheap_arenas)))
            .wrapping_add((idx >> g.l2_bits) * 8);
        let Some(l2) = meter.read_u64(l1)? else {
            continue;
        };
        let l2_mask = (1u64 << g.l2_bits) - 1;
        let Some(ha) = meter.read_u64(l2.wrapping_add((idx & l2_mask) * 8))? else {
            continue;
        };
        if l2 == 0
            || ha == 0
            || !meter.read(ha.wrapping_add(u64::from(layout.arena_spans)), &mut table)?
        {
            continue;
        }
        let base = g.arena_base(idx);
        let mut prev = 0u64;
        for (page, w) in table.chunks_exact(8).enumerate() {
            let ptr = w.try_into().map_or(0, u64::from_le_bytes);
            let at = base.wrapping_add(page as u64 * g.page_bytes);
            match runs.last_mut() {
                Some(run) if ptr != 0 && ptr == prev => run.hi = at.wrapping_add(g.page_bytes),
                _ if ptr != 0 => runs.push(Run {
                    ptr,
                    lo: at,
                    hi: at.wrapping_add(g.page_bytes),
                }),
                _ => {}
            }
            prev = ptr;
        }
    }
    Ok(runs)
}

/// Pages `[lo, hi)` whose span table entries all name the mspan at `ptr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Run {
    ptr: u64,
    lo: u64,
    hi: u64,
}

/// Reads each distinct mspan once and keeps the consistent in-use ones.
/// Returns the spans (unsorted) and how many were rejected.
///
/// One mspan may be named by several runs: the runtime leaves the entries
/// of freed pages as they were, and recycles mspan structs, so free pages
/// can still name an mspan that now describes a span elsewhere. Such a
/// span is real if one of its runs covers its start address.
fn read_spans<M: Memory + ?Sized>(
    meter: &mut Meter<'_, M>,
    layout: &HeapLayout,
    budget: &Budget,
    arenas: &[u64],
    mut runs: Vec<Run>,
) -> Result<(Vec<SpanEntry>, u64), WalkError> {
    runs.sort_unstable();
    let distinct = runs.windows(2).filter(|w| w[0].ptr != w[1].ptr).count() + 1;
    if distinct as u64 > budget.max_spans {
        return Err(WalkError::OverBudget { what: "spans" });
    }
    let mut buf = vec![0u8; layout.span_read_len()];
    let (mut spans, mut rejected) = (Vec::new(), 0u64);
    let mut heap_bytes = 0u64;
    for named in runs.chunk_by(|a, b| a.ptr == b.ptr) {
        if !meter.read(named[0].ptr, &mut buf)? {
            continue;
        }
        match parse_span(&buf, layout, arenas, named) {
            SpanCheck::Ok(s) => {
                heap_bytes += s.end - s.start;
                spans.push(s);
            }
            SpanCheck::NotInUse => {}
            SpanCheck::Lie => rejected += 1,
        }
    }
    if heap_bytes > budget.max_heap_bytes {
        return Err(WalkError::OverBudget { what: "heap bytes" });
    }
    Ok((spans, rejected))
}

enum SpanCheck {
    Ok(SpanEntry),
    NotInUse,
    Lie,
}

fn field_u64(buf: &[u8], off: u32) -> u64 {
    let off = off as usize;
    buf.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn field_u8(buf: &[u8], off: u32) -> u8 {
    buf.get(off as usize).copied().unwrap_or(0)
}

/// Validates one mspan against the arena table that named it.
fn parse_span(buf: &[u8], layout: &HeapLayout, arenas: &[u64], named: &[Run]) -> SpanCheck {
    let g = &layout.geometry;
    if field_u8(buf, layout.span_state) != MSPAN_IN_USE {
        return SpanCheck::NotInUse;
    }
    let start = field_u64(buf, layout.span_start);
    let npages = field_u64(buf, layout.span_npages);
    let elemsize = field_u64(buf, layout.span_elemsize);
    let limit = field_u64(buf, layout.span_limit);
    let noscan = field_u8(buf, layout.span_spanclass) & 1 == 1;
    // A span longer than the arenas in use cannot be real; this also keeps
    // the arena loop below bounded.
    let max_pages = arenas.len() as u64 * g.pages_per_arena();
    let Some(end) = npages
        .checked_mul(g.page_bytes)
        .and_then(|b| start.checked_add(b))
    else {
        return SpanCheck::Lie;
    };
    let named_at_start = named.iter().any(|r| r.lo <= start && start < r.hi);
    if !named_at_start || npages == 0 || npages > max_pages {
        return SpanCheck::Lie;
    }
    // Large spans may cross arenas; every arena they cover must be in use.
    let (a0, a1) = (g.arena_index(start), g.arena_index(end - 1));
    if a1 < a0 || (a0..=a1).any(|a| arenas.binary_search(&a).is_err()) {
        return SpanCheck::Lie;
    }
    // Size classes are multiples of 8; large objects fill their span.
    if elemsize < 8 || !elemsize.is_multiple_of(8) || elemsize > end - start {
        return SpanCheck::Lie;
    }
    // limit is start + nelems*elemsize for small spans and start + the
    // requested size for a large object (mcache.allocLarge): round up.
    if limit <= start || limit > end {
        return SpanCheck::Lie;
    }
    let slots = (limit - start)
        .div_ceil(elemsize)
        .min((end - start) / elemsize);
    let end = start + slots * elemsize;
    SpanCheck::Ok(SpanEntry {
        start,
        end,
        elemsize,
        noscan,
        slot_base: 0,
        specials: layout.span_specials.map_or(0, |o| field_u64(buf, o)),
    })
}
