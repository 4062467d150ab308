//! Building the kernel object, the agent and the Go fixtures.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::{
    tools::{self, GoRelease},
    util::{done, root, run, step},
};

/// Where the kernel object lands.
pub fn ebpf_object() -> PathBuf {
    root().join("target/bpfel-unknown-none/release/gostray")
}

/// A cargo command for the host workspace, cleared of the variables the
/// outer `cargo xtask` set for itself.
fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env("GOSTRAY_EBPF_OBJECT", ebpf_object());
    cmd
}

/// The architecture a kernel object reads registers for: aya-ebpf's
/// `bpf_target_arch` (the BPF bytecode is the same `bpfel-unknown-none`,
/// only the `pt_regs` layout and Go's register ABI differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfArch {
    X86_64,
    Aarch64,
}

/// Where the arm64 kernel object lands: a target directory of its own, so
/// building it never invalidates the amd64 object's cache.
pub fn ebpf_object_arm64() -> PathBuf {
    root().join("target/ebpf-aarch64/bpfel-unknown-none/release/gostray")
}

/// Builds `ebpf/` for bpfel-unknown-none with nightly and bpf-linker.
pub fn build_ebpf() -> anyhow::Result<()> {
    build_ebpf_for(BpfArch::X86_64).map(|_| ())
}

/// Builds `ebpf/` for the registers of `arch`; returns the object's path.
pub fn build_ebpf_for(arch: BpfArch) -> anyhow::Result<PathBuf> {
    tools::ensure_ebpf_toolchain()?;
    let linker_dir = tools::bpf_linker().context("bpf-linker is not installed")?;
    let path = std::env::join_paths(std::iter::once(linker_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let (label, target_dir, object) = match arch {
        BpfArch::X86_64 => ("", root().join("target"), ebpf_object()),
        BpfArch::Aarch64 => (
            ", arm64 registers",
            root().join("target/ebpf-aarch64"),
            ebpf_object_arm64(),
        ),
    };
    let t = step(&format!(
        "building the eBPF programs (nightly, bpfel-unknown-none{label})"
    ));
    let mut cmd = cargo();
    cmd.current_dir(root().join("ebpf"))
        .args([
            &format!("+{}", tools::nightly()),
            "build",
            "--quiet",
            "--release",
            "-Z",
            "build-std=core",
        ])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(target_dir)
        .env("PATH", path);
    if arch == BpfArch::Aarch64 {
        // As a cfg every crate sees (aya-ebpf's build script then takes it
        // instead of the host's arch), so `ebpf/src/goabi.rs` can branch.
        cmd.env("RUSTFLAGS", "--cfg bpf_target_arch=\"aarch64\"");
    }
    run(&mut cmd)?;
    done(t);
    Ok(object)
}

/// Builds the kernel object and the agent; returns the agent's path.
pub fn build_agent(release: bool) -> anyhow::Result<PathBuf> {
    build_ebpf()?;
    let t = step(&format!(
        "building the agent ({})",
        if release { "release" } else { "debug" }
    ));
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--package", "gostray"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    done(t);
    Ok(root().join(if release {
        "target/release/gostray"
    } else {
        "target/debug/gostray"
    }))
}

/// The host cargo command, for `cargo test` and friends.
pub fn host_cargo() -> Command {
    cargo()
}

/// Go programs under `xtask/go/`, each one `main.go`.
pub const FIXTURES: [&str; 10] = [
    "spawner",
    "churn",
    "demo",
    "patterns",
    "inline",
    "torture",
    "hostile",
    "healthy",
    "liveleaks",
    "deaths",
];

/// How a fixture is built besides the default: the binary-reading tests
/// need every Go line stripped (`-s -w`: no .symtab, no DWARF) and as a
/// position-independent executable.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Appended to the file name: `spawner-1.24-stripped`.
    pub suffix: &'static str,
    pub flags: &'static [&'static str],
}

/// The default build, then the variants. `-extlink-stripped` is linked by
/// the system's C linker, which puts C start-up code at the head of .text:
/// a stripped Go ≥ 1.26 binary (no textStart in its function table) must
/// then be anchored through the runtime's module data. Only `spawner` is built in all of
/// them, `inline` also stripped (its inline trees are found through module
/// data then), `deaths` also stripped (the fatal-path sites and stacks
/// without symbols); the other fixtures only in the default one.
pub const VARIANTS: [Variant; 4] = [
    Variant {
        suffix: "",
        flags: &[],
    },
    Variant {
        suffix: "-stripped",
        flags: &["-ldflags=-s -w"],
    },
    Variant {
        suffix: "-pie",
        flags: &["-buildmode=pie"],
    },
    Variant {
        suffix: "-extlink-stripped",
        flags: &["-ldflags=-linkmode=external -s -w"],
    },
];

