//! Proving parked goroutines unreachable in a live process: the goroutine
//! table, the semaphore table and the globals are read from its memory and
//! handed to the prover ([`crate::reach`]), which walks the heap.
//!
//! Only reads: the process is never stopped. Everything read may be torn,
//! so a goroutine whose wait cannot be resolved is treated as able to run
//! (a root), which can only hide a leak, never invent one.

use std::collections::{HashMap, HashSet};

use super::{
    mem,
    scan::{le64, read_allgs},
};
use crate::{
    gobin::{GoBinary, HeapLayout as BinLayout, WaitReason},
    reach::{
        self, AddrRange, ArenaGeometry, Budget, Candidate, HeapLayout, Input, Memory, ReadError,
        Root, RootKind, Scan, StackBounds, WalkError,
    },
    tracker::input::Walked,
};

/// `_Grunning`, `_Gsyscall`: their saved SP is stale, so their whole stack
/// is scanned. `_Gwaiting` and `_Gleaked` are parked (runtime2.go).
const G_RUNNING: u32 = 2;
const G_SYSCALL: u32 = 3;
const G_WAITING: u32 = 4;
const G_LEAKED: u32 = 10;
const G_SCAN: u32 = 0x1000;
/// Sudogs followed per goroutine (a select has one per case).
const MAX_SUDOGS: usize = 64;
/// Semaphore-table nodes visited per walk.
const MAX_SEMA_NODES: usize = 1 << 20;

/// Bytes read at once around a small read, and blocks kept. The marker
/// reads object by object (most are a few dozen bytes, packed in 8 KiB
/// spans): one system call per object cost 12.7 s for a 256 MiB heap,
/// reading the block around it costs one per 64 KiB.
const BLOCK: u64 = 64 << 10;
const BLOCKS_KEPT: usize = 256;

/// The target's memory for the prover, read in blocks and kept for one
/// walk (16 MiB at most). A block that cannot be read whole (it crosses
/// into an unmapped page) is read exactly instead.
pub struct ProcMemory {
    pid: u32,
    blocks: HashMap<u64, Box<[u8]>>,
    order: std::collections::VecDeque<u64>,
}

impl ProcMemory {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            blocks: HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }

    fn block(&mut self, base: u64) -> Option<&[u8]> {
        if !self.blocks.contains_key(&base) {
            let mut b = vec![0u8; BLOCK as usize].into_boxed_slice();
            mem::read(self.pid, base, &mut b).ok()?;
            if self.order.len() >= BLOCKS_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.blocks.remove(&old);
                }
            }
            self.order.push_back(base);
            self.blocks.insert(base, b);
        }
        self.blocks.get(&base).map(|b| &b[..])
    }
}

impl Memory for ProcMemory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let len = buf.len() as u64;
        let base = addr & !(BLOCK - 1);
        let end = addr.checked_add(len).ok_or(ReadError)?;
        if len <= BLOCK / 2 && end <= base + BLOCK {
            if let Some(block) = self.block(base) {
                let at = (addr - base) as usize;
                buf.copy_from_slice(&block[at..at + buf.len()]);
                return Ok(());
            }
        }
        mem::read(self.pid, addr, buf).map_err(|_| ReadError)
    }
}

/// One goroutine, as the walk needs it.
#[derive(Debug, Clone, Copy)]
struct G {
    addr: u64,
    goid: u64,
    status: u32,
    reason: u8,
    waiting: u64,
    startpc: u64,
    sp: u64,
    bp: u64,
    lo: u64,
    hi: u64,
}

impl G {
    /// The part of its stack that can hold live values.
    fn live_stack(&self) -> AddrRange {
        let parked = !matches!(self.status, G_RUNNING | G_SYSCALL);
        let lo = if parked && (self.lo..self.hi).contains(&self.sp) {
            self.sp
        } else {
            self.lo
        };
        AddrRange { lo, hi: self.hi }
    }
}

