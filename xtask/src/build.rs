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

/// Builds `ebpf/` for bpfel-unknown-none with nightly and bpf-linker.
pub fn build_ebpf() -> anyhow::Result<()> {
    tools::ensure_ebpf_toolchain()?;
    let linker_dir = tools::bpf_linker().context("bpf-linker is not installed")?;
    let path = std::env::join_paths(std::iter::once(linker_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let t = step("building the eBPF programs (nightly, bpfel-unknown-none)");
    run(cargo()
        .current_dir(root().join("ebpf"))
        .args([
            &format!("+{}", tools::nightly()),
            "build",
            "--quiet",
            "--release",
            "-Z",
            "build-std=core",
        ])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(root().join("target"))
        .env("PATH", path))?;
    done(t);
    Ok(())
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
pub const FIXTURES: [&str; 3] = ["spawner", "churn", "demo"];

/// Directory of built fixtures: `<name>-<go line>` executables.
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
            let source = root().join("xtask/go").join(name).join("main.go");
            let binary = out.join(format!("{name}-{}", release.line));
            if is_newer(&binary, &source) {
                continue;
            }
            run(Command::new(&go)
                .current_dir(source.parent().expect("fixture dir"))
                .args(["build", "-o"])
                .arg(&binary)
                .arg("main.go")
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "-buildvcs=false")
                .env("GOCACHE", root().join("target/go-cache"))
                .env("GOPATH", root().join("target/go-path")))
            .with_context(|| format!("building fixture {name} with Go {}", release.line))?;
        }
        done(t);
    }
    Ok(out)
}

fn is_newer(output: &Path, input: &Path) -> bool {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    matches!((modified(output), modified(input)), (Some(o), Some(i)) if o >= i)
}
