//! The arm64 half of [`super::arch::Arch`]: decoding Go functions with
//! `yaxpeax-arm` to place probes, and Go's register ABI there.
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
//! What that gives on Go 1.19–1.27 (every release of the fixture matrix,
//! default, stripped and PIE; `gobin::arm64::tests` checks each word):
//!
//! | site | function | instruction | kernel handler |
//! |---|---|---|---|
//! | `create` | `newproc.func1` | `bl runqput`, new g in R1 | `simulate_b_bl` |
//! | `exit` | `goexit0` | its first `bl` (`gdestroy`; 1.19: `casgstatus`), gp in R0 | `simulate_b_bl` |
//! | `block_chan`, `block` | `chansend`, `chanrecv`, `semacquire1`… | each `bl gopark` | `simulate_b_bl` |
//! | `send_closed` | `chansend` | each `bl gopanic` | `simulate_b_bl` |
//! | `close` | `closechan` | `cbz x0` (`c == nil`), c in R0 | `simulate_cbz_cbnz` |
//! | `throw` | `throw` | its first `adrp` (NOSPLIT: no stack check), s in R0, R1 | `simulate_adr_adrp` |
//! | `throw` | `fatal` | `adrp` (≤ 1.23); from 1.24 R0 is reloaded first, so the `bl systemstack` fallback | both |
//! | `fatal_panic` | `fatalpanic` | `adrp` (1.19); from 1.21 R1 is reused first, so the `bl systemstack` fallback | both |
//!
//! The data addresses are recovered in [`super::arm64_data`].

use yaxpeax_arch::{Decoder, U8Reader};
use yaxpeax_arm::armv8::a64::{InstDecoder, Instruction, Opcode, Operand};

use super::{
    abi::{Reg, RegisterAbi},
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
pub(super) const ARG_REGS: u16 = 16;
/// How far into a function an entry site may be: Go's arm64 prologue is
/// six instructions, and an argument is often spilled and tested after.
const MAX_ENTRY_INSTRUCTIONS: usize = 20;
/// The goroutine pointer register.
const REG_G: u16 = 28;
/// `g.stackguard0`, the prologue's stack check loads it.
const STACKGUARD0: i32 = 16;

/// One decoded instruction word.
pub(super) struct Insn {
    pub pc: u64,
    pub word: u32,
    /// `None` for a word the decoder does not know (padding, data).
    pub op: Option<Instruction>,
}

pub(super) fn decode(address: u64, code: &[u8]) -> impl Iterator<Item = Insn> + '_ {
    let decoder = InstDecoder::default();
    // Addresses wrap rather than overflow: a damaged function table may
    // place a function anywhere.
    code.chunks_exact(4).zip(0u64..).map(move |(bytes, n)| {
        let word = u32::from_le_bytes(bytes.try_into().unwrap_or_default());
        let op = decoder.decode(&mut U8Reader::new(bytes)).ok();
        Insn {
            pc: address.wrapping_add(n * 4),
            word,
            op,
        }
    })
}

/// The target of a `bl`.
pub(super) fn call_target(i: &Insn) -> Option<u64> {
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

pub(super) fn reg(o: &Operand) -> Option<u16> {
    match *o {
        Operand::Register(_, n) | Operand::RegisterOrSP(_, n) => Some(n),
        _ => None,
    }
}

/// The general registers `op` writes (31 included: the zero register or
/// SP, never an argument). Stores write only a written-back base.
pub(super) fn written(op: &Instruction) -> Vec<u16> {
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
        && matches!(
            op.operands[1],
            Operand::RegPreIndex(REG_G, STACKGUARD0, false)
        )
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
            let is_check =
                guard_loaded && stack_check.is_none() && matches!(op.opcode, Opcode::Bcc(_));
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
    stack_check
        .ok_or_else(|| "no simulated instruction before the arguments are overwritten".to_string())
}

/// The instruction class and the kernel's handling of the word at the
/// start of `code`, for `inspect`.
pub fn describe(code: &[u8]) -> Option<String> {
    let word = u32::from_le_bytes(code.get(..4)?.try_into().ok()?);
    Some(arm64_uprobe::describe(word))
}

#[cfg(test)]
#[path = "arm64_tests.rs"]
mod tests;
