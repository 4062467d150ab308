//! The arm64 half of [`super::arch::Arch`]: decoding Go functions with
//! `yaxpeax-arm` to place probes and to recover the data addresses that a
//! stripped binary no longer names.
//!
//! Every site is an instruction the arm64 kernel simulates for a uprobe
//! ([`super::arm64_uprobe`]); Go code offers these at the places the
//! amd64 rules use:
//! - a call site is a `bl`, simulated by `simulate_b_bl`: there the
//!   callee's arguments are in R0–R15 (Go's register ABI on arm64 since
//!   1.18);
//! - an entry site is the first simulated instruction after the
//!   prologue: a `cbz`/`tbz`/`b.cond` testing an argument, an `adrp`
//!   (`runtime.throw`), or the first `bl`. The prologue itself offers
//!   nothing cheap: `ldr x16, [x28, #16]`, `cmp`, and the frame store
//!   `str x30, [sp, #-n]!` are all single-stepped; only its stack check
//!   `b.ls` is simulated, and it is taken as the fallback (it fires a
//!   second time when the stack grows).
//!
//! Data addresses are PC-relative pairs: `adrp xN, page` then `add xN,
//! xN, #lo` (an address, amd64's `lea`) or `ldr`/`str xT, [xN, #lo]` (a
//! load or store of a global, amd64's RIP-relative `mov`). Go uses R27
//! (REGTMP) for the page of the latter.

use std::collections::HashMap;

use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand};

use super::{
    arch::{Reg, RegisterAbi},
    arm64_uprobe::{self, Uprobe},
    sites::ProbeSite,
};

/// Go's register ABI on arm64 (`ABIInternal`, Go ≥ 1.18): the facts the
/// kernel programs need, by `pt_regs.regs[n]` index.
pub const ABI: RegisterAbi = RegisterAbi {
    // `runqput(pp, newg, next)`: the second integer argument.
    create_new_g: Reg::new("R1", 1),
    // `goexit0(gp)`: the first.
    exit_gp: Reg::new("R0", 0),
    g: Reg::new("R28", 28),
    frame_pointer: Reg::new("R29", 29),
    link_register: Some(Reg::new("R30", 30)),
};

/// Go's integer argument registers are R0–R15.
const ARG_REGS: u16 = 16;
/// How far into a function an entry site may be: Go's arm64 prologue is
/// six instructions, and an argument is often spilled and tested after.
const MAX_ENTRY_INSTRUCTIONS: usize = 20;
/// The goroutine pointer register.
const REG_G: u16 = 28;
/// `g.stackguard0`, the prologue's stack check loads it.
const STACKGUARD0: i32 = 16;

/// One decoded instruction word.
struct Insn {
    pc: u64,
    word: u32,
    /// `None` for a word the decoder does not know (padding, data).
    op: Option<Instruction>,
}

fn decode(address: u64, code: &[u8]) -> impl Iterator<Item = Insn> + '_ {
    let decoder = InstDecoder::default();
    code.chunks_exact(4).zip((address..).step_by(4)).map(move |(bytes, pc)| {
        let word = u32::from_le_bytes(bytes.try_into().unwrap_or_default());
        let op = decoder.decode(&mut U8Reader::new(bytes)).ok();
        Insn { pc, word, op }
    })
}

/// The target of a `bl`.
fn call_target(i: &Insn) -> Option<u64> {
    let op = i.op.as_ref()?;
    match (op.opcode, op.operands[0]) {
        (Opcode::BL, Operand::PCOffset(off)) => Some(i.pc.wrapping_add_signed(off)),
        _ => None,
    }
}

/// The site at `i` if the kernel simulates it.
fn simulated_site(i: &Insn) -> Option<ProbeSite> {
    match arm64_uprobe::classify(i.word) {
        Uprobe::Simulated(s) => Some(ProbeSite {
            address: i.pc,
            file_offset: 0,
            kind: s.kind(),
        }),
        Uprobe::Stepped | Uprobe::Rejected => None,
    }
}

/// Every `bl` in the function at `address` whose target is `callee`.
pub fn call_sites(address: u64, code: &[u8], callee: u64) -> Vec<ProbeSite> {
    decode(address, code)
        .filter(|i| call_target(i) == Some(callee))
        .filter_map(|i| simulated_site(&i))
        .collect()
}

/// The first `bl` to `callee`.
pub fn call_site(address: u64, code: &[u8], callee: u64) -> Result<ProbeSite, String> {
    call_sites(address, code, callee)
        .into_iter()
        .next()
        .ok_or_else(|| format!("no call to {callee:#x}"))
}

fn reg(o: &Operand) -> Option<u16> {
    match *o {
        Operand::Register(_, n) | Operand::RegisterOrSP(_, n) => Some(n),
        _ => None,
    }
}

