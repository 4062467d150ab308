//! `gostray`: the agent and its command line.

mod cli;
mod control;
mod deaths;
mod discovery;
mod gobin;
mod k8s;
mod kernel;
mod lock;
mod metrics;
mod proc;
mod reach;
mod server;
mod state;
#[cfg(test)]
mod testrng;
mod tracker;

use lock::lock;
use std::{
    process::ExitCode,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    thread,
};

use anyhow::Context;
use clap::Parser;
use cli::config::{Cli, Command, LogFormat, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let result = match cli.command {
        Command::Run(args) => run(&args),
        Command::Leaks(args) => cli::leaks::run(&args),
        Command::Inspect(args) => cli::inspect::inspect(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole chain: "what: why: cause".
            eprintln!("gostray: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, and never under NO_COLOR:
    // log files and collectors get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let binary_targets = control::validate_targets(args)?;
    if !args.whole_host() && (!args.include.is_empty() || !args.exclude.is_empty()) {
        tracing::warn!(
            "--include/--exclude apply to whole-host mode only; ignored with --pid/--binary"
        );
    }
    let missing = kernel::privileges::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "gostray needs {}; missing: {}",
            kernel::privileges::NEEDED,
            missing.join(", ")
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("gostray-http")
        .build()
        .context("starting the async runtime")?;
    // Install the handlers before anything can report ready, so a SIGTERM
    // from an orchestrator always means a clean detach.
    let signals = runtime.block_on(async { Signals::new() })?;
    let shared = Arc::new(state::Shared::new(
        args.max_goroutines as usize,
        args.max_series as usize,
    ));
    if !args.probes.lifecycle {
        lock(&shared.tracker).count_from_scans();
    }
    let listener = runtime.block_on(server::bind(args.listen))?;
    // Pod metadata first, so processes found by the first scan can be
    // labelled as soon as the cache syncs; without Kubernetes this is a no-op.
    if let Some(client) = runtime.block_on(k8s::client(args.kube_api.as_deref())) {
        // Set before any attach: a process in a container whose pod is not
        // cached yet is then labelled later rather than never.
        shared.kube.enabled.store(true, Ordering::Relaxed);
        runtime.spawn(k8s::watch_pods(
            client,
            args.node_name.clone(),
            shared.kube.clone(),
        ));
    }
    let (agent, ring) = control::Agent::start(args, binary_targets, shared.clone())?;
    tracing::info!(listen = %args.listen, probes = %args.probes.names(), "serving /metrics, /healthz, /readyz");
    runtime.spawn(server::serve(listener, shared.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (stop, shared, every) = (stop.clone(), shared.clone(), args.drain_interval);
        thread::Builder::new()
            .name("gostray-drain".into())
            .spawn(move || kernel::drain::drain(ring, &shared, every, &stop))?
    };
    let control = {
        let (stop, every) = (stop.clone(), args.rescan_interval);
        thread::Builder::new()
            .name("gostray-control".into())
            .spawn(move || agent.run(every, &stop))?
    };
    runtime.block_on(signals.wait());
    tracing::info!("shutting down: detaching probes");
    shared.ready.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = drainer.join();
    let _ = control.join();
    Ok(())
}

/// SIGINT and SIGTERM, either of which stops the agent.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}
