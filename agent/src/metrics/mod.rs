//! Prometheus exposition, rendered at scrape time from the tracker's state,
//! so a process that goes away takes its series with it.

mod agent;
mod deaths;
mod family;
mod leaks;
pub mod names;
pub mod series;
pub mod text;

use std::{collections::BTreeMap, fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use self::family::{family, Labels};
use crate::lock::lock;
use crate::{
    metrics::series::{Counters, SeriesKey},
    state::Shared,
    tracker::ProcessState,
};

#[derive(Debug)]
struct AgentCollector(Arc<Shared>);

/// A registry holding the agent's collector.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector(shared)));
    registry
}

/// What [`render`] produces: the `OpenMetrics` text format, which Prometheus
/// scrapes natively (and whose `# EOF` older text parsers read as a comment).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// One series' values: the sum over the processes that share its labels,
/// plus the counters of those that already left.
#[derive(Debug, Default)]
struct Row {
    live: u64,
    untracked: u64,
    counters: Counters,
    /// Go versions of its processes (one, unless a series mixes builds).
    go_versions: std::collections::BTreeSet<String>,
}

fn series_rows(procs: &[(u32, &ProcessState)], shared: &Shared) -> BTreeMap<SeriesKey, Row> {
    let table = lock(&shared.series);
    let mut rows: BTreeMap<SeriesKey, Row> = BTreeMap::new();
    for (pid, p) in procs {
        // A process between tracker and series registration has no key yet.
        let Some(key) = table.key(*pid) else { continue };
        let row = rows.entry(key.clone()).or_default();
        row.live += p.live_count();
        row.untracked += p.untracked;
        row.go_versions.insert(p.info.go_version.clone());
        row.counters += Counters {
            created: p.created_total,
            exited: p.exited_total,
            lost: p.lost_total,
        };
    }
    for (key, row) in &mut rows {
        row.counters += table.retired(key);
    }
    rows
}

/// The per-process families, one series per label set.
fn per_series(enc: &mut DescriptorEncoder, rows: &BTreeMap<SeriesKey, Row>) -> fmt::Result {
    let gauges = |f: fn(&Row) -> u64| {
        rows.iter()
            .map(move |(k, r)| (k.labels(), ConstGauge::new(f(r) as i64)))
    };
    let counters = |f: fn(&Row) -> u64| {
        rows.iter()
            .map(move |(k, r)| (k.labels(), ConstCounter::new(f(r))))
    };

    family(
        enc,
        names::GOROUTINES,
        "Live goroutines tracked in the process",
        MetricType::Gauge,
        gauges(|r| r.live),
    )?;
    family(
        enc,
        names::CREATED,
        "Goroutines created since the agent attached",
        MetricType::Counter,
        counters(|r| r.counters.created),
    )?;
    family(
        enc,
        names::EXITED,
        "Goroutines exited since the agent attached",
        MetricType::Counter,
        counters(|r| r.counters.exited),
    )?;
    family(
        enc,
        names::UNTRACKED,
        "Live goroutines counted but not stored because the table was full (--max-goroutines)",
        MetricType::Gauge,
        gauges(|r| r.untracked),
    )?;
    family(
        enc,
        names::LOST,
        "Events the probes could not submit because the ring buffer was full",
        MetricType::Counter,
        counters(|r| r.counters.lost),
    )?;
    let info = rows.iter().flat_map(|(k, r)| {
        r.go_versions
            .iter()
            .map(move |v| (k.info_labels(v), ConstGauge::new(1i64)))
    });
    family(
        enc,
        names::PROCESS_INFO,
        "Always 1: the workload (pod controller) and Go version behind each series",
        MetricType::Gauge,
        info,
    )?;
    Ok(())
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shared = &self.0;
        let version: Labels = vec![("version", env!("CARGO_PKG_VERSION").to_string())];
        family(
            &mut enc,
            names::BUILD_INFO,
            "gostray build, always 1",
            MetricType::Gauge,
            [(version, ConstGauge::new(1i64))],
        )?;

        let tracker = lock(&shared.tracker);
        let procs: Vec<_> = tracker.processes().collect();
        let rows = series_rows(&procs, shared);
        per_series(&mut enc, &rows)?;
        crate::metrics::leaks::encode(&mut enc, &procs, shared)?;

        let mut by_exe: BTreeMap<&str, i64> = BTreeMap::new();
        for (_, p) in &procs {
            *by_exe.entry(p.info.exe.as_str()).or_default() += 1;
        }
        let attached = by_exe
            .into_iter()
            .map(|(exe, n)| (vec![("exe", exe.to_string())], ConstGauge::new(n)));
        family(
            &mut enc,
            names::ATTACHED,
            "Processes watched, by executable",
            MetricType::Gauge,
            attached,
        )?;
        let stray = tracker.stray_events;
        let watched = procs.len();
        drop(tracker);
        crate::metrics::deaths::encode(&mut enc, shared)?;
        crate::metrics::agent::encode(&mut enc, shared, watched)?;

        family(
            &mut enc,
            names::STRAY_EVENTS,
            "Events for no watched process or of unknown kind",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(stray))],
        )?;
        let stats = lock(&shared.stats);
        family(
            &mut enc,
            names::ATTACHED_BINARIES,
            "Executables with probes attached",
            MetricType::Gauge,
            [(
                Labels::new(),
                ConstGauge::new(stats.attached_binaries as i64),
            )],
        )?;
        let [read_user, ring_full] = stats.probe_errors;
        let errors = [("read_user", read_user), ("ring_full", ring_full)]
            .map(|(kind, n)| (vec![("kind", kind.to_string())], ConstCounter::new(n)));
        family(
            &mut enc,
            names::PROBE_ERRORS,
            "Probe failures in the kernel, by kind",
            MetricType::Counter,
            errors,
        )?;
        family(
            &mut enc,
            names::FATAL_HITS,
            "Runs of the fatal-path probe (runtime.throw, fatal, fatalpanic) in any process running a watched executable; a healthy program never reaches them",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(stats.fatal_hits))],
        )?;
        let failures = stats.attach_failures.iter().map(|(reason, n)| {
            (
                vec![("reason", (*reason).to_string())],
                ConstCounter::new(*n),
            )
        });
        family(
            &mut enc,
            names::ATTACH_FAILURES,
            "Processes the agent could not attach to, by reason",
            MetricType::Counter,
            failures,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::ProcessInfo;

    #[test]
    fn hostile_label_values_are_escaped() {
        let shared = Arc::new(Shared::new(10, 10));
        let exe = r#"svc",pid="1\"#;
        lock(&shared.tracker).add_process(
            42,
            ProcessInfo {
                exe: exe.into(),
                go_version: "go1.27".into(),
            },
        );
        let key = crate::metrics::series::SeriesKey {
            exe: exe.into(),
            pid: Some(42),
            ..Default::default()
        };
        lock(&shared.series).assign(42, key);
        let page = render(&registry(shared));
        let line = page
            .lines()
            .find(|l| l.starts_with("gostray_goroutines{"))
            .expect("series");
        assert_eq!(
            line,
            r#"gostray_goroutines{exe="svc\",pid=\"1\\",pid="42"} 0"#
        );
    }
}