/// The general registers `op` writes (31 included: the zero register or
/// SP, never an argument). Stores write only a written-back base.
fn written(op: &Instruction) -> Vec<u16> {
    let writeback = op.operands.iter().filter_map(|o| match *o {
        Operand::RegPreIndex(n, _, true) | Operand::RegPostIndex(n, _) => Some(n),
        _ => None,
    });
    let mut out: Vec<u16> = writeback.collect();
    match op.opcode {
        Opcode::STR
        | Opcode::STRB
        | Opcode::STRH
        | Opcode::STRW
        | Opcode::STUR
        | Opcode::STURB
        | Opcode::STURH
        | Opcode::STP
        | Opcode::STLR
        | Opcode::STLRB
        | Opcode::STLRH
        | Opcode::B
        | Opcode::Bcc(_)
        | Opcode::CBZ
        | Opcode::CBNZ
        | Opcode::TBZ
        | Opcode::TBNZ
        | Opcode::BR
        | Opcode::RET => {}
        // A call clobbers every argument register.
        Opcode::BL | Opcode::BLR => out.extend(0..ARG_REGS),
        Opcode::LDP | Opcode::LDPSW | Opcode::LDXP | Opcode::LDAXP => {
            out.extend(op.operands[..2].iter().filter_map(reg));
        }
        _ => out.extend(reg(&op.operands[0])),
    }
    out
}

/// `ldr x16, [x28, #16]`: the prologue loading `g.stackguard0`.
fn loads_stackguard(op: &Instruction) -> bool {
    op.opcode == Opcode::LDR
        && matches!(op.operands[1], Operand::RegPreIndex(REG_G, STACKGUARD0, false))
}

/// The first simulated instruction near the entry of the function at
/// `address` reached before any argument register in `live_args` is
/// written, preferring one past the stack check's `b.ls` (which fires
/// again after a stack growth) to the `b.ls` itself.
pub fn entry_site(address: u64, code: &[u8], live_args: &[usize]) -> Result<ProbeSite, String> {
    let mut stack_check = None;
    let mut guard_loaded = false;
    for i in decode(address, code).take(MAX_ENTRY_INSTRUCTIONS) {
        let Some(op) = i.op.as_ref() else { break };
        if let Some(site) = simulated_site(&i) {
            let is_check = guard_loaded
                && stack_check.is_none()
                && matches!(op.opcode, Opcode::Bcc(_));
            if !is_check {
                return Ok(site);
            }
            stack_check = Some(site);
        }
        guard_loaded |= loads_stackguard(op);
        let clobbers = written(op)
            .iter()
            .any(|&r| live_args.contains(&usize::from(r)));
        if clobbers {
            break;
        }
    }
    stack_check.ok_or_else(|| {
        "no simulated instruction before the arguments are overwritten".to_string()
    })
}

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
                self.push(pc, new_base, Access::Address { reg: dst.unwrap_or(31) });
            }
            (Opcode::ADD, _) => {
                if let (Some(b), Some(imm)) = (
                    reg(src).and_then(|n| self.base.get(&n).copied()),
                    immediate(&op.operands[2]),
                ) {
                    new_base = Some(b.wrapping_add(imm));
                    self.push(pc, new_base, Access::Address { reg: dst.unwrap_or(31) });
                }
            }
            (Opcode::LDR | Opcode::LDRB | Opcode::LDRH | Opcode::LDRSW, _) => match *src {
                Operand::RegPreIndex(n, off, false) => {
                    if let Some(&b) = self.base.get(&n) {
                        new_loaded = Some(b.wrapping_add_signed(i64::from(off)));
                        self.push(pc, new_loaded, Access::Load { reg: dst.unwrap_or(31) });
                    }
                }
                Operand::RegRegOffset(n, ..) => {
                    let table = self.base.get(&n).copied();
                    self.push(pc, table, Access::Indexed);
                }
                _ => {}
            },
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

/// An `add`/`cmp` immediate, shifted.
fn immediate(o: &Operand) -> Option<u64> {
    match *o {
        Operand::Immediate(v) => Some(u64::from(v)),
        Operand::ImmShift(v, shift) => Some(u64::from(v) << shift),
        _ => None,
    }
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
        .filter(|&a| targets.contains(&(a + 8)) && targets.contains(&(a + 16)))
        .min()?;
    let allglen = refs.iter().find_map(|r| match r.access {
        Access::Store { from } if from == Some(allgs + 8) => Some(r.target),
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
        .filter(|r| r.access == Access::Address { reg: 1 })
        .last()
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
        .filter(|r| r.pc < call.pc && r.access == Access::Address { reg: arg })
        .last()?;
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

/// The instruction class and the kernel's handling of the word at the
/// start of `code`, for `inspect`.
pub fn describe(code: &[u8]) -> Option<String> {
    let word = u32::from_le_bytes(code.get(..4)?.try_into().ok()?);
    Some(arm64_uprobe::describe(word))
}

/// Whether a site's kind is one the kernel simulates on arm64.
#[allow(dead_code)] // used by the tests; the kernel side will check it too
pub fn is_simulated(code: &[u8]) -> bool {
    code.get(..4)
        .and_then(|b| b.try_into().ok())
        .is_some_and(|b| matches!(arm64_uprobe::classify(u32::from_le_bytes(b)), Uprobe::Simulated(_)))
}

#[cfg(test)]
#[path = "arm64_tests.rs"]
mod tests;
