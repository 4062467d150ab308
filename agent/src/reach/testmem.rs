//! A synthetic Go heap for tests: sparse memory with holes, and a builder
//! that lays out `mheap_`, `allArenas`, the arena tables, mspans and objects
//! the way the runtime does, at addresses the test chooses.

use std::collections::BTreeMap;

use super::{
    run, AddrRange, ArenaGeometry, Budget, Candidate, HeapLayout, Input, Memory, Outcome,
    ReadError, Root, RootKind, Scan,
};

const PAGE: u64 = 4096;

/// Memory that exists only where something was written (4 KiB pages).
#[derive(Debug, Clone, Default)]
pub struct SparseMem {
    pub pages: BTreeMap<u64, Box<[u8; PAGE as usize]>>,
    /// When set, every read fails.
    pub broken: bool,
}

impl SparseMem {
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        let mut done = 0usize;
        while done < bytes.len() {
            let a = addr + done as u64;
            let page = self
                .pages
                .entry(a / PAGE)
                .or_insert_with(|| Box::new([0; PAGE as usize]));
            let off = (a % PAGE) as usize;
            let n = (PAGE as usize - off).min(bytes.len() - done);
            page[off..off + n].copy_from_slice(&bytes[done..done + n]);
            done += n;
        }
    }

    pub fn write_u64(&mut self, addr: u64, v: u64) {
        self.write(addr, &v.to_le_bytes());
    }
}

impl Memory for SparseMem {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if self.broken {
            return Err(ReadError);
        }
        let mut done = 0usize;
        while done < buf.len() {
            let a = addr.checked_add(done as u64).ok_or(ReadError)?;
            let page = self.pages.get(&(a / PAGE)).ok_or(ReadError)?;
            let off = (a % PAGE) as usize;
            let n = (PAGE as usize - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&page[off..off + n]);
            done += n;
        }
        Ok(())
    }
}

/// Where the runtime's own tables sit in the synthetic process.
pub const MHEAP: u64 = 0x0060_0000;
const ALL_ARENAS: u64 = 0x0068_0000;
const L2: u64 = 0x7100_0000_0000;
const HEAP_ARENAS: u64 = 0x7200_0000_0000;
const MSPANS: u64 = 0x7300_0000_0000;
/// Static data for globals.
pub const DATA: u64 = 0x0058_0000;

/// Field offsets of the synthetic runtime; deliberately not Go's, so a
/// test cannot pass by hard-coded offsets.
pub fn test_layout() -> HeapLayout {
    HeapLayout {
        mheap: MHEAP,
        mheap_arenas: 0x10,
        mheap_all_arenas: 0x200,
        arena_spans: 0x40,
        span_start: 0x18,
        span_npages: 0x20,
        span_elemsize: 0x58,
        span_limit: 0x60,
        span_spanclass: 0x52,
        span_state: 0x70,
        span_specials: None,
        geometry: ArenaGeometry::LINUX_AMD64,
    }
}

/// Builds a heap page by page.
pub struct World {
    pub mem: SparseMem,
    pub layout: HeapLayout,
    arenas: Vec<u64>,
    /// Next free page address for a new span.
    pub cursor: u64,
    mspans: u64,
    data: u64,
}

impl World {
    pub fn new(heap_base: u64) -> Self {
        let layout = test_layout();
        let mut w = Self {
            mem: SparseMem::default(),
            layout,
            arenas: Vec::new(),
            cursor: heap_base,
            mspans: 0,
            data: DATA,
        };
        w.mem.write_u64(MHEAP + u64::from(layout.mheap_arenas), L2);
        w.add_arena(heap_base);
        w
    }

    /// Marks the arena holding `base` in use, with an empty span table.
    pub fn add_arena(&mut self, base: u64) {
        let g = self.layout.geometry;
        let idx = g.arena_index(base);
        let ha = HEAP_ARENAS + self.arenas.len() as u64 * 0x20_0000;
        self.arenas.push(idx);
        self.mem
            .write_u64(L2 + (idx & ((1 << g.l2_bits) - 1)) * 8, ha);
        let spans = ha + u64::from(self.layout.arena_spans);
        self.mem
            .write(spans, &vec![0; (g.pages_per_arena() * 8) as usize]);
        let hdr = MHEAP + u64::from(self.layout.mheap_all_arenas);
        self.mem.write_u64(hdr, ALL_ARENAS);
        self.mem.write_u64(hdr + 8, self.arenas.len() as u64);
        self.mem
            .write_u64(ALL_ARENAS + (self.arenas.len() as u64 - 1) * 8, idx);
    }

