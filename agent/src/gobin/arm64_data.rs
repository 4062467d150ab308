//! Recovering the runtime globals a stripped arm64 binary no longer
//! names, from the code that uses them (the arm64 half of the data part of
//! [`super::arch::Arch`]).
//!
//! Data addresses are PC-relative pairs: `adrp xN, page` then `add xN,
//! xN, #lo` (an address, amd64's `lea`) or `ldr`/`str xT, [xN, #lo]` (a
//! load or store of a global, amd64's RIP-relative `mov`). Go's assembler
//! uses R27 (REGTMP) for the page or address of the latter: an address
//! computed into R27 is a data access, never an address taken.

use std::collections::HashMap;

use yaxpeax_arm::armv8::a64::{Instruction, Opcode, Operand};

use super::arm64::{call_target, decode, reg, written, Insn, ARG_REGS};

/// The assembler's temporary (Go's REGTMP), never allocated by the compiler.
const REGTMP: u16 = 27;

/// How an instruction reaches a global through a PC-relative pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Its address computed into `reg` (`adrp` + `add`, or `adr`).
    Address { reg: u16 },
    /// Loaded into `reg` (`adrp` + `ldr`).
    Load { reg: u16 },
    /// Stored from `reg`, whose value was loaded from the global `from`.
    Store { from: Option<u64> },
    /// Indexed by a register (`ldr xT, [xN, xM]` with xN an address).
    Indexed,
}

/// One global reference: where in the code, which global, how.
#[derive(Debug, Clone, Copy)]
struct Ref {
    pc: u64,
    target: u64,
    access: Access,
}

/// Follows `adrp` pages and the addresses and values derived from them
/// through the function, in code order (no control flow: Go keeps each
/// pair adjacent).
struct Tracker {
    /// Register → page from `adrp`, or an address from `adr`/`add`.
    base: HashMap<u16, u64>,
    /// Register → the global its value was loaded from.
    loaded: HashMap<u16, u64>,
    refs: Vec<Ref>,
}

impl Tracker {
    fn run(address: u64, code: &[u8]) -> (Vec<Ref>, Vec<Insn>) {
        let mut t = Tracker {
            base: HashMap::new(),
            loaded: HashMap::new(),
            refs: Vec::new(),
        };
        let insns: Vec<Insn> = decode(address, code).collect();
        for i in &insns {
            if let Some(op) = &i.op {
                t.step(i.pc, op);
            }
        }
        // An address used at once as the base of a load or store is how
        // position-independent code (which cannot use REGTMP there) reaches
        // a global (`adrp x5; add x5, x5, #lo; ldrb w6, [x5]`): that access
        // is recorded; the address is not one the code takes.
        let next = |pc: u64| {
            let n = usize::try_from(pc.wrapping_sub(address) / 4).ok()?;
            insns.get(n + 1)?.op.as_ref()
        };
        t.refs.retain(|r| match r.access {
            Access::Address { reg } => next(r.pc).is_none_or(|op| memory_base(op) != Some(reg)),
            _ => true,
        });
        (t.refs, insns)
    }

    fn step(&mut self, pc: u64, op: &Instruction) {
        let (dst, src) = (reg(&op.operands[0]), &op.operands[1]);
        let mut new_base = None;
        let mut new_loaded = None;
        match (op.opcode, src) {
            (Opcode::ADRP, Operand::PCOffset(off)) => {
                new_base = Some((pc & !0xFFF).wrapping_add_signed(*off));
            }
            (Opcode::ADR, Operand::PCOffset(off)) => {
                new_base = Some(pc.wrapping_add_signed(*off));
                self.push(
                    pc,
                    new_base,
                    Access::Address {
                        reg: dst.unwrap_or(31),
                    },
                );
            }
            (Opcode::ADD, _) => {
                let b = reg(src).and_then(|n| self.base.get(&n).copied());
                match (b, immediate(&op.operands[2])) {
                    (Some(b), Some(imm)) => {
                        new_base = Some(b.wrapping_add(imm));
                        // An address in REGTMP is the assembler reaching a
                        // global for the load or store that follows.
                        if dst != Some(REGTMP) {
                            self.push(
                                pc,
                                new_base,
                                Access::Address {
                                    reg: dst.unwrap_or(31),
                                },
                            );
                        }
                    }
                    // `add x2, x3, x2, lsl #4`: a table indexed by a
                    // register, read through x2 (Go ≥ 1.26 `ldp`).
                    (Some(_), None) => self.push(pc, b, Access::Indexed),
                    _ => {}
                }
            }
            (Opcode::LDR | Opcode::LDRB | Opcode::LDRH | Opcode::LDRSW, _) => match *src {
                Operand::RegPreIndex(n, off, false) => {
                    if let Some(&b) = self.base.get(&n) {
                        new_loaded = Some(b.wrapping_add_signed(i64::from(off)));
                        self.push(
                            pc,
                            new_loaded,
                            Access::Load {
                                reg: dst.unwrap_or(31),
                            },
                        );
                    }
                }
                Operand::RegRegOffset(n, ..) => {
                    let table = self.base.get(&n).copied();
                    self.push(pc, table, Access::Indexed);
                }
                _ => {}
            },
            // `ldp x3, x4, [x27]`: a slice's pointer and length at once.
            (Opcode::LDP, _) => {
                if let Operand::RegPreIndex(n, off, false) = op.operands[2] {
                    if let Some(&b) = self.base.get(&n) {
                        let at = b.wrapping_add_signed(i64::from(off));
                        let second = reg(&op.operands[1]).unwrap_or(31);
                        self.push(
                            pc,
                            Some(at),
                            Access::Load {
                                reg: dst.unwrap_or(31),
                            },
                        );
                        let len = at.wrapping_add(8);
                        self.push(pc, Some(len), Access::Load { reg: second });
                        new_loaded = Some(at);
                    }
                }
            }
            (Opcode::STR | Opcode::STLR, Operand::RegPreIndex(n, off, false)) => {
                if let Some(&b) = self.base.get(n) {
                    let from = dst.and_then(|v| self.loaded.get(&v).copied());
                    let at = b.wrapping_add_signed(i64::from(*off));
                    self.push(pc, Some(at), Access::Store { from });
                }
            }
            _ => {}
        }
        for r in written(op) {
            self.base.remove(&r);
            self.loaded.remove(&r);
        }
        if let (Some(d), Some(b)) = (dst, new_base) {
            self.base.insert(d, b);
        }
        if let (Some(d), Some(a)) = (dst, new_loaded) {
            self.loaded.insert(d, a);
        }
    }

