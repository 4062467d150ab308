//! The per-architecture part of reading a Go binary, behind one trait:
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

/// What the rest of `gobin` asks of an instruction set.
pub trait Arch: Sync {
    /// Which instruction set this is.
    fn machine(&self) -> Machine;

    /// The register ABI facts of [`RegisterAbi`].
    fn abi(&self) -> &'static RegisterAbi;

    /// The instruction class of the site whose code starts `code` and
    /// what the kernel does with a uprobe there, when it says more than
    /// the site's kind (arm64).
    fn describe_site(&self, code: &[u8]) -> Option<String>;

    /// Sites in the function at `address` (code `code`) chosen by `find`;
    /// `callee` is the resolved address of the function `find` names.
    fn sites(
        &self,
        address: u64,
        code: &[u8],
        find: Find,
        callee: Option<u64>,
    ) -> Result<Vec<ProbeSite>, String>;

    /// `(runtime.allgs, runtime.allglen)` from `runtime.allgadd`'s code.
    fn allg_addresses(&self, address: u64, code: &[u8]) -> Option<(u64, u64)>;

    /// `(runtime.waitReasonStrings, length)` from `runtime.waitReason.String`.
    fn wait_reason_table(&self, address: u64, code: &[u8]) -> Option<(u64, u64)>;

    /// The address of the string header a `gopanic(plainError(...))` call
    /// ending `code` (which starts at `address`) passes: where the code
    /// last loaded the argument register from static data.
    fn panic_string(&self, address: u64, code: &[u8]) -> Option<u64>;

    /// The global whose address is passed as argument `arg` (ABI order) to
    /// the first call of `callee` (`runtime.mheap_` from `runtime.mallocinit`).
    fn address_argument(&self, address: u64, code: &[u8], callee: u64, arg: usize) -> Option<u64>;

    /// Every global whose address the code takes, in code order.
    fn addresses_taken(&self, address: u64, code: &[u8]) -> Vec<u64>;

    /// The slice global whose pointer and length the code reads first
    /// (`runtime.allp` from `runtime.retake`).
    fn slice_read(&self, address: u64, code: &[u8]) -> Option<u64>;
}

/// x86-64, Go's `ABIInternal` (Go ≥ 1.17).
pub struct Amd64;

impl Arch for Amd64 {
    fn machine(&self) -> Machine {
        Machine::Amd64
    }

    fn abi(&self) -> &'static RegisterAbi {
        &amd64::ABI
    }

    fn describe_site(&self, _code: &[u8]) -> Option<String> {
        None
    }

    fn sites(
        &self,
        address: u64,
        code: &[u8],
        find: Find,
        callee: Option<u64>,
    ) -> Result<Vec<ProbeSite>, String> {
        let finders = SiteFinders {
            call_site: amd64::call_site,
            call_sites: amd64::call_sites,
            entry_site: amd64::entry_site,
        };
        finders.find(address, code, find, callee)
    }

    fn allg_addresses(&self, address: u64, code: &[u8]) -> Option<(u64, u64)> {
        amd64::allg_addresses(address, code)
    }

    fn wait_reason_table(&self, address: u64, code: &[u8]) -> Option<(u64, u64)> {
        amd64::wait_reason_table(address, code)
    }

    fn panic_string(&self, address: u64, code: &[u8]) -> Option<u64> {
        amd64::panic_string(address, code)
    }

    fn address_argument(&self, address: u64, code: &[u8], callee: u64, arg: usize) -> Option<u64> {
        amd64::lea_arg_at_call(address, code, callee, arg)
    }

    fn addresses_taken(&self, address: u64, code: &[u8]) -> Vec<u64> {
        amd64::lea_targets(address, code)
    }

    fn slice_read(&self, address: u64, code: &[u8]) -> Option<u64> {
        amd64::slice_loaded(address, code)
    }
}

/// One site found, or why not.
type Found = Result<ProbeSite, String>;

/// An architecture's three ways of finding probe sites in a function's
/// code (at an address): a call to a callee, every such call, the entry
/// while the given argument registers still hold the arguments.
struct SiteFinders {
    call_site: fn(u64, &[u8], u64) -> Found,
    call_sites: fn(u64, &[u8], u64) -> Vec<ProbeSite>,
    entry_site: fn(u64, &[u8], &[usize]) -> Found,
}

impl SiteFinders {
    /// The sites `find` asks for in the function at `address`.
    fn find(
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

/// `AArch64`, Go's `ABIInternal` (Go ≥ 1.18: arguments in R0–R15, g in
/// R28).
pub struct Arm64;

impl Arch for Arm64 {
    fn machine(&self) -> Machine {
        Machine::Arm64
    }

    fn abi(&self) -> &'static RegisterAbi {
        &arm64::ABI
    }

    fn describe_site(&self, code: &[u8]) -> Option<String> {
        arm64::describe(code)
    }

    fn sites(
        &self,
        address: u64,
        code: &[u8],
        find: Find,
        callee: Option<u64>,
    ) -> Result<Vec<ProbeSite>, String> {
        let finders = SiteFinders {
            call_site: arm64::call_site,
            call_sites: arm64::call_sites,
            entry_site: arm64::entry_site,
        };
        finders.find(address, code, find, callee)
    }

    fn allg_addresses(&self, address: u64, code: &[u8]) -> Option<(u64, u64)> {
        arm64_data::allg_addresses(address, code)
    }

    fn wait_reason_table(&self, address: u64, code: &[u8]) -> Option<(u64, u64)> {
        arm64_data::wait_reason_table(address, code)
    }

    fn panic_string(&self, address: u64, code: &[u8]) -> Option<u64> {
        arm64_data::panic_string(address, code)
    }

    fn address_argument(&self, address: u64, code: &[u8], callee: u64, arg: usize) -> Option<u64> {
        arm64_data::address_argument(address, code, callee, arg)
    }

    fn addresses_taken(&self, address: u64, code: &[u8]) -> Vec<u64> {
        arm64_data::addresses_taken(address, code)
    }

    fn slice_read(&self, address: u64, code: &[u8]) -> Option<u64> {
        arm64_data::slice_read(address, code)
    }
}

/// The implementation for an ELF machine (`e_machine`), or `None` when
/// unsupported.
pub fn for_machine(arch: object::Architecture) -> Option<&'static dyn Arch> {
    match arch {
        object::Architecture::X86_64 => Some(&Amd64),
        object::Architecture::Aarch64 => Some(&Arm64),
        _ => None,
    }
}

/// The implementation for a [`Machine`].
pub fn of(machine: Machine) -> &'static dyn Arch {
    match machine {
        Machine::Amd64 => &Amd64,
        Machine::Arm64 => &Arm64,
    }
}
