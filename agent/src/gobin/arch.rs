//! The per-architecture part of reading a Go binary, as one table of decoders:
//! choosing probe instructions, recovering the data addresses a stripped
//! binary no longer names, and the register ABI the kernel programs read.
//! amd64 and arm64 are implemented, each chosen by the ELF machine.

use serde::Serialize;

use super::abi::RegisterAbi;
use super::{
    amd64, arm64, arm64_data,
    sites::{Find, ProbeSite},
};

/// The instruction sets gostray reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Machine {
    /// x86-64 (`EM_X86_64`).
    Amd64,
    /// `AArch64` (`EM_AARCH64`).
    Arm64,
}

impl Machine {
    /// Go's name for it (`GOARCH`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The machine this agent was built for, if it is one gostray reads.
    pub fn host() -> Option<Self> {
        if cfg!(target_arch = "x86_64") {
            Some(Self::Amd64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Self::Arm64)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decoder of a data table from a function's code at an address: the
/// table's address and its length.
type TableDecoder = fn(address: u64, code: &[u8]) -> Option<(u64, u64)>;

/// What the rest of `gobin` asks of an instruction set: one table of
/// that architecture's decoders, each a plain function of the code of a
/// function at an address.
pub struct Arch {
    /// Which instruction set this is.
    pub machine: Machine,
    /// The register ABI facts of [`RegisterAbi`].
    pub abi: &'static RegisterAbi,
    /// The instruction class of the site whose code starts `code` and
    /// what the kernel does with a uprobe there, when it says more than
    /// the site's kind (arm64).
    pub describe_site: fn(code: &[u8]) -> Option<String>,
    /// The call to a callee in the function at an address.
    call_site: fn(u64, &[u8], u64) -> Found,
    /// Every such call.
    call_sites: fn(u64, &[u8], u64) -> Vec<ProbeSite>,
    /// The entry, while the given argument registers still hold the
    /// arguments.
    entry_site: fn(u64, &[u8], &[usize]) -> Found,
    /// `(runtime.allgs, runtime.allglen)` from `runtime.allgadd`'s code.
    pub allg_addresses: TableDecoder,
    /// `(runtime.waitReasonStrings, length)` from `runtime.waitReason.String`.
    pub wait_reason_table: TableDecoder,
    /// The address of the string header a `gopanic(plainError(...))` call
    /// ending `code` (which starts at `address`) passes: where the code
    /// last loaded the argument register from static data.
    pub panic_string: fn(address: u64, code: &[u8]) -> Option<u64>,
    /// The global whose address is passed as argument `arg` (ABI order) to
    /// the first call of `callee` (`runtime.mheap_` from `runtime.mallocinit`).
    pub address_argument: fn(address: u64, code: &[u8], callee: u64, arg: usize) -> Option<u64>,
    /// Every global whose address the code takes, in code order.
    pub addresses_taken: fn(address: u64, code: &[u8]) -> Vec<u64>,
    /// The slice global whose pointer and length the code reads first
    /// (`runtime.allp` from `runtime.retake`).
    pub slice_read: fn(address: u64, code: &[u8]) -> Option<u64>,
    /// Where argument `arg` sits in the closure passed to the call at
    /// `site`: its byte offset from the closure's start.
    pub closure_argument: fn(address: u64, code: &[u8], site: u64, arg: usize) -> Option<u64>,
}

/// x86-64, Go's `ABIInternal` (Go ≥ 1.17).
pub static AMD64: Arch = Arch {
    machine: Machine::Amd64,
    abi: &amd64::ABI,
    describe_site: |_| None,
    call_site: amd64::call_site,
    call_sites: amd64::call_sites,
    entry_site: amd64::entry_site,
    allg_addresses: amd64::allg_addresses,
    wait_reason_table: amd64::wait_reason_table,
    panic_string: amd64::panic_string,
    address_argument: amd64::lea_arg_at_call,
    addresses_taken: amd64::lea_targets,
    slice_read: amd64::slice_loaded,
    closure_argument: amd64::closure_argument,
};

/// `AArch64`, Go's `ABIInternal` (Go ≥ 1.18: arguments in R0–R15, g in
/// R28).
pub static ARM64: Arch = Arch {
    machine: Machine::Arm64,
    abi: &arm64::ABI,
    describe_site: arm64::describe,
    call_site: arm64::call_site,
    call_sites: arm64::call_sites,
    entry_site: arm64::entry_site,
    allg_addresses: arm64_data::allg_addresses,
    wait_reason_table: arm64_data::wait_reason_table,
    panic_string: arm64_data::panic_string,
    address_argument: arm64_data::address_argument,
    addresses_taken: arm64_data::addresses_taken,
    slice_read: arm64_data::slice_read,
    closure_argument: arm64_data::closure_argument,
};

/// One site found, or why not.
type Found = Result<ProbeSite, String>;

impl Arch {
    /// The sites `find` asks for in the function at `address` (code
    /// `code`); `callee` is the resolved address of the function `find`
    /// names.
    pub fn sites(
        &self,
        address: u64,
        code: &[u8],
        find: Find,
        callee: Option<u64>,
    ) -> Result<Vec<ProbeSite>, String> {
        match find {
            Find::CallTo(_) => {
                let callee = callee.ok_or("callee not found")?;
                (self.call_site)(address, code, callee).map(|s| vec![s])
            }
            Find::CallsTo(_) => {
                let callee = callee.ok_or("callee not found")?;
                let all = (self.call_sites)(address, code, callee);
                if all.is_empty() {
                    return Err(format!("no call to {callee:#x}"));
                }
                Ok(all)
            }
            Find::Entry { live_args } => {
                (self.entry_site)(address, code, live_args).map(|s| vec![s])
            }
            // Split by the caller (`analyse::choose`), which must know which rule won.
            Find::EntryElseCallTo { .. } => Err("entry-else-call is resolved by the caller".into()),
        }
    }
}

/// The implementation for an ELF machine (`e_machine`), or `None` when
/// unsupported.
pub fn for_machine(arch: object::Architecture) -> Option<&'static Arch> {
    match arch {
        object::Architecture::X86_64 => Some(&AMD64),
        object::Architecture::Aarch64 => Some(&ARM64),
        _ => None,
    }
}

/// The implementation for a [`Machine`].
pub fn of(machine: Machine) -> &'static Arch {
    match machine {
        Machine::Amd64 => &AMD64,
        Machine::Arm64 => &ARM64,
    }
}
