//! Which words of a goroutine's stack frame hold live pointers at a PC,
//! as the garbage collector's `runtime.scanframeworker` finds them
//! (`runtime/stkframe.go` `getStackMap`, `runtime/mgcmark.go`).
//!
//! The compiler leaves, per function: a pcdata table
//! (`PCDATA_StackMapIndex`) giving, at each safe point, an index into two
//! bitmap arrays (funcdata `FUNCDATA_LocalsPointerMaps` and
//! `FUNCDATA_ArgsPointerMaps`, each a `stackmap { n, nbit int32; bytedata }`
//! of `n` bitmaps of `(nbit + 7) / 8` bytes), and the frame's
//! address-taken variables (`FUNCDATA_StackObjects`: a `uintptr` count,
//! then 16-byte `stackObjectRecord { off, size int32; … }`, the same size
//! and leading fields in Go 1.19–1.27). A stack object is scanned only if
//! a live pointer reaches it, which the caller decides with the memory.
//!
//! Frame geometry (`runtime/traceback.go` `resolveInternal`,
//! `runtime/stkframe.go` `getStackMap`), relative to the frame's SP:
//!
//! | | amd64 (CALL pushes the return address) | arm64 (link register) |
//! |---|---|---|
//! | caller's SP (`fp`) | `spdelta + 8` | `spdelta` |
//! | return address | `fp - 8` | `0` (the frame saved LR at its SP) |
//! | `varp` | `fp - 8` | `fp` |
//! | `argp` | `fp` | `fp + 8` (`MinFrameSize`) |
//! | locals read when `varp` is above | `0` | `16` (`StackAlign`) |
//!
//! On both, `varp` moves down 8 more over the saved frame pointer when the
//! frame is not empty (arm64 Go writes its FP link below SP, "mimicking the
//! x86 layout"). Locals maps cover `[varp - nbit*8, varp)`, args maps
//! `[argp, argp + nbit*8)`. Everything here is relative to the frame's SP,
//! so it is pure: the caller adds the address.

use super::Machine;

/// `internal/abi` pcdata and funcdata indices (unchanged in Go 1.19–1.27).
pub const PCDATA_STACK_MAP_INDEX: u32 = 1;
pub const FUNCDATA_ARGS_POINTER_MAPS: u8 = 0;
pub const FUNCDATA_LOCALS_POINTER_MAPS: u8 = 1;
pub const FUNCDATA_STACK_OBJECTS: u8 = 2;
/// `abi.FuncFlagTopFrame`, `abi.FuncFlagSPWrite`.
const FLAG_TOP_FRAME: u8 = 1;
const FLAG_SP_WRITE: u8 = 2;
/// `abi.ArgsSizeUnknown`: assembly without a declared frame, and the
/// reflect call stubs, whose argument maps the runtime builds by hand.
const ARGS_SIZE_UNKNOWN: i32 = i32::MIN;
const PTR: u64 = 8;
/// Largest bitmap believed (bits = words): 8 MiB of frame.
const MAX_NBIT: i32 = 1 << 20;
/// Largest frame believed; Go's maximum stack is 1 GiB.
const MAX_SPDELTA: i32 = 1 << 30;
/// Stack objects believed per frame, and their largest size.
const MAX_OBJECTS: u64 = 1 << 12;
const MAX_OBJECT_SIZE: i32 = 1 << 24;
const OBJECT_RECORD: u64 = 16;

/// Why a frame cannot be scanned precisely; the caller then scans the
/// goroutine conservatively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no precise frame: {0}")]
pub struct NoFrame(pub &'static str);

/// What the function table says about one function at one PC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncFacts {
    /// `funcspdelta` at the frame's PC.
    pub spdelta: i32,
    /// `_func.flag`.
    pub flag: u8,
    /// `_func.args`.
    pub args: i32,
    /// `PCDATA_StackMapIndex` at the PC before the frame's PC (-1 if none,
    /// or at the entry), as `getStackMap` looks it up.
    pub index: i32,
    /// Link-time addresses of funcdata 0, 1 and 2, when present.
    pub args_maps: Option<u64>,
    pub locals_maps: Option<u64>,
    pub objects: Option<u64>,
}

/// One frame's live pointers, relative to its SP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrameLayout {
    /// `fp - sp`: the caller's SP is at `sp + size`.
    pub size: u64,
    /// Where the return address (the caller's PC) is saved.
    pub ret: u64,
    /// Offsets of words holding live pointers: locals, then arguments
    /// (which lie at or above `size`, in the caller's frame).
    pub pointers: Vec<u64>,
    /// Address-taken variables `(offset, bytes)` allocated in the frame:
    /// scanned only when a live pointer points into them.
    pub objects: Vec<(u64, u64)>,
    /// The outermost frame (`runtime.goexit`): nothing calls it.
    pub top: bool,
}

/// Where a frame of `spdelta` bytes keeps things on `machine`, relative to
/// its SP (the table above): (fp, return address, varp, argp, the `varp`
/// at or below which a frame has no locals to read).
fn geometry(machine: Machine, spdelta: u64) -> (u64, u64, u64, u64, u64) {
    let (fp, ret, varp, argp, min_locals) = match machine {
        Machine::Amd64 => (spdelta + PTR, spdelta, spdelta, spdelta + PTR, 0),
        Machine::Arm64 => (spdelta, 0, spdelta, spdelta + PTR, 16),
    };
    // The saved frame pointer, when the frame is not empty.
    let varp = if varp > 0 { varp - PTR } else { varp };
    (fp, ret, varp, argp, min_locals)
}

