//! The amd64 half of [`super::arch::Arch`]: decoding Go functions with
//! `iced-x86` to place probes and to recover data addresses that a stripped
//! binary no longer names.
//!
//! A uprobe on an instruction the kernel can emulate (push, call, jmp, jcc,
//! nop) costs about 1 µs here; one it must single-step out of line (cmp, lea,
//! mov, ret…) costs 25–30 µs. So probes go on emulated instructions.

use iced_x86::{
    Code, Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register,
};

use super::{
    abi::{Reg, RegisterAbi},
    sites::{ProbeSite, SiteKind},
};

/// Go's register ABI on amd64 (`ABIInternal`, Go ≥ 1.17), by DWARF
/// register number.
pub const ABI: RegisterAbi = RegisterAbi {
    // `runqput(pp, newg, next)`: the second integer argument.
    create_new_g: Reg::new("RBX", 3),
    // `goexit0(gp)`: the first.
    exit_gp: Reg::new("RAX", 0),
    g: Reg::new("R14", 14),
    frame_pointer: Reg::new("RBP", 6),
    link_register: None,
};

/// How far into a function an entry site may be (Go prologues are 2–4
/// instructions; anything later has likely clobbered arguments).
const MAX_ENTRY_INSTRUCTIONS: usize = 8;

/// Go's integer argument registers in order (amd64 register ABI).
const ARG_REGS: [Register; 9] = [
    Register::RAX,
    Register::RBX,
    Register::RCX,
    Register::RDI,
    Register::RSI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

fn decode(address: u64, code: &[u8]) -> impl Iterator<Item = Instruction> + '_ {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| i.code() != Code::INVALID)
}

/// The kind of an instruction the kernel emulates, or `None` when it must be
/// single-stepped.
fn emulated(instr: &Instruction) -> Option<SiteKind> {
    match instr.mnemonic() {
        Mnemonic::Push if instr.op0_register() != Register::None => Some(SiteKind::Push),
        Mnemonic::Call if instr.is_call_near() => Some(SiteKind::Call),
        Mnemonic::Jmp if instr.is_jmp_short_or_near() => Some(SiteKind::Jump),
        _ if instr.is_jcc_short_or_near() => Some(SiteKind::Jump),
        Mnemonic::Nop => Some(SiteKind::Nop),
        _ => None,
    }
}

/// The call in the function at `address` whose target is `callee`: there the
/// callee's arguments sit in the ABI registers.
pub fn call_site(address: u64, code: &[u8], callee: u64) -> Result<ProbeSite, String> {
    decode(address, code)
        .find(|i| i.is_call_near() && i.near_branch_target() == callee)
        .map(|i| ProbeSite {
            address: i.ip(),
            file_offset: 0,
            kind: SiteKind::Call,
        })
        .ok_or_else(|| format!("no call to {callee:#x}"))
}

/// Every call in the function at `address` whose target is `callee`.
pub fn call_sites(address: u64, code: &[u8], callee: u64) -> Vec<ProbeSite> {
    decode(address, code)
        .filter(|i| i.is_call_near() && i.near_branch_target() == callee)
        .map(|i| ProbeSite {
            address: i.ip(),
            file_offset: 0,
            kind: SiteKind::Call,
        })
        .collect()
}

/// The first emulated instruction near the entry of the function at `address`
/// reached before any of the argument registers in `live_args` is written.
/// A `push` (Go ≥ 1.21's `push rbp` after the stack check) is preferred.
pub fn entry_site(address: u64, code: &[u8], live_args: &[usize]) -> Result<ProbeSite, String> {
    let watched: Vec<Register> = live_args.iter().map(|&n| ARG_REGS[n]).collect();
    let mut info = InstructionInfoFactory::new();
    let mut best: Option<ProbeSite> = None;
    for instr in decode(address, code).take(MAX_ENTRY_INSTRUCTIONS) {
        if let Some(kind) = emulated(&instr) {
            let site = ProbeSite {
                address: instr.ip(),
                file_offset: 0,
                kind,
            };
            if kind == SiteKind::Push {
                return Ok(site);
            }
            best.get_or_insert(site);
        }
        let clobbers = info.info(&instr).used_registers().iter().any(|used| {
            watched.contains(&used.register().full_register())
                && matches!(
                    used.access(),
                    OpAccess::Write
                        | OpAccess::ReadWrite
                        | OpAccess::CondWrite
                        | OpAccess::ReadCondWrite
                )
        });
        // A branch leaves the straight-line prologue: stop looking past it
        // unless it is the stack-check `jbe` that falls through.
        if clobbers
            || matches!(
                instr.mnemonic(),
                Mnemonic::Call | Mnemonic::Jmp | Mnemonic::Ret
            )
        {
            break;
        }
    }
    best.ok_or_else(|| "no emulated instruction before the arguments are overwritten".to_string())
}

