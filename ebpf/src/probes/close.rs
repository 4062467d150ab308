use aya_ebpf::{macros::uprobe, programs::ProbeContext};
use gostray_common::{hit, ChanEvent, Closer, CloserKey, EventKind};

use super::{current_target, finish, read_u32, read_u64, submit_chan, ProbeError};
use crate::{goabi, maps::CLOSERS};

/// `runtime.closechan(c *hchan)`, at the first emulated instruction of its
/// prologue (amd64: RSP still points at the return address into the
/// closer; arm64: it is in LR, see `goabi::entry_return_address`).
/// The first close of a channel is remembered in the CLOSERS LRU map and
/// sends nothing; a second close (about to panic "close of closed channel")
/// or `close(nil)` is reported with both closers' sites.
/// Checked on Go 1.19, 1.24, 1.27 (amd64).
#[uprobe]
pub fn chan_close(ctx: ProbeContext) -> u32 {
    finish(&ctx, try_chan_close(&ctx))
}

fn try_chan_close(ctx: &ProbeContext) -> Result<(), ProbeError> {
    let Some((pid, cfg_ptr)) = current_target(hit::CLOSE) else {
        return Ok(());
    };
    // SAFETY: the pointer comes from a successful map lookup.
    let cfg = unsafe { *cfg_ptr };
    let hchan = goabi::arg(ctx, 0);
    let goid = read_u64(goabi::current_g(ctx), cfg.g_goid)?;
    let pc = goabi::entry_return_address(ctx)?;
    let mut event = ChanEvent {
        pid,
        goid,
        hchan,
        ..ChanEvent::default()
    };
    event.pcs[0] = pc;
    if hchan == 0 {
        event.kind = EventKind::CloseNil as u32;
        return submit_chan(cfg_ptr, event);
    }
    let key = CloserKey {
        pid,
        _pad: 0,
        hchan,
    };
    if read_u32(hchan, cfg.hchan_closed)? == 0 {
        // BPF_ANY: a channel address reused after GC replaces the stale entry.
        let _ = CLOSERS.insert(&key, &Closer { goid, pc }, 0);
        return Ok(());
    }
    event.kind = EventKind::DoubleClose as u32;
    // SAFETY: the value is copied out at once.
    if let Some(first) = unsafe { CLOSERS.get(&key) } {
        event.other_goid = first.goid;
        event.other_pc = first.pc;
    }
    submit_chan(cfg_ptr, event)
}
