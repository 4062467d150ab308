//! Turning an executable's bytes into a [`GoBinary`]: the order in which
//! facts are read, and which source wins when several can answer.

use std::collections::HashMap;

use gostray_common::death_cookie;

use object::{Object, ObjectKind, ObjectSection, ObjectSymbol};

use super::{
    arch::{self, Arch, Machine},
    buildinfo, dwarf, heaproots,
    image::{self, Image},
    moduledata, offsets,
    pclntab::{Func, Pclntab, PclntabError},
    sites::{self, ChosenSite, Find},
    waitreason, AddressSource, GoBinError, GoBinary, GoVersion, LayoutSource, MIN_SUPPORTED,
};

const SYM_ALLGADD: &str = "runtime.allgadd";
const SYM_WAITREASON_STRING: &str = "runtime.waitReason.String";
/// Data symbols read from `.symtab` when it is there.
const DATA_SYMBOLS: [&str; 6] = [
    "runtime.allgs",
    "runtime.allglen",
    "runtime.waitReasonStrings",
    "runtime.text",
    SYM_GOFUNC,
    SYM_GOFUNC_GO119,
];
/// The funcdata base (`moduledata.gofunc`), named `go.func.*` before Go 1.20.
const SYM_GOFUNC: &str = "go:func.*";
const SYM_GOFUNC_GO119: &str = "go.func.*";

/// Reads everything, in order of cost, failing at the first thing that
/// makes the binary unwatchable.
pub fn analyse(bytes: &super::image::Bytes) -> Result<GoBinary, GoBinError> {
    let data: &[u8] = (**bytes).as_ref();
    let file = object::File::parse(data).map_err(|e| GoBinError::NotElf(e.to_string()))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(GoBinError::NotElf(format!("{:?} format", file.format())));
    }
    let image = Image::new(bytes.clone(), &file);
    let info_section = file
        .section_by_name(".go.buildinfo")
        .and_then(|s| s.data().ok())
        .ok_or(GoBinError::NotGo)?;
    let build = buildinfo::parse(info_section, |a, n| image.at(a, n))?;
    let version = build.version;
    let arch = arch::for_machine(file.architecture())
        .ok_or_else(|| GoBinError::Arch(format!("{:?}", file.architecture())))?;
    if version < MIN_SUPPORTED {
        return Err(GoBinError::TooOld {
            found: version,
            min: MIN_SUPPORTED,
        });
    }
    let symbols = data_symbols(&file);
    let (pclntab, pclntab_at) = read_pclntab(&file, data, &symbols)?;
    let pcln = &data[pclntab_at.0..pclntab_at.0 + pclntab_at.1];

    let dwarf = if file.section_by_name(".debug_info").is_some() {
        dwarf::read(&file).map_err(GoBinError::Layout)?
    } else {
        None
    };
    let (layout, layout_source) = struct_layout(dwarf.as_ref(), &build, arch.machine)?;

    let found = find_functions(&pclntab, pcln);
    let code = |f: &Func| image.at(f.entry, usize::try_from(f.end - f.entry).ok()?);

    let (allgs, allglen, allgs_source) =
        allg_addresses(arch, &symbols, dwarf.as_ref(), found.get(SYM_ALLGADD), code)?;
    let wait_reasons = wait_reasons(
        arch,
        &image,
        &symbols,
        found.get(SYM_WAITREASON_STRING),
        code,
    );

    let heap = heaproots::Found {
        arch,
        symbols: &symbols,
        dwarf: dwarf.as_ref(),
        functions: &found,
        code,
        moduledata: moduledata::address(&file, &pclntab),
    }
    .heap_layout(&file, version);

    let chosen = choose_all(arch, &image, &found, code)?;
    let site = |name: &'static str| {
        chosen
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.site)
            .ok_or(GoBinError::MissingSymbol(name))
    };
    Ok(GoBinary {
        machine: arch.machine,
        version,
        build_id: image::build_id(&file),
        pie: file.kind() == ObjectKind::Dynamic,
        image_base: image.base(),
        stripped: file.section_by_name(".symtab").is_none(),
        has_dwarf: dwarf.is_some(),
        offsets: layout.g,
        hchan: layout.hchan,
        waitq: layout.waitq,
        sudog: layout.sudog,
        layout_source,
        create_site: site(sites::SITE_CREATE)?,
        exit_site: site(sites::SITE_EXIT)?,
        sites: chosen,
        allgs,
        allglen,
        allgs_source,
        wait_reasons,
        functions: pclntab.len(),
        data_ranges: [".data", ".noptrdata", ".bss", ".noptrbss"]
            .iter()
            .filter_map(|n| file.section_by_name(n))
            .map(|s| (s.address(), s.address() + s.size()))
            .collect(),
        build,
        gofunc: gofunc(&file, &image, &symbols, &pclntab, version),
        heap,
        ms: dwarf.as_ref().and_then(|d| d.ms),
        tiny: dwarf.as_ref().and_then(|d| d.tiny),
        span_specials: dwarf.as_ref().and_then(|d| d.span_specials),
        pclntab,
        pclntab_at,
        image,
    })
}

