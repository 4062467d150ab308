//! `cargo xtask bench`: what the agent costs the watched service and the
//! node, as ratios to bare runs made side by side, and the floor any
//! uprobe-based agent would pay. Writes `docs/BENCHMARKS.md`.

mod agentcost;
mod budget;
mod heapwalk;
mod http;
mod micro;
mod overhead;
mod proc;
mod report;
mod stats;
mod timeline;
mod window;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use micro::{Ctx, Setup};
use stats::Series;

use anyhow::Context;

use crate::{build, tools, util};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Repetitions of every measured run.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Go release lines to build the workloads with.
    #[arg(long, value_delimiter = ',', default_value = "1.24,1.27")]
    go: Vec<String>,
    /// A small, fast run proving the harness end to end (what the test
    /// command runs); writes to target/bench-smoke.md instead of docs/.
    #[arg(long)]
    smoke: bool,
    /// Only the heap-walk rows (256 MiB and 1 GiB heaps), replacing that
    /// section of docs/BENCHMARKS.md and leaving the rest as it was.
    #[arg(long, conflicts_with = "smoke")]
    walks_only: bool,
    /// Only this section, replacing it in docs/BENCHMARKS.md and leaving
    /// the rest as it was (`walks` is `--walks-only`).
    #[arg(long, value_enum, conflicts_with = "smoke")]
    only: Option<Only>,
}

/// The sections that can be measured alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// The overhead budget: the workloads after it has acted, its
    /// estimate against the measured cost, the quiet → hot → quiet timeline.
    Budget,
    /// The heap walks.
    Walks,
}

/// One micro workload under every setup.
pub struct MicroResult {
    pub mode: &'static str,
    pub hits: f64,
    /// ns per hit inside the BPF programs (kernel `run_time_ns`).
    pub prog_ns: f64,
    pub bare: Series,
    pub agent: Series,
    pub floor: Series,
    pub bpftrace: Series,
    /// The agent with one probe group each (see [`GROUPS`]).
    pub groups: Vec<Series>,
    /// Agent CPU (percent of one core) per 100k events/s, and events lost.
    pub cpu_per_100k: Series,
    pub events_per_s: Series,
    pub lost: f64,
}

pub struct HttpResult {
    pub close: bool,
    pub bare: Vec<http::Load>,
    pub agent: Vec<http::Load>,
    pub floor: Vec<http::Load>,
    /// The agent with one probe group each (see [`GROUPS`]).
    pub groups: Vec<Vec<http::Load>>,
}

/// The optional probe groups, each measured alone (`--probes`), and `none`:
/// the scan-only mode.
pub const GROUPS: [&str; 4] = ["lifecycle", "park", "misuse", "none"];

pub struct LineResult {
    pub go: String,
    pub micro: Vec<MicroResult>,
    pub http: Vec<HttpResult>,
}

pub struct Sizes {
    n: u64,
    wrk_seconds: u64,
    parked: Vec<u64>,
    /// Heap sizes walked, MiB.
    heaps: Vec<u64>,
    /// The overhead-budget rows' warm-up and window, and the timeline's phases.
    budget: window::Timing,
    phases: &'static str,
}

/// The slice of the bench the test command runs: every workload, setup and
/// agent measurement once at a small size, proving the harness works end to
/// end. It asserts nothing about the figures (the machine is shared).
/// Returns (passed, failed) as one check.
pub fn smoke() -> (u64, u64) {
    let args = BenchArgs {
        reps: 1,
        go: vec![tools::GO_NEWEST.line.to_string()],
        smoke: true,
        walks_only: false,
        only: None,
    };
    let t = util::step("bench smoke run (harness only, no figure is checked)");
    let result = bench(&args);
    util::done(t);
    match result {
        Ok(()) => (1, 0),
        Err(e) => {
            println!("bench smoke run FAILED: {e:#}");
            (0, 1)
        }
    }
}

