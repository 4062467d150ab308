//! The fixpoint: scan the roots, wake every candidate one of whose
//! primitives got marked, scan its stack as a new root, repeat until no
//! candidate wakes. What is left can never run again.
//!
//! Waking is event-driven rather than a rescan per round: each primitive is
//! classified once (heap slot, root range, stack, nil, unknown), and marking
//! a watched slot or waking a goroutine whose stack holds primitives queues
//! exactly the candidates concerned. Total work is linear in the input.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::heapmap::HeapMap;
use super::mark::{Marker, Waiters};
use super::meter::Meter;
use super::roots::{Input, Outcome, RootKind, Scan};
use super::{Budget, Memory, WalkError};

/// Builds the heap map and proves in one call, within one budget.
#[cfg(test)]
pub fn run<M: Memory + ?Sized>(
    mem: &mut M,
    layout: &super::HeapLayout,
    input: &Input,
    budget: &Budget,
) -> Result<Outcome, WalkError> {
    let heap = HeapMap::build(mem, layout, budget)?;
    prove(mem, &heap, input, budget)
}

/// Per-walk state besides the marker.
struct Wake {
    /// Labels: input roots first, then one `Stack` per candidate.
    labels: Vec<RootKind>,
    woken: Vec<bool>,
    /// Candidates to wake, with what reached them, first come first.
    queue: VecDeque<(usize, RootKind)>,
    /// Slot of a primitive's object → candidates waiting on it.
    heap_waiters: Waiters,
    /// Watched slots that are 16-byte pointer-free blocks.
    packed: HashMap<u64, u64>,
    /// Candidate index → candidates waiting on a primitive on its stack.
    stack_waiters: HashMap<usize, Vec<usize>>,
}

/// Decides which candidates are unreachable. `heap` must come from the same
/// memory; its build cost counts against the same budget.
pub fn prove<M: Memory + ?Sized>(
    mem: &mut M,
    heap: &HeapMap,
    input: &Input,
    budget: &Budget,
) -> Result<Outcome, WalkError> {
    let started = Instant::now();
    let mut meter = Meter::new(mem, budget.max_bytes_read, heap.stats.bytes_read);
    let mut marker = Marker::new(heap, &input.opaque, budget);
    let mut wake = classify(&mut marker, input);
    let roots = input.roots.len();
    for (id, root) in input.roots.iter().enumerate() {
        marker.scan_root(&mut meter, &root.scan, id)?;
    }
    let mut held_by = Vec::new();
    loop {
        for (slot, root) in marker.fired.drain(..) {
            let label = &wake.labels[root];
            for ci in wake.heap_waiters.remove(&slot).unwrap_or_default() {
                let by = match wake.packed.get(&slot) {
                    Some(&addr) if input.candidates[ci].packable => RootKind::Packed { addr },
                    _ => label.clone(),
                };
                wake.queue.push_back((ci, by));
            }
        }
        let Some((ci, by)) = wake.queue.pop_front() else {
            break;
        };
        if std::mem::replace(&mut wake.woken[ci], true) {
            continue;
        }
        let c = &input.candidates[ci];
        held_by.push((c.goid, by));
        for w in wake.stack_waiters.remove(&ci).unwrap_or_default() {
            wake.queue.push_back((w, RootKind::Stack { goid: c.goid }));
        }
        marker.scan_root(&mut meter, &c.stack, roots + ci)?;
    }
    let unreachable = input
        .candidates
        .iter()
        .zip(&wake.woken)
        .filter(|(_, &w)| !w)
        .map(|(c, _)| c.goid)
        .collect();
    let mut stats = heap.stats;
    stats.objects_marked = marker.objects_marked;
    stats.bytes_read = meter.bytes_read;
    stats.reads_failed += meter.reads_failed;
    stats.elapsed += started.elapsed();
    Ok(Outcome {
        unreachable,
        held_by,
        stats,
    })
}