    fn push(&mut self, pc: u64, target: Option<u64>, access: Access) {
        if let Some(target) = target {
            self.refs.push(Ref { pc, target, access });
        }
    }
}

/// The base register of a load's or store's memory operand.
fn memory_base(op: &Instruction) -> Option<u16> {
    op.operands.iter().find_map(|o| match *o {
        Operand::RegPreIndex(n, ..)
        | Operand::RegPostIndex(n, _)
        | Operand::RegRegOffset(n, ..) => Some(n),
        _ => None,
    })
}

/// An `add`/`cmp` immediate, shifted.
fn immediate(o: &Operand) -> Option<u64> {
    match *o {
        Operand::Immediate(v) => Some(u64::from(v)),
        Operand::ImmShift(v, shift) => u64::from(v).checked_shl(u32::from(shift)),
        _ => None,
    }
}

/// SP (and the zero register) in a register operand.
const SP: u16 = 31;

/// Where argument `arg` sits in the closure passed to the call at `site`:
/// its byte offset from the closure's start. This is the fatal paths'
/// fallback site, `systemstack(func() { ... })` where the arguments are
/// already overwritten in their registers; a closure's captured variables
/// follow its code pointer in the order its body first uses them, so the
/// offset differs between functions and Go releases (`runtime.fatal`'s
/// string is at 8 up to Go 1.25, at 16 from 1.26, after the `_panic` it
/// captures first).
///
/// The argument register is followed through the frame's stores, loads
/// and moves to the call, straight through (the prologue and the
/// closure's set-up do not branch); the closure is where the last `add
/// x0, sp, #base` before the call points, and the argument's slot is the
/// one inside the frame above it (its spill slot lies in the caller's
/// frame, above this one).
pub fn closure_argument(address: u64, code: &[u8], site: u64, arg: usize) -> Option<u64> {
    let mut holds: std::collections::HashSet<u16> = [u16::try_from(arg).ok()?].into();
    // Offsets from the current SP of the stack words that hold it.
    let mut slots: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut frame = 0i64;
    let mut closure = None;
    for i in decode(address, code) {
        if i.pc >= site {
            break;
        }
        let op = i.op.as_ref()?;
        let pair = matches!(op.opcode, Opcode::STP | Opcode::LDP);
        let (regs, mem) = op.operands.split_at(if pair { 2 } else { 1 });
        let on_stack = match mem.first() {
            Some(&Operand::RegPreIndex(SP, off, writeback)) => Some((i64::from(off), writeback)),
            _ => None,
        };
        match (op.opcode, on_stack) {
            (Opcode::STR | Opcode::STUR | Opcode::STP, Some((off, writeback))) => {
                let at = if writeback {
                    // `str x30, [sp, #-N]!`: the frame; SP moves down.
                    slots = slots.into_iter().map(|s| s - off).collect();
                    frame -= off;
                    0
                } else {
                    off
                };
                for (k, r) in (0i64..).zip(regs) {
                    if reg(r).is_some_and(|n| n != SP && holds.contains(&n)) {
                        slots.insert(at + 8 * k);
                    } else {
                        slots.remove(&(at + 8 * k));
                    }
                }
            }
            (Opcode::LDR | Opcode::LDUR | Opcode::LDP, Some((off, false))) => {
                for (k, r) in (0i64..).zip(regs) {
                    let Some(n) = reg(r) else { continue };
                    if slots.contains(&(off + 8 * k)) {
                        holds.insert(n);
                    } else {
                        holds.remove(&n);
                    }
                }
            }
            // `mov xD, xN` (`orr xD, xzr, xN`).
            (Opcode::ORR, _)
                if reg(&op.operands[1]) == Some(SP)
                    && reg(&op.operands[2]).is_some_and(|n| holds.contains(&n)) =>
            {
                holds.extend(reg(&op.operands[0]));
            }
            _ => {
                if op.opcode == Opcode::ADD
                    && reg(&op.operands[0]) == Some(0)
                    && reg(&op.operands[1]) == Some(SP)
                {
                    closure = immediate(&op.operands[2]).and_then(|b| i64::try_from(b).ok());
                }
                for w in written(op) {
                    holds.remove(&w);
                }
            }
        }
    }
    let base = closure?;
    let slot = slots.into_iter().filter(|&s| s > base && s < frame).min()?;
    u64::try_from(slot - base).ok()
}