pub fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    if !util::is_root() {
        anyhow::bail!("the bench attaches eBPF probes: run it as root");
    }
    for (tool, package) in [("wrk", "wrk"), ("bpftrace", "bpftrace")] {
        if util::output(std::process::Command::new("which").arg(tool)).is_none() {
            tools::apt_install(&[package])?;
        }
    }
    tools::ensure_prometheus()?;
    let sizes = if args.smoke {
        Sizes {
            n: 20_000,
            wrk_seconds: 1,
            parked: vec![10_000],
            heaps: vec![16],
            budget: window::Timing {
                warmup: Duration::from_secs(2),
                settle: Duration::from_secs(1),
                window: Duration::from_secs(1),
            },
            phases: timeline::SMOKE_PHASES,
        }
    } else {
        Sizes {
            n: 1_000_000,
            wrk_seconds: 3,
            parked: vec![10_000, 100_000, 1_000_000],
            heaps: vec![256, 1024],
            budget: window::Timing {
                warmup: Duration::from_secs(11),
                settle: Duration::from_secs(3),
                window: Duration::from_secs(5),
            },
            phases: timeline::PHASES,
        }
    };
    if args.walks_only || args.only == Some(Only::Walks) {
        return walks_only(&sizes);
    }
    if args.only == Some(Only::Budget) {
        return budget_only(args, &sizes);
    }
    let reps = if args.smoke { 1 } else { args.reps.max(1) };
    // The smoke run takes the debug agent the test command has just built;
    // figures are only ever taken from the release build.
    let agent = build::build_agent(!args.smoke)?;
    let ctx = Ctx { agent: &agent };
    let out = util::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let mut lines = Vec::new();
    for line in &args.go {
        let (micro_bin, http_bin) = bench_programs(line, &out)?;
        let t = util::step(&format!("measuring with Go {line} ({reps} repetitions)"));
        let micro = measure_micro(&ctx, &micro_bin, &sizes, reps, args.smoke)?;
        let http = measure_http(&agent, &http_bin, &sizes, reps)?;
        util::done(t);
        lines.push(LineResult {
            go: line.clone(),
            micro,
            http,
        });
    }
    let t = util::step("measuring the agent itself");
    let newest = out.join(format!(
        "bench-micro-{}",
        args.go.last().map_or("1.27", String::as_str)
    ));
    let mut memory = Vec::new();
    for &n in &sizes.parked {
        memory.push(agentcost::memory(&agent, &newest, n)?);
    }
    let attach = measure_attach(&agent, &newest, &out, reps)?;
    let walks = measure_walks(&agent, &out, &sizes)?;
    util::done(t);
    let budget = measure_budget(&agent, &out, args, &sizes, reps)?;
    let text = report::render(&lines, &memory, &attach, &walks, &budget, reps);
    println!("{text}");
    let path: PathBuf = if args.smoke {
        out.join("bench-smoke.md")
    } else {
        util::root().join("docs/BENCHMARKS.md")
    };
    std::fs::create_dir_all(path.parent().expect("parent"))?;
    std::fs::write(&path, text)?;
    eprintln!("==> wrote {}", path.display());
    Ok(())
}

/// Milliseconds from exec to attached, for the small workload binary and
/// for Prometheus, each with the default discovery (a /proc walk every
/// --rescan-interval, 1 s) and then the fastest walk allowed (100 ms),
/// which leaves mostly the attach work.
fn measure_attach(
    agent: &Path,
    newest: &Path,
    out: &Path,
    reps: usize,
) -> anyhow::Result<[Series; 4]> {
    let mut attach = [
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    ];
    for _ in 0..reps.min(3) {
        for (i, rescan) in ["1s", "100ms"].into_iter().enumerate() {
            let mut cmd = std::process::Command::new(newest);
            attach[i].push(agentcost::attach_latency(agent, newest, &mut cmd, rescan)?);
            let mut prom = agentcost::prometheus_command(&out.join("prometheus"))?;
            let prometheus = Path::new("/usr/bin/prometheus");
            attach[2 + i].push(agentcost::attach_latency(
                agent, prometheus, &mut prom, rescan,
            )?);
        }
    }
    Ok(attach)
}