/// The RIP-relative addresses an instruction touches through memory or `lea`.
fn rip_target(i: &Instruction) -> Option<u64> {
    i.is_ip_rel_memory_operand()
        .then(|| i.ip_rel_memory_address())
}

/// `runtime.allgs` and `runtime.allglen` from the code of `runtime.allgadd`:
///
/// ```go
/// allgs = append(allgs, gp)        // loads allgs, allgs+8, allgs+16
/// atomic.Storeuintptr(&allglen, uintptr(len(allgs)))   // lea reg, allglen; xchg
/// ```
///
/// allgs is the lowest address referenced together with +8 and +16 (a
/// slice header); allglen is the target of the `xchg` whose value was
/// loaded from allgs+8 (the other `xchg` stores allgptr).
pub fn allg_addresses(address: u64, code: &[u8]) -> Option<(u64, u64)> {
    let instrs: Vec<Instruction> = decode(address, code).collect();
    let refs: Vec<u64> = instrs.iter().filter_map(rip_target).collect();
    let allgs = refs
        .iter()
        .copied()
        .filter(|&a| refs.contains(&(a + 8)) && refs.contains(&(a + 16)))
        .min()?;
    // Register → the RIP-relative address it was last set from (lea) or
    // loaded from (mov).
    let mut lea = std::collections::HashMap::new();
    let mut loaded = std::collections::HashMap::new();
    let mut allglen = None;
    for i in &instrs {
        match i.mnemonic() {
            Mnemonic::Lea => {
                if let Some(t) = rip_target(i) {
                    lea.insert(i.op0_register().full_register(), t);
                }
            }
            Mnemonic::Mov if i.op0_register() != Register::None => {
                let reg = i.op0_register().full_register();
                match rip_target(i) {
                    Some(t) => loaded.insert(reg, t),
                    None => loaded.remove(&reg),
                };
            }
            Mnemonic::Xchg if i.op1_register() != Register::None => {
                let value = i.op1_register().full_register();
                let target = lea.get(&i.memory_base().full_register()).copied();
                if loaded.get(&value) == Some(&(allgs + 8)) {
                    allglen = target;
                }
            }
            _ => {}
        }
    }
    Some((allgs, allglen?))
}

/// `runtime.waitReasonStrings` (address, entries) from the code of
/// `runtime.waitReason.String`:
///
/// ```text
/// cmp al, N                     ; len(waitReasonStrings)
/// jb  ok
/// lea rax, "unknown wait reason" ...
/// ok: lea rdx, waitReasonStrings ; mov rax, [rdx+rcx] ...
/// ```
///
/// The table is the `lea` target used as a base of an indexed load.
pub fn wait_reason_table(address: u64, code: &[u8]) -> Option<(u64, u64)> {
    let mut count = None;
    let mut lea = std::collections::HashMap::new();
    for i in decode(address, code).take(64) {
        match i.mnemonic() {
            Mnemonic::Cmp if count.is_none() && i.op1_kind() == OpKind::Immediate8 => {
                count = Some(u64::from(i.immediate8()));
            }
            Mnemonic::Cmp
                if count.is_none()
                    && matches!(
                        i.op1_kind(),
                        OpKind::Immediate16
                            | OpKind::Immediate32
                            | OpKind::Immediate8to16
                            | OpKind::Immediate8to32
                            | OpKind::Immediate8to64
                            | OpKind::Immediate32to64
                    ) =>
            {
                let imm = i.immediate(1);
                if imm > 0 && imm < 1024 {
                    count = Some(imm);
                }
            }
            Mnemonic::Lea => {
                if let Some(t) = rip_target(&i) {
                    lea.insert(i.op0_register().full_register(), t);
                }
            }
            Mnemonic::Mov if i.memory_index() != Register::None => {
                if let Some(&t) = lea.get(&i.memory_base().full_register()) {
                    return Some((t, count?));
                }
            }
            _ => {}
        }
    }
    None
}