    /// Writes an mspan and points the span table of each of its pages at
    /// it. Returns the mspan's address.
    pub fn raw_span(
        &mut self,
        start: u64,
        npages: u64,
        elemsize: u64,
        limit: u64,
        class: u8,
        state: u8,
    ) -> u64 {
        let l = self.layout;
        let ms = MSPANS + self.mspans * 0x100;
        self.mspans += 1;
        self.mem.write_u64(ms + u64::from(l.span_start), start);
        self.mem.write_u64(ms + u64::from(l.span_npages), npages);
        self.mem
            .write_u64(ms + u64::from(l.span_elemsize), elemsize);
        self.mem.write_u64(ms + u64::from(l.span_limit), limit);
        self.mem.write(ms + u64::from(l.span_spanclass), &[class]);
        self.mem.write(ms + u64::from(l.span_state), &[state]);
        for p in 0..npages {
            self.set_page(start + p * l.geometry.page_bytes, ms);
        }
        ms
    }

    /// Points the span table entry of the page at `addr` at `ms`.
    pub fn set_page(&mut self, addr: u64, ms: u64) {
        let g = self.layout.geometry;
        let Some(n) = self.arenas.iter().position(|&i| i == g.arena_index(addr)) else {
            return;
        };
        let ha = HEAP_ARENAS + n as u64 * 0x20_0000 + u64::from(self.layout.arena_spans);
        let page = (addr - g.arena_base(g.arena_index(addr))) / g.page_bytes;
        self.mem.write_u64(ha + page * 8, ms);
    }

    /// A span of small objects of `elemsize` bytes at the cursor; its
    /// memory is zeroed (mapped). Returns its start.
    pub fn span(&mut self, npages: u64, elemsize: u64, noscan: bool) -> u64 {
        let bytes = npages * self.layout.geometry.page_bytes;
        let start = self.cursor;
        let limit = start + bytes / elemsize * elemsize;
        // Size class 5 is arbitrary: only the noscan bit is read.
        self.raw_span(start, npages, elemsize, limit, 5 << 1 | u8::from(noscan), 1);
        self.mem.write(start, &vec![0; bytes as usize]);
        self.cursor += bytes;
        start
    }

    /// A large object of `size` bytes in its own span (size class 0).
    pub fn large(&mut self, size: u64, noscan: bool) -> u64 {
        let pb = self.layout.geometry.page_bytes;
        let npages = size.div_ceil(pb);
        let start = self.cursor;
        self.raw_span(
            start,
            npages,
            npages * pb,
            start + size,
            u8::from(noscan),
            1,
        );
        self.mem.write(start, &vec![0; (npages * pb) as usize]);
        self.cursor += npages * pb;
        start
    }

    /// A goroutine stack: pages of a manual span (state 2), as the runtime
    /// allocates stacks from the heap without making them heap objects.
    pub fn stack(&mut self, bytes: u64) -> AddrRange {
        let pb = self.layout.geometry.page_bytes;
        let npages = bytes.div_ceil(pb);
        let lo = self.cursor;
        self.raw_span(lo, npages, npages * pb, lo + npages * pb, 0, 2);
        self.mem.write(lo, &vec![0; (npages * pb) as usize]);
        self.cursor += npages * pb;
        AddrRange { lo, hi: lo + bytes }
    }

    /// A global of `bytes` bytes in static data.
    pub fn global(&mut self, bytes: u64) -> AddrRange {
        let lo = self.data;
        self.mem.write(lo, &vec![0; bytes as usize]);
        self.data += bytes.div_ceil(8) * 8;
        AddrRange { lo, hi: lo + bytes }
    }

    pub fn put(&mut self, addr: u64, v: u64) {
        self.mem.write_u64(addr, v);
    }
}

// Shorthands for the verdict tests.

pub const CLASSIC: u64 = 0x00c0_0000_0000;
/// A randomised-looking base, 64 MiB aligned.
pub const RANDOM: u64 = 0x7f3a_4000_0000;

pub const HCHAN: u64 = 96;

pub fn walk(w: &mut World, input: &Input) -> Outcome {
    run(&mut w.mem, &w.layout, input, &Budget::default()).expect("walk within budget")
}

pub fn global(name: &str, r: AddrRange) -> Root {
    Root {
        kind: RootKind::Global { name: name.into() },
        scan: Scan::Range(r),
    }
}

pub fn stack_root(goid: u64, r: AddrRange) -> Root {
    Root {
        kind: RootKind::Stack { goid },
        scan: Scan::Range(r),
    }
}

pub fn cand(goid: u64, primitives: Vec<u64>, stack: AddrRange) -> Candidate {
    Candidate {
        goid,
        primitives,
        guessed: false,
        packable: false,
        stack: Scan::Range(stack),
    }
}

/// A world with a span of hchan-sized objects; returns (world, first chan).
pub fn with_chan(base: u64) -> (World, u64) {
    let mut w = World::new(base);
    let span = w.span(1, HCHAN, false);
    (w, span + HCHAN)
}

/// Small enough that the fuzz loop's lies hit it.
pub fn small_budget() -> Budget {
    Budget {
        max_bytes_read: 2 << 20,
        max_heap_bytes: 1 << 30,
        max_spans: 64,
        max_objects: 1000,
        max_goroutines: 100,
    }
}
