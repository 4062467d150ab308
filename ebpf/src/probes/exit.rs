use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use gostray_common::{hit, EventKind, GoroutineEvent};

use super::{current_target, finish, read_u64, submit, ProbeError};
use crate::goabi;

/// `runtime.goexit0(gp *g)`, at the first kernel-emulated instruction of its
/// prologue (before anything overwrites RAX). goexit0 runs on g0 through
/// mcall, so the exiting goroutine is the argument, not R14.
/// Checked on Go 1.19, 1.24, 1.27 (amd64).
#[uprobe]
pub fn goroutine_exit(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_goroutine_exit(&ctx))
}

fn try_goroutine_exit(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some((pid, cfg_ptr)) = current_target(hit::EXIT) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let goid_offset = unsafe { (*cfg_ptr).g_goid };
    let g = goabi::arg(ctx, 0);
    let event = GoroutineEvent {
        kind: EventKind::Exit as u32,
        pid,
        goid: read_u64(g, goid_offset)?,
        ..GoroutineEvent::default()
    };
    submit(cfg_ptr, event)
}