/// Every function any rule needs, found in one pass over the table.
fn find_functions(pclntab: &Pclntab, pcln: &[u8]) -> HashMap<&'static str, Func> {
    let mut wanted: Vec<&'static str> = sites::SITES
        .iter()
        .flat_map(sites::SiteSpec::functions)
        .collect();
    wanted.extend([SYM_ALLGADD, SYM_WAITREASON_STRING]);
    wanted.extend(heaproots::FUNCTIONS);
    wanted.sort_unstable();
    wanted.dedup();
    wanted
        .iter()
        .zip(pclntab.lookup(pcln, &wanted))
        .filter_map(|(n, f)| Some((*n, f?)))
        .collect()
}

/// The funcdata base: `.symtab`'s `go:func.*` when present, else read from
/// moduledata; it must lie in the file.
fn gofunc(
    file: &object::File,
    image: &Image,
    symbols: &HashMap<&str, (u64, u64)>,
    pclntab: &Pclntab,
    version: GoVersion,
) -> Option<u64> {
    symbols
        .get(SYM_GOFUNC)
        .or_else(|| symbols.get(SYM_GOFUNC_GO119))
        .map(|s| s.0)
        .or_else(|| moduledata::gofunc(file, pclntab, version))
        .filter(|&a| image.at(a, 1).is_some())
}

/// The function table and its file range. Go ≥ 1.26 no longer stores
/// textStart: entry offsets are then relative to `runtime.text`, which is
/// where .text begins unless an external linker put C code first (then
/// .symtab names it).
fn read_pclntab(
    file: &object::File,
    data: &[u8],
    symbols: &HashMap<&str, (u64, u64)>,
) -> Result<(Pclntab, (usize, usize)), GoBinError> {
    // PIE builds put the table in a relocatable-data section of its own.
    let at = [".gopclntab", ".data.rel.ro.gopclntab"]
        .iter()
        .find_map(|name| image::section_range(file, name))
        .ok_or(PclntabError::Missing)?;
    let pcln = data
        .get(at.0..at.0.saturating_add(at.1))
        .ok_or(PclntabError::Malformed("section outside the file"))?;
    let mut pclntab = Pclntab::parse(pcln)?;
    if pclntab.text_start == 0 {
        pclntab.text_start = symbols
            .get("runtime.text")
            .map(|s| s.0)
            .or_else(|| moduledata::text(file, &pclntab))
            .or_else(|| file.section_by_name(".text").map(|s| s.address()))
            .ok_or(PclntabError::Malformed("no textStart and no .text section"))?;
    }
    Ok((pclntab, at))
}

