//! `cargo xtask offsets`: regenerates `agent/src/gobin/offsets.json`, the
//! struct layouts the agent uses for binaries without DWARF. A probe
//! program is compiled with every toolchain of the matrix and its DWARF is
//! read by the agent's own code (`gostray inspect --json`), so the table is
//! never typed by hand and always matches the reader that uses it.

use std::{collections::BTreeMap, process::Command};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::{build, tools, util};

/// Where the generated table lives (embedded with `include_str!`).
const TABLE: &str = "agent/src/gobin/offsets.json";

pub fn offsets() -> anyhow::Result<()> {
    let agent = build_inspector()?;
    let out = build::fixtures_dir().join("offsets");
    std::fs::create_dir_all(&out)?;
    let mut table = BTreeMap::new();
    for release in tools::GO_RELEASES {
        let go = release.ensure()?;
        let binary = out.join(format!("offsets-{}", release.line));
        build::go_build(&go, "offsets", &binary, &[])?;
        let json = util::output(
            Command::new(&agent)
                .args(["inspect", "--json"])
                .arg(&binary),
        )
        .with_context(|| format!("gostray inspect {}", binary.display()))?;
        let report: Value = serde_json::from_str(&json)?;
        if report["layout"]["source"] != "dwarf" {
            bail!(
                "{}: layout not read from DWARF: {}",
                binary.display(),
                report["layout"]
            );
        }
        let version = report["go_version"]
            .as_str()
            .and_then(|v| v.split(' ').next())
            .context("no go_version in the report")?
            .to_string();
        let layout: BTreeMap<&str, Value> = ["g", "hchan", "waitq", "sudog"]
            .into_iter()
            .map(|k| (k, report[k].clone()))
            .collect();
        eprintln!("    {version}: g.goid at {}", report["g"]["goid"]);
        table.insert(version, layout);
    }
    let path = util::root().join(TABLE);
    std::fs::write(&path, serde_json::to_string_pretty(&table)? + "\n")?;
    eprintln!("==> wrote {} ({} Go releases)", path.display(), table.len());
    Ok(())
}

/// The agent, built without its eBPF object (inspect does not need it).
fn build_inspector() -> anyhow::Result<std::path::PathBuf> {
    let t = util::step("building gostray for inspect");
    util::run(build::host_cargo().args(["build", "--quiet", "--package", "gostray"]))?;
    util::done(t);
    Ok(util::root().join("target/debug/gostray"))
}
