//! Alert cases, end to end: with nothing wrong no alert is active; then
//! each case provokes its alert for real and Prometheus must report it
//! firing with the right labels (and not for the process named quiet).
//! Rules run with `for:` shortened (see e2e.rs).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{
    pending,
    prometheus::{poll, Prometheus},
    unattachable,
    workload::{exe, Spawner, DEATHS, DEMO, SPAWNER},
    Tally,
};
use crate::util::Guard;

const ALERT_WAIT: Duration = Duration::from_secs(45);

/// How an alert case makes its alert fire.
#[derive(Clone, Copy)]
enum Provoke {
    /// Nothing: the demo leaks a goroutine every few hundred milliseconds,
    /// each one blocked sending on a channel nobody reads. Such a case's
    /// alert is expected from the start: the quiet check allows it.
    DemoLeaks,
    /// 10000 events at once into a 64 KiB ring buffer (about 1000 events)
    /// drained once a second.
    EventBurst,
    /// 250 goroutines blocked for good in the spawner, over the agent's
    /// `--max-goroutines` of 200, in batches the ring buffer holds.
    FillTable,
    /// A Go process the agent refuses (its build info claims Go 1.16),
    /// started under the whole-host agent: found by its exec, refused, and
    /// counted in `gostray_attach_failures_total`.
    UnattachableProcess,
    /// Nothing either: a watched Go process died of concurrent map writes
    /// as the run started (the `deaths` fixture, e2e.rs), so that the
    /// rule's metric has data when the rules are checked. Expected from
    /// the start too.
    DeathAtStart,
    /// The agent stops: its scrape target goes down.
    StopAgent,
}

/// One alert, end to end: provoke it, see it fire with the labels
/// `fires_with`, and not for the exe `quiet_for`. An `exe` is named by its
/// fixture and matched as this run's copy (`e2e::exe`). Cases listed in
/// `pending::PENDING_ALERT_CASES` are announced and skipped.
struct AlertCase {
    alert: &'static str,
    provoke: Provoke,
    /// Agent flags the case needs, as flag-value pairs (added only when it
    /// runs; a flag two cases share is passed once).
    agent_args: &'static [&'static str],
    fires_with: &'static [(&'static str, &'static str)],
    quiet_for: Option<&'static str>,
}

/// In the order they run; `StopAgent` last. The demo reaches the
/// `--max-goroutines` of 200 only after more than a minute of leaking, long
/// after the quiet check.
const ALERT_CASES: [AlertCase; 8] = [
    AlertCase {
        alert: "GostrayGoroutineLeak",
        provoke: Provoke::DemoLeaks,
        agent_args: &["--leak-after", "2s", "--scan-interval", "1s"],
        fires_with: &[("exe", DEMO)],
        quiet_for: Some(SPAWNER),
    },
    AlertCase {
        alert: "GostrayBlockedSenders",
        provoke: Provoke::DemoLeaks,
        agent_args: &["--leak-after", "2s", "--scan-interval", "1s"],
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
        fires_with: &[("reason", unattachable::REASON)],
        quiet_for: None,
    },
    AlertCase {
        alert: "GostrayFatalConcurrencyError",
        provoke: Provoke::DeathAtStart,
        agent_args: &[],
        fires_with: &[("exe", DEATHS), ("reason", "concurrent_map_access")],
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

/// Agent flags of every case that runs, each flag once.
pub fn agent_args() -> Vec<&'static str> {
    let mut args: Vec<&'static str> = Vec::new();
    for case in &ALERT_CASES {
        if pending::alert_case(case.alert).is_some() {
            continue;
        }
        for pair in case.agent_args.chunks(2) {
            if !args.contains(&pair[0]) {
                args.extend_from_slice(pair);
            }
        }
    }
    args
}

/// Quiet first, then each case provoked in turn. `too_old` is the
/// executable the agent refuses (see unattachable.rs).
pub fn check(
    tally: &mut Tally,
    prom: &Prometheus,
    spawner: &mut Spawner,
    too_old: &Path,
    agent: &mut Guard,
) {
    tally.check("no alert pending or firing while nothing is wrong", || {
        // The demo's own leak is always there, and the death at the start
        // happened: their alerts are allowed.
        let standing = |name: &str, labels: &serde_json::Value| {
            ALERT_CASES.iter().any(|case| {
                matches!(case.provoke, Provoke::DemoLeaks | Provoke::DeathAtStart)
                    && case.alert == name
                    && case
                        .fires_with
                        .iter()
                        .all(|&(k, v)| has_label(labels, k, v))
            })
        };
        let active: Vec<_> = prom
            .alerts()?
            .into_iter()
            .filter(|(name, _, labels)| !standing(name, labels))
            .collect();
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
            let begun = Instant::now();
            // A refused process runs until its case is over.
            let mut _refused = None;
            match case.provoke {
                Provoke::DemoLeaks | Provoke::DeathAtStart => {}
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
                Provoke::UnattachableProcess => _refused = Some(Spawner::start(too_old)?),
            }
            let fired = |labels: &serde_json::Value| {
                case.fires_with
                    .iter()
                    .all(|&(k, v)| has_label(labels, k, v))
            };
            poll(ALERT_WAIT, &format!("{} firing", case.alert), || {
                Ok(prom.alerts()?.iter().any(|(name, state, labels)| {
                    name == case.alert && state == "firing" && fired(labels)
                }))
            })?;
            println!(
                "    {} firing {:.1}s after being provoked",
                case.alert,
                begun.elapsed().as_secs_f64()
            );
            if matches!(case.provoke, Provoke::UnattachableProcess) {
                refused_once(prom)?;
            }
            if let Some(quiet) = case.quiet_for {
                let noisy: Vec<_> = prom
                    .alerts()?
                    .into_iter()
                    .filter(|(name, _, labels)| {
                        name == case.alert && has_label(labels, "exe", quiet)
                    })
                    .collect();
                if !noisy.is_empty() {
                    bail!("also active for {quiet}: {noisy:?}");
                }
            }
            Ok(())
        });
    }
}

/// The refused process is counted exactly once (one process, one refusal;
/// rescans must not count it again) and has no series of its own.
fn refused_once(prom: &Prometheus) -> anyhow::Result<()> {
    let counted = format!(
        r#"gostray_attach_failures_total{{job="gostray",reason="{}"}}"#,
        unattachable::REASON
    );
    let value = prom
        .query(&counted)?
        .first()
        .and_then(|s| s["value"][1].as_str().map(str::to_string))
        .with_context(|| format!("no {counted}"))?;
    if value != "1" {
        bail!("{counted} is {value}, not 1");
    }
    let watched = format!(r#"gostray_goroutines{{exe="{}"}}"#, exe(unattachable::NAME));
    let series = prom.query(&watched)?;
    if !series.is_empty() {
        bail!("the refused process is watched: {series:?}");
    }
    Ok(())
}

/// Whether the alert's `labels` have `key` = `value`; an `exe` value names a
/// fixture, whose copy runs here under `e2e::exe`.
fn has_label(labels: &serde_json::Value, key: &str, value: &str) -> bool {
    match key {
        "exe" => labels[key] == exe(value),
        _ => labels[key] == value,
    }
}
