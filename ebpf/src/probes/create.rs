use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use gostray_common::{hit, EventKind, GoroutineEvent, OFFSET_ABSENT};

use super::{current_target, finish, read_g_span, read_u64, span_word, submit, ProbeError};
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
    let Some((pid, cfg_ptr)) = current_target(hit::CREATE) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let cfg = unsafe { *cfg_ptr };
    let g = goabi::arg(ctx, 1);
    if cfg.g_parent_goid != OFFSET_ABSENT {
        // Go ≥ 1.21: goid, parentGoid, gopc and startpc lie within one span.
        let span = read_g_span(g, cfg.g_goid)?;
        let field = |offset| span_word(span, cfg.g_goid, offset);
        if let (Some(goid), Some(parent_goid), Some(gopc), Some(startpc)) = (
            field(cfg.g_goid),
            field(cfg.g_parent_goid),
            field(cfg.g_gopc),
            field(cfg.g_startpc),
        ) {
            let event = GoroutineEvent {
                kind: EventKind::Create as u32,
                pid,
                goid,
                parent_goid,
                gopc,
                startpc,
                ktime_ns: 0,
            };
            return submit(cfg_ptr, event);
        }
    }
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
