//! Facts about registers and instruction sequences that every instruction
//! set's decoder shares: the leaf below `amd64`, `arm64` and `arch`.

use serde::Serialize;

/// A general register: Go's assembler name and its number (arm64: `Xn`,
/// the index in `pt_regs.regs`; amd64: the DWARF register number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reg {
    pub name: &'static str,
    pub number: u8,
}

impl Reg {
    pub const fn new(name: &'static str, number: u8) -> Self {
        Self { name, number }
    }
}

/// Where Go's register ABI puts what the kernel programs read: data for
/// the per-architecture register access of `ebpf/` (its `goabi.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RegisterAbi {
    /// The new g at the create site (`runqput(pp, newg, true)`).
    pub create_new_g: Reg,
    /// `gp` at the exit site (`goexit0(gp)`).
    pub exit_gp: Reg,
    /// The running goroutine's g.
    pub g: Reg,
    pub frame_pointer: Reg,
    /// Where a call leaves its return address, when not on the stack.
    pub link_register: Option<Reg>,
}

/// Of the data addresses a function loads from, in order, the slice it
/// reads first: an address whose next word (the length) is loaded too.
pub fn first_slice_read(loads: &[u64]) -> Option<u64> {
    let first_use = |a: u64| loads.iter().position(|&r| r == a);
    loads
        .iter()
        .copied()
        .filter_map(|a| {
            let (ptr, len) = (first_use(a)?, first_use(a.checked_add(8)?)?);
            Some((ptr.min(len), a))
        })
        .min()
        .map(|(_, a)| a)
}
