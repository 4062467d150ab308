//! End to end: Go workloads under the real agent (least-privilege
//! capabilities, whole-host mode narrowed to the workloads' executables),
//! two on the host and one in a stand-in pod (pod.rs), a real Prometheus
//! scraping it with the target labels of a cluster (targets.rs) and
//! evaluating `deploy/prometheus/rules.yaml`. No series may carry the agent
//! pod's labels, the pod's process carries its own; every dashboard and rule
//! expression must parse and return data (pending ones aside); then the
//! alert cases (alerts.rs) run against the same Prometheus.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};

use super::{
    alerts, caps, expressions, labels,
    pending::{self, announce},
    pod::{self, FakePod},
    prometheus::{fast_rules, poll, Prometheus},
    targets, unattachable,
    workload::{copy_as_exe, copy_fixture_as, exe, Spawner, CART, DEATHS, DEMO, SPAWNER},
    Tally,
};
use crate::util::{free_port, root, Guard};

/// `for:` of every rule in the test copy, so alerts fire within seconds.
const FAST_FOR: &str = "2s";
/// A process in a pod: the process goes before its cgroup (field order).
struct InPod {
    _process: Spawner,
    pod: FakePod,
}

pub fn run(
    tally: &mut Tally,
    agent: &Path,
    fixtures: &Path,
    work: &Path,
    python: &Path,
) -> anyhow::Result<()> {
    announce();
    let _demo = Guard(
        Command::new(copy_as_exe(fixtures, DEMO, work)?)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the demo")?,
    );
    let mut spawner = Spawner::start(&copy_as_exe(fixtures, SPAWNER, work)?)?;
    let cart = Spawner::start(&copy_fixture_as(fixtures, SPAWNER, CART, work)?)?;
    let in_pod = InPod {
        pod: FakePod::start(cart.pid())?,
        _process: cart,
    };
    // Made now, started only by its alert case: until then nothing fails.
    let too_old = work.join(exe(unattachable::NAME));
    unattachable::make(&fixtures.join(SPAWNER), &too_old)?;
    let port = free_port()?;
    let exes = [DEMO, SPAWNER, CART, DEATHS, unattachable::NAME].map(exe);
    let mut agent = start_agent(agent, port, &exes, &in_pod.pod.url(), work)?;
    // Once the agent is ready (its exec notices are on), a process that
    // dies of concurrent map writes two seconds in (the agent attaches at
    // its exec), before the rules are checked: GostrayFatalConcurrencyError.
    poll(Duration::from_secs(30), "the agent ready", || {
        if let Ok(Some(status)) = agent.0.try_wait() {
            bail!("the agent exited ({status})");
        }
        Ok(super::http::get(port, "/readyz").is_ok_and(|(status, _)| status == 200))
    })
    .with_context(|| format!("agent log: {}", work.join("agent.log").display()))?;
    let _dying = Guard(
        Command::new(copy_as_exe(fixtures, DEATHS, work)?)
            .args(["concurrent_map_access", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the deaths fixture")?,
    );

    let rules = work.join("rules-fast.yaml");
    fast_rules(
        &root().join("deploy/prometheus/rules.yaml"),
        &rules,
        FAST_FOR,
    )?;
    let prom = Prometheus::start(
        &work.join("prometheus"),
        &targets::scrape_configs(port, python)?,
        &rules,
    )?;

    let mut scraping = false;
    tally.check(
        "Prometheus scrapes the agent: the three workloads' series arrive, the pod's labelled",
        || {
            poll(
                Duration::from_secs(40),
                "5 scrapes with the three processes, the pod's labelled",
                || {
                    let samples = prom.query(r#"count_over_time(up{job="gostray"}[30s])"#)?;
                    let scrapes = samples
                        .first()
                        .and_then(|s| s["value"][1].as_str()?.parse::<u32>().ok())
                        .unwrap_or(0);
                    let procs = prom.query(r#"gostray_goroutines{job="gostray"}"#)?.len();
                    let labelled = prom
                        .query(&format!(
                            r#"gostray_goroutines{{job="gostray", pod="{}"}}"#,
                            pod::POD
                        ))?
                        .len();
                    if let Ok(Some(status)) = agent.0.try_wait() {
                        bail!("the agent exited ({status})");
                    }
                    Ok(scrapes >= 5 && procs == 3 && labelled == 1)
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
    labels::check(tally, &prom);
    check_expressions(tally, &prom)?;
    alerts::check(tally, &prom, &mut spawner, &too_old, &mut agent);
    Ok(())
}

/// The agent under the least-privilege capabilities, in whole-host mode as
/// the `DaemonSet` runs it, narrowed to the executables `exes` (Prometheus
/// is a Go program too), naming pods through the stand-in API server
/// `kube_api`, with the flags of every alert case that runs.
fn start_agent(
    agent: &Path,
    port: u16,
    exes: &[String],
    kube_api: &str,
    work: &Path,
) -> anyhow::Result<Guard> {
    let mut cmd = caps::with_only(&caps::daemonset_capabilities()?, agent);
    cmd.arg("run").args(["--kube-api", kube_api]);
    cmd.env("NODE_NAME", pod::NODE);
    for exe in exes {
        cmd.args(["--include", &format!("exe={exe}")]);
    }
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        // Small and slow on purpose, so the event-loss case can overflow it.
        .args(["--ring-buffer-bytes", "65536", "--drain-interval", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("agent.log"))?);
    cmd.args(alerts::agent_args());
    Ok(Guard(cmd.spawn().context("starting the agent")?))
}

/// Every dashboard query, and every rule with the metrics it reads.
fn check_expressions(tally: &mut Tally, prom: &Prometheus) -> anyhow::Result<()> {
    for e in &expressions::dashboards(&root().join("deploy/grafana"))? {
        tally.check(&format!("query parses and has data: {}", e.origin), || {
            let series = prom.query(&e.promql).with_context(|| e.promql.clone())?;
            match e.promql.strip_suffix(expressions::ZERO_DEFAULT) {
                // The zero default always answers: what it guards must still
                // have data, or be pending.
                Some(guarded) => {
                    if series.is_empty() {
                        bail!("no data even with the zero default: {}", e.promql);
                    }
                    let inner = prom.query(guarded).with_context(|| guarded.to_string())?;
                    expect_data(guarded, !inner.is_empty())
                }
                None => expect_data(&e.promql, !series.is_empty()),
            }
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
