//! The heap layout against real binaries: DWARF against the generated
//! table for every release, and the addresses decoded for stripped
//! binaries against the symbol table. Fixtures as in [`super::tests`];
//! plus the generator that `cargo xtask offsets` runs.

use std::{collections::BTreeMap, collections::HashMap, path::PathBuf};

use object::{Object, ObjectSymbol};

use super::{
    arch, heaproots, offsets, tests::toolchains, AddressSource, GlobalSections, GoBinary,
    HeapLayout, LayoutSource,
};

/// Which global section holds `a`, and where in it.
fn placed(g: &GlobalSections, a: u64) -> Option<(usize, u64)> {
    [g.data, g.noptrdata, g.bss, g.noptrbss]
        .iter()
        .position(|&(lo, hi)| (lo..hi).contains(&a))
        .map(|i| (i, a - [g.data, g.noptrdata, g.bss, g.noptrbss][i].0))
}

fn sizes(g: &GlobalSections) -> [u64; 4] {
    [g.data, g.noptrdata, g.bss, g.noptrbss].map(|(lo, hi)| hi - lo)
}

fn open(dir: &std::path::Path, line: &str, variant: &str) -> (PathBuf, GoBinary) {
    let path = dir.join(format!("spawner-{line}{variant}"));
    let bin = GoBinary::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, bin)
}

/// Every field, DWARF against the table, on the default and PIE builds;
/// stripped builds take the table's entry and the same roots as their
/// unstripped twin (the linker lays out the same globals with -s -w).
#[test]
fn heap_layout_dwarf_equals_table_and_stripped_twins() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        let (_, plain) = open(&dir, line, "");
        let want = plain
            .heap_layout()
            .unwrap_or_else(|e| panic!("Go {line}: {e}"));
        for variant in ["", "-pie", "-stripped", "-extlink-stripped"] {
            let (path, bin) = open(&dir, line, variant);
            let what = format!("{}", path.display());
            let heap = bin.heap_layout().unwrap_or_else(|e| panic!("{what}: {e}"));
            let (table, source) =
                offsets::lookup_heap(bin.version, bin.machine).expect("table entry");
            assert!(!source.is_guess(), "{what}: run `cargo xtask offsets`");
            assert_eq!(heap.offsets, table, "{what}: DWARF against the table");
            assert_eq!(heap.offsets, want.offsets, "{what}");
            let stripped = variant.ends_with("stripped");
            if stripped {
                assert!(
                    matches!(heap.offsets_source, LayoutSource::Table { .. }),
                    "{what}"
                );
                assert_eq!(heap.roots.source, AddressSource::Decoded, "{what}");
            } else {
                assert_eq!(heap.offsets_source, LayoutSource::Dwarf, "{what}");
                assert_eq!(heap.roots.source, AddressSource::Symtab, "{what}");
            }
            if variant == "-stripped" {
                // `-s -w` moves the sections by a few bytes: each root must
                // sit at its twin's place within the same section.
                let roots = |h: &HeapLayout| {
                    let r = h.roots;
                    [r.mheap, r.semtable, r.allp, r.firstmoduledata].map(|a| placed(&h.globals, a))
                };
                assert_eq!(roots(heap), roots(want), "{what}");
                assert_eq!(sizes(&heap.globals), sizes(&want.globals), "{what}");
            }
            let g = heap.globals;
            for a in [heap.roots.mheap, heap.roots.semtable, heap.roots.allp] {
                assert!(g.in_bss(a), "{what}: {a:#x} outside .bss/.noptrbss");
            }
            let o = heap.offsets;
            // The facts the design notes state for amd64, as a sanity check.
            assert_eq!(
                (o.mheap.arenas_l1, o.mheap.arenas_l2),
                (1, 1 << 22),
                "{what}"
            );
            assert_eq!(o.heap_arena.pages, 8192, "{what}");
            assert_eq!((o.sema.entries, o.sema.entry_size), (251, 64), "{what}");
            assert_eq!(o.mspan.state.size, 1, "{what}");
            assert_eq!(o.mspan.alloc_bits.size, 8, "{what}");
            assert!(o.mspan.size > o.mspan.alloc_bits.offset, "{what}");
        }
    }
}

