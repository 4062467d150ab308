//! `cargo xtask demo`: a leaking Go service under the agent, live.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{
    build, tools,
    util::{self, Guard},
};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the agent serves /metrics.
    #[arg(long, default_value = "127.0.0.1:9981")]
    listen: SocketAddr,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    seconds: Option<u64>,
}

pub fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    if !util::is_root() {
        bail!("the demo attaches eBPF probes: run it as root (sudo -E cargo xtask demo), or grant CAP_SYS_ADMIN (CAP_BPF + CAP_PERFMON before Linux 6.16) and CAP_SYS_PTRACE");
    }
    let agent = build::build_agent(true)?;
    let fixtures = build::build_fixtures(&[tools::GO_NEWEST], &["demo"])?;
    let demo = fixtures.join(format!("demo-{}", tools::GO_NEWEST.line));

    let service = Guard(
        Command::new(&demo)
            .spawn()
            .context("starting the demo service")?,
    );
    let pid = service.0.id();
    let _agent = Guard(
        Command::new(&agent)
            .args([
                "run",
                "--pid",
                &pid.to_string(),
                "--listen",
                &args.listen.to_string(),
                // Short, so that the demo's leak is judged within seconds
                // (a real deployment keeps the default of minutes).
                "--leak-after",
                "10s",
                "--scan-interval",
                "2s",
            ])
            .spawn()
            .context("starting the agent")?,
    );
    eprintln!(
        "==> demo service PID {pid}; agent metrics at http://{0}/metrics, leak report at http://{0}/api/v1/leaks \
         (or: target/release/gostray leaks --url http://{0}); Ctrl-C to stop",
        args.listen
    );
    let started = Instant::now();
    loop {
        thread::sleep(Duration::from_secs(2));
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            return Ok(());
        }
        match scrape(args.listen) {
            Ok(text) => {
                let value = |name: &str| sample(&text, name).map_or("?".into(), |v| v.to_string());
                println!(
                    "[{:>4}s] demo goroutines live: {:>5}   created: {:>6}   exited: {:>6}   leaked: {:>4}   events lost: {}",
                    started.elapsed().as_secs(),
                    value("gostray_goroutines{"),
                    value("gostray_goroutines_created_total{"),
                    value("gostray_goroutines_exited_total{"),
                    total(&text, "gostray_leaked_goroutines{"),
                    value("gostray_events_lost_total{"),
                );
            }
            Err(e) => println!(
                "[{:>4}s] agent not answering yet: {e}",
                started.elapsed().as_secs()
            ),
        }
    }
}

/// GETs /metrics.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The sum of every sample whose line starts with `prefix` (0 if none).
fn total(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
