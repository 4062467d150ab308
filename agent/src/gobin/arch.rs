//! The per-architecture part of reading a Go binary, behind one trait:
//! choosing probe instructions and recovering the data addresses a
//! stripped binary no longer names. amd64 is implemented; arm64 (Go's
//! register ABI there since 1.18, g in R28) is planned.

use super::{
    amd64,
    sites::{Find, ProbeSite},
};

/// What the rest of `gobin` asks of an instruction set.
pub trait Arch: Sync {
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
    fn sites(
        &self,
        address: u64,
        code: &[u8],
        find: Find,
        callee: Option<u64>,
    ) -> Result<Vec<ProbeSite>, String> {
        match find {
            Find::CallTo(_) => {
                let callee = callee.ok_or("callee not found")?;
                amd64::call_site(address, code, callee).map(|s| vec![s])
            }
            Find::CallsTo(_) => {
                let callee = callee.ok_or("callee not found")?;
                let all = amd64::call_sites(address, code, callee);
                if all.is_empty() {
                    return Err(format!("no call to {callee:#x}"));
                }
                Ok(all)
            }
            Find::Entry { live_args } => {
                amd64::entry_site(address, code, live_args).map(|s| vec![s])
            }
            // Split by the caller (`analyse::choose`), which must know which rule won.
            Find::EntryElseCallTo { .. } => Err("entry-else-call is resolved by the caller".into()),
        }
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

/// The implementation for an ELF machine, or `None` when unsupported.
pub fn for_machine(arch: object::Architecture) -> Option<&'static dyn Arch> {
    match arch {
        object::Architecture::X86_64 => Some(&Amd64),
        _ => None,
    }
}
