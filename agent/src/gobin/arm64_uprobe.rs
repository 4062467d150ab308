//! What the arm64 kernel does with a uprobe on each instruction, written
//! from its decoder (`arch/arm64/kernel/probes/decode-insn.c`,
//! `arm_probe_decode_insn`, which `uprobes.c`'s `arch_uprobe_analyze_insn`
//! calls) and the encodings of `arch/arm64/include/asm/insn.h`.
//!
//! Three outcomes:
//! - *simulated* (`INSN_GOOD_NO_SLOT`): the breakpoint handler computes
//!   the instruction's effect itself (`simulate-insn.c`) and returns to
//!   user space once. The cheap kind: probe sites are chosen among these.
//! - *stepped* (`INSN_GOOD`): copied to an out-of-line slot and
//!   single-stepped, a second trap on every hit (the arm64 equivalent of
//!   the 25–30 µs measured on amd64). The usual prologue store
//!   `str x30, [sp, #-n]!` and the stack check `ldr`/`cmp` are of this kind.
//! - *rejected* (`INSN_REJECTED`): the attach fails with `EINVAL`.
//!
//! Literal loads (`ldr x, label`, `ldrsw`, `prfm`) are simulated for
//! kprobes only (`arm_kprobe_decode_insn`); for uprobes they are neither
//! steppable (`aarch64_insn_uses_literal`) nor simulated, so rejected:
//! the simulation read user memory from the kernel and was removed for
//! uprobes in Linux 6.12. A `nop` is simulated from Linux 6.13 and
//! stepped before; it is counted as stepped here, so no site depends on
//! the kernel's release.

use super::sites::SiteKind;

/// The kernel's verdict on a uprobe at one instruction word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uprobe {
    Simulated(Simulated),
    Stepped,
    Rejected,
}

/// The instructions `arm_probe_decode_insn` hands to a simulation
/// handler, each named after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulated {
    /// `b.cond` (`simulate_b_cond`).
    BCond,
    /// `cbz`, `cbnz` (`simulate_cbz_cbnz`).
    Cbz,
    /// `tbz`, `tbnz` (`simulate_tbz_tbnz`).
    Tbz,
    /// `adr`, `adrp` (`simulate_adr_adrp`).
    Adr,
    /// `b` (`simulate_b_bl`).
    B,
    /// `bl` (`simulate_b_bl`).
    Bl,
    /// `br`, `blr`, `ret` (`simulate_br_blr_ret`).
    BranchRegister,
}

impl Simulated {
    /// The instruction class, as `inspect` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::BCond => "b.cond",
            Self::Cbz => "cbz/cbnz",
            Self::Tbz => "tbz/tbnz",
            Self::Adr => "adr/adrp",
            Self::B => "b",
            Self::Bl => "bl",
            Self::BranchRegister => "br/blr/ret",
        }
    }

    /// The kernel function that simulates it.
    pub fn handler(self) -> &'static str {
        match self {
            Self::BCond => "simulate_b_cond",
            Self::Cbz => "simulate_cbz_cbnz",
            Self::Tbz => "simulate_tbz_tbnz",
            Self::Adr => "simulate_adr_adrp",
            Self::B | Self::Bl => "simulate_b_bl",
            Self::BranchRegister => "simulate_br_blr_ret",
        }
    }

    /// How the rest of `gobin` names the site.
    pub fn kind(self) -> SiteKind {
        match self {
            Self::Bl => SiteKind::Call,
            Self::Adr => SiteKind::PcRelative,
            _ => SiteKind::Jump,
        }
    }
}