/// The RIP-relative address `lea`'d into argument register `arg` last
/// before the first call to `callee`: a global passed by address, as
/// `runtime.mallocinit` passes `&mheap_` to `(*mheap).init` (the receiver,
/// in RAX) on every release from 1.19 to 1.27.
pub fn lea_arg_at_call(address: u64, code: &[u8], callee: u64, arg: usize) -> Option<u64> {
    let reg = *ARG_REGS.get(arg)?;
    let mut held = None;
    for i in decode(address, code) {
        if i.is_call_near() && i.near_branch_target() == callee {
            return held;
        }
        let writes_reg = i.op_count() > 0
            && i.op0_kind() == OpKind::Register
            && i.op0_register().full_register() == reg;
        if writes_reg {
            held = (i.mnemonic() == Mnemonic::Lea)
                .then(|| rip_target(&i))
                .flatten();
        }
    }
    None
}

/// Where argument `arg` sits in the closure passed to the call at `site`
/// (`systemstack(func() { ... })`, the fatal paths' fallback site): its
/// byte offset from the closure's start. The register is followed through
/// the frame's stores, loads and moves to the call, straight through; the
/// closure is where the last `lea rax, [rsp+base]` before the call points,
/// and the argument's slot is the one inside the frame above it (its spill
/// slot lies above the return address, in the caller's frame). See
/// `arm64_data::closure_argument`.
pub fn closure_argument(address: u64, code: &[u8], site: u64, arg: usize) -> Option<u64> {
    let mut holds = vec![*ARG_REGS.get(arg)?];
    // Offsets from the current RSP of the stack words that hold it.
    let mut slots: Vec<i64> = Vec::new();
    let mut frame = 0i64;
    let mut closure = None;
    let on_stack = |i: &Instruction, n: u32| {
        (i.op_kind(n) == OpKind::Memory
            && i.memory_base() == Register::RSP
            && i.memory_index() == Register::None)
            .then(|| i.memory_displacement64().cast_signed())
    };
    for i in decode(address, code) {
        if i.ip() >= site {
            break;
        }
        let dst = (i.op_count() > 0 && i.op0_kind() == OpKind::Register)
            .then(|| i.op0_register().full_register());
        let src = (i.op_count() > 1 && i.op1_kind() == OpKind::Register)
            .then(|| i.op1_register().full_register());
        match i.mnemonic() {
            Mnemonic::Sub if dst == Some(Register::RSP) && i.op1_kind() != OpKind::Register => {
                let n = i64::try_from(i.immediate(1)).ok()?;
                for s in &mut slots {
                    *s += n;
                }
                frame += n;
            }
            Mnemonic::Lea if dst == Some(Register::RAX) => {
                closure = on_stack(&i, 1);
                holds.retain(|&r| r != Register::RAX);
            }
            _ => {
                if let Some(at) = on_stack(&i, 0) {
                    // A store: the words it covers now hold its source.
                    let words = i64::try_from(i.memory_size().size().div_ceil(8)).ok()?;
                    slots.retain(|s| !(at..at + 8 * words).contains(s));
                    if words == 1 && src.is_some_and(|r| holds.contains(&r)) {
                        slots.push(at);
                    }
                } else if let Some(d) = dst {
                    let from_slot = on_stack(&i, 1).is_some_and(|at| slots.contains(&at));
                    let from_reg =
                        i.mnemonic() == Mnemonic::Mov && src.is_some_and(|r| holds.contains(&r));
                    holds.retain(|&r| r != d);
                    if i.mnemonic() == Mnemonic::Mov && (from_slot || from_reg) {
                        holds.push(d);
                    }
                }
            }
        }
    }
    let base = closure?;
    let slot = slots.into_iter().filter(|&s| s > base && s < frame).min()?;
    u64::try_from(slot - base).ok()
}

/// The targets of the function's RIP-relative `lea`s, in code order. A
/// global array indexed at run time is reached this way: `runtime.semtable`
/// is the first one in `runtime.semrelease1` (`semtable.rootFor(addr)`,
/// inlined), on every release from 1.19 to 1.27.
pub fn lea_targets(address: u64, code: &[u8]) -> Vec<u64> {
    decode(address, code)
        .filter(|i| i.mnemonic() == Mnemonic::Lea)
        .filter_map(|i| rip_target(&i))
        .collect()
}

/// A slice global read as pointer and length (`X`, `X+8`) by the function,
/// not through `lea`: the pair whose first use comes earliest. In
/// `runtime.retake` that is `runtime.allp` (`for i := 0; i < len(allp); i++
/// { pp := allp[i]`), read right after `lock(&allpLock)`, on 1.19–1.27.
pub fn slice_loaded(address: u64, code: &[u8]) -> Option<u64> {
    let refs: Vec<u64> = decode(address, code)
        .filter(|i| i.mnemonic() != Mnemonic::Lea)
        .filter_map(|i| rip_target(&i))
        .collect();
    super::abi::first_slice_read(&refs)
}

