//! Prometheus exposition, rendered at scrape time from the tracker's state,
//! so a process that goes away takes its series with it.

use std::{collections::BTreeMap, fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::state::Shared;

/// Metric names, in one place.
pub mod names {
    pub const BUILD_INFO: &str = "gostray_build_info";
    pub const GOROUTINES: &str = "gostray_goroutines";
    pub const CREATED: &str = "gostray_goroutines_created";
    pub const EXITED: &str = "gostray_goroutines_exited";
    pub const UNTRACKED: &str = "gostray_goroutines_untracked";
    pub const LOST: &str = "gostray_events_lost";
    pub const ATTACHED: &str = "gostray_attached_processes";
    pub const ATTACHED_BINARIES: &str = "gostray_attached_binaries";
    pub const PROBE_ERRORS: &str = "gostray_probe_errors";
    pub const ATTACH_FAILURES: &str = "gostray_attach_failures";
    pub const STRAY_EVENTS: &str = "gostray_stray_events";
    pub const LAYOUT_GUESSED: &str = "gostray_binaries_layout_guessed";
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct AgentCollector(Arc<Shared>);

/// A registry holding the agent's collector.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector(shared)));
    registry
}

/// What [`render`] produces: the OpenMetrics text format, which Prometheus
/// scrapes natively (and whose `# EOF` older text parsers read as a comment).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        if labels.is_empty() {
            // `name{} 1` is legal but noisy; a bare sample reads better.
            value.encode(metric)?;
            return Ok(());
        }
        value.encode(metric.encode_family(&labels)?)?;
    }
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

        let tracker = shared
            .tracker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut procs: Vec<_> = tracker.processes().collect();
        procs.sort_by_key(|(pid, _)| *pid);
        let labels = |pid: u32, exe: &str| -> Labels {
            vec![("pid", pid.to_string()), ("exe", exe.to_string())]
        };
        let per_proc = |f: &dyn Fn(&crate::tracker::ProcessState) -> u64| {
            procs
                .iter()
                .map(|(pid, p)| (labels(*pid, &p.info.exe), f(p)))
                .collect::<Vec<_>>()
        };
        let gauges =
            |v: Vec<(Labels, u64)>| v.into_iter().map(|(l, n)| (l, ConstGauge::new(n as i64)));
        let counters =
            |v: Vec<(Labels, u64)>| v.into_iter().map(|(l, n)| (l, ConstCounter::new(n)));

        family(
            &mut enc,
            names::GOROUTINES,
            "Live goroutines tracked in the process",
            MetricType::Gauge,
            gauges(per_proc(&|p| p.live_count())),
        )?;
        family(
            &mut enc,
            names::CREATED,
            "Goroutines created since the agent attached",
            MetricType::Counter,
            counters(per_proc(&|p| p.created_total)),
        )?;
        family(
            &mut enc,
            names::EXITED,
            "Goroutines exited since the agent attached",
            MetricType::Counter,
            counters(per_proc(&|p| p.exited_total)),
        )?;
        family(
            &mut enc,
            names::UNTRACKED,
            "Live goroutines counted but not stored because the table was full (--max-goroutines)",
            MetricType::Gauge,
            gauges(per_proc(&|p| p.untracked)),
        )?;
        family(
            &mut enc,
            names::LOST,
            "Events the probes could not submit because the ring buffer was full",
            MetricType::Counter,
            counters(per_proc(&|p| p.lost_total)),
        )?;

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
        drop(tracker);

        family(
            &mut enc,
            names::STRAY_EVENTS,
            "Events for no watched process or of unknown kind",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(stray))],
        )?;
        let stats = shared
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        family(
            &mut enc,
            names::LAYOUT_GUESSED,
            "Attached executables whose runtime struct offsets are guessed from another Go release",
            MetricType::Gauge,
            [(
                Labels::new(),
                ConstGauge::new(stats.layout_guessed.len() as i64),
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