/// `(mask, value)` pairs of `asm/insn.h`'s `__AARCH64_INSN_FUNCS`.
const B: (u32, u32) = (0xFC00_0000, 0x1400_0000);
const BL: (u32, u32) = (0xFC00_0000, 0x9400_0000);
const CBZ: (u32, u32) = (0x7F00_0000, 0x3400_0000);
const CBNZ: (u32, u32) = (0x7F00_0000, 0x3500_0000);
const TBZ: (u32, u32) = (0x7F00_0000, 0x3600_0000);
const TBNZ: (u32, u32) = (0x7F00_0000, 0x3700_0000);
const BCOND: (u32, u32) = (0xFF00_0010, 0x5400_0000);
const ADR: (u32, u32) = (0x9F00_0000, 0x1000_0000);
const ADRP: (u32, u32) = (0x9F00_0000, 0x9000_0000);
const BR: (u32, u32) = (0xFFFF_FC1F, 0xD61F_0000);
const BLR: (u32, u32) = (0xFFFF_FC1F, 0xD63F_0000);
const RET: (u32, u32) = (0xFFFF_FC1F, 0xD65F_0000);
const LDR_LIT: (u32, u32) = (0xBF00_0000, 0x1800_0000);
const LDRSW_LIT: (u32, u32) = (0xFF00_0000, 0x9800_0000);
const PRFM_LIT: (u32, u32) = (0xFF00_0000, 0xD800_0000);
const EXCLUSIVE: (u32, u32) = (0x3F80_0000, 0x0800_0000);
const EXCEPTION: (u32, u32) = (0xFF00_0000, 0xD400_0000);
const MSR_IMM: (u32, u32) = (0xFFF8_F01F, 0xD500_401F);
const MSR_REG: (u32, u32) = (0xFFF0_0000, 0xD510_0000);
const MRS: (u32, u32) = (0xFFF0_0000, 0xD530_0000);
const HINT: (u32, u32) = (0xFFFF_F01F, 0xD503_201F);
/// `eret`, `eretaa`/`eretab`, and the pointer-authenticating branches
/// (`braa`, `blraa`, `retaa`…: `aarch64_insn_is_branch`), which no
/// simulation handler takes.
const OTHER_BRANCHES: [(u32, u32); 3] = [
    (0xFFFF_FFFF, 0xD69F_03E0),
    (0xFFFF_FBFF, 0xD69F_0BFF),
    (0xFE9F_0800, 0xD61F_0800),
];
/// `mrs x, daif`: the one `mrs` the kernel refuses to step.
const MRS_DAIF: u32 = 0xD53B_4220;

fn is(word: u32, (mask, value): (u32, u32)) -> bool {
    word & mask == value
}

/// Branches, exception generation and system instructions
/// (`AARCH64_INSN_CLS_BR_SYS`: bits 28..25 are `101x`).
fn is_branch_sys_class(word: u32) -> bool {
    (word >> 25) & 0xE == 0xA
}

/// The simulation handler `arm_probe_decode_insn` picks, in its order.
fn simulated(word: u32) -> Option<Simulated> {
    Some(if is(word, BCOND) {
        Simulated::BCond
    } else if is(word, CBZ) || is(word, CBNZ) {
        Simulated::Cbz
    } else if is(word, TBZ) || is(word, TBNZ) {
        Simulated::Tbz
    } else if is(word, ADR) || is(word, ADRP) {
        Simulated::Adr
    } else if is(word, B) {
        Simulated::B
    } else if is(word, BL) {
        Simulated::Bl
    } else if is(word, BR) || is(word, BLR) || is(word, RET) {
        Simulated::BranchRegister
    } else {
        return None;
    })
}

/// `aarch64_insn_is_steppable`: whether the instruction still does the
/// right thing when executed from the out-of-line slot.
fn steppable(word: u32) -> bool {
    if is_branch_sys_class(word) {
        if simulated(word).is_some()
            || OTHER_BRANCHES.iter().any(|&p| is(word, p))
            || is(word, MSR_IMM)
            || is(word, MSR_REG)
            || is(word, EXCEPTION)
        {
            return false;
        }
        if is(word, MRS) {
            return word & !0x1F != MRS_DAIF;
        }
        if is(word, HINT) {
            return steppable_hint(word);
        }
        return true;
    }
    let literal = is(word, LDR_LIT)
        || is(word, LDRSW_LIT)
        || is(word, PRFM_LIT)
        || is(word, ADR)
        || is(word, ADRP);
    !(literal || is(word, EXCLUSIVE))
}

/// `aarch64_insn_is_steppable_hint`: `nop` and the pointer
/// authentication and branch target hints; other hints (`wfe`, `yield`…)
/// are refused.
fn steppable_hint(word: u32) -> bool {
    // The hint number, CRm:op2 (bits 11..5): nop 0, xpaclri 7,
    // pacia1716 8, pacib1716 10, paciaz 24, paciasp 25, pacibz 26,
    // pacibsp 27, bti 32, bti c 34, bti j 36, bti jc 38.
    matches!(
        (word >> 5) & 0x7F,
        0 | 7 | 8 | 10 | 24..=27 | 32 | 34 | 36 | 38
    )
}

