//! Building the kernel object, the agent and the Go fixtures.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::{
    tools::{self, GoRelease},
    util::{done, output, root, run, run_quiet, step},
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

/// A CPU architecture the agent ships for. Its kernel object reads that
/// architecture's registers (aya-ebpf's `bpf_target_arch`: the bytecode is
/// the same `bpfel-unknown-none`, only the `pt_regs` layout and Go's
/// register ABI differ); its static agent is built for that musl target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Every architecture the image has, in its manifest list's order.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    /// The name OCI platforms, `kubernetes.io/arch` and `GOARCH` share.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target of the static agent. musl: no C library to ship,
    /// and no NSS lookups that a static glibc would try to `dlopen`.
    pub fn musl_target(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// The machine `readelf -h` names for it.
    fn elf_machine(self) -> &'static str {
        match self {
            Arch::Amd64 => "X86-64",
            Arch::Arm64 => "AArch64",
        }
    }

    /// This machine's.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }
}

/// Where the arm64 kernel object lands: a target directory of its own, so
/// building it never invalidates the amd64 object's cache.
pub fn ebpf_object_arm64() -> PathBuf {
    root().join("target/ebpf-aarch64/bpfel-unknown-none/release/gostray")
}

/// Builds `ebpf/` for bpfel-unknown-none with nightly and bpf-linker.
pub fn build_ebpf() -> anyhow::Result<()> {
    build_ebpf_for(Arch::Amd64).map(|_| ())
}

/// Builds `ebpf/` for the registers of `arch`; returns the object's path.
pub fn build_ebpf_for(arch: Arch) -> anyhow::Result<PathBuf> {
    tools::ensure_ebpf_toolchain()?;
    let linker_dir = tools::bpf_linker().context("bpf-linker is not installed")?;
    let path = std::env::join_paths(std::iter::once(linker_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let (label, target_dir, object) = match arch {
        Arch::Amd64 => ("", root().join("target"), ebpf_object()),
        Arch::Arm64 => (
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
    if arch == Arch::Arm64 {
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

/// Builds the agent static for `arch`'s musl target, optimised, without
/// debug info, with that architecture's kernel object embedded; returns
/// the binary. This is the
/// agent the image ships, the arm64 VM boots and the servers slice runs.
///
/// Paths of this checkout and of the cargo home are remapped, so a build
/// here and one in deploy/Dockerfile's stage embed the same strings.
pub fn build_static_agent(arch: Arch) -> anyhow::Result<PathBuf> {
    let target = arch.musl_target();
    ensure_static_toolchain(arch)?;
    let object = build_ebpf_for(arch)?;
    let t = step(&format!("building the static agent (release, {target})"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let rustflags = format!(
        "--remap-path-prefix={}=/gostray --remap-path-prefix={}=/cargo",
        root().display(),
        cargo_home.display()
    );
    let mut cmd = cargo();
    cmd.args(["build", "--quiet", "--release", "--package", "gostray"])
        .args(["--target", target])
        .env("GOSTRAY_EBPF_OBJECT", &object)
        .env("RUSTFLAGS", rustflags)
        // No debug info: quicker to build, and with none cargo strips the
        // standard library's too (symbols stay: panics and `perf` name
        // functions). The same for both architectures, with no objcopy
        // that reads only one.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0");
    if arch != Arch::host() {
        // ring's C and assembly by the Debian cross compiler; the link by
        // rust-lld with the musl start files and libc the Rust target
        // ships (self-contained), so no foreign C library is needed.
        let var = target.replace('-', "_");
        cmd.env(format!("CC_{var}"), c_compiler(arch).0).env(
            format!("CARGO_TARGET_{}_LINKER", var.to_uppercase()),
            "rust-lld",
        );
    }
    run(&mut cmd)?;
    done(t);
    let built = root().join(format!("target/{target}/release/gostray"));
    check_static(&built, arch)?;
    Ok(built)
}

/// The C compiler for ring's C and assembly when building for `arch`,
/// and the Debian package that has it: `musl-gcc` for this machine's
/// architecture, Debian's cross gcc for the other.
fn c_compiler(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        _ if arch == Arch::host() => ("musl-gcc", "musl-tools"),
        Arch::Amd64 => ("x86_64-linux-gnu-gcc", "gcc-x86-64-linux-gnu"),
        Arch::Arm64 => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    }
}

/// The musl target for the stable toolchain, and the C compiler.
fn ensure_static_toolchain(arch: Arch) -> anyhow::Result<()> {
    let target = arch.musl_target();
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.trim() == target));
    if !installed {
        let t = step(&format!("adding the {target} target (one-time)"));
        run_quiet(Command::new("rustup").args(["target", "add", target]))?;
        done(t);
    }
    let (compiler, package) = c_compiler(arch);
    if output(Command::new(compiler).arg("--version")).is_none() {
        let t = step(&format!("installing {package} (one-time)"));
        tools::apt_install(&[package])?;
        done(t);
    }
    Ok(())
}

/// Fails unless `binary` is a static executable for `arch`: its machine,
/// no program interpreter, no needed libraries (what `ldd` reports as
/// "not a dynamic executable").
fn check_static(binary: &Path, arch: Arch) -> anyhow::Result<()> {
    let headers = output(
        Command::new("readelf")
            .args(["--file-header", "--program-headers", "--dynamic"])
            .arg(binary),
    )
    .with_context(|| format!("readelf {}", binary.display()))?;
    let machine = headers
        .lines()
        .find_map(|l| l.trim().strip_prefix("Machine:"))
        .unwrap_or("")
        .trim();
    if !machine.contains(arch.elf_machine()) {
        bail!(
            "{} is for {machine:?}, not {}",
            binary.display(),
            arch.name()
        );
    }
    if headers.contains("INTERP") || headers.contains("(NEEDED)") {
        bail!("{} is not static:\n{headers}", binary.display());
    }
    Ok(())
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
