//! `cargo xtask offsets`: regenerates `agent/src/gobin/offsets.json`, the
//! struct layouts the agent uses for binaries without DWARF. A probe
//! program is compiled with every toolchain of the matrix, for amd64 and
//! cross-compiled for arm64, and its DWARF is read by the agent's own
//! code, so the table is never typed by hand and always matches the
//! reader that uses it.
//!
//! The reading is done by an ignored unit test of the agent
//! (`gobin::heaplayout_tests::generate_offsets_table`) rather than by
//! `gostray inspect --json`: the table also holds the heap walker's
//! layouts, which inspect does not print (its output is kept byte for byte).

use anyhow::Context;

use crate::{build, tools, util};

/// Where the generated table lives (embedded with `include_str!`).
const TABLE: &str = "agent/src/gobin/offsets.json";
/// The generator, a test of the agent's binary that is skipped otherwise.
const GENERATOR: &str = "gobin::heaplayout_tests::generate_offsets_table";

pub fn offsets() -> anyhow::Result<()> {
    let out = build::fixtures_dir().join("offsets");
    std::fs::create_dir_all(&out)?;
    let mut probes = Vec::new();
    for release in tools::GO_RELEASES {
        let go = release.ensure()?;
        for goarch in [None, Some("arm64")] {
            let binary = out.join(match goarch {
                None => format!("offsets-{}", release.line),
                Some(arch) => format!("offsets-{arch}-{}", release.line),
            });
            build::go_build_for(&go, "offsets", &binary, &[], goarch).with_context(|| {
                format!("building the probe with Go {} for {goarch:?}", release.line)
            })?;
            probes.push(binary.display().to_string());
        }
    }
    let path = util::root().join(TABLE);
    let t = util::step("reading the probes' DWARF with the agent's reader");
    util::run(
        build::host_cargo()
            .args([
                "test",
                "--quiet",
                "--package",
                "gostray",
                "--bin",
                "gostray",
            ])
            .args([GENERATOR, "--", "--ignored", "--exact", "--nocapture"])
            .env("GOSTRAY_OFFSETS_PROBES", probes.join(","))
            .env("GOSTRAY_OFFSETS_OUT", &path),
    )?;
    util::done(t);
    eprintln!(
        "==> wrote {} ({} probes: each Go release for amd64 and arm64)",
        path.display(),
        probes.len()
    );
    Ok(())
}
