use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use gostray_common::{
    death_cookie, death_source, DeathEvent, EventKind, ProcConfig, DEATH_MSG, DEATH_PCS,
    OFFSET_ABSENT,
};

use super::{current_target, finish, read_pair, read_u64, ProbeError};
use crate::{
    goabi,
    maps::{DIED, EVENTS, FATAL_HITS},
};

/// `abi.Kind` of a string (`Kind_ & KindMask`), the same from Go 1.19 to 1.27.
const KIND_STRING: u32 = 24;
/// Offset of `Kind_` in `abi.Type` (`runtime._type` before Go 1.21): after
/// size, ptrdata, hash, tflag, align and fieldAlign, in every release.
const TYPE_KIND: u32 = 23;

/// The runtime's fatal paths: `runtime.throw(s string)` and
/// `runtime.fatal(s string)` (a fatal error: concurrent map writes, all
/// goroutines asleep, unlock of an unlocked mutex, stack overflow, out of
/// memory…) and `runtime.fatalpanic(msgs *_panic)` (an unrecovered panic,
/// whose value the runtime has already turned into a string when it was
/// an error or a Stringer). None of them returns, and none is reached
/// while the program is healthy. The site is the `push rbp` of the
/// prologue, or on Go 1.19 (no emulated instruction before the arguments
/// are overwritten; arm64, whose prologue stores are single-stepped) the
/// call to `runtime.systemstack`, whose closure holds the arguments at an
/// offset the agent decoded (attach cookie, see `death_cookie`).
/// Only the first hit of a process is sent (two goroutines can throw at
/// once): see the `DIED` map.
/// Checked on Go 1.19, 1.24, 1.27 (amd64) and 1.19, 1.27 (arm64, emulated).
#[uprobe]
pub fn fatal_error(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_fatal_error(&ctx))
}

fn try_fatal_error(ctx: &ProbeContext) -> Result<(), ProbeError> {
    if let Some(hits) = FATAL_HITS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot is only touched by this CPU.
        unsafe { *hits += 1 };
    }
    let Some((pid, cfg_ptr)) = current_target(gostray_common::hit::FATAL) else {
        return Ok(());
    };
    // Only the first hit of a process goes on: the insert is atomic in the
    // kernel, and refused once the PID is there.
    if DIED.insert(&pid, &1, u64::from(BPF_NOEXIST)).is_err() {
        return Ok(());
    }
    // SAFETY: the pointer comes from a successful map lookup.
    let cfg = unsafe { *cfg_ptr };
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    let [rax, rbx, _] = goabi::first_args(ctx);
    let [a0, a1] = if cookie & death_cookie::CLOSURE != 0 {
        read_pair(rax, death_cookie::closure_offset(cookie) as u32)?
    } else {
        [rax, rbx]
    };
    // At the prologue the return address is at [rsp] and RBP is the
    // caller's frame; at the call inside, RBP is the function's own frame.
    // On arm64 the entry site usually lies past the prologue, where R29 is
    // already the function's own frame and holds LR at [fp+8]: then the
    // walk starts with it and LR is not repeated.
    let fp = goabi::frame_pointer(ctx);
    let first_pc = if cookie & death_cookie::CLOSURE != 0 {
        0
    } else {
        let ret = goabi::entry_return_address(ctx)?;
        if read_pair(fp, 0).is_ok_and(|[_, own]| own == ret) {
            0
        } else {
            ret
        }
    };
    let (goid, first_pc, fp) = dying_goroutine(goabi::current_g(ctx), &cfg, first_pc, fp)?;

    let Some(mut entry) = EVENTS.reserve::<DeathEvent>(0) else {
        // SAFETY: as above.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*cfg_ptr).lost, 1)
        };
        return Err(ProbeError::RingFull);
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved ring-buffer record, written field by
    // field (it is too large for the BPF stack); every field is set below.
    unsafe {
        (*e).kind = EventKind::Death as u32;
        (*e).pid = pid;
        (*e).goid = goid;
        (*e).value_type = 0;
        (*e).value_kind = 0;
        (*e).msg_len = 0;
        (*e).full_len = 0;
        let (ptr, len) = if cookie & death_cookie::PANIC != 0 {
            (*e).source = death_source::PANIC;
            panic_string(
                a0,
                cfg.panic_arg,
                &mut (*e).value_type,
                &mut (*e).value_kind,
            )
        } else {
            (*e).source = death_source::THROW;
            (a0, a1)
        };
        if ptr != 0 && len != 0 {
            (*e).full_len = len;
            let n = if len > DEATH_MSG as u64 {
                DEATH_MSG as u32
            } else {
                len as u32
            };
            if read_bytes(&mut (*e).msg, ptr, n) {
                (*e).msg_len = n;
            }
        }
        (*e).npcs = stack(&mut (*e).pcs, first_pc, fp);
        (*e).ktime_ns = bpf_ktime_get_ns();
    }
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    Ok(())
}

