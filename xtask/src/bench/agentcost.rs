//! What the agent itself costs: memory per tracked goroutine, one memory
//! scan, and the time from a watched binary's exec to its probes.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::proc::{self, Agent, Workload};
use crate::util::{free_port, Guard};

/// The agent with `n` parked goroutines tracked.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    pub n: u64,
    /// Agent RSS before the goroutines existed, and with them tracked.
    pub base_rss: u64,
    pub rss: u64,
    /// Mean seconds of the periodic scans made with all `n` parked.
    pub scan_s: f64,
}

/// Parks `count` goroutines in `binary` under the agent (scanning every
/// second) and reads the agent's RSS once they are tracked and scanned.
pub fn memory(agent: &Path, binary: &Path, count: u64) -> anyhow::Result<Memory> {
    let mut w = Workload::start(
        binary,
        &[
            "-mode".into(),
            "park".into(),
            "-n".into(),
            count.to_string(),
        ],
    )?;
    let a = Agent::start(
        agent,
        &[
            "--pid".into(),
            w.pid().to_string(),
            "--scan-interval".into(),
            "1s".into(),
        ],
    )?;
    let base_rss = proc::rss_bytes(a.pid());
    w.go()?;
    let parked = w.line()?;
    if parked != "parked" {
        bail!("unexpected workload output {parked:?}");
    }
    let deadline = Instant::now() + Duration::from_mins(2);
    let scans = |m: &str| {
        (
            proc::sample(m, "gostray_goroutine_scans_total"),
            proc::sample(m, "gostray_goroutine_scan_seconds_total"),
        )
    };
    // Wait until the table holds them all, then time three full scans.
    while proc::sample(&a.metrics(), "gostray_goroutines") < count as f64 {
        if Instant::now() > deadline {
            bail!("the agent never tracked {count} goroutines");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let (s0, t0) = scans(&a.metrics());
    let (s1, t1) = loop {
        let (s, t) = scans(&a.metrics());
        if s >= s0 + 3.0 || Instant::now() > deadline {
            break (s, t);
        }
        thread::sleep(Duration::from_millis(100));
    };
    Ok(Memory {
        n: count,
        base_rss,
        rss: proc::rss_bytes(a.pid()),
        scan_s: if s1 > s0 { (t1 - t0) / (s1 - s0) } else { 0.0 },
    })
}

/// Milliseconds from exec of `cmd` (a `--binary` target of an agent
/// already running, walking /proc every `rescan`) to the first /metrics
/// scrape that names its PID.
pub fn attach_latency(
    agent: &Path,
    binary: &Path,
    cmd: &mut Command,
    rescan: &str,
) -> anyhow::Result<f64> {
    let a = Agent::start(
        agent,
        &[
            "--binary".into(),
            binary.display().to_string(),
            "--rescan-interval".into(),
            rescan.into(),
        ],
    )?;
    let begun = Instant::now();
    let child = Guard(
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the target")?,
    );
    let needle = format!("pid=\"{}\"", child.0.id());
    while begun.elapsed() < Duration::from_secs(10) {
        if a.metrics().contains(&needle) {
            return Ok(begun.elapsed().as_secs_f64() * 1e3);
        }
        thread::sleep(Duration::from_millis(2));
    }
    bail!("{} not attached within 10 s", binary.display())
}

/// A Prometheus server command on loopback with an empty configuration.
pub fn prometheus_command(dir: &Path) -> anyhow::Result<Command> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "scrape_configs: []\n")?;
    let mut cmd = Command::new("/usr/bin/prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()?));
    Ok(cmd)
}
