//! `cargo xtask servers`: Go servers nobody here wrote, as Debian builds
//! them in bookworm (Go 1.19) and trixie (Go 1.24), each under a load of
//! our own on loopback and watched by an agent of its own for a while.
//! Fails on any `leak` verdict; lists every `suspect` with its evidence
//! for a person to judge. `--write` puts the table in docs/SERVERS.md.

mod catalog;
mod debian;
mod encode;
mod http;
mod load;
mod report;
mod requests;
mod start;
mod watch;

use std::{
    env, fs,
    path::{Path, PathBuf},
    sync::{atomic::Ordering::Relaxed, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;

use catalog::Kind;
use debian::Suite;
use http::Counts;
use load::Load;
use start::{start_suite, Ports};
use watch::{Agent, Seen};

use crate::{
    build,
    util::{done, step, Guard},
};

#[derive(clap::Args)]
pub struct ServersArgs {
    /// How long the load runs under the agents.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Debian suites whose builds run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "bookworm,trixie")]
    suite: Vec<Suite>,
    /// Only these servers, comma-separated (default: every one).
    #[arg(long, value_delimiter = ',')]
    only: Vec<Kind>,
    /// The agents' --leak-after.
    #[arg(long, default_value = "30s")]
    leak_after: String,
    /// Write the results to docs/SERVERS.md.
    #[arg(long)]
    write: bool,
}

/// One server of one suite, its load's counts and what its agent saw.
pub struct Watched {
    pub suite: Suite,
    pub kind: Kind,
    /// Its Debian package's version.
    pub version: String,
    pub counts: Arc<Counts>,
    pub seen: Seen,
    /// Set if the server or its agent stopped before the end.
    pub died: Option<String>,
    /// Its configuration, data and logs (the agent's too).
    pub folder: PathBuf,
    server: Guard,
    agent: Option<Agent>,
}

impl Watched {
    /// `suite server`, as the report names it.
    pub fn name(&self) -> String {
        format!("{} {}", self.suite.name(), self.kind.name())
    }
}

/// How often the agents' reports are read.
const POLL: Duration = Duration::from_secs(10);

/// The slice of this suite the test command runs: every server of both
/// suites for two minutes, agents at `--leak-after 20s` so that each walks
/// its heap a few times. Returns (passed, failed) as one check.
pub fn slice() -> (u64, u64) {
    let args = ServersArgs {
        minutes: 2,
        suite: vec![Suite::Bookworm, Suite::Trixie],
        only: Vec::new(),
        leak_after: "20s".into(),
        write: false,
    };
    let t = crate::util::step(
        "Debian's Go servers under load, two minutes (slice of `cargo xtask servers`)",
    );
    let result = servers(&args);
    crate::util::done(t);
    match result {
        Ok(()) => (1, 0),
        Err(e) => {
            eprintln!("servers slice: FAILED: {e:#}");
            (0, 1)
        }
    }
}

pub fn servers(args: &ServersArgs) -> anyhow::Result<()> {
    let began = Instant::now();
    let kinds: Vec<Kind> = catalog::ALL
        .into_iter()
        .filter(|k| args.only.is_empty() || args.only.contains(k))
        .collect();
    let mut suites = args.suite.clone();
    suites.sort();
    suites.dedup();
    let packages: Vec<&str> = kinds.iter().flat_map(|k| k.packages()).copied().collect();
    let trees = suites
        .iter()
        .map(|&s| Ok((s, debian::fetch(s, &packages)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The agent as the image ships it: static (musl), optimised.
    let agent = build::build_static_agent(build::Arch::host())?;
    let dir = env::temp_dir().join("gostray-servers");
    let _ = fs::remove_dir_all(&dir);
    let mut load = Load::default();
    let mut watched = Vec::new();
    let mut ports = Ports::new(19000, 20000);
    for (suite, tree) in &trees {
        watched.extend(start_suite(
            *suite, tree, &kinds, &dir, &mut ports, &mut load,
        )?);
    }
    start_agents(&mut watched, &agent, &args.leak_after)?;
    run(&mut watched, args.minutes);
    drop(load);
    for w in &mut watched {
        w.agent = None;
    }
    let minutes = began.elapsed().as_secs_f64() / 60.0;
    let text = report::markdown(&watched, &trees, args, minutes);
    println!("\n{text}");
    if args.write {
        report::write(&text)?;
    }
    let leaks: usize = watched.iter().map(|w| w.seen.leaks().count()).sum();
    let died: Vec<String> = watched
        .iter()
        .filter_map(|w| Some(format!("{}: {}", w.name(), w.died.as_ref()?)))
        .collect();
    drop(watched);
    eprintln!(
        "    servers, agents and load stopped; logs in {}",
        dir.display()
    );
    if leaks > 0 {
        bail!("{leaks} leak group(s) on Debian's servers (listed above)");
    }
    if !died.is_empty() {
        bail!("stopped before the end: {}", died.join("; "));
    }
    Ok(())
}

/// An agent of its own for each server, on ports 9700-9799.
fn start_agents(watched: &mut [Watched], agent: &Path, leak_after: &str) -> anyhow::Result<()> {
    let t = step(&format!(
        "starting an agent per server (--leak-after {leak_after})"
    ));
    let mut ports = Ports::new(9700, 9800);
    for w in watched {
        let log = w.folder.join("agent.log");
        w.agent = Some(Agent::start(
            agent,
            w.server.0.id(),
            ports.take()?,
            leak_after,
            &log,
        )?);
    }
    done(t);
    Ok(())
}

/// Polls every agent each [`POLL`] for `minutes`, a status line a minute.
fn run(watched: &mut [Watched], minutes: u64) {
    let t = step(&format!(
        "load and agents for {minutes} min (reports every {} s)",
        POLL.as_secs()
    ));
    let began = Instant::now();
    let end = began + Duration::from_mins(minutes);
    let mut next_status = began + Duration::from_mins(1);
    loop {
        for w in watched.iter_mut() {
            poll(w);
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_status {
            eprintln!(
                "    [{}/{minutes} min] {}",
                (now - began).as_secs() / 60,
                status(watched)
            );
            next_status += Duration::from_mins(1);
        }
        thread::sleep(POLL.min(end - now));
    }
    done(t);
}

/// Reads one agent's report and heap walks into its server's record.
fn poll(w: &mut Watched) {
    if w.died.is_some() {
        return;
    }
    if let Ok(Some(status)) = w.server.0.try_wait() {
        w.died = Some(format!("the server exited ({status})"));
        return;
    }
    let Some(agent) = w.agent.as_mut() else {
        return;
    };
    if agent.exited() {
        w.died = Some("its agent exited".into());
        return;
    }
    match agent.report() {
        Ok(report) => w.seen.record(&report),
        Err(_) => w.seen.failed_polls += 1,
    }
    if let Ok(metrics) = agent.metrics() {
        w.seen.record_metrics(&metrics);
    }
}

/// One line: per suite the goroutines and groups now, then the load.
fn status(watched: &[Watched]) -> String {
    let mut parts = Vec::new();
    let mut suites: Vec<Suite> = watched.iter().map(|w| w.suite).collect();
    suites.dedup();
    for suite in suites {
        let of: Vec<&Watched> = watched.iter().filter(|w| w.suite == suite).collect();
        let now = |verdict: &str| {
            of.iter()
                .flat_map(|w| w.seen.groups.values())
                .filter(|g| g.at_end && g.verdict == verdict)
                .count()
        };
        parts.push(format!(
            "{}: {}/{} up, {} goroutines, {} leak / {} suspect groups",
            suite.name(),
            of.iter().filter(|w| w.died.is_none()).count(),
            of.len(),
            of.iter().map(|w| w.seen.goroutines).sum::<u64>(),
            now("leak"),
            now("suspect"),
        ));
    }
    let ok: u64 = watched.iter().map(|w| w.counts.ok.load(Relaxed)).sum();
    let failed: u64 = watched.iter().map(|w| w.counts.failed.load(Relaxed)).sum();
    parts.push(format!("load: {ok} requests, {failed} failed"));
    parts.join(" | ")
}
