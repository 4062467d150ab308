//! Reading Go binaries: what the agent needs to know before it attaches.
//!
//! Everything comes from the executable itself: the Go version and build
//! settings (`.go.buildinfo`), every function (`.gopclntab`, which survives
//! `-ldflags=-s -w`), struct layouts (DWARF, else a generated table), the
//! runtime's data addresses (`.symtab`, DWARF, else decoded from runtime
//! code) and probe sites (decoded). All of it is pure: bytes in, facts or a
//! [`GoBinError`] out.

mod abi;
mod amd64;
mod analyse;
mod arch;
mod arm64;
mod arm64_data;
mod arm64_uprobe;
mod buildinfo;
mod dwarf;
mod dwarf_types;
#[cfg(test)]
mod fuzz;
mod heapdwarf;
mod heaplayout;
#[cfg(test)]
mod heaplayout_tests;
mod heaproots;
mod image;
mod inline;
#[cfg(test)]
mod inline_tests;
mod layout;
pub mod leaklayout;
mod moduledata;
mod offsets;
mod pclntab;
mod read;
pub mod sites;
mod stackmap;
#[cfg(test)]
mod tests;
mod waitreason;

use std::path::Path;

pub use abi::RegisterAbi;
pub use arch::Machine;
pub use buildinfo::{BuildInfo, GoVersion, MIN_SUPPORTED};
#[allow(unused_imports)] // the heap walker's interface, ahead of the walker
pub use heaplayout::{
    Field, GlobalSections, HeapArenaOffsets, HeapLayout, HeapOffsets, HeapRoots, MheapOffsets,
    ModuledataOffsets, MspanOffsets, SemaOffsets, SudogLinks, TimerOffsets,
};
pub use layout::{GOffsets, HchanOffsets, LayoutSource, SudogOffsets, WaitqOffsets};
pub use pclntab::PclntabError;
use serde::Serialize;
#[allow(unused_imports)] // part of the interface the leak detector codes against
pub use sites::SiteKind;
pub use sites::{ChosenSite, ProbeSite};
pub use stackmap::{FrameLayout, NoFrame};
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
    #[error("unsupported architecture {0}: only x86-64 and arm64 are read")]
    Arch(String),
    #[error(
        "built for {binary}, but this agent runs on {host}: run the agent built for {binary} on that node"
    )]
    ForeignMachine { binary: Machine, host: &'static str },
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
            Self::Arch(_) | Self::ForeignMachine { .. } => "unsupported_arch",
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
    /// The instruction set it was built for (the ELF machine).
    pub machine: Machine,
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
    /// What a heap walk reads (arenas, spans, roots), or why it cannot be
    /// known for this binary: see [`GoBinary::heap_layout`].
    heap: Result<HeapLayout, String>,
    /// `runtime.allm` and the offset of `m.alllink`, from DWARF.
    pub ms: Option<(u64, u32)>,
    /// `p.mcache` and `mcache.tiny`, from DWARF.
    pub tiny: Option<(u32, u32)>,
    /// `mspan.specials`, from DWARF: finalizers and cleanups are roots.
    pub span_specials: Option<u32>,
    /// `moduledata.gofunc`: funcdata offsets are relative to it. Unknown
    /// only if moduledata could not be found (then no inlined frames).
    gofunc: Option<u64>,
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

    /// [`GoBinary::open`] for attaching: also refuses a binary built for
    /// another machine than the agent's (its processes cannot run here,
    /// and the kernel programs read this machine's registers).
    pub fn open_for_host(path: &Path) -> Result<Self, GoBinError> {
        let bin = Self::open(path)?;
        match Machine::host() {
            Some(host) if host == bin.machine => Ok(bin),
            host => Err(GoBinError::ForeignMachine {
                binary: bin.machine,
                host: host.map_or(std::env::consts::ARCH, Machine::as_str),
            }),
        }
    }

    /// The register ABI of the binary's machine.
    pub fn abi(&self) -> &'static RegisterAbi {
        arch::of(self.machine).abi
    }

    /// The instruction class at `site` and what the kernel does with a
    /// uprobe there, where the machine says more than the site's kind.
    pub fn describe_site(&self, site: &ProbeSite) -> Option<String> {
        let code = self.image.at(site.address, 4)?;
        (arch::of(self.machine).describe_site)(code)
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

    /// The frames at link-time address `pc`, innermost first: the calls
    /// inlined there, then the physical function, each with its own name,
    /// file and line, as `runtime.CallersFrames` expands them (inlined
    /// compiler wrappers hidden as the runtime hides them). `pc` is the PC
    /// of an instruction: a return address minus 1. Empty when no function
    /// holds `pc`.
    pub fn symbolize_inline(&self, pc: u64) -> Vec<Frame> {
        let data = self.pcln();
        let Some(f) = self.pclntab.find(data, pc) else {
            return Vec::new();
        };
        let layout = inline::Layout::new(self.pclntab.go120);
        let tree = self.gofunc.and_then(|base| {
            let off = self.pclntab.funcdata(data, &f, inline::FUNCDATA_INL_TREE)?;
            base.checked_add(u64::from(off))
        });
        let logical = match tree {
            Some(tree) => inline::unwind(
                f.entry,
                pc,
                |at| {
                    self.pclntab
                        .pcdata(data, &f, inline::PCDATA_INL_TREE_INDEX, at)
                },
                |i| layout.entry(tree, i, |a, n| self.image.at(a, n)),
            ),
            None => vec![inline::Logical { pc, call: None }],
        };
        let ids = inline::FuncIds::of(self.version);
        let mut callee = 0u8;
        let mut out = Vec::with_capacity(logical.len());
        for l in logical {
            let (name, id) = match l.call {
                Some(c) => (self.pclntab.name_at(data, c.name_off), c.func_id),
                None => (
                    self.pclntab.name(data, &f),
                    self.pclntab.func_id(data, &f).unwrap_or(0),
                ),
            };
            let hidden =
                l.call.is_some() && id == ids.wrapper && ids.elides_wrapper_calling(callee);
            callee = id;
            if hidden {
                continue;
            }
            let (file, line) = self
                .pclntab
                .line(data, &f, l.pc)
                .map_or((String::new(), 0), |(file, line)| {
                    (read::bounded_string(file, MAX_SYMBOL_LEN), line)
                });
            out.push(Frame {
                function: read::bounded_string(name.unwrap_or(b"?"), MAX_SYMBOL_LEN),
                file,
                line,
            });
        }
        out
    }

    /// Whether the function holding link-time address `pc` is a compiler
    /// wrapper (`funcID` `FuncIDWrapper`: `go f(x)` and method value
    /// wrappers, promoted methods, generated equality), which the runtime
    /// leaves out of tracebacks unless it called a panic.
    pub fn is_wrapper(&self, pc: u64) -> bool {
        let data = self.pcln();
        self.pclntab
            .find(data, pc)
            .and_then(|f| self.pclntab.func_id(data, &f))
            == Some(inline::FuncIds::of(self.version).wrapper)
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

    // Interface for the tests (and the coming heap walker) so far.
    #[allow(dead_code)]
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

    // Interface for the heap walker rather than the agent so far.
    #[allow(dead_code)]
    /// The layouts and addresses a heap walk needs, or why this binary
    /// does not have them all (the walker then falls back).
    pub fn heap_layout(&self) -> Result<&HeapLayout, &str> {
        self.heap.as_ref().map_err(String::as_str)
    }

    /// The live pointer words of the frame executing at link-time address
    /// `pc` (a parked goroutine's `sched.pc`, or a return address), as the
    /// garbage collector finds them: see [`stackmap`]. `innermost` is the
    /// frame the goroutine stopped in.
    pub fn frame_layout(&self, pc: u64, innermost: bool) -> Result<FrameLayout, NoFrame> {
        let data = self.pcln();
        let t = &self.pclntab;
        let f = t.find(data, pc).ok_or(NoFrame("no function at the PC"))?;
        let gofunc = self.gofunc.ok_or(NoFrame("no moduledata"))?;
        let funcdata = |i| {
            t.funcdata(data, &f, i)
                .and_then(|off| gofunc.checked_add(u64::from(off)))
        };
        // `getStackMap` looks the index up at the instruction before a
        // return address (the CALL), and uses map 0 at the entry.
        let index = if pc == f.entry {
            -1
        } else {
            t.pcdata(data, &f, stackmap::PCDATA_STACK_MAP_INDEX, pc - 1)
        };
        let facts = stackmap::FuncFacts {
            spdelta: t.spdelta(data, &f, pc).ok_or(NoFrame("no SP delta"))?,
            flag: t.func_flag(data, &f).ok_or(NoFrame("no flag"))?,
            args: Pclntab::args_size(data, &f).ok_or(NoFrame("no argument size"))?,
            index,
            args_maps: funcdata(stackmap::FUNCDATA_ARGS_POINTER_MAPS),
            locals_maps: funcdata(stackmap::FUNCDATA_LOCALS_POINTER_MAPS),
            objects: funcdata(stackmap::FUNCDATA_STACK_OBJECTS),
        };
        stackmap::layout(self.machine, &facts, innermost, |a, n| self.image.at(a, n))
    }

    // Interface for the leak detector (and the tests) rather than the agent so far.
    #[allow(dead_code)]
    /// The site named `name` in [`sites::SITES`], if found.
    pub fn site(&self, name: &str) -> Option<&ProbeSite> {
        self.sites.iter().find(|s| s.name == name).map(|s| &s.site)
    }
}
