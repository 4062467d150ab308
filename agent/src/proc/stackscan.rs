//! The live pointer slots of a parked goroutine's stack, found the way the
//! garbage collector finds them (`runtime.scanstack`): frame by frame from
//! the saved PC and SP, each frame's stack maps naming its live words, then
//! the stack objects (address-taken locals) that a live word points into,
//! transitively.
//!
//! A conservative scan of the same stack keeps whatever a dead local still
//! holds alive, which hides a leak behind a frame that has long moved on.
//! Frames are unwound with the SP-delta table, as the runtime's own
//! unwinder does, rather than the frame-pointer chain: `mcall` saves the
//! parked goroutine's BP one frame up (Go ≥ 1.21, CL 476235), and assembly
//! frames need not keep a frame pointer.
//!
//! Anything that cannot be resolved is an error: the caller then scans the
//! whole stack conservatively, so a root is never lost.

use super::{mem, scan::le64};
use crate::gobin::{FrameLayout, GOffsets, GoBinary, NoFrame};

/// Frames followed per stack; deeper stacks are scanned conservatively.
const MAX_FRAMES: usize = 1024;
/// Largest stack (from SP up) read to be walked.
const MAX_STACK: u64 = 8 << 20;
const PTR: u64 = 8;

/// A parked goroutine: where it resumes and its stack bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    pub pc: u64,
    pub sp: u64,
    pub lo: u64,
    pub hi: u64,
}

/// Offsets of `g._panic` and `g._defer`: records the stack maps do not
/// describe (`scanstack` scans them apart), so a goroutine with either is
/// scanned conservatively. `runtime.g` begins `stack, stackguard0,
/// stackguard1, _panic, _defer, m` in every release read (1.19–1.27); the
/// layouts give `stack` and `m`, so the two are known when those sit where
/// they always do.
pub(super) fn panic_defer(o: &GOffsets) -> Option<(u32, u32)> {
    (o.stack_lo == 0 && o.stack_hi == 8 && o.m == 48).then_some((32, 40))
}

/// The addresses of the words of `g`'s stack that can hold live pointers,
/// sorted. `bias` is the executable's load bias.
pub fn live_slots(pid: u32, bin: &GoBinary, bias: u64, g: &Parked) -> Result<Vec<u64>, NoFrame> {
    let stack = read_stack(pid, g)?;
    slots(&stack, g, |pc, innermost| {
        bin.frame_layout(pc.wrapping_sub(bias), innermost)
    })
}

/// `g`'s stack from its saved SP up: the bytes every walk of its frames reads.
fn read_stack(pid: u32, g: &Parked) -> Result<Vec<u8>, NoFrame> {
    if !(g.lo <= g.sp && g.sp < g.hi && g.sp.is_multiple_of(PTR)) || g.hi - g.sp > MAX_STACK {
        return Err(NoFrame("saved SP outside the stack"));
    }
    let len = usize::try_from(g.hi - g.sp).map_err(|_| NoFrame("stack size"))?;
    let mut stack = vec![0u8; len];
    mem::read(pid, g.sp, &mut stack).map_err(|_| NoFrame("unreadable stack"))?;
    Ok(stack)
}

/// The values of the live pointer slots of `g`'s frames whose (run-time)
/// PC `want` picks: what those frames still use after their call.
pub fn frame_values(
    pid: u32,
    bin: &GoBinary,
    bias: u64,
    g: &Parked,
    want: impl Fn(u64) -> bool,
) -> Result<Vec<u64>, NoFrame> {
    let stack = read_stack(pid, g)?;
    let mut picked = Vec::new();
    slots_with(
        &stack,
        g,
        |pc, innermost| bin.frame_layout(pc.wrapping_sub(bias), innermost),
        &mut |pc, frame| {
            if want(pc) {
                picked.extend_from_slice(frame);
            }
        },
    )?;
    Ok(picked
        .into_iter()
        .filter_map(|a| {
            let at = usize::try_from(a - g.sp).ok()?;
            stack.get(at..at + 8).map(le64)
        })
        .filter(|&v| v != 0)
        .collect())
}

