//! Prometheus exposition, rendered at scrape time from the tracker's state,
//! so a process that goes away takes its series with it.

use std::{collections::BTreeMap, fmt, sync::Arc};

use gostray_common::EventKind;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use crate::{
    state::Shared,
    tracker::{histogram::Histogram, verdict::Verdict, ProcessState},
};

/// Metric names, in one place.
pub mod names {
    pub const BUILD_INFO: &str = "gostray_build_info";
    pub const GOROUTINES: &str = "gostray_goroutines";
    pub const CREATED: &str = "gostray_goroutines_created";
    pub const EXITED: &str = "gostray_goroutines_exited";
    pub const UNTRACKED: &str = "gostray_goroutines_untracked";
    pub const RECONCILED: &str = "gostray_goroutines_reconciled";
    pub const LOST: &str = "gostray_events_lost";
    pub const ATTACHED: &str = "gostray_attached_processes";
    pub const ATTACHED_BINARIES: &str = "gostray_attached_binaries";
    pub const PROBE_ERRORS: &str = "gostray_probe_errors";
    pub const ATTACH_FAILURES: &str = "gostray_attach_failures";
    pub const STRAY_EVENTS: &str = "gostray_stray_events";
    pub const LEAKED: &str = "gostray_leaked_goroutines";
    pub const SUSPECT: &str = "gostray_suspect_goroutines";
    pub const BLOCKED_SENDERS: &str = "gostray_blocked_senders";
    pub const BLOCKED: &str = "gostray_goroutines_blocked";
    pub const DOUBLE_CLOSES: &str = "gostray_channel_double_closes";
    pub const SENDS_ON_CLOSED: &str = "gostray_channel_sends_on_closed";
    pub const NIL_CLOSES: &str = "gostray_channel_nil_closes";
    pub const LIFETIME: &str = "gostray_goroutine_lifetime_seconds";
    pub const SCANS: &str = "gostray_scans";
    pub const SCAN_SECONDS: &str = "gostray_scan_seconds";
    pub const LAYOUT_GUESSED: &str = "gostray_binaries_layout_guessed";
}

/// Leak and suspect series per process: the top sites by count, the rest
/// folded into `function="other"` so cardinality stays bounded.
pub const MAX_SITES_PER_PROCESS: usize = 10;

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

/// Renders the registry in the OpenMetrics text format.
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
        // prometheus-client (0.24) writes label values as they are: a quote
        // in an executable or function name would end the value early, break
        // the whole page for the scraper and let a target forge labels.
        let labels: Labels = labels
            .into_iter()
            .map(|(k, v)| (k, escape_label_value(&v)))
            .collect();
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Escapes a label value for the text formats: backslash, double quote
/// and line feed, as the exposition format specifies.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn gauges(v: Vec<(Labels, u64)>) -> impl Iterator<Item = (Labels, ConstGauge)> {
    v.into_iter().map(|(l, n)| (l, ConstGauge::new(n as i64)))
}

fn counters(v: Vec<(Labels, u64)>) -> impl Iterator<Item = (Labels, ConstCounter)> {
    v.into_iter().map(|(l, n)| (l, ConstCounter::new(n)))
}

/// A histogram whose buckets were counted elsewhere.
#[derive(Debug)]
struct ConstHistogram<'a>(&'a Histogram);

impl EncodeMetric for ConstHistogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum_seconds,
            self.0.count,
            &self.0.buckets(),
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Series per (process, wait class, blocking function) for one verdict.
fn verdict_series(procs: &[(u32, &ProcessState)], verdict: Verdict) -> Vec<(Labels, u64)> {
    let mut out = Vec::new();
    for (pid, p) in procs {
        let mut by_site: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for g in p.groups.iter().filter(|g| g.verdict == verdict) {
            *by_site
                .entry((g.wait_class, g.blocked_at.function.as_str()))
                .or_default() += g.count;
        }
        let mut sites: Vec<_> = by_site.into_iter().collect();
        sites.sort_by(|a, b| b.1.cmp(&a.1));
        let mut folded: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, ((class, function), n)) in sites.into_iter().enumerate() {
            if i < MAX_SITES_PER_PROCESS {
                let mut l = process_labels(*pid, p);
                l.extend([
                    ("wait_reason", class.to_string()),
                    ("function", function.to_string()),
                ]);
                out.push((l, n));
            } else {
                *folded.entry(class).or_default() += n;
            }
        }
        for (class, n) in folded {
            let mut l = process_labels(*pid, p);
            l.extend([
                ("wait_reason", class.to_string()),
                ("function", "other".to_string()),
            ]);
            out.push((l, n));
        }
    }
    out
}

