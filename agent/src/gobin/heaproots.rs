//! Assembling a binary's [`HeapLayout`]: the offsets from DWARF or the
//! table, the runtime globals a heap walk starts from, and the sections of
//! package-level variables. A stripped binary names none of those globals,
//! so each is recovered from a runtime function that uses it (the same
//! functions on every release from 1.19 to 1.27, checked against the
//! symbol table of the unstripped twin by the fixture tests).

use std::collections::HashMap;

use object::{Object, ObjectSection};

use super::{
    arch::Arch,
    dwarf::DwarfFacts,
    heaplayout::{GlobalSections, HeapLayout, HeapRoots, Range},
    offsets,
    pclntab::Func,
    AddressSource, GoVersion, LayoutSource,
};

/// `mallocinit` calls `mheap_.init()`: `&mheap_` is the receiver.
pub const FN_MALLOCINIT: &str = "runtime.mallocinit";
pub const FN_MHEAP_INIT: &str = "runtime.(*mheap).init";
/// `semrelease1` starts with `semtable.rootFor(addr)`, inlined.
pub const FN_SEMRELEASE: &str = "runtime.semrelease1";
/// `retake` loops over `allp` right after `lock(&allpLock)`.
pub const FN_RETAKE: &str = "runtime.retake";
/// The functions the decoders read, for the one pass over the table.
pub const FUNCTIONS: [&str; 4] = [FN_MALLOCINIT, FN_MHEAP_INIT, FN_SEMRELEASE, FN_RETAKE];
/// The data symbols read from `.symtab` when it is there.
pub const SYMBOLS: [&str; 4] = [SYM_MHEAP, SYM_SEMTABLE, SYM_FIRSTMODULEDATA, SYM_ALLP];
const SYM_MHEAP: &str = "runtime.mheap_";
const SYM_SEMTABLE: &str = "runtime.semtable";
const SYM_FIRSTMODULEDATA: &str = "runtime.firstmoduledata";
const SYM_ALLP: &str = "runtime.allp";

/// What the rest of the analysis already found.
pub struct Found<'a, C> {
    pub arch: &'a Arch,
    pub symbols: &'a HashMap<&'a str, (u64, u64)>,
    pub dwarf: Option<&'a DwarfFacts>,
    pub functions: &'a HashMap<&'a str, Func>,
    /// A function's machine code.
    pub code: C,
    /// `runtime.firstmoduledata` as found by scanning for the pclntab
    /// address (any binary).
    pub moduledata: Option<u64>,
}

impl<'a, C: Fn(&Func) -> Option<&'a [u8]>> Found<'a, C> {
    /// The heap layout, or why there is none (logged: the walker falls
    /// back, the agent goes on).
    pub fn heap_layout(
        &self,
        file: &object::File,
        version: GoVersion,
    ) -> Result<HeapLayout, String> {
        let heap = heap_layout(file, version, self);
        if let Err(why) = &heap {
            tracing::debug!(%why, "no heap layout");
        }
        heap
    }
}

fn heap_layout<'a, C>(
    file: &object::File,
    version: GoVersion,
    found: &Found<'a, C>,
) -> Result<HeapLayout, String>
where
    C: Fn(&Func) -> Option<&'a [u8]>,
{
    let (offsets, offsets_source) = match found.dwarf {
        Some(d) => (d.heap.clone()?, LayoutSource::Dwarf),
        None => offsets::lookup_heap(version, found.arch.machine)
            .ok_or_else(|| format!("no DWARF and no heap offsets in the table for {version}"))?,
    };
    let globals = global_sections(file)?;
    let roots = roots(found, &globals)?;
    Ok(HeapLayout {
        offsets,
        offsets_source,
        roots,
        globals,
    })
}

/// `.data`, `.noptrdata`, `.bss`, `.noptrbss`, at link-time addresses.
pub fn global_sections(file: &object::File) -> Result<GlobalSections, String> {
    let range = |name: &str| -> Result<Range, String> {
        let s = file
            .section_by_name(name)
            .ok_or_else(|| format!("no {name} section"))?;
        Ok((s.address(), s.address().saturating_add(s.size())))
    };
    Ok(GlobalSections {
        data: range(".data")?,
        noptrdata: range(".noptrdata")?,
        bss: range(".bss")?,
        noptrbss: range(".noptrbss")?,
    })
}

/// How indirect a source is: the roots report their least direct one.
fn rank(s: AddressSource) -> u8 {
    match s {
        AddressSource::Symtab => 0,
        AddressSource::Dwarf => 1,
        AddressSource::Decoded => 2,
    }
}

fn roots<'a, C>(found: &Found<'a, C>, globals: &GlobalSections) -> Result<HeapRoots, String>
where
    C: Fn(&Func) -> Option<&'a [u8]>,
{
    let named = |name: &str| {
        found
            .symbols
            .get(name)
            .map(|s| (s.0, AddressSource::Symtab))
            .or_else(|| {
                let d = found.dwarf?.variables.get(name)?;
                Some((*d, AddressSource::Dwarf))
            })
    };
    let code = |name: &str| {
        let f = found.functions.get(name)?;
        Some((f.entry, (found.code)(f)?))
    };
    // A decoded global must lie in .bss: anything else is a misread.
    let decoded = |a: Option<u64>| {
        a.filter(|&a| globals.in_bss(a))
            .map(|a| (a, AddressSource::Decoded))
    };
    let arch = found.arch;
    let mheap = named(SYM_MHEAP).or_else(|| {
        let callee = found.functions.get(FN_MHEAP_INIT)?.entry;
        let (at, c) = code(FN_MALLOCINIT)?;
        decoded((arch.address_argument)(at, c, callee, 0))
    });
    let semtable = named(SYM_SEMTABLE).or_else(|| {
        let (at, c) = code(FN_SEMRELEASE)?;
        decoded((arch.addresses_taken)(at, c).first().copied())
    });
    let allp = named(SYM_ALLP).or_else(|| {
        let (at, c) = code(FN_RETAKE)?;
        decoded((arch.slice_read)(at, c))
    });
    let firstmoduledata = named(SYM_FIRSTMODULEDATA)
        .or_else(|| found.moduledata.map(|a| (a, AddressSource::Decoded)));
    let missing = |name: &str, how: &str| format!("no address for {name} ({how})");
    let mheap = mheap.ok_or_else(|| missing(SYM_MHEAP, FN_MALLOCINIT))?;
    let semtable = semtable.ok_or_else(|| missing(SYM_SEMTABLE, FN_SEMRELEASE))?;
    let allp = allp.ok_or_else(|| missing(SYM_ALLP, FN_RETAKE))?;
    let firstmoduledata = firstmoduledata
        .ok_or_else(|| missing(SYM_FIRSTMODULEDATA, "pclntab address not found in data"))?;
    let source = [mheap.1, semtable.1, allp.1, firstmoduledata.1]
        .into_iter()
        .max_by_key(|&s| rank(s))
        .unwrap_or(AddressSource::Symtab);
    Ok(HeapRoots {
        mheap: mheap.0,
        semtable: semtable.0,
        firstmoduledata: firstmoduledata.0,
        allp: allp.0,
        source,
    })
}