/// The layout of a frame, from `facts` and the binary's bytes (`at` reads
/// `len` bytes at a link-time address) of a `machine` binary. `innermost`
/// is the frame where the goroutine stopped: only there may a function
/// write SP (it parked).
pub fn layout<'a>(
    machine: Machine,
    facts: &FuncFacts,
    innermost: bool,
    at: impl Fn(u64, usize) -> Option<&'a [u8]>,
) -> Result<FrameLayout, NoFrame> {
    if !(0..=MAX_SPDELTA).contains(&facts.spdelta) || facts.spdelta % 8 != 0 {
        return Err(NoFrame("SP delta"));
    }
    if facts.flag & FLAG_SP_WRITE != 0 && !innermost && facts.flag & FLAG_TOP_FRAME == 0 {
        return Err(NoFrame("a caller writes SP"));
    }
    let spdelta = u64::from(facts.spdelta.unsigned_abs());
    let (size, ret, varp, argp, min_locals) = geometry(machine, spdelta);
    let index = facts.index.max(0);
    let mut out = FrameLayout {
        size,
        ret,
        top: facts.flag & FLAG_TOP_FRAME != 0,
        ..FrameLayout::default()
    };
    if varp > min_locals {
        let maps = facts.locals_maps.ok_or(NoFrame("locals without a map"))?;
        let words = live_words(&at, maps, index)?;
        let nbit = map_bits(&at, maps)?;
        let base = varp
            .checked_sub(nbit * PTR)
            .ok_or(NoFrame("locals map larger than the frame"))?;
        out.pointers
            .extend(words.into_iter().map(|w| base + w * PTR));
    }
    if facts.args == ARGS_SIZE_UNKNOWN {
        return Err(NoFrame("arguments of unknown size"));
    }
    if facts.args > 0 {
        let maps = facts.args_maps.ok_or(NoFrame("arguments without a map"))?;
        let words = live_words(&at, maps, index)?;
        out.pointers
            .extend(words.into_iter().map(|w| argp + w * PTR));
    }
    if let Some(objects) = facts.objects {
        out.objects = stack_objects(&at, objects, varp, argp)?;
    }
    Ok(out)
}

/// `(n, nbit)` of the stackmap at `addr`.
fn header<'a>(at: &impl Fn(u64, usize) -> Option<&'a [u8]>, addr: u64) -> Option<(i32, i32)> {
    let b = at(addr, 8)?;
    let n = i32::from_le_bytes(b.get(..4)?.try_into().ok()?);
    let nbit = i32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    Some((n, nbit))
}

/// `nbit` of a stackmap known to be sane (checked by [`live_words`]).
fn map_bits<'a>(at: &impl Fn(u64, usize) -> Option<&'a [u8]>, addr: u64) -> Result<u64, NoFrame> {
    let (_, nbit) = header(at, addr).ok_or(NoFrame("unreadable stack map"))?;
    Ok(u64::from(nbit.unsigned_abs()))
}

/// The set bits (word indexes) of bitmap `index` of the stackmap at `addr`.
/// A map with `nbit == 0` has nothing to scan at any index, as the
/// runtime's `getStackMap` reads it.
fn live_words<'a>(
    at: &impl Fn(u64, usize) -> Option<&'a [u8]>,
    addr: u64,
    index: i32,
) -> Result<Vec<u64>, NoFrame> {
    let (n, nbit) = header(at, addr).ok_or(NoFrame("unreadable stack map"))?;
    if n <= 0 {
        return Err(NoFrame("empty stack map"));
    }
    if nbit == 0 {
        return Ok(Vec::new());
    }
    if !(1..=MAX_NBIT).contains(&nbit) {
        return Err(NoFrame("stack map size"));
    }
    if index >= n {
        return Err(NoFrame("stack map index out of range"));
    }
    let bytes = u64::from(nbit.unsigned_abs()).div_ceil(8);
    let first = u64::from(index.unsigned_abs())
        .checked_mul(bytes)
        .and_then(|o| o.checked_add(addr.checked_add(8)?))
        .ok_or(NoFrame("stack map address"))?;
    let len = usize::try_from(bytes).map_err(|_| NoFrame("stack map size"))?;
    let bits = at(first, len).ok_or(NoFrame("unreadable stack map"))?;
    Ok((0..u64::from(nbit.unsigned_abs()))
        .filter(|&i| {
            bits.get((i / 8) as usize)
                .is_some_and(|b| b >> (i % 8) & 1 != 0)
        })
        .collect())
}

/// The frame's stack objects, as `(offset from SP, size)`. A negative
/// record offset is from `varp`, a non-negative one from `argp`; an object
/// below SP is not allocated yet (`scanframeworker` skips it too).
fn stack_objects<'a>(
    at: &impl Fn(u64, usize) -> Option<&'a [u8]>,
    addr: u64,
    varp: u64,
    argp: u64,
) -> Result<Vec<(u64, u64)>, NoFrame> {
    let bad = NoFrame("unreadable stack objects");
    let count = at(addr, 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(bad)?;
    if count > MAX_OBJECTS {
        return Err(NoFrame("too many stack objects"));
    }
    let mut out = Vec::new();
    for i in 0..count {
        let rec = addr + 8 + i * OBJECT_RECORD;
        let b = at(rec, 8).ok_or(bad)?;
        let off = i32::from_le_bytes(b[..4].try_into().map_err(|_| bad)?);
        let size = i32::from_le_bytes(b[4..8].try_into().map_err(|_| bad)?);
        if !(1..=MAX_OBJECT_SIZE).contains(&size) {
            return Err(NoFrame("stack object size"));
        }
        let base = if off < 0 { varp } else { argp };
        let Some(start) = base.checked_add_signed(i64::from(off)) else {
            continue;
        };
        out.push((start, u64::from(size.unsigned_abs())));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "stackmap_tests.rs"]
mod tests;
