//! Inlined calls at a PC, as the runtime's tracebacks and
//! `runtime.CallersFrames` expand them.
//!
//! A function with inlined callees carries an inline tree (funcdata
//! `FUNCDATA_InlTree`, an array of `inlinedCall` at `moduledata.gofunc` plus
//! the funcdata offset) and a pcdata table (`PCDATA_InlTreeIndex`) giving,
//! for each PC, the tree entry of the innermost inlined call or -1. Each
//! entry names its callee and holds `parentPc`, the offset from the
//! function's entry of an instruction positioned at the call site: the
//! caller's frame is found by looking the index up again there
//! (`runtime/symtabinl.go`; Go 1.19's `gentraceback` walks it the same way).
//! File and line of every frame come from the function's own pcfile/pcln
//! tables at that frame's PC.

use super::{buildinfo::GoVersion, read};

/// `internal/abi`: funcdata and pcdata indices, the same in every release read.
pub const FUNCDATA_INL_TREE: u8 = 3;
pub const PCDATA_INL_TREE_INDEX: u32 = 2;
/// Deepest inline chain followed: the tree is the target's data, and a
/// parent chain that loops must end.
pub const MAX_DEPTH: usize = 32;
/// The runtime's own bound on the tree (`*[1 << 20]inlinedCall`).
const MAX_INDEX: u32 = 1 << 20;

/// Where the fields of `inlinedCall` sit. Before Go 1.20: `parent int16,
/// funcID uint8, _ byte, file, line, func_ (name offset), parentPc int32`
/// (20 bytes). Since: `funcID uint8, _ [3]byte, nameOff, parentPc,
/// startLine int32` (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    size: usize,
    func_id: usize,
    name: usize,
    parent_pc: usize,
}

impl Layout {
    /// The layout of the pclntab generation: `go120` is the Go ≥ 1.20 magic.
    pub fn new(go120: bool) -> Self {
        if go120 {
            Self {
                size: 16,
                func_id: 0,
                name: 4,
                parent_pc: 8,
            }
        } else {
            Self {
                size: 20,
                func_id: 2,
                name: 12,
                parent_pc: 16,
            }
        }
    }

    /// Entry `index` of a tree at link-time address `tree`, read through `at`.
    pub fn entry<'a>(
        &self,
        tree: u64,
        index: u32,
        at: impl Fn(u64, usize) -> Option<&'a [u8]>,
    ) -> Option<InlinedCall> {
        if index >= MAX_INDEX {
            return None;
        }
        let addr = tree.checked_add(u64::from(index) * self.size as u64)?;
        let b = at(addr, self.size)?;
        Some(InlinedCall {
            func_id: *b.get(self.func_id)?,
            name_off: read::u32_at(b, self.name)?,
            parent_pc: read::u32_at(b, self.parent_pc)?,
        })
    }
}

/// One `inlinedCall`: the fields the traceback uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlinedCall {
    pub func_id: u8,
    /// Offset of the callee's name in the function name table.
    pub name_off: u32,
    /// Offset from the function's entry of an instruction at the call site.
    pub parent_pc: u32,
}

/// One logical frame: the PC whose file and line it reports, and its tree
/// entry (`None` for the physical function, always last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logical {
    pub pc: u64,
    pub call: Option<InlinedCall>,
}

/// The logical frames at `pc` in the function entered at `entry`,
/// innermost first: `index_at` is the `PCDATA_InlTreeIndex` value at a PC,
/// `call` reads a tree entry. At most [`MAX_DEPTH`] inlined frames; an
/// index that cannot be read ends the chain at the physical function, as
/// the runtime's non-strict lookup falls back to the outermost frame.
pub fn unwind(
    entry: u64,
    pc: u64,
    index_at: impl Fn(u64) -> i32,
    call: impl Fn(u32) -> Option<InlinedCall>,
) -> Vec<Logical> {
    let mut out = Vec::new();
    let mut at = pc;
    while out.len() < MAX_DEPTH {
        let Some(c) = u32::try_from(index_at(at)).ok().and_then(&call) else {
            break;
        };
        out.push(Logical {
            pc: at,
            call: Some(c),
        });
        let Some(parent) = i32::try_from(c.parent_pc)
            .ok()
            .and_then(|p| entry.checked_add(p as u64))
        else {
            break;
        };
        at = parent;
    }
    out.push(Logical { pc: at, call: None });
    out
}

/// `internal/abi.FuncID` values the traceback tests. They moved when
/// `FuncID_corostart` (Go 1.22) and `runFinalizers`/`runCleanups` (Go 1.25,
/// replacing `runfinq`) were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuncIds {
    pub wrapper: u8,
    gopanic: u8,
    panicwrap: u8,
    sigpanic: u8,
}

