//! The command line's answers to bad input: one clear line, non-zero exit,
//! no panic. No root needed: targets are checked before anything is loaded.

use std::process::Command;

fn gostray(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gostray"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (ok, stderr) = gostray(args);
    assert!(!ok, "{args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "{args:?} printed:\n{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?} printed {stderr:?}, wanted {needle:?}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn missing_pid_is_one_clear_line() {
    assert_one_line_error(&["run", "--pid", "999999"], "no process with PID 999999");
}

#[test]
fn non_go_binary_is_one_clear_line() {
    assert_one_line_error(&["run", "--binary", "/bin/ls"], "not a Go binary");
}

#[test]
fn missing_binary_is_one_clear_line() {
    assert_one_line_error(&["run", "--binary", "/nonexistent/app"], "/nonexistent/app");
}

#[test]
fn bad_selection_rules_are_rejected() {
    let (ok, stderr) = gostray(&["run", "--include", "pod=x"]);
    assert!(!ok);
    assert!(
        stderr.contains("expected exe=, namespace= or label:KEY="),
        "{stderr}"
    );
    let (ok, stderr) = gostray(&["run", "--exclude", "exe~("]);
    assert!(!ok);
    assert!(stderr.contains("exe~("), "{stderr}");
}

#[test]
fn bad_flag_values_are_rejected() {
    let (ok, stderr) = gostray(&["run", "--pid", "1", "--drain-interval", "5"]);
    assert!(!ok);
    assert!(stderr.contains("unit"), "{stderr}");
}

#[test]
fn inspect_non_go_binary_is_one_clear_line() {
    assert_one_line_error(&["inspect", "/bin/ls"], "not a Go binary");
}

#[test]
fn inspect_random_bytes_is_one_clear_line() {
    let path = std::env::temp_dir().join(format!("gostray-random-{}", std::process::id()));
    // Deterministic noise (xorshift), not an ELF.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let bytes: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    assert_one_line_error(&["inspect", path.to_str().unwrap()], "not an ELF");
    let _ = std::fs::remove_file(path);
}

#[test]
fn inspect_missing_file_is_one_clear_line() {
    assert_one_line_error(&["inspect", "/nonexistent/app"], "/nonexistent/app");
}

/// A Go binary cut short: refused with one line, whatever part is missing.
#[test]
fn inspect_truncated_go_binary_is_one_clear_line() {
    let Some(fixtures) = std::env::var_os("GOSTRAY_FIXTURES") else {
        assert!(!in_ci(), "GOSTRAY_FIXTURES unset under CI");
        eprintln!("SKIPPED: fixtures not built; run `cargo xtask test`");
        return;
    };
    let full = std::fs::read(std::path::Path::new(&fixtures).join("spawner-1.27")).unwrap();
    let path = std::env::temp_dir().join(format!("gostray-truncated-{}", std::process::id()));
    for keep in [64, 4096, full.len() / 3, full.len() / 2, full.len() - 4096] {
        std::fs::write(&path, &full[..keep]).unwrap();
        assert_one_line_error(&["inspect", path.to_str().unwrap()], "not supported");
    }
    let _ = std::fs::remove_file(path);
}

/// The fixtures directory and the Go lines of the matrix, or `None` (and
/// a skip notice) outside `cargo xtask test`; under CI that is a failure.
fn fixture_matrix() -> Option<(std::ffi::OsString, String)> {
    let (Some(fixtures), Ok(lines)) = (
        std::env::var_os("GOSTRAY_FIXTURES"),
        std::env::var("GOSTRAY_GO_LINES"),
    ) else {
        assert!(!in_ci(), "GOSTRAY_FIXTURES unset under CI");
        eprintln!("SKIPPED: fixtures not built; run `cargo xtask test`");
        return None;
    };
    Some((fixtures, lines))
}

/// Every fixture of the matrix: supported, with its own Go version.
#[test]
fn inspect_succeeds_on_every_fixture() {
    let Some((fixtures, lines)) = fixture_matrix() else {
        return;
    };
    for line in lines.split(',') {
        for variant in ["", "-stripped", "-pie", "-extlink-stripped"] {
            let path = std::path::Path::new(&fixtures).join(format!("spawner-{line}{variant}"));
            let out = Command::new(env!("CARGO_BIN_EXE_gostray"))
                .args(["inspect", "--json"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let version = report["go_version"].as_str().unwrap();
            assert!(
                version.starts_with(&format!("go{line}.")),
                "{}: {version}",
                path.display()
            );
            assert_eq!(report["supported"], true);
            assert_eq!(report["stripped"], variant.ends_with("-stripped"));
            let kinds: Vec<&str> = report["sites"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["site"]["kind"].as_str().unwrap())
                .collect();
            assert!(
                kinds
                    .iter()
                    .all(|k| ["push", "call", "jump", "nop"].contains(k)),
                "{kinds:?}"
            );
        }
    }
}

/// The Go 1.27 fixture rewritten by `patch`, written to a temporary file.
fn patched_fixture(label: &str, rewrite: impl Fn(&mut Vec<u8>)) -> Option<std::path::PathBuf> {
    let Some(fixtures) = std::env::var_os("GOSTRAY_FIXTURES") else {
        assert!(!in_ci(), "GOSTRAY_FIXTURES unset under CI");
        eprintln!("SKIPPED: fixtures not built; run `cargo xtask test`");
        return None;
    };
    let mut data = std::fs::read(std::path::Path::new(&fixtures).join("spawner-1.27")).unwrap();
    rewrite(&mut data);
    let path = std::env::temp_dir().join(format!("gostray-{label}-{}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    Some(path)
}

/// A Go binary for a machine gostray does not read (here: the ELF machine
/// field rewritten to `EM_RISCV`) is refused by name.
#[test]
fn inspect_other_architecture_is_one_clear_line() {
    let Some(path) = patched_fixture("riscv64", |d| {
        d[18..20].copy_from_slice(&243u16.to_le_bytes());
    }) else {
        return;
    };
    assert_one_line_error(
        &["inspect", path.to_str().unwrap()],
        "unsupported architecture",
    );
    let _ = std::fs::remove_file(path);
}

/// A binary whose build info says Go 1.16 is refused as too old.
#[test]
fn inspect_old_go_is_one_clear_line() {
    let Some(path) = patched_fixture("go116", |d| {
        // Every copy: the build info's and the runtime's own.
        let mut at = 0;
        while let Some(i) = d[at..].windows(8).position(|w| w == b"go1.27.3") {
            d[at + i..at + i + 8].copy_from_slice(b"go1.16.3");
            at += i + 8;
        }
    }) else {
        return;
    };
    assert_one_line_error(&["inspect", path.to_str().unwrap()], "older than go1.17");
    let _ = std::fs::remove_file(path);
}

/// The arm64 fixtures (cross-compiled): `inspect` reads them on any
/// machine, names the architecture and each site's instruction class, and
/// says whether this agent could attach; `run` on another machine refuses
/// them with one line.
#[test]
fn inspect_reads_arm64_fixtures_and_run_refuses_them_elsewhere() {
    let Some((fixtures, lines)) = fixture_matrix() else {
        return;
    };
    let native = cfg!(target_arch = "aarch64");
    for line in lines.split(',') {
        for variant in ["", "-stripped", "-pie"] {
            let path =
                std::path::Path::new(&fixtures).join(format!("spawner-arm64-{line}{variant}"));
            let out = Command::new(env!("CARGO_BIN_EXE_gostray"))
                .arg("inspect")
                .arg(&path)
                .output()
                .unwrap();
            let what = path.display();
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let first = text.lines().next().unwrap();
            if native {
                assert!(first.ends_with(": supported"), "{what}: {first}");
            } else {
                assert!(
                    first.contains(": supported on arm64 (not by this agent"),
                    "{what}: {first}"
                );
            }
            assert!(text.contains("\n  architecture   arm64\n"), "{what}");
            let sites: Vec<&str> = text
                .lines()
                .skip_while(|l| !l.starts_with("  probe sites"))
                .skip(1)
                .take_while(|l| l.starts_with("    "))
                .collect();
            assert!(sites.len() >= 10, "{what}: {sites:?}");
            for s in &sites {
                assert!(s.contains("(simulated: simulate_"), "{what}: {s}");
            }
            assert!(sites
                .iter()
                .any(|s| s.starts_with("    create ")
                    && s.contains(" bl (simulated: simulate_b_bl)")));
            if !native {
                assert_one_line_error(
                    &["run", "--binary", path.to_str().unwrap()],
                    "built for arm64, but this agent runs on",
                );
            }
        }
    }
}
