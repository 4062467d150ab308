//! Supply-chain checks with cargo-deny: every dependency's licence is on
//! the allow-list in deny.toml, no wildcard versions, crates only from
//! crates.io. Advisories are left out: the `RustSec` database is fetched from
//! GitHub, which this CI cannot reach (`cargo xtask deny --advisories`
//! where it can).

use std::{path::PathBuf, process::Command};

use crate::util::{done, output, root, run, step, tools_dir};

/// Pinned: 0.20.2 builds with rustc 1.95 (about 7 minutes here, once).
const CARGO_DENY_VERSION: &str = "0.20.2";

fn cargo_deny() -> Option<PathBuf> {
    let bin = tools_dir().join("bin/cargo-deny");
    output(Command::new(&bin).arg("--version"))
        .filter(|v| v.contains(CARGO_DENY_VERSION))
        .map(|_| bin)
}

fn ensure_cargo_deny() -> anyhow::Result<PathBuf> {
    if let Some(bin) = cargo_deny() {
        return Ok(bin);
    }
    let t = step(&format!(
        "building cargo-deny {CARGO_DENY_VERSION} (one-time, several minutes)"
    ));
    run(Command::new("cargo")
        .args(["install", "--locked", "--quiet", "cargo-deny", "--version"])
        .arg(CARGO_DENY_VERSION)
        .arg("--root")
        .arg(tools_dir()))?;
    done(t);
    cargo_deny().ok_or_else(|| anyhow::anyhow!("cargo-deny installed but does not run"))
}

/// Runs the checks; with `advisories`, the `RustSec` check too (network).
pub fn deny(advisories: bool) -> anyhow::Result<()> {
    let bin = ensure_cargo_deny()?;
    let t = step("cargo deny: licences, bans, sources");
    // `--offline` below is for the advisory database; the crate metadata
    // cargo-deny reads must be local, for every platform in the lock file
    // (a build only downloads the host's).
    run(Command::new("cargo")
        .current_dir(root())
        .args(["fetch", "--quiet"]))?;
    let mut cmd = Command::new(bin);
    cmd.current_dir(root());
    if advisories {
        cmd.args(["check", "advisories", "licenses", "bans", "sources"]);
    } else {
        cmd.args(["--offline", "check", "licenses", "bans", "sources"]);
    }
    run(&mut cmd)?;
    done(t);
    Ok(())
}
