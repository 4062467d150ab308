//! Go's internal register ABI (Go ≥ 1.17 on amd64), read from `pt_regs`.
//!
//! Integer arguments travel in RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11 and
//! the current g lives in R14. arm64 (Go ≥ 1.18: R0–R15, g in R28) is planned
//! and belongs here, behind the same functions.

use aya_ebpf::programs::ProbeContext;

/// The `n`th integer argument (0-based) of a Go function at a probe placed
/// where the ABI registers still hold the arguments (entry, prologue or the
/// call instruction of the callee being observed).
#[inline(always)]
pub fn arg(ctx: &ProbeContext, n: u32) -> u64 {
    // SAFETY: `regs` points at the pt_regs the kernel handed to the uprobe.
    let regs = unsafe { &*ctx.regs };
    match n {
        0 => regs.rax,
        1 => regs.rbx,
        2 => regs.rcx,
        3 => regs.rdi,
        4 => regs.rsi,
        5 => regs.r8,
        6 => regs.r9,
        7 => regs.r10,
        _ => regs.r11,
    }
}

/// The first three argument registers, each read at its own constant
/// offset: a computed index into pt_regs would be a variable-offset context
/// access, which the verifier rejects.
#[inline(always)]
pub fn first_args(ctx: &ProbeContext) -> [u64; 3] {
    // SAFETY: as in `arg`; volatile keeps the loads separate and constant.
    unsafe {
        let regs = ctx.regs;
        [
            core::ptr::read_volatile(&raw const (*regs).rax),
            core::ptr::read_volatile(&raw const (*regs).rbx),
            core::ptr::read_volatile(&raw const (*regs).rcx),
        ]
    }
}

/// The current goroutine's g (R14 in Go's ABI). Valid at any probe on a
/// goroutine's own stack; on the system stack it is g0.
#[inline(always)]
pub fn current_g(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `arg`.
    unsafe { (*ctx.regs).r14 }
}

/// The frame pointer (RBP): Go keeps frame pointers on amd64, so the chain
/// `[rbp] = caller's rbp, [rbp+8] = return address` walks the stack.
#[inline(always)]
pub fn frame_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `arg`.
    unsafe { (*ctx.regs).rbp }
}

/// The stack pointer; at a function's entry `[rsp]` is its return address.
#[inline(always)]
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: as in `arg`.
    unsafe { (*ctx.regs).rsp }
}
