//! THE PENDING LIST: metrics that the dashboards and alert rules use but the
//! agent does not export yet. An expression that uses one of them must still
//! parse (Prometheus answers success), but may return no data; the tests print
//! it as PENDING. Every other expression must return data.
//!
//! Delete a line the moment its metric lands: the expressions using it are
//! strict from then on. The tests say so when a pending metric shows data.

/// (metric name or prefix, what it waits for)
pub const PENDING_METRICS: &[(&str, &str)] = &[
    (
        "gostray_suspect_goroutines",
        "exported, but the e2e workloads have no suspect since the heap walk (issue 13) found the demo's idle pool held; a workload with one is to come",
    ),
];

/// Alert end-to-end cases that cannot run yet, by alert name.
pub const PENDING_ALERT_CASES: &[(&str, &str)] = &[];

/// Why `expr` is pending, if it uses a pending metric.
pub fn why(expr: &str) -> Option<&'static str> {
    PENDING_METRICS
        .iter()
        .find(|(metric, _)| expr.contains(metric))
        .map(|(_, why)| *why)
}

/// Why the alert case `alert` is pending, if it is.
pub fn alert_case(alert: &str) -> Option<&'static str> {
    PENDING_ALERT_CASES
        .iter()
        .find(|(name, _)| *name == alert)
        .map(|(_, why)| *why)
}

/// Prints the list, loudly, once per run.
pub fn announce() {
    eprintln!(
        "!!! PENDING (deploy tests): expressions using these metrics may return no data yet:"
    );
    for (metric, why) in PENDING_METRICS {
        eprintln!("!!!   {metric:<40} {why}");
    }
    for (alert, why) in PENDING_ALERT_CASES {
        eprintln!("!!!   alert case {alert:<29} {why}");
    }
    eprintln!("!!! Remove each line from xtask/src/deploy/pending.rs as soon as it lands.");
}
