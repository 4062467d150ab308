use aya_ebpf::{
    helpers::{bpf_get_attach_cookie, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use gostray_common::{block_cookie, hit, ChanEvent, EventKind, GKey, BLOCK_EVENT_GAP_NS};

use super::{current_target, finish, read_pair, read_u64, return_pcs, submit_chan, ProbeError};
use crate::{goabi, maps::BLOCK_SEEN};

/// The `CALL runtime.gopark` (or `goparkunlock`) on the blocking path of
/// `runtime.chansend`, `chanrecv`, `selectgo`, `block`, `semacquire1` and
/// `notifyListWait`: it fires only when a goroutine is about to park there,
/// never on a fast path and never for network waits. The attach cookie says
/// which call form the site is, so where the wait reason and lock are (see
/// `gostray_common::block_cookie`). R14 is the parking goroutine.
/// Checked on Go 1.19, 1.24, 1.27 (amd64).
#[uprobe]
pub fn goroutine_block(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_goroutine_block(&ctx))
}

fn try_goroutine_block(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some((pid, cfg_ptr)) = current_target(hit::BLOCK) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let cfg = unsafe { *cfg_ptr };
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.regs.cast()) };
    let [rax, rbx, rcx] = goabi::first_args(ctx);
    let (lock, reason) = if cookie & block_cookie::UNLOCK_FORM != 0 {
        (rax, rbx)
    } else {
        (rbx, rcx)
    };
    let g = goabi::current_g(ctx);
    // SAFETY: a helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = GKey { pid, _pad: 0, g };
    // SAFETY: the value is copied out at once.
    if unsafe { BLOCK_SEEN.get(&key) }
        .is_some_and(|&last| now.wrapping_sub(last) < BLOCK_EVENT_GAP_NS)
    {
        return Ok(());
    }
    let _ = BLOCK_SEEN.insert(&key, &now, 0);
    let goid = read_u64(g, cfg.g_goid)?;
    let mut event = ChanEvent {
        kind: EventKind::Block as u32,
        pid,
        goid,
        reason: (reason & 0xff) as u32,
        pcs: return_pcs(goabi::frame_pointer(ctx)),
        ..ChanEvent::default()
    };
    if cookie & block_cookie::CHAN_LOCK != 0 && lock != 0 {
        // The lock is `&c.lock`: step back to the hchan itself.
        let hchan = lock - u64::from(cfg.hchan_lock);
        event.hchan = hchan;
        // qcount and dataqsiz are adjacent in every release: one read.
        if cfg.hchan_dataqsiz == cfg.hchan_qcount + 8 {
            [event.qcount, event.dataqsiz] = read_pair(hchan, cfg.hchan_qcount)?;
        } else {
            event.qcount = read_u64(hchan, cfg.hchan_qcount)?;
            event.dataqsiz = read_u64(hchan, cfg.hchan_dataqsiz)?;
        }
        event.has_chan = 1;
    }
    submit_chan(cfg_ptr, event)
}
