//! The test Prometheus's scrape jobs, labelled as on a cluster: the target
//! carries the `__meta_kubernetes_*` labels service discovery gives the
//! agent pod, relabelled first as the Prometheus Operator does for a
//! `ServiceMonitor` (`namespace`, `pod`, `container`, `service`, `endpoint`
//! target labels), then by the relabelings of
//! `deploy/kubernetes/servicemonitor.yaml` itself. A control job without
//! those relabelings shows the bug they fix: a host process's series taking
//! the agent pod's labels.

use std::{path::Path, process::Command};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::util::root;

/// The agent pod as discovery names it.
pub(super) const AGENT_NAMESPACE: &str = "gostray";
pub(super) const AGENT_POD: &str = "gostray-x2x9q";
/// The job that scrapes as the `ServiceMonitor` does.
pub(super) const JOB: &str = "gostray";
/// The control job: the same target labels, `honor_labels`, no relabelings
/// of the manifest; only `gostray_goroutines` kept, so that nothing else
/// (dashboards, rules) sees it twice.
pub(super) const UNRELABELLED_JOB: &str = "gostray-unrelabelled";

/// The `scrape_configs:` entries, as YAML (JSON flow style).
pub(super) fn scrape_configs(target_port: u16, python: &Path) -> anyhow::Result<String> {
    let monitor = root().join("deploy/kubernetes/servicemonitor.yaml");
    let relabelings = monitor_relabelings(&monitor, python)?;
    let job = |name: &str, relabel: Vec<Value>, keep_only: Option<&str>| {
        let mut job = json!({
            "job_name": name,
            "honor_labels": true,
            "static_configs": [{
                "targets": [format!("127.0.0.1:{target_port}")],
                "labels": discovered(),
            }],
            "relabel_configs": operator_relabelings().into_iter().chain(relabel).collect::<Vec<_>>(),
        });
        if let Some(metric) = keep_only {
            job["metric_relabel_configs"] =
                json!([{"source_labels": ["__name__"], "regex": metric, "action": "keep"}]);
        }
        format!("  - {job}\n")
    };
    Ok(
        job(JOB, relabelings, None)
            + &job(UNRELABELLED_JOB, Vec::new(), Some("gostray_goroutines")),
    )
}

/// What Kubernetes pod discovery (role endpoints) puts on the agent's target.
fn discovered() -> Value {
    json!({
        "__meta_kubernetes_namespace": AGENT_NAMESPACE,
        "__meta_kubernetes_pod_name": AGENT_POD,
        "__meta_kubernetes_pod_container_name": "gostray",
        "__meta_kubernetes_pod_container_port_name": "metrics",
        "__meta_kubernetes_pod_node_name": super::pod::NODE,
        "__meta_kubernetes_service_name": "gostray",
    })
}

/// The target labels the Prometheus Operator makes for every
/// `ServiceMonitor` endpoint before the monitor's own relabelings.
fn operator_relabelings() -> Vec<Value> {
    [
        ("__meta_kubernetes_namespace", "namespace"),
        ("__meta_kubernetes_service_name", "service"),
        ("__meta_kubernetes_pod_name", "pod"),
        ("__meta_kubernetes_pod_container_name", "container"),
        ("__meta_kubernetes_pod_container_port_name", "endpoint"),
    ]
    .into_iter()
    .map(|(from, to)| json!({"source_labels": [from], "target_label": to}))
    .collect()
}

/// The first endpoint's `relabelings` of a `ServiceMonitor` manifest, in
/// Prometheus's own spelling (`sourceLabels` → `source_labels`). `PyYAML`
/// (installed for the deploy checks) reads the manifest.
fn monitor_relabelings(manifest: &Path, python: &Path) -> anyhow::Result<Vec<Value>> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             doc = yaml.safe_load(open(sys.argv[1]))\n\
             print(json.dumps(doc['spec']['endpoints'][0]['relabelings']))",
        ])
        .arg(manifest)
        .env("PYTHONPATH", python)
        .output()
        .context("python3 reading the ServiceMonitor")?;
    if !out.status.success() {
        bail!(
            "reading {}: {}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let relabelings: Vec<Value> = serde_json::from_slice(&out.stdout)?;
    Ok(relabelings.iter().map(snake_case_keys).collect())
}

/// `{"sourceLabels": …}` → `{"source_labels": …}`.
fn snake_case_keys(v: &Value) -> Value {
    let Value::Object(map) = v else {
        return v.clone();
    };
    map.iter()
        .map(|(k, v)| {
            let mut key = String::with_capacity(k.len() + 4);
            for c in k.chars() {
                if c.is_ascii_uppercase() {
                    key.push('_');
                    key.push(c.to_ascii_lowercase());
                } else {
                    key.push(c);
                }
            }
            (key, v.clone())
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn relabelings_in_prometheus_spelling() {
        assert_eq!(
            super::snake_case_keys(
                &json!({"sourceLabels": ["a"], "targetLabel": "b", "action": "labeldrop"})
            ),
            json!({"source_labels": ["a"], "target_label": "b", "action": "labeldrop"})
        );
    }
}
