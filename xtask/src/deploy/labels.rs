//! Whose labels a series carries, scraped as on a cluster (targets.rs):
//! never the agent pod's `namespace`/`pod`/`container`; a host process's
//! series has none, a pod's process has its pod's, the agent's own series
//! name it through `agent_namespace`/`agent_pod`. The unrelabelled control
//! job must show the bug, or the test proves nothing.

use anyhow::bail;
use serde_json::Value;

use super::{
    pod,
    prometheus::Prometheus,
    targets::{AGENT_NAMESPACE, AGENT_POD, JOB, UNRELABELLED_JOB},
    workload::{exe, CART, DEMO, SPAWNER},
    Tally,
};

pub fn check(tally: &mut Tally, prom: &Prometheus) {
    tally.check(
        "no series carries the agent pod's namespace, pod or container",
        || {
            for (label, value) in [
                ("namespace", AGENT_NAMESPACE),
                ("pod", AGENT_POD),
                ("container", "gostray"),
            ] {
                let series = prom.query(&format!(r#"{{job="{JOB}", {label}="{value}"}}"#))?;
                if !series.is_empty() {
                    bail!(
                        "{} series with {label}={value:?}, e.g. {}",
                        series.len(),
                        series[0]["metric"]
                    );
                }
            }
            Ok(())
        },
    );
    tally.check(
        "host processes' series carry no pod labels, and name the agent that saw them",
        || {
            for fixture in [DEMO, SPAWNER] {
                let m = only_series(prom, JOB, fixture)?;
                for label in ["namespace", "pod", "container"] {
                    if !m[label].is_null() {
                        bail!("{fixture} has {label}: {m}");
                    }
                }
                expect(&m, "agent_pod", AGENT_POD)?;
                expect(&m, "agent_namespace", AGENT_NAMESPACE)?;
                expect(&m, "node", pod::NODE)?;
            }
            Ok(())
        },
    );
    tally.check("a pod's process carries its own pod labels", || {
        let m = only_series(prom, JOB, CART)?;
        expect(&m, "namespace", pod::NAMESPACE)?;
        expect(&m, "pod", pod::POD)?;
        expect(&m, "container", pod::CONTAINER)?;
        expect(&m, "agent_pod", AGENT_POD)
    });
    tally.check(
        "the agent's own series name it as agent_namespace/agent_pod, on its node",
        || {
            for metric in ["up", "gostray_build_info"] {
                let series = prom.query(&format!(r#"{metric}{{job="{JOB}"}}"#))?;
                let [s] = series.as_slice() else {
                    bail!("{} series of {metric}", series.len());
                };
                let m = &s["metric"];
                if !m["pod"].is_null() || !m["namespace"].is_null() {
                    bail!("{metric} carries pod labels: {m}");
                }
                expect(m, "agent_pod", AGENT_POD)?;
                expect(m, "agent_namespace", AGENT_NAMESPACE)?;
                expect(m, "node", pod::NODE)?;
            }
            Ok(())
        },
    );
    tally.check(
        "control: without the relabelings a host process takes the agent pod's labels (the bug)",
        || {
            let m = only_series(prom, UNRELABELLED_JOB, DEMO)?;
            expect(&m, "pod", AGENT_POD)?;
            expect(&m, "namespace", AGENT_NAMESPACE)?;
            let cart = only_series(prom, UNRELABELLED_JOB, CART)?;
            expect(&cart, "pod", pod::POD)
        },
    );
}

/// The labels of the one `gostray_goroutines` series of a workload.
fn only_series(prom: &Prometheus, job: &str, fixture: &str) -> anyhow::Result<Value> {
    let series = prom.query(&format!(
        r#"gostray_goroutines{{job="{job}", exe="{}"}}"#,
        exe(fixture)
    ))?;
    match series.as_slice() {
        [s] => Ok(s["metric"].clone()),
        _ => bail!(
            "{} gostray_goroutines series for {fixture} in job {job}",
            series.len()
        ),
    }
}

fn expect(labels: &Value, key: &str, value: &str) -> anyhow::Result<()> {
    if labels[key] != value {
        bail!("{key} is {}, not {value:?}: {labels}", labels[key]);
    }
    Ok(())
}