/// `--walks-only`: measures the heap walks with the release agent and puts
/// their section, goals included, in place of the one in docs/BENCHMARKS.md.
fn walks_only(sizes: &Sizes) -> anyhow::Result<()> {
    let agent = build::build_agent(true)?;
    let out = util::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let t = util::step("measuring heap walks");
    let walks = measure_walks(&agent, &out, sizes)?;
    util::done(t);
    let (section, goals) = heapwalk::section(&walks);
    write_alone(
        "## Heap walks",
        section,
        &goals,
        "Goals (measured alone with `cargo xtask bench --walks-only`):",
    )
}

/// `--only budget`: the overhead-budget section with the release agent,
/// put in place of the one in docs/BENCHMARKS.md.
fn budget_only(args: &BenchArgs, sizes: &Sizes) -> anyhow::Result<()> {
    let agent = build::build_agent(true)?;
    let out = util::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let (section, goals) = measure_budget(&agent, &out, args, sizes, args.reps.max(1))?;
    write_alone(
        "## Overhead budget",
        section,
        &goals,
        "### Goals (measured alone with `cargo xtask bench --only budget`)",
    )
}

/// Replaces the section under `heading` in docs/BENCHMARKS.md with
/// `section`, its goals after `intro` at its end.
fn write_alone(
    heading: &str,
    mut section: String,
    goals: &[String],
    intro: &str,
) -> anyhow::Result<()> {
    let _ = write!(section, "\n{intro}\n\n");
    for g in goals {
        section.push_str(g);
        section.push('\n');
    }
    println!("{section}");
    let path = util::root().join("docs/BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path)?;
    std::fs::write(&path, report::splice(&doc, heading, &section))?;
    eprintln!("==> wrote {}", path.display());
    Ok(())
}

/// The overhead-budget rows for every Go line, the timeline on the newest,
/// as the report's section and its goals. The smoke run also checks that
/// the budget detaches lifecycle from a program spawning at full rate.
fn measure_budget(
    agent: &Path,
    out: &Path,
    args: &BenchArgs,
    sizes: &Sizes,
    reps: usize,
) -> anyhow::Result<(String, Vec<String>)> {
    let mut lines = Vec::new();
    for line in &args.go {
        let (micro_bin, http_bin) = bench_programs(line, out)?;
        let t = util::step(&format!(
            "measuring the overhead budget with Go {line} ({reps} repetitions)"
        ));
        lines.push((
            line.clone(),
            budget::measure(agent, &micro_bin, &http_bin, sizes.budget, reps)?,
        ));
        util::done(t);
    }
    let newest = args.go.last().context("no Go line to measure")?;
    let phases_bin = out.join(format!("bench-phases-{newest}"));
    build::go_build(
        &go_release(newest)?.ensure()?,
        "bench-phases",
        &phases_bin,
        &[],
    )?;
    let t = util::step(&format!("the overhead budget's timeline, {}", sizes.phases));
    let timeline = timeline::measure(agent, &phases_bin, newest, sizes.phases)?;
    util::done(t);
    if args.smoke {
        timeline::check(&timeline).context("the overhead budget under a hot spawn workload")?;
    }
    let (mut section, mut goals) = budget::section(&lines, sizes.budget);
    let (text, more) = timeline::section(&timeline);
    section.push_str(&text);
    goals.extend(more);
    Ok((section, goals))
}

fn go_release(line: &str) -> anyhow::Result<&'static tools::GoRelease> {
    tools::GO_RELEASES
        .iter()
        .find(|r| r.line == line)
        .ok_or_else(|| anyhow::anyhow!("Go {line} is not in GO_RELEASES"))
}

/// Heap walks of each size in `sizes`, three per size.
fn measure_walks(
    agent: &std::path::Path,
    out: &std::path::Path,
    sizes: &Sizes,
) -> anyhow::Result<Vec<heapwalk::Walk>> {
    let walk_bin = out.join("walkheap");
    build::go_build(&tools::GO_NEWEST.ensure()?, "walkheap", &walk_bin, &[])?;
    sizes
        .heaps
        .iter()
        .map(|&mib| heapwalk::measure(agent, &walk_bin, mib, 3))
        .collect()
}

