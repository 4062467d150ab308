//! Proving parked goroutines unreachable in a live process: the goroutine
//! table, the semaphore table and the globals are read from its memory and
//! handed to the prover ([`crate::reach`]), which walks the heap.
//!
//! Only reads: the process is never stopped. Everything read may be torn,
//! so a goroutine whose wait cannot be resolved is treated as able to run
//! (a root), which can only hide a leak, never invent one.

use std::collections::HashMap;

use super::{
    blockmem::ProcMemory,
    bookkeeping::{all_ms, all_ps},
    globals::globals,
    gread::{read_gs, G},
    scan::read_allgs,
    specials::special_roots,
    stackscan,
    waits::{
        cond_frames, cond_list, cond_words, primitives, sema_waiters, waits_on_named_primitive,
    },
};
use crate::{
    gobin::{GoBinary, HeapLayout as BinLayout, Machine, WaitReason},
    reach::{
        self, AddrRange, ArenaGeometry, Budget, Candidate, HeapLayout, HeapMap, Input, Root,
        RootKind, Scan, StackBounds, WalkError,
    },
    tracker::input::{Walked, G_LEAKED, G_SYSCALL, G_WAITING},
};

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
    if pointers.len() as u64 > budget.max_goroutines {
        return Err(WalkError::OverBudget { what: "goroutines" });
    }
    let gs = read_gs(pid, bin, &pointers);
    let sema = sema_waiters(pid, layout, bias);
    let mut opaque: Vec<u64> = pointers.clone();
    opaque.extend(sema.sudogs.iter().copied());
    opaque.extend(all_ms(pid, bin, bias));
    let (ps, timers) = all_ps(pid, layout, bin.tiny, bias);
    opaque.extend(ps);
    let mut input = Input {
        roots: globals(pid, layout, bias),
        ..Input::default()
    };
    input.roots.extend(timers);
    let mut stacks = stack_scans(pid, bin, bias, &gs);
    let again: HashMap<u64, G> = read_gs(pid, bin, &pointers)
        .into_iter()
        .map(|g| (g.addr, g))
        .collect();
    for (g, scan) in gs.iter().zip(&mut stacks) {
        // A goroutine that ran while its stack was read may have moved
        // its frames: its maps were for another stack.
        if matches!(scan, Scan::Slots(_)) && again.get(&g.addr).is_none_or(|a| !g.same_park(a)) {
            *scan = Scan::Range(g.live_stack());
        }
    }
    for (g, stack) in gs.iter().zip(stacks) {
        input.stacks.push(StackBounds {
            goid: g.goid,
            range: AddrRange { lo: g.lo, hi: g.hi },
        });
        let judged = g.goid != 1 && matches!(g.status, G_WAITING | G_LEAKED) && is_user(g.startpc);
        let (primitives, guessed) = match bin.wait_reason(g.reason) {
            _ if !judged => (Vec::new(), false),
            WaitReason::SyncCond => match cond_list(pid, layout, g, &mut opaque) {
                Some(list) => (vec![list], false),
                None => match cond_frames(pid, bin, bias, g) {
                    Some(live) => (live, false),
                    None => (cond_words(pid, bin, bias, g), true),
                },
            },
            r if waits_on_named_primitive(r) => {
                (primitives(pid, layout, g, &sema.by_g, &mut opaque), false)
            }
            _ => (Vec::new(), false),
        };
        if primitives.is_empty() {
            input.roots.push(Root {
                kind: RootKind::Stack { goid: g.goid },
                scan: stack,
            });
        } else {
            let packable = packable(bin.wait_reason(g.reason), &primitives);
            input.candidates.push(Candidate {
                goid: g.goid,
                primitives,
                guessed,
                packable,
                stack,
            });
        }
    }
    opaque.sort_unstable();
    opaque.dedup();
    input.opaque = opaque;
    let candidates = input.candidates.len();
    let heap = heap_layout(layout, bin.span_specials, bias, bin.machine);
    let mut memory = ProcMemory::new(pid);
    let map = HeapMap::build(&mut memory, &heap, budget)?;
    input.roots.extend(special_roots(pid, &map, bin.version));
    let out = reach::prove(&mut memory, &map, &input, budget)?;
    if out.stats.reads_failed != 0 || out.stats.spans_rejected != 0 {
        tracing::debug!(
            pid,
            reads_failed = out.stats.reads_failed,
            spans_rejected = out.stats.spans_rejected,
            "heap walk not trustworthy: its verdicts wait for a clean walk"
        );
    }
    Ok(Walked {
        candidates,
        unreachable: out.unreachable,
        // A primitive reached only through a packed block proves nothing
        // either way: neither held nor unreachable.
        held_by: out
            .held_by
            .into_iter()
            .filter(|(_, kind)| !matches!(kind, RootKind::Packed { .. }))
            .map(|(goid, kind)| (goid, holder(&kind)))
            .collect(),
        trustworthy: out.stats.reads_failed == 0 && out.stats.spans_rejected == 0,
        bytes_read: out.stats.bytes_read,
        seconds: out.stats.elapsed.as_secs_f64(),
    })
}

