//! One module per hooked Go runtime function, plus what they share.

mod block;
mod close;
mod create;
mod exec;
mod exit;
mod send_closed;

use aya_ebpf::programs::ProbeContext;
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
};
use aya_log_ebpf::debug;
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use gostray_common::{ChanEvent, GoroutineEvent, ProbeErrorKind, ProcConfig, EVENT_PCS};

use crate::maps::{ERRORS, EVENTS, TARGETS};

/// Why a probe gave up; counted in `ERRORS`, never silently dropped.
pub enum ProbeError {
    ReadUser,
    RingFull,
}

/// The watched process this probe fired in, or `None` for any other process.
#[inline(always)]
fn current_target() -> Option<(u32, *mut ProcConfig)> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    TARGETS.get_ptr_mut(&pid).map(|cfg| (pid, cfg))
}

/// Reads a `u64` field at `base + offset` in the target's memory.
#[inline(always)]
fn read_u64(base: u64, offset: u32) -> Result<u64, ProbeError> {
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

/// Up to [`EVENT_PCS`] return addresses up the frame-pointer chain from
/// `fp`; stops quietly at the first unreadable or null frame.
#[inline(always)]
fn return_pcs(mut fp: u64) -> [u64; EVENT_PCS] {
    let mut pcs = [0u64; EVENT_PCS];
    for slot in &mut pcs {
        if fp == 0 {
            break;
        }
        let (Ok(pc), Ok(next)) = (read_u64(fp, 8), read_u64(fp, 0)) else {
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