/// `arch`'s decoders find the heap roots `mheap_`, `semtable` and `allp`
/// in `bin` where its symbol table `syms` says they are.
pub(super) fn heap_roots_match_symbols(
    arch: &super::arch::Arch,
    bin: &GoBinary,
    syms: &HashMap<&str, u64>,
    what: &str,
) {
    let code = |name: &str| {
        let r = bin.function(name).unwrap_or_else(|| panic!("{name}"));
        (r.entry, bin.code(r).unwrap().to_vec())
    };
    let (at, c) = code(heaproots::FN_MALLOCINIT);
    let init = bin.function(heaproots::FN_MHEAP_INIT).unwrap().entry;
    assert_eq!(
        (arch.address_argument)(at, &c, init, 0),
        Some(syms["runtime.mheap_"]),
        "{what}: mheap_"
    );
    let (at, c) = code(heaproots::FN_SEMRELEASE);
    assert_eq!(
        (arch.addresses_taken)(at, &c).first(),
        Some(&syms["runtime.semtable"]),
        "{what}: semtable"
    );
    let (at, c) = code(heaproots::FN_RETAKE);
    assert_eq!(
        (arch.slice_read)(at, &c),
        Some(syms["runtime.allp"]),
        "{what}: allp"
    );
}

/// The decoders give the symbol table's answer on the builds that have
/// one, PIE included, and firstmoduledata's scan finds the symbol.
#[test]
fn decoded_heap_roots_match_the_symbol_table() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        for variant in ["", "-pie"] {
            let (path, bin) = open(&dir, line, variant);
            let data = std::fs::read(&path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let syms: HashMap<&str, u64> = file
                .symbols()
                .filter_map(|s| Some((s.name().ok()?, s.address())))
                .collect();
            let what = format!("Go {line}{variant}");
            heap_roots_match_symbols(&arch::AMD64, &bin, &syms, &what);
            let (off, len) = super::image::section_range(&file, ".gopclntab")
                .or_else(|| super::image::section_range(&file, ".data.rel.ro.gopclntab"))
                .unwrap();
            let tab = super::pclntab::Pclntab::parse(&data[off..off + len]).unwrap();
            assert_eq!(
                super::moduledata::address(&file, &tab),
                Some(syms["runtime.firstmoduledata"]),
                "{what}"
            );
        }
    }
}

/// Not a check: `cargo xtask offsets` runs this with
/// `GOSTRAY_OFFSETS_PROBES` (comma-separated probe binaries, one per
/// release, all with DWARF) and `GOSTRAY_OFFSETS_OUT` (the table to
/// write). It writes what this crate's own reader finds in each, so the
/// table always matches the reader that uses it.
#[test]
#[ignore = "the generator behind `cargo xtask offsets`"]
fn generate_offsets_table() {
    let probes = std::env::var("GOSTRAY_OFFSETS_PROBES").expect("GOSTRAY_OFFSETS_PROBES");
    let out = std::env::var("GOSTRAY_OFFSETS_OUT").expect("GOSTRAY_OFFSETS_OUT");
    let mut table = BTreeMap::new();
    for path in probes.split(',') {
        let bin = GoBinary::open(path.as_ref()).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(bin.layout_source, LayoutSource::Dwarf, "{path}");
        let heap = bin.heap_layout().unwrap_or_else(|e| panic!("{path}: {e}"));
        let version = offsets::key(
            bin.build.raw_version.split(' ').next().unwrap(),
            bin.machine,
        );
        let entry = serde_json::json!({
            "g": bin.offsets,
            "hchan": bin.hchan,
            "waitq": bin.waitq,
            "sudog": bin.sudog,
            "heap": heap.offsets,
        });
        eprintln!(
            "    {version}: g.goid at {}, mspan {} bytes",
            bin.offsets.goid, heap.offsets.mspan.size
        );
        table.insert(version, entry);
    }
    let json = serde_json::to_string_pretty(&table).unwrap() + "\n";
    std::fs::write(&out, json).unwrap();
}