/// The fixture built in every variant.
const VARIANT_FIXTURE: &str = "spawner";

/// The variants of the arm64 builds of [`VARIANT_FIXTURE`]
/// (`spawner-arm64-1.24-stripped`), which the binary-reading tests check
/// (`gobin::arm64_tests`): cross-compiled with `GOARCH=arm64`, which the
/// Go toolchains do without a C toolchain (the fixture has no cgo). Not
/// `-extlink-stripped`, which needs an arm64 C linker.
pub const ARM64_VARIANTS: [Variant; 3] = [VARIANTS[0], VARIANTS[1], VARIANTS[2]];

/// Whether fixture `name` is built in `variant`.
fn builds(name: &str, variant: &Variant) -> bool {
    variant.suffix.is_empty()
        || name == VARIANT_FIXTURE
        || ((name == "inline" || name == "deaths") && variant.suffix == "-stripped")
}

/// Directory of built fixtures: `<name>-<go line>[<variant>]` executables.
pub fn fixtures_dir() -> PathBuf {
    root().join("target/fixtures")
}

/// Builds `names` with each of `releases` (installing toolchains as needed).
pub fn build_fixtures(releases: &[GoRelease], names: &[&str]) -> anyhow::Result<PathBuf> {
    let out = fixtures_dir();
    std::fs::create_dir_all(&out)?;
    for release in releases {
        let go = release.ensure()?;
        let t = step(&format!("building Go fixtures with Go {}", release.line));
        for name in names {
            for variant in VARIANTS {
                if !builds(name, &variant) {
                    continue;
                }
                let binary = out.join(format!("{name}-{}{}", release.line, variant.suffix));
                go_build(&go, name, &binary, variant.flags)
                    .with_context(|| format!("building fixture {name} with Go {}", release.line))?;
            }
        }
        done(t);
    }
    Ok(out)
}

/// Builds the arm64 fixtures ([`ARM64_VARIANTS`]) with each of
/// `releases`: one small program per release, three links each; the
/// first run also compiles each toolchain's standard library for arm64
/// (kept in `target/go-cache`).
pub fn build_arm64_fixtures(releases: &[GoRelease]) -> anyhow::Result<()> {
    let out = fixtures_dir();
    std::fs::create_dir_all(&out)?;
    for release in releases {
        let go = release.ensure()?;
        let t = step(&format!("building arm64 fixtures with Go {}", release.line));
        for variant in ARM64_VARIANTS {
            let binary = out.join(format!(
                "{VARIANT_FIXTURE}-arm64-{}{}",
                release.line, variant.suffix
            ));
            go_build_for(&go, VARIANT_FIXTURE, &binary, variant.flags, Some("arm64"))
                .with_context(|| format!("building arm64 fixture with Go {}", release.line))?;
        }
        done(t);
    }
    Ok(())
}

/// Builds `xtask/go/<name>/main.go` into `binary` unless it is up to date.
pub fn go_build(go: &Path, name: &str, binary: &Path, flags: &[&str]) -> anyhow::Result<()> {
    go_build_for(go, name, binary, flags, None)
}

/// [`go_build`] for `goarch` (`GOARCH`, cgo off), or for this machine.
pub fn go_build_for(
    go: &Path,
    name: &str,
    binary: &Path,
    flags: &[&str],
    goarch: Option<&str>,
) -> anyhow::Result<()> {
    let source = root().join("xtask/go").join(name).join("main.go");
    if is_newer(binary, &source) {
        return Ok(());
    }
    let mut cmd = Command::new(go);
    cmd.current_dir(source.parent().expect("fixture dir"))
        .args(["build", "-o"])
        .arg(binary)
        .args(flags)
        .arg("main.go")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOCACHE", root().join("target/go-cache"))
        .env("GOPATH", root().join("target/go-path"));
    if let Some(arch) = goarch {
        cmd.env("GOOS", "linux")
            .env("GOARCH", arch)
            .env("CGO_ENABLED", "0");
    }
    run(&mut cmd)
}

fn is_newer(output: &Path, input: &Path) -> bool {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    matches!((modified(output), modified(input)), (Some(o), Some(i)) if o >= i)
}
