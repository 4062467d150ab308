//! `cargo xtask test`, deploy part: everything under deploy/ checked offline.
//!
//! - objects: promtool on the rules, the Helm chart rendered by Helm's own
//!   engine, manifests and rendered output against the Kubernetes schemas,
//!   ServiceMonitor/PrometheusRule against minimal schemas.
//! - caps: the least-privilege capability set, proven sufficient and each
//!   capability necessary (root).
//! - e2e: a real Prometheus scraping the real agent watching Go workloads:
//!   every dashboard and rule expression (root); targets and pod: the
//!   target labels of a cluster and a process in a stand-in pod;
//! - labels: no series carries the agent pod's labels (issue 15, bug 1);
//! - alerts: on that Prometheus, each alert provoked and seen firing.
//! - image: the container image built offline (static agent, buildah,
//!   `FROM scratch`) and run as the `DaemonSet` runs it (root).
//! - unattachable: a Go program the agent must refuse, for the
//!   attach-failure alert.
//! - pending: the metrics not exported yet, in one list.
//!
//! Each check prints one line; the counts join the test totals.

mod alerts;
mod caps;
mod e2e;
mod expressions;
mod http;
mod image;
mod labels;
mod objects;
mod pending;
mod pod;
mod prometheus;
mod targets;
mod unattachable;
mod workload;

use std::path::Path;

use anyhow::bail;

use crate::{
    build, tools,
    util::{done, is_ci, is_root, root, step},
};

/// Passed and failed checks.
#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    /// Runs one named check and prints its outcome.
    pub fn check(&mut self, name: &str, f: impl FnOnce() -> anyhow::Result<()>) {
        match f() {
            Ok(()) => {
                self.passed += 1;
                println!("deploy: {name} ... ok");
            }
            Err(e) => {
                self.failed += 1;
                println!("deploy: {name} ... FAILED: {e:#}");
            }
        }
    }
}

/// Runs every deploy check; (passed, failed).
pub fn test(fixtures: &Path) -> anyhow::Result<(u64, u64)> {
    tools::ensure_prometheus()?;
    let python = tools::ensure_deploy_python()?;
    // Fresh every run: an old TSDB would answer with the last run's data.
    let work = root().join("target/deploy-test");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut tally = Tally::default();

    let t = step("deploy: rules, chart, manifests (offline)");
    objects::check(&mut tally, &python, &work.join("rendered"))?;
    done(t);

    if !is_root() {
        if is_ci() {
            bail!("CI=true but not root: the deploy end-to-end tests cannot run");
        }
        eprintln!("SKIPPED deploy capability and end-to-end tests: not root");
        return Ok((tally.passed, tally.failed));
    }
    let agent = build::build_agent(false)?;
    let t = step("deploy: least-privilege capabilities (real attach)");
    caps::check(&mut tally, &agent, fixtures)?;
    done(t);
    let t = step("deploy: end to end (agent, Go workloads, Prometheus, alerts)");
    e2e::run(&mut tally, &agent, fixtures, &work, &python)?;
    done(t);
    let t = step("deploy: the image, built offline and run as the DaemonSet runs it");
    image::check(&mut tally, fixtures);
    done(t);
    Ok((tally.passed, tally.failed))
}
