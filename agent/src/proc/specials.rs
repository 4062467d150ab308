//! Finalizers and cleanups as roots. The runtime's GC treats what a
//! finalizer can touch as live: the closure, and everything its object
//! points to (not the object itself); a cleanup keeps its closure and its
//! argument. A goroutine whose channel only a finalizer can still reach is
//! not leaked, for the runtime's detector nor for the walk.
//!
//! Each in-use span lists its objects' specials (`mspan.specials`, a linked
//! list of `runtime.special` headers, each the start of a larger record).
//! The layouts, by release (`runtime/mheap.go`):
//!
//! | Go | `special` | finalizer kind, `fn` | cleanup kind, roots |
//! | --- | --- | --- | --- |
//! | 1.19–1.23 | `next`, `offset uint16` at 8, `kind` at 10 (16 bytes) | 1, at 16 | none |
//! | 1.24 | `next`, `offset uintptr` at 8, `kind` at 16 (24 bytes) | 1, at 24 | 6: `fn` at 24 |
//! | 1.25– | as 1.24 | 2, at 24 | 7: `cleanup{call, fn, arg}`: `fn` at 32, `arg` at 40 |

use super::mem;
use crate::{
    gobin::GoVersion,
    reach::{AddrRange, HeapMap, Root, RootKind, Scan},
};

/// Bounds: specials read per walk, and per span list (a lying `next`
/// chain ends here).
const MAX_SPECIALS: usize = 100_000;
const MAX_PER_SPAN: usize = 4_096;

/// Where a release keeps what a special holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kinds {
    /// `special.offset` is a uintptr (Go ≥ 1.24), not a uint16.
    wide: bool,
    finalizer: u8,
    /// The cleanup kind and the offsets of the words it keeps alive.
    cleanup: Option<(u8, &'static [u64])>,
}

impl Kinds {
    fn of(v: GoVersion) -> Self {
        let at_least = |minor| (v.major, v.minor) >= (1, minor);
        match () {
            () if at_least(25) => Self {
                wide: true,
                finalizer: 2,
                cleanup: Some((7, &[32, 40])),
            },
            () if at_least(24) => Self {
                wide: true,
                finalizer: 1,
                cleanup: Some((6, &[24])),
            },
            () => Self {
                wide: false,
                finalizer: 1,
                cleanup: None,
            },
        }
    }

    /// `(offset, kind, fn slot)` of a special's header, read from `head`.
    fn parse(self, head: &[u8; 24]) -> (u64, u8, u64) {
        let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        if self.wide {
            (word(8), head[16], 24)
        } else {
            (
                u64::from(u16::from_le_bytes([head[8], head[9]])),
                head[10],
                16,
            )
        }
    }
}

/// The roots that the finalizers and cleanups of `heap`'s spans hold.
pub(super) fn special_roots(pid: u32, heap: &HeapMap, version: GoVersion) -> Vec<Root> {
    let kinds = Kinds::of(version);
    let mut roots = Vec::new();
    let mut read = 0usize;
    for (start, elemsize, head) in heap.with_specials() {
        let mut at = head;
        for _ in 0..MAX_PER_SPAN {
            if at == 0 || read >= MAX_SPECIALS {
                break;
            }
            read += 1;
            let mut buf = [0u8; 24];
            if mem::read(pid, at, &mut buf).is_err() {
                break;
            }
            let (offset, kind, fn_at) = kinds.parse(&buf);
            if kind == kinds.finalizer {
                // The object's contents (not the object) and the closure.
                let object = start + offset / elemsize * elemsize;
                roots.push(root(Scan::Range(AddrRange {
                    lo: object,
                    hi: object + elemsize,
                })));
                roots.push(root(Scan::Slots(vec![at + fn_at])));
            } else if let Some((_, slots)) = kinds.cleanup.filter(|(k, _)| *k == kind) {
                roots.push(root(Scan::Slots(slots.iter().map(|o| at + o).collect())));
            }
            at = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
        }
    }
    roots
}

fn root(scan: Scan) -> Root {
    Root {
        kind: RootKind::Runtime {
            what: "a finalizer or cleanup".into(),
        },
        scan,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(minor: u32) -> GoVersion {
        GoVersion {
            major: 1,
            minor,
            patch: 0,
        }
    }

    #[test]
    fn headers_are_read_per_release() {
        let mut narrow = [0u8; 24];
        narrow[8..10].copy_from_slice(&96u16.to_le_bytes());
        narrow[10] = 1;
        assert_eq!(Kinds::of(v(19)).parse(&narrow), (96, 1, 16));
        assert_eq!(Kinds::of(v(23)).cleanup, None);
        let mut wide = [0u8; 24];
        wide[8..16].copy_from_slice(&4096u64.to_le_bytes());
        wide[16] = 7;
        assert_eq!(Kinds::of(v(27)).parse(&wide), (4096, 7, 24));
        assert_eq!(Kinds::of(v(24)).finalizer, 1);
        assert_eq!(Kinds::of(v(24)).cleanup, Some((6, &[24u64][..])));
        assert_eq!(Kinds::of(v(25)).finalizer, 2);
        assert_eq!(Kinds::of(v(27)).cleanup, Some((7, &[32u64, 40][..])));
    }
}