/// `runtime.allgs` and `runtime.allglen`: from `.symtab`, else DWARF, else
/// decoded from `runtime.allgadd`.
fn allg_addresses<'a>(
    arch: &Arch,
    symbols: &HashMap<&str, (u64, u64)>,
    dwarf: Option<&dwarf::DwarfFacts>,
    allgadd: Option<&Func>,
    code: impl Fn(&Func) -> Option<&'a [u8]>,
) -> Result<(u64, u64, AddressSource), GoBinError> {
    let var = |name: &str| {
        symbols
            .get(name)
            .map(|s| (s.0, AddressSource::Symtab))
            .or_else(|| {
                dwarf?
                    .variables
                    .get(name)
                    .map(|&a| (a, AddressSource::Dwarf))
            })
    };
    if let (Some((a, src)), Some((l, _))) = (var("runtime.allgs"), var("runtime.allglen")) {
        return Ok((a, l, src));
    }
    let f = allgadd.ok_or(GoBinError::MissingSymbol(SYM_ALLGADD))?;
    let (a, l) = code(f)
        .and_then(|c| (arch.allg_addresses)(f.entry, c))
        .ok_or(GoBinError::MissingSymbol(
            "runtime.allgs (not found by decoding runtime.allgadd)",
        ))?;
    Ok((a, l, AddressSource::Decoded))
}

/// The runtime's struct offsets: the binary's own DWARF, else the table's
/// entry for its Go release.
fn struct_layout(
    dwarf: Option<&dwarf::DwarfFacts>,
    build: &super::BuildInfo,
    machine: Machine,
) -> Result<(super::layout::Layout, LayoutSource), GoBinError> {
    match dwarf {
        Some(d) => Ok((d.layout, LayoutSource::Dwarf)),
        None => offsets::lookup(build.version, machine).ok_or_else(|| {
            GoBinError::Layout(format!(
                "no DWARF (built with -w) and no offsets table entry for {} on {machine}",
                build.raw_version
            ))
        }),
    }
}

/// Every site of the list; a missing required one is an error.
fn choose_all<'a>(
    arch: &Arch,
    image: &Image,
    found: &HashMap<&str, Func>,
    code: impl Fn(&Func) -> Option<&'a [u8]> + Copy,
) -> Result<Vec<ChosenSite>, GoBinError> {
    let mut chosen = Vec::new();
    for spec in sites::SITES {
        match choose(arch, image, spec, found, code) {
            Ok((sites, extra)) => chosen.extend(sites.into_iter().map(|site| ChosenSite {
                name: spec.name,
                function: spec.function,
                site,
                spec,
                cookie: spec.cookie.map(|c| c | extra),
                attach: spec.panic_message.is_none()
                    || panics_with(arch, image, spec, found, code, site.address) != Some(false),
            })),
            Err(e) if spec.required => return Err(e),
            Err(e) => {
                tracing::debug!(site = spec.name, error = %e, "optional probe site not found");
            }
        }
    }
    Ok(chosen)
}

/// Whether the `gopanic` call at `call` in `spec`'s function panics with
/// the spec's message, read from the string header the code passes it;
/// `None` when that cannot be read.
fn panics_with<'a>(
    arch: &Arch,
    image: &Image,
    spec: &sites::SiteSpec,
    found: &HashMap<&str, Func>,
    code: impl Fn(&Func) -> Option<&'a [u8]>,
    call: u64,
) -> Option<bool> {
    let f = found.get(spec.function)?;
    let before = code(f)?.get(..usize::try_from(call.checked_sub(f.entry)?).ok()?)?;
    let header = (arch.panic_string)(f.entry, before)?;
    let raw = image.at(header, 16)?;
    let ptr = u64::from_le_bytes(raw[..8].try_into().ok()?);
    let len = u64::from_le_bytes(raw[8..16].try_into().ok()?);
    if len > 256 {
        return None;
    }
    Some(image.at(ptr, usize::try_from(len).ok()?)? == spec.panic_message?)
}