/// How each goroutine's stack is scanned: the live slots of a parked one
/// (its stack maps), else every word from its saved SP (or its whole
/// stack, when it runs).
fn stack_scans(pid: u32, bin: &GoBinary, bias: u64, gs: &[G]) -> Vec<Scan> {
    let (mut precise, mut fallback) = (0usize, 0usize);
    let out = gs
        .iter()
        .map(|g| {
            // A goroutine in a system call saved its pc and sp on the way
            // in (`reentersyscall`) and its user stack stays still until
            // it returns: its frames are read like a parked one's (the
            // re-read below catches one that returned meanwhile). A
            // conservative scan of its whole stack would keep the dead
            // locals of everything it ran before, as `main` blocked reading
            // stdin shows.
            if !matches!(g.status, G_WAITING | G_LEAKED | G_SYSCALL) || g.defers {
                return Scan::Range(g.live_stack());
            }
            match stackscan::live_slots(pid, bin, bias, &g.parked()) {
                Ok(slots) => {
                    precise += 1;
                    Scan::Slots(slots)
                }
                Err(e) => {
                    fallback += 1;
                    tracing::debug!(pid, goid = g.goid, %e, "stack scanned conservatively");
                    Scan::Range(g.live_stack())
                }
            }
        })
        .collect();
    tracing::debug!(
        pid,
        precise,
        fallback,
        "parked stacks read through stack maps"
    );
    out
}

/// The prover's layout from the binary's, at this process's addresses.
fn heap_layout(
    l: &BinLayout,
    span_specials: Option<u32>,
    bias: u64,
    machine: Machine,
) -> HeapLayout {
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
        span_specials,
        // The arena index differs: amd64 folds sign-extended addresses in
        // with a base offset, arm64 has none. With amd64's on arm64 no
        // heap address maps to an arena and every primitive looks held.
        geometry: match machine {
            Machine::Amd64 => ArenaGeometry::LINUX_AMD64,
            Machine::Arm64 => ArenaGeometry::LINUX_ARM64,
        },
    }
}

/// Whether the waited-on semaphore is a lone `sync.Mutex`'s: 8 bytes
/// without pointers (`state int32; sema uint32`, so the semaphore sits 4
/// bytes into an 8-byte slot), which the tiny allocator packs with other
/// small values. Go 1.19 names mutex waits `semacquire`; a `WaitGroup`'s
/// semaphore sits at an 8-byte boundary, a `RWMutex`'s in a 24-byte object.
fn packable(reason: WaitReason, primitives: &[u64]) -> bool {
    matches!(reason, WaitReason::SyncMutex | WaitReason::Semacquire)
        && primitives.iter().all(|p| p % 8 == 4)
}

/// Who holds a primitive, as the evidence says it.
fn holder(kind: &RootKind) -> String {
    match kind {
        RootKind::Global { name } => format!("a global in {name}"),
        RootKind::Stack { goid } => format!("goroutine {goid}"),
        RootKind::Runtime { what } => format!("the runtime ({what})"),
        RootKind::Unresolved { addr } => format!("memory outside the heap ({addr:#x})"),
        RootKind::Packed { addr } => format!("a 16-byte block shared with its mutex ({addr:#x})"),
    }
}
