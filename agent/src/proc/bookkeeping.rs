//! The runtime's per-thread and per-processor structures: Ms and Ps are
//! heap objects whose fields keep stale copies of pointers their
//! goroutines handled (an M's last wait; a P's write-barrier buffer, typed
//! `uintptr` so the runtime's precise GC never follows it). A conservative
//! scan of them kept leaked goroutines' primitives alive, so the walk
//! treats both as opaque. The one thing a P holds that can wake a user
//! goroutine, its timer heap, becomes a root of its own: each pending
//! timer's argument (the channel of a `time.Timer`, the function of a
//! `time.AfterFunc`).

use super::mem;
use crate::{
    gobin::{GoBinary, HeapLayout as BinLayout},
    reach::{Root, RootKind, Scan},
};

/// Bound on Ms and Ps followed: `GOMAXPROCS` and thread counts are far
/// below it; a lying length is not.
const MAX_MS: usize = 10_000;
const MAX_PS: u64 = 4_096;
/// Bound on timers read per P.
const MAX_TIMERS: u64 = 100_000;

/// Ms (`runtime.allm`, linked by `m.alllink`), known through DWARF;
/// without it the Ms are scanned like any object.
pub(super) fn all_ms(pid: u32, bin: &GoBinary, bias: u64) -> Vec<u64> {
    let Some((allm, alllink)) = bin.ms else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = mem::read_u64(pid, allm.wrapping_add(bias)).unwrap_or(0);
    while at != 0 && out.len() < MAX_MS && !out.contains(&at) {
        out.push(at);
        at = mem::read_u64(pid, at.wrapping_add(u64::from(alllink))).unwrap_or(0);
    }
    out
}

/// The Ps (`runtime.allp`), opaque, and their roots: one per pending
/// timer (the data word of its `arg`) and, where DWARF gives the offsets,
/// each P's current tiny-allocator block, which the runtime's GC marks live
/// whatever points to it (so a lone mutex packed there is never leaked for
/// the runtime either).
pub(super) fn all_ps(
    pid: u32,
    layout: &BinLayout,
    tiny: Option<(u32, u32)>,
    bias: u64,
) -> (Vec<u64>, Vec<Root>) {
    let t = layout.offsets.timers;
    let Some(ps) = slice(pid, layout.roots.allp.wrapping_add(bias), 8, MAX_PS) else {
        return (Vec::new(), Vec::new());
    };
    let mut roots = Vec::new();
    for &p in &ps {
        if let Some((p_mcache, mcache_tiny)) = tiny {
            // The root is the mcache's `tiny` field itself, so that the
            // block it names is marked (mcaches live outside the heap).
            if let Ok(c @ 1..) = mem::read_u64(pid, p.wrapping_add(u64::from(p_mcache))) {
                roots.push(Root {
                    kind: RootKind::Runtime {
                        what: "the tiny allocator's current block".into(),
                    },
                    scan: Scan::Slots(vec![c.wrapping_add(u64::from(mcache_tiny))]),
                });
            }
        }
        let at = p.wrapping_add(u64::from(t.p_timers));
        let Some(timers) = slice(pid, at, u64::from(t.entry_size), MAX_TIMERS) else {
            continue;
        };
        roots.extend(timers.into_iter().filter(|&tm| tm != 0).map(|tm| Root {
            kind: RootKind::Runtime {
                what: "a pending timer".into(),
            },
            scan: Scan::Slots(vec![tm.wrapping_add(u64::from(t.timer_arg) + 8)]),
        }));
    }
    (ps.into_iter().filter(|&p| p != 0).collect(), roots)
}

/// The first word of each `stride`-byte element of the slice whose header
/// is at `header`; `None` when unreadable or longer than `max`.
fn slice(pid: u32, header: u64, stride: u64, max: u64) -> Option<Vec<u64>> {
    let data = mem::read_u64(pid, header).ok()?;
    let len = mem::read_u64(pid, header.wrapping_add(8)).ok()?;
    if len > max || stride < 8 {
        return None;
    }
    let mut buf = vec![0u8; usize::try_from(len * stride).ok()?];
    if len > 0 {
        mem::read(pid, data, &mut buf).ok()?;
    }
    Some(
        buf.chunks_exact(usize::try_from(stride).ok()?)
            .map(|e| u64::from_le_bytes(e[..8].try_into().expect("8 bytes")))
            .collect(),
    )
}