/// `(address, size)` of the few data symbols read from `.symtab`.
fn data_symbols<'a>(file: &'a object::File<'a>) -> HashMap<&'a str, (u64, u64)> {
    let mut out = HashMap::new();
    for sym in file.symbols() {
        if let Ok(name) = sym.name() {
            if DATA_SYMBOLS.contains(&name) || heaproots::SYMBOLS.contains(&name) {
                out.insert(name, (sym.address(), sym.size()));
            }
        }
    }
    out
}

/// The sites one spec selects, with their file offsets, and what to add
/// to the spec's cookie (its fallback rule's, when that chose them).
fn choose<'a>(
    arch: &Arch,
    image: &Image,
    spec: &sites::SiteSpec,
    found: &HashMap<&str, Func>,
    code: impl Fn(&Func) -> Option<&'a [u8]>,
) -> Result<(Vec<super::ProbeSite>, u64), GoBinError> {
    let missing = || GoBinError::MissingSymbol(spec.function);
    let f = found.get(spec.function).ok_or_else(missing)?;
    let body = code(f).ok_or_else(missing)?;
    let (found_sites, extra) = match spec.find {
        Find::CallTo(c) | Find::CallsTo(c) => (
            arch.sites(f.entry, body, spec.find, found.get(c).map(|f| f.entry)),
            0,
        ),
        Find::Entry { .. } => (arch.sites(f.entry, body, spec.find, None), 0),
        Find::EntryElseCallTo {
            live_args,
            callee,
            fallback_cookie,
        } => {
            if let Ok(s) = arch.sites(f.entry, body, Find::Entry { live_args }, None) {
                (Ok(s), 0)
            } else {
                let callee_at = found.get(callee).map(|f| f.entry);
                call_fallback(arch, f.entry, body, callee, callee_at, fallback_cookie)
            }
        }
    };
    let mut sites = found_sites.map_err(|why| GoBinError::NoSite {
        function: spec.function,
        why,
    })?;
    for s in &mut sites {
        s.file_offset = image
            .file_offset(s.address)
            .ok_or_else(|| GoBinError::NoSite {
                function: spec.function,
                why: format!("address {:#x} is in no loadable segment", s.address),
            })?;
    }
    Ok((sites, extra))
}

/// The fallback of [`Find::EntryElseCallTo`] in the function at `entry`:
/// the call to `callee`, and what to add to the cookie. A closure site also
/// says where the first argument sits in the closure, decoded; without
/// that, no site (a wrong offset would read the wrong word).
fn call_fallback(
    arch: &Arch,
    entry: u64,
    body: &[u8],
    callee: &'static str,
    callee_at: Option<u64>,
    cookie: u64,
) -> (Result<Vec<super::ProbeSite>, String>, u64) {
    let sites = match arch.sites(entry, body, Find::CallTo(callee), callee_at) {
        Ok(s) => s,
        Err(e) => return (Err(e), cookie),
    };
    if cookie & death_cookie::CLOSURE == 0 {
        return (Ok(sites), cookie);
    }
    match sites
        .first()
        .and_then(|site| (arch.closure_argument)(entry, body, site.address, 0))
    {
        Some(offset) => (Ok(sites), cookie | death_cookie::closure_at(offset)),
        None => (
            Err(format!(
                "the first argument is not traced into {callee}'s closure"
            )),
            0,
        ),
    }
}

/// The runtime's wait reason names: the table's address from `.symtab`
/// when present, else decoded from `runtime.waitReason.String`, which also
/// gives its length.
fn wait_reasons<'a>(
    arch: &Arch,
    image: &Image,
    symbols: &HashMap<&str, (u64, u64)>,
    string_fn: Option<&Func>,
    code: impl Fn(&Func) -> Option<&'a [u8]>,
) -> Vec<String> {
    let from_symtab = symbols
        .get("runtime.waitReasonStrings")
        .map(|&(a, size)| (a, size / 16));
    let decoded = string_fn.and_then(|f| (arch.wait_reason_table)(f.entry, code(f)?));
    from_symtab
        .or(decoded)
        .and_then(|(a, n)| waitreason::read_names(a, n, |a, n| image.at(a, n)))
        .unwrap_or_default()
}