impl FuncIds {
    pub fn of(v: GoVersion) -> Self {
        let at_least = |minor: u32| (v.major, v.minor) >= (1, minor);
        if at_least(25) {
            Self {
                wrapper: 23,
                gopanic: 10,
                panicwrap: 15,
                sigpanic: 20,
            }
        } else if at_least(22) {
            Self {
                wrapper: 22,
                gopanic: 10,
                panicwrap: 15,
                sigpanic: 19,
            }
        } else {
            Self {
                wrapper: 21,
                gopanic: 9,
                panicwrap: 14,
                sigpanic: 18,
            }
        }
    }

    /// `runtime.elideWrapperCalling`: a wrapper frame is hidden unless what
    /// it called is a panic (then the wrapper is where the panic came from).
    pub fn elides_wrapper_calling(self, callee: u8) -> bool {
        callee != self.gopanic && callee != self.sigpanic && callee != self.panicwrap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(parent_pc: u32) -> InlinedCall {
        InlinedCall {
            func_id: 0,
            name_off: 0,
            parent_pc,
        }
    }

    #[test]
    fn walks_to_the_physical_frame() {
        // 0x1010 is inside call 1 inlined into call 0 inlined at 0x1004.
        let index = |pc: u64| match pc {
            0x1010 => 1,
            0x1008 => 0,
            _ => -1,
        };
        let tree = [call(4), call(8)];
        let frames = unwind(0x1000, 0x1010, index, |i| tree.get(i as usize).copied());
        let pcs: Vec<(u64, bool)> = frames.iter().map(|l| (l.pc, l.call.is_some())).collect();
        assert_eq!(pcs, [(0x1010, true), (0x1008, true), (0x1004, false)]);
    }

    #[test]
    fn a_looping_or_lying_tree_ends() {
        // Every PC maps to an entry whose parent is the same PC.
        let frames = unwind(0x1000, 0x1000, |_| 0, |_| Some(call(0)));
        assert_eq!(frames.len(), MAX_DEPTH + 1);
        assert!(frames.last().unwrap().call.is_none());
        // Indices past the tree, or negative parent offsets, stop the walk.
        assert_eq!(unwind(0, 5, |_| 7, |_| None).len(), 1);
        assert_eq!(unwind(0, 5, |_| 0, |_| Some(call(u32::MAX))).len(), 2);
        let layout = Layout::new(true);
        let bytes = [0u8; 16];
        assert!(layout
            .entry(0, MAX_INDEX, |_, _| Some(&bytes[..]))
            .is_none());
        assert!(layout.entry(u64::MAX, 1, |_, _| Some(&bytes[..])).is_none());
        assert!(layout.entry(0, 0, |_, _| Some(&bytes[..8])).is_none());
    }

    #[test]
    fn reads_both_layouts() {
        let mut old = [0u8; 20];
        old[2] = 21;
        old[12..16].copy_from_slice(&7u32.to_le_bytes());
        old[16..20].copy_from_slice(&9u32.to_le_bytes());
        let c = Layout::new(false).entry(0x100, 1, |a, n| {
            assert_eq!((a, n), (0x114, 20));
            Some(&old[..])
        });
        assert_eq!(
            c,
            Some(InlinedCall {
                func_id: 21,
                name_off: 7,
                parent_pc: 9
            })
        );
        let mut new = [0u8; 16];
        new[0] = 23;
        new[4..8].copy_from_slice(&3u32.to_le_bytes());
        new[8..12].copy_from_slice(&5u32.to_le_bytes());
        let c = Layout::new(true).entry(0, 0, |_, _| Some(&new[..]));
        assert_eq!(
            c.map(|c| (c.func_id, c.name_off, c.parent_pc)),
            Some((23, 3, 5))
        );
    }

    #[test]
    fn wrapper_ids_follow_the_release() {
        let v = |minor| GoVersion {
            major: 1,
            minor,
            patch: 0,
        };
        assert_eq!(FuncIds::of(v(19)).wrapper, 21);
        assert_eq!(FuncIds::of(v(21)).wrapper, 21);
        assert_eq!(FuncIds::of(v(22)).wrapper, 22);
        assert_eq!(FuncIds::of(v(24)).wrapper, 22);
        assert_eq!(FuncIds::of(v(25)).wrapper, 23);
        assert_eq!(FuncIds::of(v(27)).wrapper, 23);
        let ids = FuncIds::of(v(27));
        assert!(ids.elides_wrapper_calling(0));
        assert!(!ids.elides_wrapper_calling(10));
    }
}
