//! Reading Go binaries: what the agent needs to know before it attaches.
//!
//! Everything here is pure: it takes bytes and returns facts or a
//! [`GoBinError`] saying why the binary cannot be watched.

mod buildinfo;
pub(crate) mod dwarf;
pub(crate) mod elf;
pub mod sites;

use std::{collections::HashMap, path::Path};

pub use buildinfo::{GoVersion, MIN_SUPPORTED};
pub use dwarf::GOffsets;
pub use elf::Symbol;
use object::{Object, ObjectKind};
pub use sites::ProbeSite;

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
    #[error("Go binary lacks symbol {0} (stripped binaries are not supported yet)")]
    MissingSymbol(&'static str),
    #[error("no DWARF layout of runtime.g ({0}); stripped binaries are not supported yet")]
    Dwarf(String),
    #[error("no usable probe site in {function}: {why}")]
    NoSite { function: &'static str, why: String },
}

/// What the agent learned from one Go executable.
#[derive(Debug, Clone)]
pub struct GoBinary {
    pub version: GoVersion,
    /// True for position-independent executables (ET_DYN): addresses need the
    /// process's load bias.
    pub pie: bool,
    /// Lowest PT_LOAD virtual address, page-aligned (for the load bias).
    pub image_base: u64,
    pub offsets: GOffsets,
    /// Where the goroutine-creation probe goes.
    pub create_site: ProbeSite,
    /// Where the goroutine-exit probe goes.
    pub exit_site: ProbeSite,
    /// Virtual address of `runtime.allgs` (a `[]*g`).
    pub allgs: u64,
    /// Virtual address of `runtime.allglen` (a `uintptr`).
    pub allglen: u64,
}

/// The runtime symbols the first probes need.
const SYM_NEWPROC_FUNC1: &str = "runtime.newproc.func1";
const SYM_RUNQPUT: &str = "runtime.runqput";
const SYM_GOEXIT0: &str = "runtime.goexit0";
const SYM_ALLGS: &str = "runtime.allgs";
const SYM_ALLGLEN: &str = "runtime.allglen";

impl GoBinary {
    /// Reads and analyses the executable at `path`.
    pub fn open(path: &Path) -> Result<Self, GoBinError> {
        let data = std::fs::read(path).map_err(|source| GoBinError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Analyses an executable held in memory.
    pub fn parse(data: &[u8]) -> Result<Self, GoBinError> {
        let file = object::File::parse(data).map_err(|e| GoBinError::NotElf(e.to_string()))?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(GoBinError::NotElf(format!("{:?} format", file.format())));
        }
        let version = buildinfo::read_version(&file)?;
        if file.architecture() != object::Architecture::X86_64 {
            return Err(GoBinError::Arch(format!("{:?}", file.architecture())));
        }
        if version < MIN_SUPPORTED {
            return Err(GoBinError::TooOld {
                found: version,
                min: MIN_SUPPORTED,
            });
        }
        let symbols = elf::function_and_data_symbols(&file);
        let sym = |name: &'static str| {
            symbols
                .get(name)
                .copied()
                .ok_or(GoBinError::MissingSymbol(name))
        };
        let offsets = dwarf::g_offsets(&file).map_err(GoBinError::Dwarf)?;

        let newproc = sym(SYM_NEWPROC_FUNC1)?;
        let runqput = sym(SYM_RUNQPUT)?;
        let goexit0 = sym(SYM_GOEXIT0)?;
        let code = |s: Symbol| elf::bytes_at(&file, s.address, s.size);
        let create_site = sites::call_site(
            newproc.address,
            code(newproc).ok_or(GoBinError::MissingSymbol(SYM_NEWPROC_FUNC1))?,
            runqput.address,
        )
        .map_err(|why| GoBinError::NoSite {
            function: SYM_NEWPROC_FUNC1,
            why,
        })?;
        // goexit0(gp *g): gp is argument 0 (RAX) and must still be there.
        let exit_site = sites::entry_site(
            goexit0.address,
            code(goexit0).ok_or(GoBinError::MissingSymbol(SYM_GOEXIT0))?,
            &[0],
        )
        .map_err(|why| GoBinError::NoSite {
            function: SYM_GOEXIT0,
            why,
        })?;
        Ok(Self {
            version,
            pie: file.kind() == ObjectKind::Dynamic,
            image_base: elf::image_base(&file),
            offsets,
            create_site: with_file_offset(&file, create_site)?,
            exit_site: with_file_offset(&file, exit_site)?,
            allgs: sym(SYM_ALLGS)?.address,
            allglen: sym(SYM_ALLGLEN)?.address,
        })
    }
}

fn with_file_offset(file: &object::File, mut site: ProbeSite) -> Result<ProbeSite, GoBinError> {
    site.file_offset = elf::file_offset(file, site.address).ok_or(GoBinError::NoSite {
        function: "probe site",
        why: format!("address {:#x} is in no loadable segment", site.address),
    })?;
    Ok(site)
}

/// A symbol table keyed by name, as [`elf::function_and_data_symbols`] builds it.
pub type SymbolTable<'a> = HashMap<&'a str, Symbol>;
