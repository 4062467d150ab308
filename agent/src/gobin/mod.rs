//! Reading Go binaries: what the agent needs to know before it attaches.
//!
//! Everything comes from the executable itself: the Go version and build
//! settings (`.go.buildinfo`), every function (`.gopclntab`, which survives
//! `-ldflags=-s -w`), struct layouts (DWARF, else a generated table), the
//! runtime's data addresses (`.symtab`, DWARF, else decoded from runtime
//! code) and probe sites (decoded). All of it is pure: bytes in, facts or a
//! [`GoBinError`] out.

mod amd64;
mod analyse;
mod arch;
mod buildinfo;
mod dwarf;
#[cfg(test)]
mod fuzz;
mod image;
mod layout;
mod offsets;
mod pclntab;
mod read;
pub mod sites;
#[cfg(test)]
mod tests;
mod waitreason;

use std::path::Path;

pub use buildinfo::{BuildInfo, GoVersion, MIN_SUPPORTED};
pub use layout::{GOffsets, HchanOffsets, LayoutSource, SudogOffsets, WaitqOffsets};
pub use pclntab::PclntabError;
use serde::Serialize;
#[allow(unused_imports)] // part of the interface the leak detector codes against
pub use sites::SiteKind;
pub use sites::{ChosenSite, ProbeSite};
pub use waitreason::WaitReason;

use self::{image::Image, pclntab::Pclntab};

/// Why a file cannot be watched. Callers branch on the variant (a non-Go
/// process is skipped quietly; a Go binary we cannot read is reported).
#[derive(Debug, thiserror::Error)]
pub enum GoBinError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("not an ELF file we can read: {0}")]
    NotElf(String),
    #[error("not a Go binary (no .go.buildinfo section)")]
    NotGo,
    #[error("unsupported architecture {0}: only x86-64 is supported so far")]
    Arch(String),
    #[error(
        "built with {found}, older than {min}, which lacks the register ABI the probes rely on"
    )]
    TooOld { found: GoVersion, min: GoVersion },
    #[error("malformed Go build info: {0}")]
    BuildInfo(String),
    #[error("Go function table: {0}")]
    Pclntab(PclntabError),
    #[error("Go binary lacks {0}")]
    MissingSymbol(&'static str),
    #[error("no layout of the runtime's structs: {0}")]
    Layout(String),
    #[error("no usable probe site in {function}: {why}")]
    NoSite { function: &'static str, why: String },
}

impl GoBinError {
    /// A short label for metrics (`gostray_attach_failures_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotGo | Self::NotElf(_) => "not_go",
            Self::TooOld { .. } => "go_too_old",
            Self::Arch(_) => "unsupported_arch",
            _ => "unreadable_binary",
        }
    }
}

impl From<PclntabError> for GoBinError {
    fn from(e: PclntabError) -> Self {
        Self::Pclntab(e)
    }
}

/// Longest function or file name handed out by [`GoBinary::symbolize`].
pub const MAX_SYMBOL_LEN: usize = 256;

/// A source position, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// A function's link-time address range `[entry, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FuncRange {
    pub entry: u64,
    pub end: u64,
}

/// Where a runtime data address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressSource {
    Symtab,
    Dwarf,
    /// Recovered by decoding a runtime function (stripped binaries).
    Decoded,
}

