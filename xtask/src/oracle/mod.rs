//! `cargo xtask oracle`: scores the agent's leak verdicts against the leak
//! cases that ship with the Go toolchain.
//!
//! `$GOROOT/src/runtime/testdata/testgoroutineleakprofile/` holds small
//! programs (micro cases, common patterns, and the `GoKer` kernels of real
//! bugs) and `runtime/goroutineleakprofile_test.go` lists, as regular
//! expressions, the leaks each must show. Each case is built with a main of
//! our own (`--runner`: `upstream` calls the case from `main`, as the
//! runtime's own test does; `wrapped` runs it in a goroutine that returns)
//! that then stays alive, the agent watches it, and its `leak` groups are
//! matched against the list. The same
//! cases also print the runtime's own GC-based leak profile, scored the same
//! way, as the anchor. Once the agent's verdicts are read, each of the
//! agent's processes is asked for the runtime's leak profile too
//! (`same.rs`): the goroutines the agent calls leaked must be among those
//! the runtime marks leaked in the same process.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};
use regex::Regex;

use self::{
    cases::{parse_cases, Case, Program},
    report::{pct, same_totals, table, totals},
    run::{build_program, http_get, run_batch, wait_for},
};

mod cases;
mod report;
mod run;
mod same;
pub use self::report::SameTotals;
use crate::{tools::GoRelease, util};

#[derive(clap::Args, Clone)]
pub struct OracleArgs {
    /// Go release line to build the cases with (must ship the testdata: 1.26+).
    #[arg(long, default_value = "1.27")]
    pub go: String,
    /// Which cases: `all`, or `core` (the micro cases and common patterns
    /// that are not flaky: the bounded slice `cargo xtask test` runs).
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Only cases whose name matches this regular expression.
    #[arg(long)]
    pub only: Option<String>,
    /// Cases run at once.
    #[arg(long, default_value_t = 12)]
    pub parallel: usize,
    /// How each case is called: `upstream` from `main`, which lives on (the
    /// runtime's own runner); `wrapped` from a goroutine that returns, which
    /// gives every leak an exited creator.
    #[arg(long, value_enum, default_value_t = Runner::Upstream)]
    pub runner: Runner,
    /// Write the table to docs/ORACLE-go<go>.md (`-upstream` appended for that runner).
    #[arg(long)]
    pub write: bool,
}

/// The main a case is built with (a template under xtask/go/oracle/).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// `main` calls the case, then lives on, as upstream's runner does.
    Upstream,
    /// The case runs in a goroutine that returns (the original harness).
    Wrapped,
}

impl Runner {
    fn template(self) -> &'static str {
        match self {
            Self::Upstream => "xtask/go/oracle/upstream.go.txt",
            Self::Wrapped => "xtask/go/oracle/main.go.txt",
        }
    }

    /// Appended to build directories and document names; empty for the
    /// original runner, so its paths stay as they were.
    fn suffix(self) -> &'static str {
        match self {
            Self::Upstream => "-upstream",
            Self::Wrapped => "",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Upstream => "Each case is called from `main`, as upstream's runner does, and `main` then lives on (blocked reading stdin), so the goroutines a case starts directly have a live creator.",
            Self::Wrapped => "Each case runs in a goroutine of its own that returns, then the process stays alive.",
        }
    }
}

/// What a run of the oracle found.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The expected leaks the agent found, in percent.
    pub recall: f64,
    /// The agent's leak groups that match no expected leak.
    pub false_leaks: usize,
    /// The agent's leak set against the runtime's, process by process.
    pub same: SameTotals,
}

/// Runs the oracle.
pub fn oracle(args: &OracleArgs, agent: &Path) -> anyhow::Result<Summary> {
    let release = crate::tools::GO_RELEASES
        .iter()
        .find(|r| r.line == args.go)
        .copied()
        .with_context(|| format!("Go {} is not in the toolchain list", args.go))?;
    let go = GoRelease::ensure(&release)?;
    // The cases and their expectations ship with Go ≥ 1.26; older
    // toolchains build the newest toolchain's copy.
    let newest = GoRelease::ensure(&crate::tools::GO_NEWEST)?;
    let goroot = newest
        .parent()
        .and_then(Path::parent)
        .context("GOROOT")?
        .to_path_buf();
    let testdata = goroot.join("src/runtime/testdata/testgoroutineleakprofile");
    let test_file = goroot.join("src/runtime/goroutineleakprofile_test.go");
    if !testdata.exists() || !test_file.exists() {
        bail!(
            "Go {} ships no goroutine leak cases",
            crate::tools::GO_NEWEST.line
        );
    }
    let cases = selected_cases(args, &test_file)?;
    let out = util::root().join(format!(
        "target/oracle/go-{}{}",
        args.go,
        args.runner.suffix()
    ));
    std::fs::create_dir_all(&out)?;
    let t = util::step(&format!(
        "building the leak cases with Go {} ({:?} runner)",
        args.go, args.runner
    ));
    let goker = cases.iter().any(|c| c.program == Program::Goker);
    let exes = build_programs(&go, &testdata, &out, goker, args.runner)?;
    util::done(t);

    let port = 9990;
    let leak_after = Duration::from_secs(2);
    let mut agent_proc = start_agent(agent, port, &exes)?;
    let t = util::step(&format!(
        "running {} cases, {} at a time",
        cases.len(),
        args.parallel
    ));
    let mut outcomes = Vec::new();
    for batch in cases
        .iter()
        .collect::<Vec<_>>()
        .chunks(args.parallel.max(1))
    {
        outcomes.extend(run_batch(batch, &exes, port, leak_after));
        if matches!(agent_proc.0.try_wait(), Ok(Some(_))) {
            bail!("the agent exited during the oracle");
        }
    }
    util::done(t);
    let version = util::output(Command::new(&go).arg("version")).unwrap_or_default();
    let version = version
        .split_whitespace()
        .nth(2)
        .unwrap_or(&args.go)
        .trim_start_matches("go")
        .to_string();
    let report = table(&outcomes, &version);
    println!("{report}");
    if args.write {
        write_doc(args, &report)?;
    }
    let (e, f, x) = totals(&outcomes, |o| &o.agent);
    Ok(Summary {
        recall: pct(f, e),
        false_leaks: x,
        same: same_totals(&outcomes),
    })
}

