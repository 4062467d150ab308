//! The globals as heap-walk roots: precisely, through the module's own GC
//! bitmaps (`moduledata.gcdatamask` and `gcbssmask`, one bit per word of
//! `.data` and `.bss`), as the runtime scans them; every word of the
//! sections when the bitmaps cannot be read.
//!
//! Precision matters here: the runtime's own globals hold heap addresses
//! as plain integers (span bounds, arena cursors, the tiny allocator's
//! block), and a conservative scan takes them for references and keeps
//! leaked goroutines' mutexes alive.

use super::mem;
use crate::{
    gobin::HeapLayout as BinLayout,
    reach::{AddrRange, Root, RootKind, Scan},
};

/// Largest bitmap believed: 64 MiB of globals, one bit per word.
const MAX_BITS: u64 = (64 << 20) / 8;

/// `.data` and `.bss` as roots, precise where the bitmaps allow.
pub(super) fn globals(pid: u32, layout: &BinLayout, bias: u64) -> Vec<Root> {
    let o = layout.offsets.moduledata;
    [
        (".data", o.data, o.gcdatamask, layout.globals.data),
        (".bss", o.bss, o.gcbssmask, layout.globals.bss),
    ]
    .into_iter()
    .filter(|(_, _, _, (lo, hi))| lo < hi)
    .flat_map(|(name, start, mask, (lo, hi))| {
        let range = AddrRange {
            lo: lo.wrapping_add(bias),
            hi: hi.wrapping_add(bias),
        };
        match pointer_slots(pid, layout, bias, start, mask, range) {
            // One root per pointer variable, so that what holds a primitive
            // can be named by its address (`go tool nm` names it).
            Some(slots) => slots
                .into_iter()
                .map(|at| Root {
                    kind: RootKind::Global {
                        name: format!("{name} at {:#x}", at.wrapping_sub(bias)),
                    },
                    scan: Scan::Slots(vec![at]),
                })
                .collect(),
            None => vec![Root {
                kind: RootKind::Global { name: name.into() },
                scan: Scan::Range(range),
            }],
        }
    })
    .collect()
}

/// The words of `range` the module's bitmap at `mask` (an offset in
/// `moduledata`) calls pointers; `None` when anything read disagrees.
fn pointer_slots(
    pid: u32,
    layout: &BinLayout,
    bias: u64,
    start: u32,
    mask: u32,
    range: AddrRange,
) -> Option<Vec<u64>> {
    let o = layout.offsets.moduledata;
    let md = layout.roots.firstmoduledata.wrapping_add(bias);
    let at = |off: u32| md.wrapping_add(u64::from(off));
    // The section's start as the runtime has it must be the one we know.
    if mem::read_u64(pid, at(start)).ok()? != range.lo {
        return None;
    }
    let n = mem::read_u64(pid, at(mask + o.bitvector_n)).ok()? & 0xffff_ffff;
    let bytes = mem::read_u64(pid, at(mask + o.bitvector_bytedata)).ok()?;
    if n == 0 || n > MAX_BITS || n * 8 > range.hi - range.lo + 8 {
        return None;
    }
    let mut bitmap = vec![0u8; n.div_ceil(8) as usize];
    mem::read(pid, bytes, &mut bitmap).ok()?;
    Some(
        (0..n)
            .filter(|&i| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0)
            .map(|i| range.lo + i * 8)
            .collect(),
    )
}