/// The goroutine the death is about and where its stack starts. On the
/// system stack (g0: `newstack`'s "stack overflow") it is the M's current
/// user goroutine, from its saved PC and frame pointer; with none on the M
/// (`checkdead`'s "all goroutines are asleep", found by whichever M went
/// idle last) it is goroutine 1, `allgs[0]`, as the runtime's own dump
/// starts with it: where `main` is stuck.
#[inline(always)]
fn dying_goroutine(
    g: u64,
    cfg: &ProcConfig,
    first_pc: u64,
    fp: u64,
) -> Result<(u64, u64, u64), ProbeError> {
    let goid = read_u64(g, cfg.g_goid)?;
    if goid != 0 || cfg.g_m == OFFSET_ABSENT || cfg.m_curg == OFFSET_ABSENT {
        return Ok((goid, first_pc, fp));
    }
    let m = read_u64(g, cfg.g_m)?;
    let mut curg = if m == 0 { 0 } else { read_u64(m, cfg.m_curg)? };
    if curg == 0 && cfg.allgs != 0 {
        let array = read_u64(cfg.allgs, 0)?;
        curg = if array == 0 { 0 } else { read_u64(array, 0)? };
    }
    if curg == 0 || curg == g || cfg.g_sched_pc == OFFSET_ABSENT {
        return Ok((goid, first_pc, fp));
    }
    let pc = read_u64(curg, cfg.g_sched_pc)?;
    if pc == 0 {
        // Running, not parked: no saved stack to show.
        return Ok((goid, first_pc, fp));
    }
    let bp = read_u64(curg, cfg.g_sched_bp)?;
    Ok((read_u64(curg, cfg.g_goid)?, pc, bp))
}

/// The string a panic's value holds (its data word points at a string
/// header when its type's kind is string), and its type and kind.
#[inline(always)]
fn panic_string(p: u64, arg: u32, ty: &mut u64, kind: &mut u32) -> (u64, u64) {
    let Ok([typ, data]) = read_pair(p, arg) else {
        return (0, 0);
    };
    *ty = typ;
    if typ == 0 {
        return (0, 0);
    }
    // SAFETY: the helper validates the address.
    let k = unsafe {
        aya_ebpf::helpers::bpf_probe_read_user((typ + u64::from(TYPE_KIND)) as *const u8)
    }
    .map_or(0, u32::from);
    *kind = k & 0x1f;
    if *kind != KIND_STRING || data == 0 {
        return (0, 0);
    }
    read_pair(data, 0).map_or((0, 0), |[ptr, len]| (ptr, len))
}

/// Copies `n` (≤ [`DEATH_MSG`]) bytes at `src` into `dst`.
#[inline(always)]
fn read_bytes(dst: &mut [u8; DEATH_MSG], src: u64, n: u32) -> bool {
    // The mask gives the verifier its bound whatever LLVM made of the clamp.
    let n = n & (2 * DEATH_MSG as u32 - 1);
    if n == 0 || n > DEATH_MSG as u32 {
        return false;
    }
    // SAFETY: `dst` holds DEATH_MSG bytes and `n` is at most that; the
    // helper validates the user address.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            dst.as_mut_ptr().cast(),
            n,
            src as *const core::ffi::c_void,
        ) == 0
    }
}

/// The stack from `first_pc` (0: none) and the frame-pointer chain at `fp`.
#[inline(always)]
fn stack(pcs: &mut [u64; DEATH_PCS], first_pc: u64, mut fp: u64) -> u32 {
    let mut n = 0u32;
    let mut i = 0usize;
    if first_pc != 0 {
        pcs[0] = first_pc;
        i = 1;
        n = 1;
    }
    while i < DEATH_PCS {
        if fp == 0 {
            break;
        }
        let Ok([next, pc]) = read_pair(fp, 0) else {
            break;
        };
        if pc == 0 {
            break;
        }
        pcs[i] = pc;
        n += 1;
        i += 1;
        fp = next;
    }
    n
}
