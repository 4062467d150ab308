//! One module per hooked Go runtime function, plus what they share.

mod block;
mod close;
mod create;
mod exec;
mod exit;
mod fatal;
mod send_closed;

use aya_ebpf::programs::ProbeContext;
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
};
use aya_log_ebpf::debug;
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use gostray_common::{hit, ChanEvent, GoroutineEvent, ProbeErrorKind, ProcConfig, EVENT_PCS};

use crate::maps::{ERRORS, EVENTS, G_SPAN_WORDS, HITS, TARGETS};

/// Why a probe gave up; counted in `ERRORS`, never silently dropped.
pub enum ProbeError {
    ReadUser,
    RingFull,
}

/// The watched process this probe fired in, or `None` for any other
/// process; a hit in a watched one is counted under `program` (`hit::*`).
#[inline(always)]
fn current_target(program: u32) -> Option<(u32, *mut ProcConfig)> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let cfg = TARGETS.get_ptr_mut(&pid)?;
    // SAFETY: `cfg` comes from a successful lookup; a per-CPU row is only
    // touched by this CPU.
    unsafe {
        if let Some(row) = HITS.get_ptr_mut((*cfg).slot) {
            (*row)[program as usize & (hit::COLUMNS - 1)] += 1;
        }
    }
    Some((pid, cfg))
}

/// Reads a `u64` field at `base + offset` in the target's memory.
#[inline(always)]
pub(crate) fn read_u64(base: u64, offset: u32) -> Result<u64, ProbeError> {
    // SAFETY: bpf_probe_read_user validates the address; a bad one is an error.
    unsafe { bpf_probe_read_user((base + u64::from(offset)) as *const u64) }
        .map_err(|_| ProbeError::ReadUser)
}

/// Reads a `u32` field at `base + offset` in the target's memory.
#[inline(always)]
fn read_u32(base: u64, offset: u32) -> Result<u32, ProbeError> {
    // SAFETY: as in `read_u64`.
    unsafe { bpf_probe_read_user((base + u64::from(offset)) as *const u32) }
        .map_err(|_| ProbeError::ReadUser)
}

/// Reads two consecutive `u64`s at `base + offset` in one helper call.
#[inline(always)]
fn read_pair(base: u64, offset: u32) -> Result<[u64; 2], ProbeError> {
    // SAFETY: as in `read_u64`.
    unsafe { bpf_probe_read_user((base + u64::from(offset)) as *const [u64; 2]) }
        .map_err(|_| ProbeError::ReadUser)
}

/// Words of `runtime.g` read at once from `goid` on: enough to reach
/// `startpc` in every release from 1.19 to 1.27 (at most 20 words).
const G_SPAN_READ: usize = 24;

/// The words of `runtime.g` at `g + from`, `G_SPAN_WORDS` of them, in
/// this CPU's scratch slot.
#[inline(always)]
fn read_g_span(g: u64, from: u32) -> Result<&'static [u64; G_SPAN_WORDS], ProbeError> {
    let slot = crate::maps::G_SPAN
        .get_ptr_mut(0)
        .ok_or(ProbeError::ReadUser)?;
    // SAFETY: `slot` is this CPU's map value, written only by this program
    // while it runs; the helper validates the user address.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            slot.cast(),
            (G_SPAN_READ * 8) as u32,
            (g + u64::from(from)) as *const core::ffi::c_void,
        )
        .eq(&0)
        .then_some(&*slot)
        .ok_or(ProbeError::ReadUser)
    }
}

/// The word of a span read from `from` that holds the field at `offset`,
/// or `None` when the field lies outside the span.
#[inline(always)]
fn span_word(span: &[u64; G_SPAN_WORDS], from: u32, offset: u32) -> Option<u64> {
    let rel = offset.wrapping_sub(from);
    // The masked index goes through a volatile slot: otherwise LLVM folds
    // the mask into the range check below and the verifier, which sees the
    // check on a copy of the register, rejects the load as unbounded.
    let mut index = ((rel >> 3) as usize) & (G_SPAN_WORDS - 1);
    // SAFETY: a local the function owns.
    index = unsafe { core::ptr::read_volatile(&raw const index) };
    let word = span[index & (G_SPAN_WORDS - 1)];
    (rel % 8 == 0 && (rel as usize) < G_SPAN_READ * 8).then_some(word)
}

/// Up to [`EVENT_PCS`] return addresses up the frame-pointer chain from
/// `fp`, one read per frame (`[fp]` = caller's fp, `[fp+8]` = return
/// address); stops quietly at the first unreadable or null frame.
#[inline(always)]
fn return_pcs(mut fp: u64) -> [u64; EVENT_PCS] {
    let mut pcs = [0u64; EVENT_PCS];
    for slot in &mut pcs {
        if fp == 0 {
            break;
        }
        let Ok([next, pc]) = read_pair(fp, 0) else {
            break;
        };
        *slot = pc;
        fp = next;
    }
    pcs
}

/// Submits `event` without waking the reader: the agent drains on a short
/// timer, because a wakeup per event costs more than the probe itself on
/// small machines.
#[inline(always)]
fn submit(cfg: *mut ProcConfig, mut event: GoroutineEvent) -> Result<(), ProbeError> {
    // SAFETY: a helper call with no arguments.
    event.ktime_ns = unsafe { bpf_ktime_get_ns() };
    output(cfg, &event)
}

/// Like [`submit`], for a [`ChanEvent`].
#[inline(always)]
fn submit_chan(cfg: *mut ProcConfig, mut event: ChanEvent) -> Result<(), ProbeError> {
    // SAFETY: a helper call with no arguments.
    event.ktime_ns = unsafe { bpf_ktime_get_ns() };
    output(cfg, &event)
}

#[inline(always)]
fn output<T: 'static>(cfg: *mut ProcConfig, event: &T) -> Result<(), ProbeError> {
    if EVENTS
        .output::<T>(event, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
    {
        // SAFETY: `cfg` points into a TARGETS value. The BPF target has no
        // `AtomicU64::fetch_add`; this intrinsic lowers to BPF_ATOMIC add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*cfg).lost, 1) };
        return Err(ProbeError::RingFull);
    }
    Ok(())
}

/// Turns a probe result into the program's return value, counting failures.
/// The log line is on the failure path only, and compiled out of the
/// program's work unless the agent loads it with `--kernel-log debug`.
#[inline(always)]
fn finish(ctx: &ProbeContext, result: Result<(), ProbeError>) -> u32 {
    if let Err(err) = result {
        let kind = match err {
            ProbeError::ReadUser => ProbeErrorKind::ReadUser,
            ProbeError::RingFull => ProbeErrorKind::RingFull,
        };
        if let Some(slot) = ERRORS.get_ptr_mut(kind as u32) {
            // SAFETY: a per-CPU slot is only touched by this CPU.
            unsafe { *slot += 1 };
        }
        debug!(ctx, "probe error kind={}", kind as u32);
    }
    0
}
