//! Go's internal register ABI, read from the `pt_regs` a uprobe sees, per
//! architecture behind the same functions. The architecture is aya-ebpf's
//! own `bpf_target_arch` cfg; xtask builds one object per architecture.
//!
//! - amd64 (Go ≥ 1.17): integer arguments in RAX, RBX, RCX, RDI, RSI, R8,
//!   R9, R10, R11; the current g in R14; frame pointer RBP. A call pushes
//!   the return address, so at a function's entry it is at `[rsp]`.
//! - arm64 (Go ≥ 1.18): integer arguments in R0–R15; the current g in R28;
//!   frame pointer R29; link register R30. A `bl` leaves the return address
//!   in R30, not on the stack.

use aya_ebpf::programs::ProbeContext;

use crate::probes::ProbeError;

/// The `n`th integer argument (0-based, at most 8) of a Go function at a
/// probe placed where the ABI registers still hold the arguments (entry,
/// prologue or the call instruction of the callee being observed).
#[inline(always)]
pub fn arg(ctx: &ProbeContext, n: u32) -> u64 {
    // SAFETY: `regs` points at the pt_regs the kernel handed to the uprobe.
    let regs = unsafe { &*ctx.regs };
    #[cfg(not(bpf_target_arch = "aarch64"))]
    let value = match n {
        0 => regs.rax,
        1 => regs.rbx,
        2 => regs.rcx,
        3 => regs.rdi,
        4 => regs.rsi,
        5 => regs.r8,
        6 => regs.r9,
        7 => regs.r10,
        _ => regs.r11,
    };
    // A constant index per arm: a computed one would be a variable-offset
    // context access, which the verifier rejects.
    #[cfg(bpf_target_arch = "aarch64")]
    let value = match n {
        0 => regs.regs[0],
        1 => regs.regs[1],
        2 => regs.regs[2],
        3 => regs.regs[3],
        4 => regs.regs[4],
        5 => regs.regs[5],
        6 => regs.regs[6],
        7 => regs.regs[7],
        _ => regs.regs[8],
    };
    value
}

/// The first three argument registers, each read at its own constant
/// offset: a computed index into pt_regs would be a variable-offset context
/// access, which the verifier rejects.
#[inline(always)]
pub fn first_args(ctx: &ProbeContext) -> [u64; 3] {
    // SAFETY: as in `arg`; volatile keeps the loads separate and constant.
    unsafe {
        let regs = ctx.regs;
        #[cfg(not(bpf_target_arch = "aarch64"))]
        let args = [
            core::ptr::read_volatile(&raw const (*regs).rax),
            core::ptr::read_volatile(&raw const (*regs).rbx),
            core::ptr::read_volatile(&raw const (*regs).rcx),
        ];
        #[cfg(bpf_target_arch = "aarch64")]
        let args = [
            core::ptr::read_volatile(&raw const (*regs).regs[0]),
            core::ptr::read_volatile(&raw const (*regs).regs[1]),
            core::ptr::read_volatile(&raw const (*regs).regs[2]),
        ];
        args
    }
}

/// The current goroutine's g (R14 on amd64, R28 on arm64). Valid at any
/// probe on a goroutine's own stack; on the system stack it is g0.
#[inline(always)]
pub fn current_g(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `arg`.
    unsafe {
        #[cfg(not(bpf_target_arch = "aarch64"))]
        let g = (*ctx.regs).r14;
        #[cfg(bpf_target_arch = "aarch64")]
        let g = (*ctx.regs).regs[28];
        g
    }
}

/// The frame pointer (RBP, R29). Go keeps frame pointers on both, and a
/// frame reads the same way: `[fp]` = the caller's fp, `[fp+8]` = the
/// return address. On arm64 the prologue (`str x30, [sp, #-n]!` then
/// `stur x29, [sp, #-8]`, `sub x29, sp, #8`) saves LR at the new SP and the
/// caller's R29 just below it, so R29 + 8 is the saved LR, as RBP + 8 is
/// the pushed return address on amd64 (Go's `fpTracebackPCs` walks both
/// alike).
#[inline(always)]
pub fn frame_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `arg`.
    unsafe {
        #[cfg(not(bpf_target_arch = "aarch64"))]
        let fp = (*ctx.regs).rbp;
        #[cfg(bpf_target_arch = "aarch64")]
        let fp = (*ctx.regs).regs[29];
        fp
    }
}

/// The return address of the function a probe sits in, for a probe placed
/// before that function makes any call: `[rsp]` at an amd64 prologue's
/// `push rbp`; on arm64 the link register R30, which only a `bl` would
/// overwrite (the entry sites are the prologue's stack check, or the first
/// simulated instruction after it, a `bl` at the latest, which has not run
/// when the probe fires).
#[inline(always)]
pub fn entry_return_address(ctx: &ProbeContext) -> Result<u64, ProbeError> {
    #[cfg(not(bpf_target_arch = "aarch64"))]
    {
        // SAFETY: as in `arg`.
        let sp = unsafe { (*ctx.regs).rsp };
        crate::probes::read_u64(sp, 0)
    }
    #[cfg(bpf_target_arch = "aarch64")]
    {
        // SAFETY: as in `arg`.
        Ok(unsafe { (*ctx.regs).regs[30] })
    }
}
