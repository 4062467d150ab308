use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use gostray_common::{hit, ChanEvent, EventKind};

use super::{current_target, finish, read_u64, return_pcs, submit_chan, ProbeError};
use crate::goabi;

/// The `CALL runtime.gopanic` sites inside `runtime.chansend`: both panic
/// with "send on closed channel", so reaching one means exactly that. RBP is
/// chansend's frame, so the return addresses lead to the sender.
/// Checked on Go 1.19, 1.24, 1.27 (amd64).
#[uprobe]
pub fn chan_send_closed(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_chan_send_closed(&ctx))
}

fn try_chan_send_closed(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some((pid, cfg_ptr)) = current_target(hit::SEND_CLOSED) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let goid_offset = unsafe { (*cfg_ptr).g_goid };
    let event = ChanEvent {
        kind: EventKind::SendClosed as u32,
        pid,
        goid: read_u64(goabi::current_g(ctx), goid_offset)?,
        pcs: return_pcs(goabi::frame_pointer(ctx)),
        ..ChanEvent::default()
    };
    submit_chan(cfg_ptr, event)
}