/// `runtime.allgs` and `runtime.allglen` from the code of
/// `runtime.allgadd`, as on amd64: allgs is the lowest global accessed
/// together with +8 and +16 (`append(allgs, gp)` reads the slice header);
/// allglen is where the code stores (`stlr`) a value loaded from allgs+8
/// (the other `stlr` publishes allgptr).
pub fn allg_addresses(address: u64, code: &[u8]) -> Option<(u64, u64)> {
    let (refs, _) = Tracker::run(address, code);
    let data = |r: &&Ref| !matches!(r.access, Access::Address { .. });
    let targets: Vec<u64> = refs.iter().filter(data).map(|r| r.target).collect();
    let allgs = targets
        .iter()
        .copied()
        .filter(|&a| {
            let has = |d: u64| a.checked_add(d).is_some_and(|b| targets.contains(&b));
            has(8) && has(16)
        })
        .min()?;
    let allglen = refs.iter().find_map(|r| match r.access {
        Access::Store { from } if from == allgs.checked_add(8) => Some(r.target),
        _ => None,
    })?;
    Some((allgs, allglen))
}

/// `runtime.waitReasonStrings` (address, entries) from the code of
/// `runtime.waitReason.String`:
///
/// ```text
/// cmp  w2, #N           ; len(waitReasonStrings)
/// b.cc ok
/// ...                   ; "unknown wait reason"
/// ok: adrp x3, page ; add x3, x3, #lo ; ldr x0, [x3, x2]
/// ```
pub fn wait_reason_table(address: u64, code: &[u8]) -> Option<(u64, u64)> {
    let count = decode(address, code)
        .take(16)
        .filter_map(|i| i.op)
        .find_map(|op| {
            let compares = op.opcode == Opcode::SUBS && reg(&op.operands[0]) == Some(31);
            compares
                .then(|| immediate(&op.operands[2]))
                .flatten()
                .filter(|&n| n > 0 && n < 1024)
        })?;
    let (refs, _) = Tracker::run(address, code);
    refs.iter()
        .find(|r| r.access == Access::Indexed)
        .map(|r| (r.target, count))
}

/// The address last computed into R1 before the end of `code`: the
/// `plainError` string header a following `gopanic` call receives (the
/// interface's data word is its second argument register).
pub fn panic_string(address: u64, code: &[u8]) -> Option<u64> {
    let (refs, _) = Tracker::run(address, code);
    refs.iter()
        .rev()
        .find(|r| r.access == Access::Address { reg: 1 })
        .map(|r| r.target)
}

/// The address held in argument register `arg` at the first `bl` to
/// `callee`: `&mheap_` passed by `runtime.mallocinit` to `(*mheap).init`.
pub fn address_argument(address: u64, code: &[u8], callee: u64, arg: usize) -> Option<u64> {
    let arg = u16::try_from(arg).ok().filter(|&a| a < ARG_REGS)?;
    let (refs, insns) = Tracker::run(address, code);
    let call = insns.iter().find(|i| call_target(i) == Some(callee))?;
    // The last address computed into `arg` before the call, unless the
    // register was written again in between.
    let held = refs
        .iter()
        .rev()
        .find(|r| r.pc < call.pc && r.access == Access::Address { reg: arg })?;
    let rewritten = insns
        .iter()
        .filter(|i| i.pc > held.pc && i.pc < call.pc)
        .filter_map(|i| i.op.as_ref())
        .any(|op| written(op).contains(&arg));
    (!rewritten).then_some(held.target)
}

/// The addresses of globals the code computes, in code order (amd64's
/// `lea` targets): `runtime.semtable` is the first in `semrelease1`.
pub fn addresses_taken(address: u64, code: &[u8]) -> Vec<u64> {
    let (refs, _) = Tracker::run(address, code);
    refs.iter()
        .filter(|r| matches!(r.access, Access::Address { .. }))
        .map(|r| r.target)
        .collect()
}

/// A slice global read as pointer and length (`X`, `X+8`) by loads, the
/// pair whose first use comes earliest (`runtime.allp` in `retake`).
pub fn slice_read(address: u64, code: &[u8]) -> Option<u64> {
    let (refs, _) = Tracker::run(address, code);
    let loads: Vec<u64> = refs
        .iter()
        .filter(|r| matches!(r.access, Access::Load { .. }))
        .map(|r| r.target)
        .collect();
    super::abi::first_slice_read(&loads)
}