/// The last RIP-relative `lea rbx, [rip+…]` of `code`: the `plainError`
/// string header a following `gopanic` call receives (its interface data
/// word is the second argument register).
pub fn panic_string(address: u64, code: &[u8]) -> Option<u64> {
    decode(address, code)
        .filter(|i| {
            i.mnemonic() == Mnemonic::Lea
                && i.op0_register() == ARG_REGS[1]
                && i.op1_kind() == OpKind::Memory
                && i.is_ip_rel_memory_operand()
        })
        .last()
        .map(|i| i.ip_rel_memory_address())
}

#[cfg(test)]
mod tests {
    use super::*;

    // cmp rsp,[r14+0x10]; jbe +0x20; push rbp; mov rbp,rsp
    const GO121_PROLOGUE: &[u8] = &[0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55, 0x48, 0x89, 0xe5];
    // cmp rsp,[r14+0x10]; jbe +0x20; sub rsp,0x28; mov [rsp+0x20],rbp
    const GO119_PROLOGUE: &[u8] = &[
        0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x48, 0x83, 0xec, 0x28, 0x48, 0x89, 0x6c, 0x24, 0x20,
    ];

    #[test]
    fn prefers_push_rbp_after_stack_check() {
        let site = entry_site(0x1000, GO121_PROLOGUE, &[0]).unwrap();
        assert_eq!((site.address, site.kind), (0x1006, SiteKind::Push));
    }

    #[test]
    fn falls_back_to_stack_check_branch_without_push() {
        let site = entry_site(0x1000, GO119_PROLOGUE, &[0]).unwrap();
        assert_eq!((site.address, site.kind), (0x1004, SiteKind::Jump));
    }

    #[test]
    fn stops_once_an_argument_register_is_overwritten() {
        // mov rax, rbx; push rbp
        let code = [0x48, 0x89, 0xd8, 0x55];
        assert!(entry_site(0x1000, &code, &[0]).is_err());
        // ... but RCX is not touched, so the push is fine when only RCX matters.
        assert_eq!(
            entry_site(0x1000, &code, &[2]).unwrap().kind,
            SiteKind::Push
        );
    }

    #[test]
    fn finds_call_to_callee() {
        // nop; call rel32 → 0x1000 + 1 + 5 + 0x10 = 0x1016
        let code = [0x90, 0xe8, 0x10, 0x00, 0x00, 0x00];
        let site = call_site(0x1000, &code, 0x1016).unwrap();
        assert_eq!((site.address, site.kind), (0x1001, SiteKind::Call));
        assert!(call_site(0x1000, &code, 0x2000).is_err());
    }

    #[test]
    fn finds_the_global_passed_by_address() {
        // lea rax,[rip+0x100]; lea rbx,[rip+0x200]; call rel32 → 0x1020
        let code = [
            0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00, 0x48, 0x8d, 0x1d, 0x00, 0x02, 0x00, 0x00,
            0xe8, 0x0d, 0x00, 0x00, 0x00,
        ];
        assert_eq!(lea_arg_at_call(0x1000, &code, 0x1020, 0), Some(0x1107));
        assert_eq!(lea_arg_at_call(0x1000, &code, 0x1020, 1), Some(0x120e));
        assert_eq!(lea_arg_at_call(0x1000, &code, 0x1020, 2), None);
        assert_eq!(lea_arg_at_call(0x1000, &code, 0x2000, 0), None);
        assert_eq!(lea_targets(0x1000, &code), vec![0x1107, 0x120e]);
    }

    #[test]
    fn finds_a_slice_read_as_pointer_and_length() {
        // cmp rax,[rip+0x10f]; mov rbx,[rip+0x100]; mov rcx,[rip+0x300]:
        // the length (0x1116) is compared before the pointer (0x110e) is read.
        let code = [
            0x48, 0x3b, 0x05, 0x0f, 0x01, 0x00, 0x00, 0x48, 0x8b, 0x1d, 0x00, 0x01, 0x00, 0x00,
            0x48, 0x8b, 0x0d, 0x00, 0x03, 0x00, 0x00,
        ];
        assert_eq!(slice_loaded(0x1000, &code), Some(0x110e));
        assert_eq!(slice_loaded(0x1000, &code[7..]), None);
    }
}