/// The cases `args` asks for, with their expectations.
fn selected_cases(args: &OracleArgs, test_file: &Path) -> anyhow::Result<Vec<Case>> {
    let mut cases = parse_cases(&std::fs::read_to_string(test_file)?);
    if args.suite == "core" {
        cases.retain(|c| c.program == Program::Main && !c.flaky);
    }
    if let Some(only) = &args.only {
        let re = Regex::new(only)?;
        cases.retain(|c| re.is_match(&c.name));
    }
    Ok(cases)
}

/// The agent watching every case program, ready.
fn start_agent(
    agent: &Path,
    port: u16,
    exes: &HashMap<&'static str, PathBuf>,
) -> anyhow::Result<util::Guard> {
    let mut agent_cmd = Command::new(agent);
    agent_cmd.args([
        "run",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--leak-after",
        "2s",
        "--scan-interval",
        "500ms",
        "--rescan-interval",
        "200ms",
        "--log",
        "warn",
    ]);
    for key in ["main", "goker"] {
        if let Some(exe) = exes.get(key) {
            agent_cmd.arg("--binary").arg(exe);
        }
    }
    let agent_proc = util::Guard(agent_cmd.spawn().context("starting the agent")?);
    if !wait_for(Duration::from_secs(30), || {
        http_get(port, "/readyz").is_some_and(|b| b.starts_with("ready"))
    }) {
        bail!("the agent did not become ready");
    }
    Ok(agent_proc)
}

/// Builds the agent's and the anchor's program for the runtime's cases,
/// and for the `GoKer` kernels when `goker`, keyed as `run_batch` reads them.
fn build_programs(
    go: &Path,
    testdata: &Path,
    out: &Path,
    goker: bool,
    runner: Runner,
) -> anyhow::Result<HashMap<&'static str, PathBuf>> {
    let mut programs = vec![
        ("main", Program::Main, false),
        ("main-anchor", Program::Main, true),
    ];
    if goker {
        programs.extend([
            ("goker", Program::Goker, false),
            ("goker-anchor", Program::Goker, true),
        ]);
    }
    programs
        .into_iter()
        .map(|(key, program, anchor)| {
            Ok((
                key,
                build_program(go, testdata, out, program, anchor, runner)?,
            ))
        })
        .collect()
}

/// Writes the table to docs/ORACLE-go<go>[-upstream].md.
fn write_doc(args: &OracleArgs, report: &str) -> anyhow::Result<()> {
    let date = util::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let doc = format!(
        "# Oracle: gostray against the Go runtime's goroutine leak cases\n\nRun on {} with `cargo xtask oracle --go {} --runner {} --write` (--leak-after 2s). {} In the agent's build the cases ask for the plain goroutine profile, so the runtime marks no goroutine leaked before the agent's verdicts are read, and `os.Exit(0)` becomes a sleep, so the process stays to be watched. The runtime column is the runtime's own GC-based detector on the unmodified cases, in a separate run (Go ≥ 1.26 only). Before Go 1.20 the runtime names every sync wait `semacquire`: such a leak matches an expectation of a sync wait at the same function.\n\nThe same-process columns compare, in the agent's own process, the goroutines the agent calls leaked (A: the members of its leak groups, that is the goroutines of the profile with the group's wait reason, `go` statement line and blocking line) with those the runtime's `goroutineleak` profile marks leaked (R). Once the agent's verdicts are read, the runner's `main` is asked for that profile (debug=2: every goroutine, the leaked ones marked), and again while a request marks more goroutines, at most {} times: each request runs one leak-detection GC, a goroutine once marked stays marked, and R is read from the last (the first GC can leave leaked goroutines unmarked: the column shows both counts when they differ). Goals: A ⊆ R (|A∖R| = 0) and |A∩R|/|R| ≥ 95%. n/a: the toolchain has no such profile (before Go 1.26, and 1.26 without GOEXPERIMENT=goroutineleakprofile), or the case never came back to read the request (`SelectNoCasesMain` parks `main` for good under `upstream`).\n\n{report}",
        date.trim(),
        args.go,
        format!("{:?}", args.runner).to_lowercase(),
        args.runner.describe(),
        same::MAX_LEAK_GCS,
    );
    std::fs::write(
        util::root().join(format!(
            "docs/ORACLE-go{}{}.md",
            args.go,
            args.runner.suffix()
        )),
        doc,
    )?;
    Ok(())
}