/// Walks the heap of process `pid` and returns the parked goroutines no
/// reachable reference can wake. `is_user` says whether a start PC is user
/// code (runtime goroutines are never judged, only used as roots).
pub fn walk(
    pid: u32,
    bin: &GoBinary,
    bias: u64,
    budget: &Budget,
    is_user: &dyn Fn(u64) -> bool,
) -> Result<Walked, WalkError> {
    let layout = bin.heap_layout().map_err(|_| WalkError::BadLayout {
        what: "no heap layout for this binary",
    })?;
    let unreadable = |_| WalkError::Unreadable {
        what: "runtime.allgs",
    };
    let pointers = read_allgs(pid, bin, bias).map_err(unreadable)?;
    let gs = read_gs(pid, bin, &pointers);
    let sema = sema_waiters(pid, layout, bias);
    let mut opaque: Vec<u64> = pointers.clone();
    opaque.extend(sema.sudogs.iter().copied());
    let mut input = Input {
        roots: globals(layout, bias),
        ..Input::default()
    };
    for g in &gs {
        let stack = g.live_stack();
        input.stacks.push(StackBounds {
            goid: g.goid,
            range: AddrRange { lo: g.lo, hi: g.hi },
        });
        let judged = g.goid != 1 && matches!(g.status, G_WAITING | G_LEAKED) && is_user(g.startpc);
        let (primitives, guessed) = match bin.wait_reason(g.reason) {
            _ if !judged => (Vec::new(), false),
            WaitReason::SyncCond => (cond_words(pid, bin, bias, g), true),
            r if waits_on_named_primitive(r) => {
                (primitives(pid, layout, g, &sema.by_g, &mut opaque), false)
            }
            _ => (Vec::new(), false),
        };
        if primitives.is_empty() {
            input.roots.push(Root {
                kind: RootKind::Stack { goid: g.goid },
                scan: Scan::Range(stack),
            });
        } else {
            input.candidates.push(Candidate {
                goid: g.goid,
                primitives,
                guessed,
                stack: Scan::Range(stack),
            });
        }
    }
    opaque.sort_unstable();
    opaque.dedup();
    input.opaque = opaque;
    let candidates = input.candidates.len();
    let heap = heap_layout(layout, bias);
    let out = reach::run(&mut ProcMemory::new(pid), &heap, &input, budget)?;
    Ok(Walked {
        candidates,
        unreachable: out.unreachable,
        held_by: out
            .held_by
            .into_iter()
            .map(|(goid, kind)| (goid, holder(&kind)))
            .collect(),
        trustworthy: out.stats.reads_failed == 0 && out.stats.spans_rejected == 0,
        bytes_read: out.stats.bytes_read,
        seconds: out.stats.elapsed.as_secs_f64(),
    })
}

/// Whether a wait names its primitive in runtime structures: a channel
/// (send, receive, select: `g.waiting`) or a semaphore (mutexes, wait
/// groups: the semaphore table). `main` (goroutine 1) is never judged: a
/// daemon parks it for good on purpose.
fn waits_on_named_primitive(r: WaitReason) -> bool {
    matches!(
        r,
        WaitReason::ChanSend
            | WaitReason::ChanReceive
            | WaitReason::Select
            | WaitReason::SyncMutex
            | WaitReason::SyncRwmutex
            | WaitReason::SyncWaitgroup
            | WaitReason::Semacquire
    )
}

/// Frames of a `sync.Cond` wait. The runtime keeps a Cond's waiters on the
/// Cond's own list, which nothing in the waiting g points to; the Cond is
/// only named in these frames' slots (receiver and spilled arguments).
const COND_FRAMES: [&str; 3] = [
    "sync.(*Cond).Wait",
    "sync.runtime_notifyListWait",
    "runtime.notifyListWait",
];
/// Frames followed from the park, and bytes taken past a frame (its
/// callee's argument spill area lies in the caller's frame).
const MAX_COND_FRAMES: usize = 16;
const SPILL_BYTES: u64 = 64;
const MAX_FRAME_BYTES: u64 = 64 << 10;

