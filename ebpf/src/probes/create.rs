use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use gostray_common::{EventKind, GoroutineEvent, OFFSET_ABSENT};

use super::{current_target, finish, read_u64, submit, ProbeError};
use crate::goabi;

/// `runtime.newproc.func1`, at its `CALL runtime.runqput(pp *p, gp *g, next bool)`.
/// The new g is the second argument (RBX) and newproc1 has already filled
/// goid, gopc, startpc and (Go ≥ 1.21) parentGoid. A call instruction is
/// emulated by the kernel, so this costs no single-step.
/// Checked on Go 1.19, 1.24, 1.27 (amd64).
#[uprobe]
pub fn goroutine_create(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_goroutine_create(&ctx))
}

fn try_goroutine_create(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some((pid, cfg_ptr)) = current_target() else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let cfg = unsafe { *cfg_ptr };
    let g = goabi::arg(ctx, 1);
    let parent_goid = if cfg.g_parent_goid != OFFSET_ABSENT {
        read_u64(g, cfg.g_parent_goid)?
    } else if cfg.g_m != OFFSET_ABSENT && cfg.m_curg != OFFSET_ABSENT {
        // newproc.func1 runs on g0: the creator is the M's current user g.
        let m = read_u64(goabi::current_g(ctx), cfg.g_m)?;
        let curg = read_u64(m, cfg.m_curg)?;
        read_u64(curg, cfg.g_goid)?
    } else {
        0
    };
    let event = GoroutineEvent {
        kind: EventKind::Create as u32,
        pid,
        goid: read_u64(g, cfg.g_goid)?,
        parent_goid,
        gopc: read_u64(g, cfg.g_gopc)?,
        startpc: read_u64(g, cfg.g_startpc)?,
        ktime_ns: 0,
    };
    submit(cfg_ptr, event)
}