/// The kernel's verdict on a uprobe at `word`.
pub fn classify(word: u32) -> Uprobe {
    if steppable(word) {
        Uprobe::Stepped
    } else if let Some(s) = simulated(word) {
        Uprobe::Simulated(s)
    } else {
        Uprobe::Rejected
    }
}

/// One line for `inspect`: the class and what the kernel does with it.
pub fn describe(word: u32) -> String {
    match classify(word) {
        Uprobe::Simulated(s) => format!("{} (simulated: {})", s.name(), s.handler()),
        Uprobe::Stepped => format!("{word:#010x} (single-stepped out of line)"),
        Uprobe::Rejected => format!("{word:#010x} (rejected by the kernel)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words from Go 1.19–1.27 arm64 builds (`go tool objdump`).
    #[test]
    fn classifies_go_instructions_as_the_kernel_does() {
        let cases: [(u32, &str, Uprobe); 22] = [
            (0x9400_0011, "bl", Uprobe::Simulated(Simulated::Bl)),
            (0x97ff_5151, "bl backwards", Uprobe::Simulated(Simulated::Bl)),
            (0x1400_0006, "b", Uprobe::Simulated(Simulated::B)),
            (0x17ff_ff9a, "b backwards", Uprobe::Simulated(Simulated::B)),
            (0x5400_2049, "b.ls", Uprobe::Simulated(Simulated::BCond)),
            (0x5400_01a0, "b.eq", Uprobe::Simulated(Simulated::BCond)),
            (0xb400_1f00, "cbz x0", Uprobe::Simulated(Simulated::Cbz)),
            (0x3400_0a82, "cbz w2", Uprobe::Simulated(Simulated::Cbz)),
            (0xb500_0040, "cbnz x0", Uprobe::Simulated(Simulated::Cbz)),
            (0x3600_00c2, "tbz w2, #0", Uprobe::Simulated(Simulated::Tbz)),
            (0xb700_0040, "tbnz x0, #32", Uprobe::Simulated(Simulated::Tbz)),
            (0xf000_0b40, "adrp x0", Uprobe::Simulated(Simulated::Adr)),
            (0x1000_0040, "adr x0", Uprobe::Simulated(Simulated::Adr)),
            (0xd65f_03c0, "ret", Uprobe::Simulated(Simulated::BranchRegister)),
            (0xd63f_0020, "blr x1", Uprobe::Simulated(Simulated::BranchRegister)),
            (0xf940_0b90, "ldr x16, [x28, #16]", Uprobe::Stepped),
            (0xeb30_63ff, "cmp sp, x16", Uprobe::Stepped),
            (0xf81a_0ffe, "str x30, [sp, #-96]!", Uprobe::Stepped),
            (0xd503_201f, "nop", Uprobe::Stepped),
            (0x5800_0040, "ldr x0, literal", Uprobe::Rejected),
            (0x885f_7c01, "ldxr w1, [x0]", Uprobe::Rejected),
            (0xd420_0000, "brk #0", Uprobe::Rejected),
        ];
        for (word, what, want) in cases {
            assert_eq!(classify(word), want, "{what} ({word:#010x})");
        }
    }

    #[test]
    fn system_instructions_follow_the_step_rules() {
        assert_eq!(classify(0xd53b_4220), Uprobe::Rejected, "mrs x0, daif");
        assert_eq!(classify(0xd53b_d040), Uprobe::Stepped, "mrs x0, tpidr_el0");
        assert_eq!(classify(0xd503_205f), Uprobe::Rejected, "wfe");
        assert_eq!(classify(0xd503_233f), Uprobe::Stepped, "paciasp");
        assert_eq!(classify(0xd65f_0bff), Uprobe::Rejected, "retaa");
        assert_eq!(classify(0x9800_0040), Uprobe::Rejected, "ldrsw literal");
    }

    #[test]
    fn describes_simulated_sites_with_their_handler() {
        assert_eq!(describe(0x9400_0011), "bl (simulated: simulate_b_bl)");
        assert!(describe(0xf940_0b90).contains("single-stepped"));
    }
}