/// Every word of the frames a `sync.Cond` waiter waits in, found along
/// its frame-pointer chain: a guess at its primitive that includes it.
fn cond_words(pid: u32, bin: &GoBinary, bias: u64, g: &G) -> Vec<u64> {
    let mut out = Vec::new();
    let mut bp = g.bp;
    for _ in 0..MAX_COND_FRAMES {
        let Some(frame) = read_words(pid, bp, 16, g) else {
            break;
        };
        let (up, ret) = (frame[0], frame[1]);
        if up <= bp || up - bp > MAX_FRAME_BYTES {
            break;
        }
        let function = bin.symbolize(ret.wrapping_sub(1).wrapping_sub(bias));
        if function.is_some_and(|f| COND_FRAMES.contains(&f.function.as_str())) {
            // The caller's frame, `[bp + 16, up)`, plus the spill area above.
            let len = up + 16 + SPILL_BYTES - (bp + 16);
            out.extend(read_words(pid, bp + 16, len, g).unwrap_or_default());
        }
        bp = up;
    }
    out
}

/// `len` bytes at `at` as words, if they lie within `g`'s stack.
fn read_words(pid: u32, at: u64, len: u64, g: &G) -> Option<Vec<u64>> {
    let end = at.checked_add(len)?.min(g.hi);
    if at < g.lo || end <= at {
        return None;
    }
    let mut buf = vec![0u8; (end - at) as usize];
    mem::read(pid, at, &mut buf).ok()?;
    Some(buf.chunks_exact(8).map(le64).collect())
}

/// What `g` waits on: the channels of its sudog chain, or its semaphore.
/// The sudogs it passes are runtime bookkeeping: opaque.
fn primitives(
    pid: u32,
    layout: &BinLayout,
    g: &G,
    sema: &HashMap<u64, u64>,
    opaque: &mut Vec<u64>,
) -> Vec<u64> {
    if let Some(&addr) = sema.get(&g.addr) {
        return vec![addr];
    }
    let s = layout.offsets.sudog;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut at = g.waiting;
    while at != 0 && out.len() < MAX_SUDOGS && seen.insert(at) {
        let mut b = [0u8; 8];
        let mut word = |off: u32| {
            mem::read(pid, at.wrapping_add(u64::from(off)), &mut b)
                .ok()
                .map(|()| le64(&b))
        };
        let (Some(c), Some(next)) = (word(s.c), word(s.waitlink)) else {
            break;
        };
        opaque.push(at);
        if c != 0 {
            out.push(c);
        }
        at = next;
    }
    out
}

/// Reads the fields of every g the walk needs; dead and idle ones are left out.
fn read_gs(pid: u32, bin: &GoBinary, pointers: &[u64]) -> Vec<G> {
    let o = bin.offsets;
    let fields = [
        o.goid,
        o.atomicstatus,
        o.waitreason,
        o.waiting,
        o.startpc,
        o.sched_sp,
        o.sched_bp,
        o.stack_lo,
        o.stack_hi,
    ];
    let record = fields.into_iter().max().unwrap_or(0) as usize + 8;
    let mut out = Vec::with_capacity(pointers.len());
    mem::read_each_near(pid, pointers, record, |i, bytes| {
        let Some(b) = bytes else { return };
        let at = |off: u32| le64(&b[off as usize..]);
        let status = (at(o.atomicstatus) as u32) & !G_SCAN;
        if !matches!(status, 1..=4 | 8..=10) {
            return;
        }
        let g = G {
            addr: pointers[i],
            goid: at(o.goid),
            status,
            reason: b[o.waitreason as usize],
            waiting: at(o.waiting),
            startpc: at(o.startpc),
            sp: at(o.sched_sp),
            bp: at(o.sched_bp),
            lo: at(o.stack_lo),
            hi: at(o.stack_hi),
        };
        // A torn record: bounds that cannot be a stack.
        if g.lo < g.hi && g.hi - g.lo <= 1 << 30 {
            out.push(g);
        }
    });
    out
}

