//! Offline checks of deploy/: the rules with promtool, the chart and the
//! manifests with the Helm engine and the Kubernetes schemas, the CRD
//! objects with minimal schemas (deploy/tests/objects.py).

use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context};

use super::{expressions, Tally};
use crate::{tools, util::root};

/// The oldest Kubernetes the manifests target (securityContext.appArmorProfile
/// is 1.30), and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

pub fn check(tally: &mut Tally, python: &Path, out: &Path) -> anyhow::Result<()> {
    let deploy = root().join("deploy");
    let rules = deploy.join("prometheus/rules.yaml");
    tally.check("promtool check rules", || {
        captured(
            Command::new(tools::PROMTOOL)
                .arg("check")
                .arg("rules")
                .arg(&rules),
        )
        .map(drop)
    });
    tally.check(
        "promtool test rules (each alert fires, and stays quiet)",
        || {
            captured(
                Command::new(tools::PROMTOOL)
                    .args(["test", "rules"])
                    .arg(deploy.join("prometheus/rules.test.yaml")),
            )
            .map(drop)
        },
    );
    tally.check(
        "dashboards: JSON, datasource variable, known variables",
        || {
            let n = expressions::dashboards(&deploy.join("grafana"))?.len();
            if n < 20 {
                bail!("only {n} expressions in the dashboards");
            }
            Ok(())
        },
    );

    // Renders the chart into `out` and checks what no Kubernetes schema covers.
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let report = Command::new("python3")
        .arg(deploy.join("tests/objects.py"))
        .arg(out)
        .env("PYTHONPATH", python)
        .output()
        .context("running deploy/tests/objects.py")?;
    let stdout = String::from_utf8_lossy(&report.stdout);
    print!("{stdout}");
    let counted = stdout.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("objects: ")?;
        let (p, f) = rest.split_once(" passed, ")?;
        Some((
            p.parse::<u64>().ok()?,
            f.strip_suffix(" failed")?.parse::<u64>().ok()?,
        ))
    });
    match counted {
        Some((p, f)) if report.status.success() || f > 0 => {
            tally.passed += p;
            tally.failed += f;
        }
        _ => tally.check("deploy/tests/objects.py ran", || {
            bail!("{}", String::from_utf8_lossy(&report.stderr))
        }),
    }

    let mut files: Vec<_> = fs::read_dir(deploy.join("kubernetes"))?
        .chain(fs::read_dir(out)?)
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for version in KUBERNETES_VERSIONS {
        tally.check(
            &format!(
                "kubernetes-validate --strict, Kubernetes {version}: {} manifests and rendered charts",
                files.len()
            ),
            || {
                let out = captured(
                    Command::new("python3")
                        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
                        .args(&files)
                        .env("PYTHONPATH", python),
                )?;
                // CRD kinds have no schema there; objects.py checked them.
                let passed = out.lines().filter(|l| l.contains(" passed for resource ")).count();
                if passed < 20 {
                    bail!("only {passed} objects validated:\n{out}");
                }
                Ok(())
            },
        );
    }
    Ok(())
}

/// Runs `cmd`; its output on success, an error holding it otherwise.
fn captured(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {line}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{line} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}