/// [`live_slots`] over `stack`, the bytes from `g.sp` to `g.hi`, with
/// `layout` giving a frame's maps at a (run-time) PC.
pub(super) fn slots(
    stack: &[u8],
    g: &Parked,
    layout: impl Fn(u64, bool) -> Result<FrameLayout, NoFrame>,
) -> Result<Vec<u64>, NoFrame> {
    slots_with(stack, g, layout, &mut |_, _| {})
}

/// [`slots`], telling `on_frame` each frame's PC and its own live slots.
fn slots_with(
    stack: &[u8],
    g: &Parked,
    layout: impl Fn(u64, bool) -> Result<FrameLayout, NoFrame>,
    on_frame: &mut dyn FnMut(u64, &[u64]),
) -> Result<Vec<u64>, NoFrame> {
    let word = |addr: u64| -> Option<u64> {
        let at = usize::try_from(addr.checked_sub(g.sp)?).ok()?;
        stack.get(at..at.checked_add(8)?).map(le64)
    };
    let mut slots = Vec::new();
    let mut objects = Vec::new();
    let (mut pc, mut sp) = (g.pc, g.sp);
    for depth in 0..MAX_FRAMES {
        let frame = layout(pc, depth == 0)?;
        let first = slots.len();
        for off in frame.pointers {
            let at = sp.checked_add(off).filter(|&a| word(a).is_some());
            slots.push(at.ok_or(NoFrame("live slot outside the stack"))?);
        }
        on_frame(pc, &slots[first..]);
        for (off, size) in frame.objects {
            let lo = sp.checked_add(off);
            let hi = lo
                .and_then(|lo| lo.checked_add(size))
                .filter(|&hi| hi <= g.hi);
            let (Some(lo), Some(hi)) = (lo, hi) else {
                return Err(NoFrame("stack object outside the stack"));
            };
            objects.push((lo, hi));
        }
        if frame.top {
            reach_objects(&word, &mut slots, &objects, g);
            slots.sort_unstable();
            slots.dedup();
            return Ok(slots);
        }
        // The caller's SP is this frame's FP; its PC is the return address
        // (below FP on amd64, at SP on arm64). Each frame lies above the
        // last, so the walk ends.
        let fp = sp.checked_add(frame.size).filter(|&fp| fp > sp);
        let ret = fp.and_then(|_| word(sp.checked_add(frame.ret)?));
        let (Some(fp), Some(ret @ 1..)) = (fp, ret) else {
            return Err(NoFrame("the frame chain leaves the stack"));
        };
        (pc, sp) = (ret, fp);
    }
    Err(NoFrame("too many frames"))
}

/// Adds to `slots` every word of the stack objects a live slot reaches,
/// directly or through other reached objects, as `scanstack` does with
/// its pointer buffer. An object is scanned whole (the runtime follows its
/// type's pointer mask; every word is the safe superset).
fn reach_objects(
    word: &impl Fn(u64) -> Option<u64>,
    slots: &mut Vec<u64>,
    objects: &[(u64, u64)],
    g: &Parked,
) {
    let into_stack = |v: u64| (g.sp..g.hi).contains(&v);
    let mut pending: Vec<u64> = slots
        .iter()
        .filter_map(|&a| word(a))
        .filter(|&v| into_stack(v))
        .collect();
    let mut scanned = vec![false; objects.len()];
    while let Some(p) = pending.pop() {
        for (i, &(lo, hi)) in objects.iter().enumerate() {
            if scanned[i] || !(lo..hi).contains(&p) {
                continue;
            }
            scanned[i] = true;
            for at in ((lo & !(PTR - 1))..hi).step_by(PTR as usize) {
                slots.push(at);
                pending.extend(word(at).filter(|&v| into_stack(v)));
            }
        }
    }
}

#[cfg(test)]
#[path = "stackscan_tests.rs"]
mod tests;