/// Sorts every primitive into the rule that decides it (see
/// [`Candidate::primitives`]) and queues those reachable from the start.
fn classify(marker: &mut Marker<'_>, input: &Input) -> Wake {
    let n = input.candidates.len();
    let mut labels: Vec<RootKind> = input.roots.iter().map(|r| r.kind.clone()).collect();
    labels.extend(
        input
            .candidates
            .iter()
            .map(|c| RootKind::Stack { goid: c.goid }),
    );
    // The first candidate listed for a goid owns it; duplicates are the
    // caller's bug, not a reason to fail.
    let mut by_goid: HashMap<u64, usize> = HashMap::with_capacity(n);
    for (i, c) in input.candidates.iter().enumerate() {
        by_goid.entry(c.goid).or_insert(i);
    }
    // Sorted once so each primitive is placed by binary search: a service
    // has as many stacks as goroutines. Overlapping ranges (a lie) can hide
    // a match; the primitive then counts as unresolved, i.e. reachable.
    let mut ranges: Vec<(u64, u64, usize)> = input
        .roots
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match &r.scan {
            Scan::Range(a) => Some((a.lo, a.hi, i)),
            Scan::Slots(_) => None,
        })
        .collect();
    ranges.sort_unstable();
    let mut stacks: Vec<(u64, u64, u64)> = input
        .stacks
        .iter()
        .map(|s| (s.range.lo, s.range.hi, s.goid))
        .collect();
    stacks.sort_unstable();
    let places = Places {
        ranges,
        stacks,
        by_goid,
    };
    let mut wake = Wake {
        labels,
        woken: vec![false; n],
        queue: VecDeque::new(),
        heap_waiters: Waiters::new(),
        packed: HashMap::new(),
        stack_waiters: HashMap::new(),
    };
    for (ci, c) in input.candidates.iter().enumerate() {
        let classified = c
            .primitives
            .iter()
            .filter(|&&p| classify_one(marker, input, &places, &mut wake, ci, p, c.guessed))
            .count();
        if c.guessed && classified == 0 {
            // Nothing in its frames names a primitive: it cannot be judged.
            let addr = c.primitives.first().copied().unwrap_or(0);
            wake.queue.push_back((ci, RootKind::Unresolved { addr }));
        }
    }
    wake
}

/// Where a primitive that is not in the heap may live.
struct Places {
    /// Root `Scan::Range`s: (lo, hi, root index), sorted.
    ranges: Vec<(u64, u64, usize)>,
    /// Stacks: (lo, hi, goid), sorted.
    stacks: Vec<(u64, u64, u64)>,
    /// Candidate index of each candidate goid.
    by_goid: HashMap<u64, usize>,
}

/// The entry of sorted `[lo, hi)` ranges holding `p`, if any.
fn find<T: Copy>(sorted: &[(u64, u64, T)], p: u64) -> Option<T> {
    let i = sorted.partition_point(|r| r.0 <= p).checked_sub(1)?;
    let r = sorted[i];
    (p < r.1).then_some(r.2)
}

/// Files primitive `p` of candidate `ci` where it can be woken from;
/// false when `p` was skipped (nil, or a guessed word that is no address).
fn classify_one(
    marker: &mut Marker<'_>,
    input: &Input,
    places: &Places,
    wake: &mut Wake,
    ci: usize,
    p: u64,
    guessed: bool,
) -> bool {
    if p == 0 {
        return false; // a nil channel: nothing can ever make it ready
    }
    if let Some((slot, packed)) = marker.watch(p) {
        wake.heap_waiters.entry(slot).or_default().push(ci);
        if packed {
            wake.packed.insert(slot, p);
        }
    } else if let Some(root) = find(&places.ranges, p) {
        wake.queue.push_back((ci, input.roots[root].kind.clone()));
    } else if let Some(goid) = find(&places.stacks, p) {
        match places.by_goid.get(&goid) {
            Some(&owner) => wake.stack_waiters.entry(owner).or_default().push(ci),
            None => wake.queue.push_back((ci, RootKind::Stack { goid })),
        }
    } else if guessed {
        return false;
    } else {
        wake.queue.push_back((ci, RootKind::Unresolved { addr: p }));
    }
    true
}
