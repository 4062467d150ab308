//! End to end: Go workloads under the real agent (least-privilege
//! capabilities), a real Prometheus scraping it and evaluating
//! deploy/prometheus/rules.yaml. Every dashboard and rule expression must
//! parse and return data (pending ones aside), and the alerts must fire when
//! provoked and stay quiet otherwise.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use super::{
    caps, expressions,
    pending::{self, announce},
    prometheus::{fast_rules, poll, Prometheus},
    Tally,
};
use crate::util::{free_port, root, Guard};

/// `for:` of every rule in the test copy, so alerts fire within seconds.
const FAST_FOR: &str = "2s";
const ALERT_WAIT: Duration = Duration::from_secs(45);
const DEMO: &str = "demo-1.27";
const SPAWNER: &str = "spawner-1.27";

/// How an alert case makes its alert fire.
#[derive(Clone, Copy)]
enum Provoke {
    /// Nothing: the demo leaks a goroutine every few hundred milliseconds.
    DemoLeaks,
    /// 10000 events at once into a 64 KiB ring buffer (about 1000 events)
    /// drained once a second.
    EventBurst,
    /// 250 goroutines blocked for good in the spawner, over the agent's
    /// `--max-goroutines` of 200, in batches the ring buffer holds.
    FillTable,
    /// A process the agent cannot attach to (node-wide mode).
    UnattachableProcess,
    /// The agent stops: its scrape target goes down.
    StopAgent,
}

/// One alert, end to end: provoke it, see it fire with the labels
/// `fires_with`, and not for the exe `quiet_for`. Cases listed in
/// `pending::PENDING_ALERT_CASES` are announced and skipped.
struct AlertCase {
    alert: &'static str,
    provoke: Provoke,
    /// Agent flags the case needs (added only when it runs).
    agent_args: &'static [&'static str],
    fires_with: &'static [(&'static str, &'static str)],
    quiet_for: Option<&'static str>,
}

/// In the order they run; `StopAgent` last. The demo reaches the
/// `--max-goroutines` of 200 only after more than a minute of leaking, long
/// after the quiet check.
const ALERT_CASES: [AlertCase; 6] = [
    AlertCase {
        alert: "GostrayGoroutineLeak",
        provoke: Provoke::DemoLeaks,
        agent_args: &["--leak-after", "2s"],
        fires_with: &[("exe", DEMO)],
        quiet_for: Some(SPAWNER),
    },
    // No quiet_for: the ring buffer is shared, so the burst also drops
    // events of the demo, and the alert rightly says so for it too. The
    // quiet side is the check before any case runs.
    AlertCase {
        alert: "GostrayEventsLost",
        provoke: Provoke::EventBurst,
        agent_args: &[],
        fires_with: &[("exe", SPAWNER)],
        quiet_for: None,
    },
    // The same burst, seen from the kernel side.
    AlertCase {
        alert: "GostrayProbeErrors",
        provoke: Provoke::EventBurst,
        agent_args: &[],
        fires_with: &[("kind", "ring_full")],
        quiet_for: None,
    },
    AlertCase {
        alert: "GostrayTableFull",
        provoke: Provoke::FillTable,
        agent_args: &["--max-goroutines", "200"],
        fires_with: &[("exe", SPAWNER)],
        quiet_for: Some(DEMO),
    },
    AlertCase {
        alert: "GostrayAttachFailing",
        provoke: Provoke::UnattachableProcess,
        agent_args: &[],
        fires_with: &[],
        quiet_for: None,
    },
    AlertCase {
        alert: "GostrayAgentDown",
        provoke: Provoke::StopAgent,
        agent_args: &[],
        fires_with: &[("job", "gostray")],
        quiet_for: None,
    },
];

/// The spawner fixture, driven over stdin.
struct Spawner {
    _guard: Guard,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Spawner {
    fn start(binary: &Path) -> anyhow::Result<(Self, u32)> {
        let mut child = Command::new(binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut s = Self {
            _guard: Guard(child),
            stdin,
            stdout,
        };
        s.expect("ready")?;
        Ok((s, pid))
    }

    fn expect(&mut self, prefix: &str) -> anyhow::Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("spawner closed its output before {prefix:?}");
            }
            if line.starts_with(prefix) {
                return Ok(());
            }
        }
    }

    fn spawn(&mut self, exiting: u32, blocking: u32) -> anyhow::Result<()> {
        writeln!(self.stdin, "spawn {exiting} {blocking}")?;
        self.stdin.flush()?;
        self.expect("done")
    }
}