/// Waiters of the semaphore table: g address → semaphore address.
struct SemaWaiters {
    by_g: HashMap<u64, u64>,
    sudogs: Vec<u64>,
}

/// Walks every treap of `runtime.semtable` (sudogs keyed by semaphore
/// address, `prev`/`next` children, `waitlink` for more waiters on the
/// same address). Bounded, and cycle-proof through `seen`.
fn sema_waiters(pid: u32, layout: &BinLayout, bias: u64) -> SemaWaiters {
    let (s, t) = (layout.offsets.sudog, layout.offsets.sema);
    let mut out = SemaWaiters {
        by_g: HashMap::new(),
        sudogs: Vec::new(),
    };
    let base = layout.roots.semtable.wrapping_add(bias);
    let mut work: Vec<u64> = (0..u64::from(t.entries))
        .filter_map(|i| {
            let at = base.wrapping_add(i * u64::from(t.entry_size) + u64::from(t.root_treap));
            mem::read_u64(pid, at).ok()
        })
        .filter(|&p| p != 0)
        .collect();
    let mut seen = HashSet::new();
    let record = [s.g, s.elem, s.waitlink, s.next, s.prev]
        .into_iter()
        .max()
        .unwrap_or(0) as usize
        + 8;
    let mut buf = vec![0u8; record];
    while let Some(at) = work.pop() {
        if seen.len() >= MAX_SEMA_NODES || !seen.insert(at) || mem::read(pid, at, &mut buf).is_err()
        {
            continue;
        }
        let word = |off: u32| le64(&buf[off as usize..]);
        out.sudogs.push(at);
        let (g, elem) = (word(s.g), word(s.elem));
        if g != 0 && elem != 0 {
            out.by_g.insert(g, elem);
        }
        work.extend(
            [word(s.waitlink), word(s.next), word(s.prev)]
                .into_iter()
                .filter(|&p| p != 0),
        );
    }
    out
}

/// The globals that can hold pointers (`.data`, `.bss`), as roots.
fn globals(layout: &BinLayout, bias: u64) -> Vec<Root> {
    [(".data", layout.globals.data), (".bss", layout.globals.bss)]
        .into_iter()
        .filter(|(_, (lo, hi))| lo < hi)
        .map(|(name, (lo, hi))| Root {
            kind: RootKind::Global { name: name.into() },
            scan: Scan::Range(AddrRange {
                lo: lo.wrapping_add(bias),
                hi: hi.wrapping_add(bias),
            }),
        })
        .collect()
}

/// The prover's layout from the binary's, at this process's addresses.
fn heap_layout(l: &BinLayout, bias: u64) -> HeapLayout {
    let (h, a, s) = (l.offsets.mheap, l.offsets.heap_arena, l.offsets.mspan);
    HeapLayout {
        mheap: l.roots.mheap.wrapping_add(bias),
        mheap_arenas: h.arenas,
        mheap_all_arenas: h.all_arenas,
        arena_spans: a.spans,
        span_start: s.start_addr.offset,
        span_npages: s.npages.offset,
        span_elemsize: s.elemsize.offset,
        span_limit: s.limit.offset,
        span_spanclass: s.spanclass.offset,
        span_state: s.state.offset,
        geometry: ArenaGeometry::LINUX_AMD64,
    }
}

/// Who holds a primitive, as the evidence says it.
fn holder(kind: &RootKind) -> String {
    match kind {
        RootKind::Global { name } => format!("a global in {name}"),
        RootKind::Stack { goid } => format!("goroutine {goid}"),
        RootKind::Runtime { what } => format!("the runtime ({what})"),
        RootKind::Unresolved { addr } => format!("memory outside the heap ({addr:#x})"),
    }
}
