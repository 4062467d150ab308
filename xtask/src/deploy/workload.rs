//! The end to end's workloads: copies of the Go fixtures under names unique
//! to this run, and the spawner driven over its stdin.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{ChildStdin, ChildStdout, Command, Stdio},
};

use anyhow::{bail, Context};

use crate::util::Guard;

pub(super) const DEMO: &str = "demo-1.27";
pub(super) const SPAWNER: &str = "spawner-1.27";
/// Dies of the death named on its command line (alerts.rs).
pub(super) const DEATHS: &str = "deaths-1.27";
/// The spawner again, run as the container of a pod (pod.rs).
pub(super) const CART: &str = "cart-1.27";

/// The executable name a workload runs under here: its fixture name made
/// unique to this run. Whole-host mode sees every process on the machine,
/// and another test run's fixtures (kernel tests, another worktree's
/// end-to-end) must be neither watched nor alerted on here.
pub(super) fn exe(fixture: &str) -> String {
    format!("{fixture}-e2e{}", std::process::id())
}

/// A copy of `fixtures/<name>` in `work`, under its run's name.
pub(super) fn copy_as_exe(fixtures: &Path, name: &str, work: &Path) -> anyhow::Result<PathBuf> {
    copy_fixture_as(fixtures, name, name, work)
}

/// A copy of `fixtures/<fixture>` in `work`, under the run's name for `name`.
pub(super) fn copy_fixture_as(
    fixtures: &Path,
    fixture: &str,
    name: &str,
    work: &Path,
) -> anyhow::Result<PathBuf> {
    let to = work.join(exe(name));
    std::fs::copy(fixtures.join(fixture), &to).with_context(|| format!("copying {fixture}"))?;
    Ok(to)
}

/// The spawner fixture, driven over stdin.
pub(super) struct Spawner {
    guard: Guard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Spawner {
    pub(super) fn start(binary: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut s = Self {
            guard: Guard(child),
            stdin,
            stdout,
        };
        s.expect("ready")?;
        Ok(s)
    }

    fn expect(&mut self, prefix: &str) -> anyhow::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("spawner closed its output before {prefix:?}");
            }
            if line.starts_with(prefix) {
                return Ok(());
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    pub(super) fn spawn(&mut self, exiting: u32, blocking: u32) -> anyhow::Result<()> {
        writeln!(self.stdin, "spawn {exiting} {blocking}")?;
        self.stdin.flush()?;
        self.expect("done")
    }
}
