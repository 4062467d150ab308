//! The project's commands beyond plain cargo: `cargo xtask --help`.

mod build;
mod demo;
mod deploy;
mod tools;
mod util;

use std::process::{Command, ExitCode};

use anyhow::bail;
use clap::{Parser, Subcommand};

/// gostray's project commands. Each installs what it is missing first.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchains: rust-src for nightly, bpf-linker, Go for fixtures.
    Setup,
    /// Build the eBPF programs and the agent.
    Build {
        /// Build the agent with optimisations.
        #[arg(long)]
        release: bool,
    },
    /// Build and run the agent (as root) with the given arguments:
    /// `cargo xtask run -- run --pid 4242`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Start a leaking Go demo service under the agent and show what it sees.
    Demo(demo::DemoArgs),
    /// Only the deploy checks (rules, chart, manifests, capabilities, end to end).
    TestDeploy,
    /// Run every test: unit tests, kernel tests (root) against Go fixtures,
    /// then the deploy checks (rules, chart, manifests, capabilities, and a
    /// real Prometheus end to end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => {
            tools::ensure_ebpf_toolchain()?;
            for release in tools::GO_RELEASES {
                release.ensure()?;
            }
            Ok(())
        }
        Task::Build { release } => build::build_agent(release).map(|_| ()),
        Task::Run { args } => {
            let agent = build::build_agent(true)?;
            util::run(Command::new(agent).args(args))
        }
        Task::Demo(args) => demo::demo(&args),
        Task::Test { args } => test(&args),
        Task::TestDeploy => {
            let fixtures = build::build_fixtures(&[tools::GO_NEWEST], &["spawner", "demo"])?;
            let (passed, failed) = deploy::test(&fixtures)?;
            println!("deploy checks: {passed} passed, {failed} failed");
            if failed > 0 {
                bail!("{failed} deploy checks failed");
            }
            Ok(())
        }
    }
}

fn test(args: &[String]) -> anyhow::Result<()> {
    if util::is_ci() && !util::is_root() {
        bail!("CI=true but not root: the kernel tests cannot run, and must not be skipped");
    }
    build::build_ebpf()?;
    let fixtures = build::build_fixtures(&tools::GO_RELEASES, &build::FIXTURES)?;
    let t = util::step("running the tests (unit, then kernel)");
    let totals = util::run_counting_tests(
        build::host_cargo()
            .args(["test", "--workspace"])
            .args(args)
            .env("GOSTRAY_FIXTURES", &fixtures)
            .env(
                "GOSTRAY_GO_LINES",
                tools::GO_RELEASES.map(|r| r.line).join(","),
            ),
    );
    util::done(t);
    let (passed, failed) = totals?;
    let (deploy_passed, deploy_failed) = deploy::test(&fixtures)?;
    println!("deploy checks: {deploy_passed} passed, {deploy_failed} failed");
    let (passed, failed) = (passed + deploy_passed, failed + deploy_failed);
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} deploy checks failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