fn process_labels(pid: u32, p: &ProcessState) -> Labels {
    vec![("pid", pid.to_string()), ("exe", p.info.exe.clone())]
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
        let per_proc = |f: &dyn Fn(&ProcessState) -> u64| {
            procs
                .iter()
                .map(|(pid, p)| (process_labels(*pid, p), f(p)))
                .collect::<Vec<_>>()
        };

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
        let reconciled = procs
            .iter()
            .flat_map(|(pid, p)| {
                [
                    ("create", p.reconciled_creates),
                    ("exit", p.reconciled_exits),
                ]
                .map(|(kind, n)| {
                    let mut l = process_labels(*pid, p);
                    l.push(("kind", kind.to_string()));
                    (l, n)
                })
            })
            .collect();
        family(
            &mut enc,
            names::RECONCILED,
            "Goroutine creations and exits found by memory scans, not events (events were lost)",
            MetricType::Counter,
            counters(reconciled),
        )?;
        family(
            &mut enc,
            names::LOST,
            "Events the probes could not submit because the ring buffer was full",
            MetricType::Counter,
            counters(per_proc(&|p| p.lost_total)),
        )?;

        family(
            &mut enc,
            names::LEAKED,
            "Goroutines judged leaked: parked for good, by wait reason and blocking function",
            MetricType::Gauge,
            gauges(verdict_series(&procs, Verdict::Leak)),
        )?;
        family(
            &mut enc,
            names::SUSPECT,
            "Goroutines parked at least --leak-after with some but not enough evidence of a leak",
            MetricType::Gauge,
            gauges(verdict_series(&procs, Verdict::Suspect)),
        )?;
        let summary = |pid: u32| tracker.summaries.get(&pid);
        family(
            &mut enc,
            names::BLOCKED_SENDERS,
            "Goroutines parked sending on a channel for at least --leak-after",
            MetricType::Gauge,
            gauges(
                procs
                    .iter()
                    .map(|(pid, p)| {
                        (
                            process_labels(*pid, p),
                            summary(*pid).map_or(0, |s| s.blocked_senders),
                        )
                    })
                    .collect(),
            ),
        )?;
        let blocked = procs
            .iter()
            .flat_map(|(pid, p)| {
                summary(*pid).into_iter().flat_map(move |s| {
                    s.blocked_by_class.iter().map(move |(class, &n)| {
                        let mut l = process_labels(*pid, p);
                        l.push(("wait_reason", (*class).to_string()));
                        (l, n)
                    })
                })
            })
            .collect();
        family(
            &mut enc,
            names::BLOCKED,
            "Goroutines parked at the last scan, by wait reason, any duration",
            MetricType::Gauge,
            gauges(blocked),
        )?;
        let misuse =
            |kind: EventKind| per_proc(&move |p| p.misuse_total.get(&kind).copied().unwrap_or(0));
        family(
            &mut enc,
            names::DOUBLE_CLOSES,
            "Channels closed a second time (the runtime panics)",
            MetricType::Counter,
            counters(misuse(EventKind::DoubleClose)),
        )?;
        family(
            &mut enc,
            names::SENDS_ON_CLOSED,
            "Sends on a closed channel (the runtime panics)",
            MetricType::Counter,
            counters(misuse(EventKind::SendClosed)),
        )?;
        family(
            &mut enc,
            names::NIL_CLOSES,
            "Closes of a nil channel (the runtime panics)",
            MetricType::Counter,
            counters(misuse(EventKind::CloseNil)),
        )?;
        family(
            &mut enc,
            names::LIFETIME,
            "Lifetime of exited goroutines whose creation was seen",
            MetricType::Histogram,
            procs
                .iter()
                .map(|(pid, p)| (process_labels(*pid, p), ConstHistogram(&p.lifetimes))),
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
            names::SCANS,
            "Rounds of goroutine table scans",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(stats.scans))],
        )?;
        family(
            &mut enc,
            names::SCAN_SECONDS,
            "Time spent scanning goroutine tables",
            MetricType::Counter,
            [(Labels::new(), ConstCounter::new(stats.scan_seconds))],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::ProcessInfo;

    #[test]
    fn hostile_label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), r"x\ny");
        let shared = Arc::new(Shared::new(10));
        let exe = r#"svc",pid="1\"#;
        shared.tracker.lock().unwrap().add_process(
            42,
            ProcessInfo {
                exe: exe.into(),
                go_version: "go1.27".into(),
            },
        );
        let page = render(&registry(shared));
        let line = page
            .lines()
            .find(|l| l.starts_with("gostray_goroutines{"))
            .expect("series");
        assert_eq!(
            line,
            r#"gostray_goroutines{pid="42",exe="svc\",pid=\"1\\"} 0"#
        );
    }
}
