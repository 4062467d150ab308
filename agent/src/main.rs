//! `gostray`: the agent and its command line.

mod agent;
mod config;
mod gobin;
mod kernel;
mod metrics;
mod privileges;
mod procfs;
mod procmem;
mod scan;
mod server;
mod state;
mod tracker;

use std::{
    process::ExitCode,
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    thread,
};

use anyhow::Context;
use clap::Parser;
use config::{Cli, Command, LogFormat, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let result = match cli.command {
        Command::Run(args) => run(&args),
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
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    if args.pids.is_empty() && args.binaries.is_empty() {
        anyhow::bail!("nothing to watch: give --pid PID or --binary PATH (see gostray run --help)");
    }
    let missing = privileges::missing();
    if !missing.is_empty() {
        anyhow::bail!(
            "gostray needs root, or CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE; missing: {}",
            missing.join(", ")
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("gostray-http")
        .build()
        .context("starting the async runtime")?;
    let shared = Arc::new(state::Shared::new(args.max_goroutines as usize));
    let listener = runtime.block_on(server::bind(args.listen))?;
    let (agent, ring) = agent::Agent::start(args, shared.clone())?;
    tracing::info!(listen = %args.listen, "serving /metrics, /healthz, /readyz");
    runtime.spawn(server::serve(listener, shared.clone()));

    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (stop, shared, every) = (stop.clone(), shared.clone(), args.drain_interval);
        thread::Builder::new()
            .name("gostray-drain".into())
            .spawn(move || agent::drain(ring, &shared, every, &stop))?
    };
    let control = {
        let (stop, every) = (stop.clone(), args.rescan_interval);
        thread::Builder::new()
            .name("gostray-control".into())
            .spawn(move || agent.run(every, &stop))?
    };
    runtime.block_on(shutdown_signal());
    tracing::info!("shutting down: detaching probes");
    shared.ready.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let _ = drainer.join();
    let _ = control.join();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
