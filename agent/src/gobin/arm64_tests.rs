//! The arm64 decoders on instruction words taken from Go's arm64 builds,
//! then against the cross-compiled fixtures (`spawner-arm64-<line>`,
//! default, stripped and PIE, built by `cargo xtask test`): every required
//! site found, each on an instruction the kernel simulates, the decoded
//! addresses equal to the symbol table's, the offsets table equal to DWARF.

use std::{collections::HashMap, path::PathBuf};

use object::{Object, ObjectSymbol};

use super::*;
use crate::gobin::arm64_data::{
    address_argument, addresses_taken, allg_addresses, panic_string, slice_read, wait_reason_table,
};
use crate::gobin::{
    arch::{self, Machine},
    arm64_uprobe::{classify, Uprobe},
    offsets,
    sites::{self, SiteKind},
    tests::toolchains,
    AddressSource, FuncRange, GoBinError, GoBinary, LayoutSource, WaitReason,
};

/// Little-endian code from instruction words.
fn code(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// `runtime.closechan`'s prologue (Go 1.23): stack check, frame, `cbz x0`.
const CLOSECHAN: [u32; 7] = [
    0xf940_0b90, // ldr x16, [x28, #16]   g.stackguard0
    0xeb30_63ff, // cmp sp, x16
    0x5400_2049, // b.ls morestack
    0xf81a_0ffe, // str x30, [sp, #-96]!
    0xf81f_83fd, // stur x29, [sp, #-8]
    0xd100_23fd, // sub x29, sp, #8
    0xb400_1f00, // cbz x0, …             c == nil
];

#[test]
fn entry_prefers_a_simulated_instruction_past_the_stack_check() {
    let site = entry_site(0x1000, &code(&CLOSECHAN), &[0]).unwrap();
    assert_eq!((site.address, site.kind), (0x1018, SiteKind::Jump));
}

#[test]
fn entry_falls_back_to_the_stack_check_branch() {
    // mov x0, x1 overwrites the argument before the cbz.
    let mut words = CLOSECHAN.to_vec();
    words.insert(6, 0xaa01_03e0);
    let site = entry_site(0x1000, &code(&words), &[0]).unwrap();
    assert_eq!((site.address, site.kind), (0x1008, SiteKind::Jump));
    // Without a stack check (a NOSPLIT function) there is no site at all.
    assert!(entry_site(0x1000, &code(&words[3..]), &[0]).is_err());
}

#[test]
fn entry_takes_an_adrp_while_the_arguments_live() {
    // runtime.throw (Go 1.23, NOSPLIT): frame, spill x0, adrp x2.
    let throw = [
        0xf81d_0ffe,
        0xf81f_83fd,
        0xd100_23fd,
        0xf900_1fe0,
        0xf0ff_fe42,
    ];
    let site = entry_site(0x1000, &code(&throw), &[0, 1]).unwrap();
    assert_eq!((site.address, site.kind), (0x1010, SiteKind::PcRelative));
    // runtime.fatalpanic: add x1, sp, #80 overwrites x1 before its adrp.
    let fatalpanic = [
        0xf81b_0ffe,
        0xf81f_83fd,
        0xd100_23fd,
        0x9101_43e1,
        0xb000_0002,
    ];
    assert!(entry_site(0x1000, &code(&fatalpanic), &[0, 1]).is_err());
    assert_eq!(
        entry_site(0x1000, &code(&fatalpanic), &[0])
            .unwrap()
            .address,
        0x1010
    );
}

#[test]
fn finds_calls_by_target() {
    // nop; bl +0x10; bl -0x8
    let words = [0xd503_201f, 0x9400_0004, 0x97ff_fffe];
    let sites = call_sites(0x1000, &code(&words), 0x1014);
    assert_eq!(sites.len(), 1);
    assert_eq!((sites[0].address, sites[0].kind), (0x1004, SiteKind::Call));
    assert_eq!(
        call_site(0x1000, &code(&words), 0x1000).unwrap().address,
        0x1008
    );
    assert!(call_site(0x1000, &code(&words), 0x2000).is_err());
}

#[test]
fn finds_allgs_and_allglen_from_allgadd() {
    // runtime.allgadd (Go 1.23 at 0x45e50…): the three loads of the slice
    // header, then `stlr` of len(allgs) to &allglen.
    let words = [
        0xb000_0a3b, // adrp x27, page
        0xf945_eb62, // ldr x2, [x27, #3024]   cap
        0xb000_0a3b, // adrp x27, page
        0xf945_e761, // ldr x1, [x27, #3016]   len
        0xb000_0a3b, // adrp x27, page
        0xf945_e360, // ldr x0, [x27, #3008]   ptr
        0xb000_0a3b, // adrp x27, page
        0xf945_e761, // ldr x1, [x27, #3016]   len again
        0xf000_0b42, // adrp x2, page
        0x9135_c042, // add x2, x2, #3440      &allglen
        0xc89f_fc41, // stlr x1, [x2]
    ];
    assert_eq!(
        allg_addresses(0x45e50, &code(&words)),
        Some((0x0018_abc0, 0x001b_0d70))
    );
}

#[test]
fn finds_the_wait_reason_table_and_its_length() {
    // runtime.waitReason.String (Go 1.23 at 0x576f0).
    let words = [
        0xd340_1c02,
        0x7100_985f,
        0x5400_00a3,
        0xf000_03c0,
        0x9135_2c00,
        0xd280_0261,
        0xd65f_03c0,
        0xd37c_1c02,
        0x9000_0983,
        0x9113_8063,
        0xf862_6860,
        0x8b02_0062,
        0xf940_0441,
        0xd65f_03c0,
    ];
    assert_eq!(
        wait_reason_table(0x576f0, &code(&words)),
        Some((0x0018_74e0, 38))
    );
}

#[test]
fn finds_addresses_passed_and_taken() {
    // adrp x0; add x0, x0, #3432; adrp x1; add x1, x1, #8; bl +0x8
    let words = [
        0xf000_0b40,
        0x9135_a000,
        0xb000_0001,
        0x9100_2021,
        0x9400_0002,
    ];
    let c = code(&words);
    let first = 0x1000 + 0x0016_b000 + 3432;
    assert_eq!(address_argument(0x1000, &c, 0x1018, 0), Some(first));
    assert_eq!(address_argument(0x1000, &c, 0x1018, 1), Some(0x2008));
    assert_eq!(address_argument(0x1000, &c, 0x1018, 2), None);
    assert_eq!(addresses_taken(0x1000, &c), vec![first, 0x2008]);
    assert_eq!(panic_string(0x1000, &c), Some(0x2008));
}

#[test]
fn finds_a_slice_read_by_a_load_pair() {
    // runtime.retake (Go 1.25 at 0x5ab58): `for i := 0; i < len(allp)`.
    let words = [
        0x9000_0a9b, // adrp x27, page
        0x9131_037b, // add x27, x27, #3136    REGTMP: a data access
        0xa940_1363, // ldp x3, x4, [x27]      allp.ptr, allp.len
    ];
    assert_eq!(slice_read(0x5ab58, &code(&words)), Some(0x001a_ac40));
    assert!(addresses_taken(0x5ab58, &code(&words)).is_empty());
}

// ---- the cross-compiled fixtures ----

const VARIANTS: [&str; 3] = ["", "-stripped", "-pie"];

fn fixture(dir: &std::path::Path, line: &str, variant: &str) -> PathBuf {
    let p = dir.join(format!("spawner-arm64-{line}{variant}"));
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask test`",
        p.display()
    );
    p
}

/// Calls `check` with each arm64 fixture of every Go line in `variants`:
/// its line, variant and path, and the binary read.
fn each_fixture(variants: &[&str], mut check: impl FnMut(&str, &str, &std::path::Path, &GoBinary)) {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        for variant in variants {
            let path = fixture(&dir, line, variant);
            let bin = GoBinary::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            check(line, variant, &path, &bin);
        }
    }
}

#[test]
fn every_arm64_fixture_has_its_sites_on_simulated_instructions() {
    each_fixture(&VARIANTS, |line, variant, path, bin| {
        let what = path.display().to_string();
        assert_eq!(bin.machine, Machine::Arm64, "{what}");
        assert!(bin.version.to_string().starts_with(&format!("go{line}.")));
        let stripped = variant == "-stripped";
        assert_eq!(
            (bin.stripped, bin.has_dwarf),
            (stripped, !stripped),
            "{what}"
        );
        assert_eq!(bin.pie, variant == "-pie", "{what}");
        if stripped {
            assert!(matches!(bin.layout_source, LayoutSource::Table { .. }));
            assert_eq!(bin.allgs_source, AddressSource::Decoded, "{what}");
        } else {
            assert_eq!(bin.layout_source, LayoutSource::Dwarf, "{what}");
        }
        let count = |name: &str| bin.sites.iter().filter(|s| s.name == name).count();
        assert_eq!((count(sites::SITE_CREATE), count(sites::SITE_EXIT)), (1, 1));
        assert!(
            count(sites::SITE_BLOCK_CHAN) >= 4,
            "{what}: {:?}",
            bin.sites
        );
        assert_eq!(count(sites::SITE_CLOSE), 1, "{what}");
        assert!(count(sites::SITE_SEND_CLOSED) >= 2, "{what}");
        assert!(count(sites::SITE_THROW) >= 2 && count(sites::SITE_FATAL_PANIC) == 1);
        // The heap walker's roots, decoded when stripped.
        let heap = bin.heap_layout().unwrap_or_else(|e| panic!("{what}: {e}"));
        let r = heap.roots;
        assert!([r.mheap, r.semtable, r.allp]
            .iter()
            .all(|&a| heap.globals.in_bss(a)));
        // The create site is the `bl runqput`, the new g in R1.
        assert_eq!(bin.create_site.kind, SiteKind::Call, "{what}");
        assert_eq!(bin.abi().create_new_g.number, 1);
        for s in &bin.sites {
            let word = bin
                .code(FuncRange {
                    entry: s.site.address,
                    end: s.site.address + 4,
                })
                .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
                .unwrap();
            assert!(
                matches!(classify(word), Uprobe::Simulated(_)),
                "{what}: {} in {} at {:#x}: {word:#010x} is not simulated",
                s.name,
                s.function,
                s.site.address
            );
            let f = bin.symbolize(s.site.address).unwrap();
            assert_eq!(f.function, s.function, "{what}");
            assert!(bin.describe_site(&s.site).unwrap().contains("simulated: "));
        }
        let names: Vec<&str> = bin.wait_reasons.iter().map(String::as_str).collect();
        for (name, kind) in [
            ("chan send", WaitReason::ChanSend),
            ("chan receive", WaitReason::ChanReceive),
        ] {
            let n = names.iter().position(|&w| w == name);
            let n = n.unwrap_or_else(|| panic!("{what}: no {name:?} in {names:?}"));
            assert_eq!(bin.wait_reason(u8::try_from(n).unwrap()), kind);
        }
        // This agent (x86-64) must not attach to it.
        if cfg!(target_arch = "x86_64") {
            assert!(matches!(
                GoBinary::open_for_host(path),
                Err(GoBinError::ForeignMachine {
                    binary: Machine::Arm64,
                    ..
                })
            ));
        }
    });
}

#[test]
fn arm64_offsets_table_equals_dwarf() {
    each_fixture(&["", "-pie"], |line, variant, _, bin| {
        let (table, source) = offsets::lookup(bin.version, Machine::Arm64).expect("entry");
        assert!(!source.is_guess(), "Go {line}: run `cargo xtask offsets`");
        assert_eq!(table.g, bin.offsets, "Go {line}{variant}: runtime.g");
        assert_eq!(table.hchan, bin.hchan, "Go {line}{variant}: runtime.hchan");
        assert_eq!(table.waitq, bin.waitq, "Go {line}{variant}");
        assert_eq!(table.sudog, bin.sudog, "Go {line}{variant}");
        let heap = bin
            .heap_layout()
            .unwrap_or_else(|e| panic!("Go {line}: {e}"));
        let (want, _) = offsets::lookup_heap(bin.version, Machine::Arm64).unwrap();
        assert_eq!(heap.offsets, want, "Go {line}{variant}: heap offsets");
    });
}

/// The decoders give the symbol table's answers on the builds that have
/// one (the stripped twin is then read the same way).
#[test]
fn arm64_decoded_addresses_match_the_symbol_table() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        for variant in ["", "-pie"] {
            let path = fixture(&dir, line, variant);
            let what = format!("Go {line}{variant} arm64");
            let data = std::fs::read(&path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let syms: HashMap<&str, u64> = file
                .symbols()
                .filter_map(|s| Some((s.name().ok()?, s.address())))
                .collect();
            let bin = GoBinary::parse(&data).unwrap();
            let body = |name: &str| {
                let r = bin.function(name).unwrap_or_else(|| panic!("{name}"));
                (r.entry, bin.code(r).unwrap().to_vec())
            };
            let arm64 = &arch::ARM64;
            let (at, c) = body("runtime.allgadd");
            assert_eq!(
                (arm64.allg_addresses)(at, &c),
                Some((syms["runtime.allgs"], syms["runtime.allglen"])),
                "{what}"
            );
            let (at, c) = body("runtime.waitReason.String");
            let (table, count) = (arm64.wait_reason_table)(at, &c).expect("decoded");
            assert_eq!(table, syms["runtime.waitReasonStrings"], "{what}");
            assert_eq!(
                usize::try_from(count).unwrap(),
                bin.wait_reasons.len(),
                "{what}"
            );
            crate::gobin::heaplayout_tests::heap_roots_match_symbols(arm64, &bin, &syms, &what);
        }
    }
}

/// The fatal paths' sites on a `systemstack` call (every arm64 release: a
/// prologue's stores are single-stepped) read the message from the
/// closure, at the offset decoded from the function. Checked against the
/// closures' layouts as `go tool objdump` shows them: `runtime.fatal`
/// captures the `_panic` before the string from Go 1.26.
#[test]
fn arm64_fatal_paths_read_the_arguments_where_the_closure_holds_them() {
    use gostray_common::death_cookie;
    each_fixture(&VARIANTS, |line, _, path, bin| {
        let what = path.display().to_string();
        let minor: u32 = line.trim_start_matches("1.").parse().unwrap();
        for s in bin
            .sites
            .iter()
            .filter(|s| s.spec.program == gostray_common::PROG_FATAL)
        {
            let cookie = s.cookie.unwrap_or(0);
            if cookie & death_cookie::CLOSURE == 0 {
                continue;
            }
            let want = match s.function {
                "runtime.fatal" if minor >= 26 => 16,
                _ => 8,
            };
            assert_eq!(
                death_cookie::closure_offset(cookie),
                want,
                "{what}: {}",
                s.function
            );
        }
        // From Go 1.21 `fatalpanic` has no simulated instruction
        // before its argument is overwritten.
        let fatalpanic = bin
            .sites
            .iter()
            .find(|s| s.function == "runtime.fatalpanic")
            .and_then(|s| s.cookie);
        let want = if minor >= 21 {
            death_cookie::PANIC | death_cookie::closure_at(8)
        } else {
            death_cookie::PANIC
        };
        assert_eq!(fatalpanic, Some(want), "{what}");
    });
}
