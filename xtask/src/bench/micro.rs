//! The in-process workloads (spawn, handoff, buffered) under each setup,
//! alternated so that a noisy neighbour hits every setup alike.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::proc::{self, Agent, BpfStats, Workload};
use crate::util::Guard;

/// How a workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// No agent.
    Bare,
    /// The agent watching the workload with these `--probes` groups
    /// (`all` is its default configuration).
    Agent(&'static str),
    /// The agent's probes attached to the binary but watching a decoy
    /// process: every hit runs only the PID lookup and returns. The least a
    /// uprobe at these same instructions can cost.
    Floor,
    /// bpftrace counting `runtime.newproc1` and `runtime.goexit0` entries.
    Bpftrace,
}

/// One measured run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sample {
    pub ns_per_op: f64,
    /// Agent CPU seconds and events lost during the run.
    pub agent_cpu_s: f64,
    pub lost: f64,
    pub wall_s: f64,
}

/// What every run needs.
pub struct Ctx<'a> {
    pub agent: &'a Path,
}

fn args(mode: &str, n: u64) -> Vec<String> {
    vec!["-mode".into(), mode.into(), "-n".into(), n.to_string()]
}

/// Runs `binary -mode mode -n n` once under `setup`.
pub fn run(ctx: &Ctx, setup: Setup, binary: &Path, mode: &str, n: u64) -> anyhow::Result<Sample> {
    let mut w = Workload::start(binary, &args(mode, n))?;
    match setup {
        Setup::Bare => Ok(Sample {
            ns_per_op: w.measure()?,
            ..Sample::default()
        }),
        Setup::Floor => {
            let decoy = Workload::start(binary, &args(mode, n))?;
            let _agent = Agent::start(ctx.agent, &["--pid".into(), decoy.pid().to_string()])?;
            Ok(Sample {
                ns_per_op: w.measure()?,
                ..Sample::default()
            })
        }
        Setup::Agent(groups) => {
            let agent = Agent::start(
                ctx.agent,
                &[
                    "--pid".into(),
                    w.pid().to_string(),
                    "--probes".into(),
                    groups.into(),
                ],
            )?;
            let events = |m: &str| {
                proc::sample(m, "gostray_goroutines_created_total")
                    + proc::sample(m, "gostray_goroutines_exited_total")
            };
            let cpu0 = proc::cpu_seconds(agent.pid());
            let begun = Instant::now();
            let ns_per_op = w.measure()?;
            let wall_s = begun.elapsed().as_secs_f64();
            // Let the drain thread catch up before reading the counters.
            let mut last = events(&agent.metrics());
            loop {
                thread::sleep(Duration::from_millis(100));
                let now = events(&agent.metrics());
                if (now - last).abs() < 0.5 {
                    break;
                }
                last = now;
            }
            let after = agent.metrics();
            proc::no_fatal_hits(&after, mode)?;
            Ok(Sample {
                ns_per_op,
                agent_cpu_s: proc::cpu_seconds(agent.pid()) - cpu0,
                lost: proc::sample(&after, "gostray_events_lost_total"),
                wall_s,
            })
        }
        Setup::Bpftrace => {
            let mut bt = Bpftrace::start(binary)?;
            let ns_per_op = w.measure()?;
            let counts = bt.stop();
            eprintln!("    bpftrace counted {counts}");
            Ok(Sample {
                ns_per_op,
                ..Sample::default()
            })
        }
    }
}

/// Probe hits per operation and ns per hit spent in the programs
/// themselves, from the kernel's own run counters of the agent's programs
/// (`kernel.bpf_stats_enabled` on for this run only).
pub fn hits_per_op(ctx: &Ctx, binary: &Path, mode: &str, n: u64) -> anyhow::Result<(f64, f64)> {
    let mut w = Workload::start(binary, &args(mode, n))?;
    let agent = Agent::start(ctx.agent, &["--pid".into(), w.pid().to_string()])?;
    let _stats = BpfStats::enable().context("enabling kernel.bpf_stats_enabled")?;
    let (n0, t0) = proc::bpf_runs(agent.pid());
    w.measure()?;
    let (n1, t1) = proc::bpf_runs(agent.pid());
    let runs = (n1 - n0).max(1) as f64;
    Ok(((n1 - n0) as f64 / n as f64, (t1 - t0) as f64 / runs))
}

/// bpftrace in a private mount namespace with its own tracefs.
struct Bpftrace {
    guard: Guard,
    out: PathBuf,
}

impl Bpftrace {
    fn start(binary: &Path) -> anyhow::Result<Self> {
        let b = binary.display();
        let script = format!(
            "uprobe:{b}:runtime.newproc1 {{ @created = count(); }} \
             uprobe:{b}:runtime.goexit0 {{ @exited = count(); }}"
        );
        let out = std::env::temp_dir().join(format!("gostray-bench-bt-{}.txt", std::process::id()));
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tracefs nodev /sys/kernel/tracing && exec bpftrace -o \"$1\" -e \"$0\"")
            .arg(&script)
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let guard = Guard(child);
        // "Attaching N probes..." goes to the -o file just before it attaches.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.contains("Attaching") {
                // Attachment follows the message; give it a moment.
                thread::sleep(Duration::from_millis(300));
                return Ok(Self { guard, out });
            }
            thread::sleep(Duration::from_millis(20));
        }
        anyhow::bail!("bpftrace did not attach within 30 s")
    }

    /// Stops it (SIGINT prints the maps) and returns its counts. A SIGINT
    /// that lands while it is still attaching is ignored, so it is repeated,
    /// and SIGKILL ends it after five seconds.
    fn stop(&mut self) -> String {
        for _ in 0..10 {
            let _ = Command::new("kill")
                .args(["-INT", &self.guard.0.id().to_string()])
                .status();
            thread::sleep(Duration::from_millis(500));
            if matches!(self.guard.0.try_wait(), Ok(Some(_))) {
                break;
            }
        }
        let _ = self.guard.0.kill();
        let _ = self.guard.0.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let _ = std::fs::remove_file(&self.out);
        text.lines()
            .filter(|l| l.starts_with('@'))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