pub fn run(tally: &mut Tally, agent: &Path, fixtures: &Path, work: &Path) -> anyhow::Result<()> {
    announce();
    let demo = Guard(
        Command::new(fixtures.join(DEMO))
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo")?,
    );
    let (mut spawner, spawner_pid) = Spawner::start(&fixtures.join(SPAWNER))?;
    let port = free_port()?;
    let mut agent = start_agent(agent, port, &[demo.0.id(), spawner_pid], work)?;

    let rules = work.join("rules-fast.yaml");
    fast_rules(
        &root().join("deploy/prometheus/rules.yaml"),
        &rules,
        FAST_FOR,
    )?;
    let prom = Prometheus::start(&work.join("prometheus"), port, &rules)?;

    let mut scraping = false;
    tally.check(
        "Prometheus scrapes the agent: both workloads' series arrive",
        || {
            poll(
                Duration::from_secs(40),
                "5 scrapes with both processes",
                || {
                    let samples = prom.query(r#"count_over_time(up{job="gostray"}[30s])"#)?;
                    let scrapes = samples
                        .first()
                        .and_then(|s| s["value"][1].as_str()?.parse::<u32>().ok())
                        .unwrap_or(0);
                    let procs = prom.query(r#"gostray_goroutines{job="gostray"}"#)?.len();
                    if let Ok(Some(status)) = agent.0.try_wait() {
                        bail!("the agent exited ({status})");
                    }
                    Ok(scrapes >= 5 && procs == 2)
                },
            )
            .with_context(|| format!("agent log: {}", work.join("agent.log").display()))?;
            scraping = true;
            Ok(())
        },
    );
    if !scraping {
        return Ok(());
    }
    check_expressions(tally, &prom)?;
    check_alerts(tally, &prom, &mut spawner, &mut agent);
    Ok(())
}

/// The agent under the least-privilege capabilities, watching `pids`, with
/// the flags of every alert case that runs.
fn start_agent(agent: &Path, port: u16, pids: &[u32], work: &Path) -> anyhow::Result<Guard> {
    let mut cmd = caps::with_only(&caps::daemonset_capabilities()?, agent);
    cmd.arg("run");
    for pid in pids {
        cmd.args(["--pid", &pid.to_string()]);
    }
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        // Small and slow on purpose, so the event-loss case can overflow it.
        .args(["--ring-buffer-bytes", "65536", "--drain-interval", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("agent.log"))?);
    for case in &ALERT_CASES {
        if pending::alert_case(case.alert).is_none() {
            cmd.args(case.agent_args);
        }
    }
    Ok(Guard(cmd.spawn().context("starting the agent")?))
}

/// Every dashboard query, and every rule with the metrics it reads.
fn check_expressions(tally: &mut Tally, prom: &Prometheus) -> anyhow::Result<()> {
    for e in &expressions::dashboards(&root().join("deploy/grafana"))? {
        tally.check(&format!("query parses and has data: {}", e.origin), || {
            let series = prom.query(&e.promql).with_context(|| e.promql.clone())?;
            expect_data(&e.promql, !series.is_empty())
        });
    }
    let loaded = prom.rules()?;
    tally.check("Prometheus loaded every rule of rules.yaml", || {
        if loaded.len() < 10 {
            bail!("only {} rules loaded", loaded.len());
        }
        Ok(())
    });
    for (kind, name, query) in &loaded {
        tally.check(
            &format!("{kind} rule {name}: parses, and its metrics have data"),
            || {
                prom.query(query).with_context(|| query.clone())?;
                for metric in expressions::metrics(query) {
                    let series = prom.query(&metric)?;
                    expect_data(&metric, !series.is_empty())?;
                }
                Ok(())
            },
        );
    }
    Ok(())
}

/// Quiet first, then each case provoked in turn.
fn check_alerts(tally: &mut Tally, prom: &Prometheus, spawner: &mut Spawner, agent: &mut Guard) {
    tally.check("no alert pending or firing while nothing is wrong", || {
        let active = prom.alerts()?;
        if !active.is_empty() {
            bail!("active: {active:?}");
        }
        Ok(())
    });
    for case in &ALERT_CASES {
        if let Some(why) = pending::alert_case(case.alert) {
            println!("    PENDING alert case {}: {why}", case.alert);
            continue;
        }
        let name = match case.quiet_for {
            Some(quiet) => format!("alert {} fires when provoked, not for {quiet}", case.alert),
            None => format!("alert {} fires when provoked", case.alert),
        };
        tally.check(&name, || {
            match case.provoke {
                Provoke::DemoLeaks => {}
                Provoke::EventBurst => spawner.spawn(3000, 0)?,
                Provoke::FillTable => {
                    for _ in 0..5 {
                        spawner.spawn(0, 50)?;
                        std::thread::sleep(Duration::from_millis(1500));
                    }
                }
                Provoke::StopAgent => {
                    agent.terminate(Duration::from_secs(5));
                }
                Provoke::UnattachableProcess => bail!("no way to provoke yet"),
            }
            let fired =
                |labels: &serde_json::Value| case.fires_with.iter().all(|(k, v)| labels[k] == *v);
            poll(ALERT_WAIT, &format!("{} firing", case.alert), || {
                Ok(prom.alerts()?.iter().any(|(name, state, labels)| {
                    name == case.alert && state == "firing" && fired(labels)
                }))
            })?;
            if let Some(quiet) = case.quiet_for {
                let noisy: Vec<_> = prom
                    .alerts()?
                    .into_iter()
                    .filter(|(name, _, labels)| name == case.alert && labels["exe"] == quiet)
                    .collect();
                if !noisy.is_empty() {
                    bail!("also active for {quiet}: {noisy:?}");
                }
            }
            Ok(())
        });
    }
}

/// No data is a failure unless the expression uses a pending metric; data
/// for a pending one is announced so the list gets shorter.
fn expect_data(promql: &str, has_data: bool) -> anyhow::Result<()> {
    match (pending::why(promql), has_data) {
        (None, true) => Ok(()),
        (None, false) => bail!("no data for {promql}"),
        (Some(why), false) => {
            println!("    PENDING (no data yet, {why}): {promql}");
            Ok(())
        }
        (Some(why), true) => {
            println!(
                "!!! {promql} has data now: remove it from xtask/src/deploy/pending.rs ({why})"
            );
            Ok(())
        }
    }
}