fn measure_micro(
    ctx: &Ctx,
    bin: &std::path::Path,
    sizes: &Sizes,
    reps: usize,
    smoke: bool,
) -> anyhow::Result<Vec<MicroResult>> {
    let mut results = Vec::new();
    for mode in ["spawn", "handoff", "buffered"] {
        // A non-blocking send takes ~30 ns: 1M of them is a 30 ms window
        // that one preemption on a shared machine would dominate.
        let n = if mode == "buffered" {
            sizes.n * 20
        } else {
            sizes.n
        };
        let (hits, prog_ns) = micro::hits_per_op(ctx, bin, mode, (n / 10).max(10_000))?;
        let mut r = MicroResult {
            mode,

            hits,
            prog_ns,
            bare: Series::default(),
            agent: Series::default(),
            floor: Series::default(),
            bpftrace: Series::default(),
            groups: vec![Series::default(); GROUPS.len()],
            cpu_per_100k: Series::default(),
            events_per_s: Series::default(),
            lost: 0.0,
        };
        for _ in 0..reps {
            r.bare
                .push(micro::run(ctx, Setup::Bare, bin, mode, n)?.ns_per_op);
            let a = micro::run(ctx, Setup::Agent("all"), bin, mode, n)?;
            r.agent.push(a.ns_per_op);
            // Events as the kernel counts its probe runs: block events
            // have no counter of their own in /metrics.
            let events = hits * n as f64;
            if events >= 1.0 && a.wall_s > 0.0 {
                r.cpu_per_100k.push(a.agent_cpu_s / events * 1e5 * 100.0);
                r.events_per_s.push(events / a.wall_s);
            }
            r.lost = r.lost.max(a.lost);
            r.floor
                .push(micro::run(ctx, Setup::Floor, bin, mode, n)?.ns_per_op);
            for (series, groups) in r.groups.iter_mut().zip(GROUPS) {
                series.push(micro::run(ctx, Setup::Agent(groups), bin, mode, n)?.ns_per_op);
            }
            // bpftrace single-steps every hit (~20 µs): fewer operations.
            if mode == "spawn" && !smoke {
                r.bpftrace
                    .push(micro::run(ctx, Setup::Bpftrace, bin, mode, n / 10)?.ns_per_op);
            } else if mode == "spawn" {
                r.bpftrace
                    .push(micro::run(ctx, Setup::Bpftrace, bin, mode, n)?.ns_per_op);
            }
        }
        results.push(r);
    }
    Ok(results)
}

fn measure_http(
    agent: &std::path::Path,
    bin: &std::path::Path,
    sizes: &Sizes,
    reps: usize,
) -> anyhow::Result<Vec<HttpResult>> {
    let mut results = Vec::new();
    for close in [false, true] {
        let mut r = HttpResult {
            close,
            bare: Vec::new(),
            agent: Vec::new(),
            floor: Vec::new(),
            groups: vec![Vec::new(); GROUPS.len()],
        };
        let secs = sizes.wrk_seconds;
        let with = |probes| Some(http::With { agent, probes });
        for _ in 0..reps {
            r.bare.push(http::run(None, bin, close, secs, false)?);
            r.agent
                .push(http::run(with("all"), bin, close, secs, false)?);
            r.floor
                .push(http::run(with("all"), bin, close, secs, true)?);
            for (loads, groups) in r.groups.iter_mut().zip(GROUPS) {
                loads.push(http::run(with(groups), bin, close, secs, false)?);
            }
        }
        results.push(r);
    }
    Ok(results)
}

/// The in-process and net/http bench programs built with Go `line` in `out`.
fn bench_programs(line: &str, out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let go = go_release(line)?.ensure()?;
    let micro = out.join(format!("bench-micro-{line}"));
    let http = out.join(format!("bench-http-{line}"));
    build::go_build(&go, "bench-micro", &micro, &[])?;
    build::go_build(&go, "bench-http", &http, &[])?;
    Ok((micro, http))
}
