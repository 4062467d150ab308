//! What a parked goroutine waits on, read from the runtime's own records:
//! the channels of its sudog chain, the semaphore it sleeps on in the
//! semaphore table, or (for a `sync.Cond`) the words of its waiting frames.

use std::collections::{HashMap, HashSet};

use super::{gread::G, mem, scan::le64, stackscan};
use crate::gobin::{GoBinary, HeapLayout as BinLayout, WaitReason};

/// Sudogs followed per goroutine (a select has one per case).
const MAX_SUDOGS: usize = 64;
/// Semaphore-table nodes visited per walk.
const MAX_SEMA_NODES: usize = 1 << 20;

/// Whether a wait names its primitive in runtime structures: a channel
/// (send, receive, select: `g.waiting`) or a semaphore (mutexes, wait
/// groups: the semaphore table). `main` (goroutine 1) is never judged: a
/// daemon parks it for good on purpose.
pub(super) fn waits_on_named_primitive(r: WaitReason) -> bool {
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

/// Before Go 1.26 a `sync.Cond` waiter's `notifyList` is named only by its
/// frames: the live pointer slots of `sync.(*Cond).Wait` (the Cond itself,
/// used after the wait to lock `c.L`), read through the stack maps. `None`
/// when the frames cannot be resolved.
pub(super) fn cond_frames(pid: u32, bin: &GoBinary, bias: u64, g: &G) -> Option<Vec<u64>> {
    let in_cond = |pc: u64| {
        bin.symbolize(pc.wrapping_sub(1).wrapping_sub(bias))
            .is_some_and(|f| f.function == COND_FRAMES[0])
    };
    stackscan::frame_values(pid, bin, bias, &g.parked(), in_cond)
        .ok()
        .filter(|v| !v.is_empty())
}

/// Every word of the frames a `sync.Cond` waiter waits in, found along
/// its frame-pointer chain: a guess at its primitive that includes it.
pub(super) fn cond_words(pid: u32, bin: &GoBinary, bias: u64, g: &G) -> Vec<u64> {
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

/// The `notifyList` a `sync.Cond` waiter waits on, where the runtime
/// records it: since Go 1.26 `notifyListWait` hangs its sudog on
/// `g.waiting` with the list in `elem` (a `maybeTraceablePtr`, whose second
/// word is the address; a plain pointer before). `None` before Go 1.26
/// (no sudog on `g.waiting`): the caller then guesses from the frames.
pub(super) fn cond_list(pid: u32, layout: &BinLayout, g: &G, opaque: &mut Vec<u64>) -> Option<u64> {
    let s = layout.offsets.sudog;
    if g.waiting == 0 {
        return None;
    }
    // `elem` is two words when `c` follows it 16 bytes on.
    let at = if s.c.checked_sub(s.elem) == Some(16) {
        s.elem + 8
    } else {
        s.elem
    };
    let list = mem::read_u64(pid, g.waiting.wrapping_add(u64::from(at))).ok()?;
    opaque.push(g.waiting);
    (list != 0).then_some(list)
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
pub(super) fn primitives(
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

/// Waiters of the semaphore table: g address → semaphore address.
pub(super) struct SemaWaiters {
    pub(super) by_g: HashMap<u64, u64>,
    pub(super) sudogs: Vec<u64>,
}

/// Walks every treap of `runtime.semtable` (sudogs keyed by semaphore
/// address, `prev`/`next` children, `waitlink` for more waiters on the
/// same address). Bounded, and cycle-proof through `seen`.
pub(super) fn sema_waiters(pid: u32, layout: &BinLayout, bias: u64) -> SemaWaiters {
    let (s, t) = (layout.offsets.sudog, layout.offsets.sema);
    let mut out = SemaWaiters {
        by_g: HashMap::new(),
        sudogs: Vec::new(),
    };
    let base = layout.roots.semtable.wrapping_add(bias);
    let mut pending: Vec<u64> = (0..u64::from(t.entries))
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
    while let Some(at) = pending.pop() {
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
        pending.extend(
            [word(s.waitlink), word(s.next), word(s.prev)]
                .into_iter()
                .filter(|&p| p != 0),
        );
    }
    out
}