/// What the agent learned from one Go executable. Cheap to clone; shared
/// through `Arc` by every process running it.
#[derive(Debug, Clone)]
pub struct GoBinary {
    pub version: GoVersion,
    pub build: BuildInfo,
    /// GNU build ID, else Go's; part of the cache key.
    pub build_id: Option<String>,
    /// True for position-independent executables (`ET_DYN`): addresses need the
    /// process's load bias.
    pub pie: bool,
    /// Lowest `PT_LOAD` virtual address, page-aligned (for the load bias).
    pub image_base: u64,
    /// No `.symtab` (`-ldflags=-s`).
    pub stripped: bool,
    /// Has DWARF (`.debug_info`; absent with `-ldflags=-w`).
    pub has_dwarf: bool,
    pub offsets: GOffsets,
    pub hchan: HchanOffsets,
    pub waitq: WaitqOffsets,
    pub sudog: SudogOffsets,
    /// Where the layouts came from; a guess is warned about and exported.
    pub layout_source: LayoutSource,
    /// Where the goroutine-creation probe goes.
    pub create_site: ProbeSite,
    /// Where the goroutine-exit probe goes.
    pub exit_site: ProbeSite,
    /// Every site of [`sites::SITES`] found, in list order.
    pub sites: Vec<ChosenSite>,
    /// Virtual address of `runtime.allgs` (a `[]*g`).
    pub allgs: u64,
    /// Virtual address of `runtime.allglen` (a `uintptr`).
    pub allglen: u64,
    pub allgs_source: AddressSource,
    /// The runtime's wait reason names; index = `waitReason` value. Empty
    /// when the table could not be found (reported by `inspect`).
    pub wait_reasons: Vec<String>,
    /// Number of functions in the function table.
    pub functions: usize,
    /// Writable data ranges (`.data`, `.noptrdata`, `.bss`, `.noptrbss`):
    /// where package-level variables live.
    pub data_ranges: Vec<(u64, u64)>,
    image: Image,
    pclntab: Pclntab,
    /// File range of `.gopclntab`.
    pclntab_at: (usize, usize),
}

impl GoBinary {
    /// Maps and analyses the executable at `path`.
    pub fn open(path: &Path) -> Result<Self, GoBinError> {
        let bytes = Image::map(path).map_err(|source| GoBinError::Io {
            path: path.display().to_string(),
            source,
        })?;
        analyse::analyse(&bytes)
    }

    // Interface for the leak detector (and the tests) rather than the agent so far.
    #[allow(dead_code)]
    /// Analyses an executable held in memory.
    pub fn parse(data: &[u8]) -> Result<Self, GoBinError> {
        analyse::analyse(&Image::owned(data.to_vec()))
    }

    fn pcln(&self) -> &[u8] {
        let (off, len) = self.pclntab_at;
        self.image.data().get(off..off + len).unwrap_or_default()
    }

    /// Function, file and line of link-time address `pc` (callers subtract
    /// the PIE bias). Names are cut to [`MAX_SYMBOL_LEN`] characters.
    pub fn symbolize(&self, pc: u64) -> Option<Frame> {
        let data = self.pcln();
        let f = self.pclntab.find(data, pc)?;
        let function = read::bounded_string(self.pclntab.name(data, &f)?, MAX_SYMBOL_LEN);
        let (file, line) = self
            .pclntab
            .line(data, &f, pc)
            .map_or((String::new(), 0), |(file, line)| {
                (read::bounded_string(file, MAX_SYMBOL_LEN), line)
            });
        Some(Frame {
            function,
            file,
            line,
        })
    }

    /// The address range of the function called `name` (the real body when
    /// an ABI wrapper shares the name).
    pub fn function(&self, name: &str) -> Option<FuncRange> {
        let data = self.pcln();
        self.pclntab.lookup(data, &[name])[0].map(|f| FuncRange {
            entry: f.entry,
            end: f.end,
        })
    }

    /// The bytes of `range` in the mapped file: a function's machine code,
    /// or static data the code points at.
    pub fn code(&self, range: FuncRange) -> Option<&[u8]> {
        self.image.at(
            range.entry,
            usize::try_from(range.end.checked_sub(range.entry)?).ok()?,
        )
    }

    // Interface for the leak detector (and the tests) rather than the agent so far.
    #[allow(dead_code)]
    /// The file offset of link-time `address` (uprobes attach by offset).
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.image.file_offset(address)
    }

    // Interface for the leak detector (and the tests) rather than the agent so far.
    #[allow(dead_code)]
    /// The normalised meaning of the runtime's wait reason number `n`.
    pub fn wait_reason(&self, n: u8) -> WaitReason {
        self.wait_reasons
            .get(usize::from(n))
            .map_or(WaitReason::Other, |name| WaitReason::from_name(name))
    }

    // Interface for the leak detector (and the tests) rather than the agent so far.
    #[allow(dead_code)]
    /// The site named `name` in [`sites::SITES`], if found.
    pub fn site(&self, name: &str) -> Option<&ProbeSite> {
        self.sites.iter().find(|s| s.name == name).map(|s| &s.site)
    }
}
