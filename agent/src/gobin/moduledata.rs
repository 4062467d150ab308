//! `runtime.firstmoduledata`, found without symbols: the runtime's table
//! of one module (its function table, text and data bounds, funcdata
//! base), which stripped binaries still carry.

use object::{Object, ObjectSection};

use super::{pclntab::Pclntab, read, GoVersion};

/// Where `runtime.firstmoduledata` sits, found without symbols: it starts
/// with a pointer to the pclntab header and the `funcnametab` slice
/// (pointer, len, cap). Returns its section's bytes, its offset there and
/// its address.
fn find_moduledata<'a>(
    file: &'a object::File,
    pclntab: &Pclntab,
) -> Option<(&'a [u8], usize, u64)> {
    let header = [".gopclntab", ".data.rel.ro.gopclntab"]
        .iter()
        .find_map(|n| file.section_by_name(n))?
        .address();
    let names = header.checked_add(pclntab.funcnames_offset())?;
    // Go ≥ 1.26 gives moduledata a section of its own.
    for name in [".go.module", ".noptrdata", ".data", ".data.rel.ro"] {
        let Some(section) = file.section_by_name(name) else {
            continue;
        };
        let Ok(data) = section.data() else {
            continue;
        };
        let found = (0..data.len().saturating_sub(MODULEDATA_LEN))
            .step_by(8)
            .find(|&off| {
                read::u64_at(data, off) == Some(header)
                    && read::u64_at(data, off + 8) == Some(names)
            });
        if let Some(off) = found {
            return Some((data, off, section.address() + off as u64));
        }
    }
    None
}

/// Bytes of moduledata read: up to `gofunc` in the longest layout.
const MODULEDATA_LEN: usize = 352;

/// `runtime.firstmoduledata.text`: it follows six slices and three words
/// (offset 176 on 64-bit, unchanged from Go 1.18 to 1.27). This is what
/// anchors a stripped, externally linked Go ≥ 1.26 binary, whose .text
/// starts with C code and whose pclntab no longer stores textStart.
pub fn text(file: &object::File, pclntab: &Pclntab) -> Option<u64> {
    const TEXT: usize = 8 + 6 * 24 + 3 * 8;
    let (data, off, _) = find_moduledata(file, pclntab)?;
    read::u64_at(data, off + TEXT).filter(|&t| t != 0)
}

/// `runtime.firstmoduledata.gofunc` (the `go:func.*` symbol), the base of
/// every funcdata offset. After `text` come ten section bounds, then
/// `covctrs, ecovctrs` (Go 1.20), `end, gcdata, gcbss`, `types, etypes`
/// (Go 1.27 adds `typedesclen` between them and `itaboffset, itabsize`
/// after), `rodata`, `gofunc`. Checked against the symbol table's
/// `go:func.*` by the fixture tests.
pub fn gofunc(file: &object::File, pclntab: &Pclntab, version: GoVersion) -> Option<u64> {
    let at = match (version.major, version.minor) {
        (1, ..=19) => 304,
        (1, 20..=26) => 320,
        _ => 344,
    };
    let (data, off, _) = find_moduledata(file, pclntab)?;
    read::u64_at(data, off + at).filter(|&a| a != 0)
}

/// The address of `runtime.firstmoduledata` (the heap walker reads the
/// bounds of the globals from it). Checked against the symbol by the
/// fixture tests.
pub fn address(file: &object::File, pclntab: &Pclntab) -> Option<u64> {
    find_moduledata(file, pclntab).map(|(_, _, a)| a)
}
