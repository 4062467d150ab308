//! The agent's metrics about itself: discovery, bounded tables, series
//! folding and the Kubernetes cache. Low-cardinality labels only.

use std::{fmt, sync::atomic::Ordering};

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::lock::lock;
use crate::{
    k8s::ApiError,
    metrics::{
        family::{family, Labels},
        names,
    },
    state::Shared,
};

fn one<M: prometheus_client::encoding::EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    value: M,
) -> fmt::Result {
    family(enc, name, help, kind, [(Labels::new(), value)])
}

fn by<'a>(
    label: &'static str,
    values: impl IntoIterator<Item = (&'a &'static str, &'a u64)>,
) -> Vec<(Labels, ConstCounter<u64>)> {
    values
        .into_iter()
        .map(|(k, n)| (vec![(label, (*k).to_string())], ConstCounter::new(*n)))
        .collect()
}

/// Encodes every self-metric; `watched` is the tracker's process count.
pub fn encode(enc: &mut DescriptorEncoder, shared: &Shared, watched: usize) -> fmt::Result {
    one(
        enc,
        names::WATCHED,
        "Processes watched",
        MetricType::Gauge,
        ConstGauge::new(watched as i64),
    )?;
    discovery(enc, shared)?;
    overhead(enc, shared)?;
    kube(enc, shared)?;
    process(enc)
}

/// The agent process itself, under the names Prometheus client libraries
/// use, so the usual dashboards and alerts apply.
fn process(enc: &mut DescriptorEncoder) -> fmt::Result {
    // statm: size resident shared … in pages.
    let rss_pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<i64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    one(
        enc,
        "process_resident_memory_bytes",
        "Resident memory of the agent (its tables, caches and buffers)",
        MetricType::Gauge,
        ConstGauge::new(rss_pages * page),
    )?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    let cpu = crate::proc::procfs::cpu_ticks("self").unwrap_or(0);
    one(
        enc,
        "process_cpu_seconds",
        "CPU time the agent has used, user and system",
        MetricType::Counter,
        ConstCounter::new(cpu as f64 / ticks as f64),
    )?;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    one(
        enc,
        "process_open_fds",
        "Open file descriptors of the agent (each attached probe holds some)",
        MetricType::Gauge,
        ConstGauge::new(fds as i64),
    )
}

/// The overhead budget: what each executable's probes cost, and which
/// groups the budget has switched off. One series per watched executable
/// and group.
fn overhead(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let report = lock(&shared.overhead).clone();
    let per_group = |value: &dyn Fn(&crate::state::GroupReport) -> f64| {
        report
            .executables
            .iter()
            .flat_map(|e| {
                e.groups.iter().map(|g| {
                    let labels = vec![("exe", e.name.clone()), ("group", g.group.to_string())];
                    (labels, value(g))
                })
            })
            .collect::<Vec<_>>()
    };
    let gauges = |rows: Vec<(Labels, f64)>| {
        rows.into_iter()
            .map(|(l, v)| (l, ConstGauge::new(v)))
            .collect::<Vec<_>>()
    };
    family(
        enc,
        names::PROBE_GROUP_ACTIVE,
        "1 while a probe group is attached to an executable; 0 while the overhead budget has it detached",
        MetricType::Gauge,
        gauges(per_group(&|g| f64::from(u8::from(g.active)))),
    )?;
    family(
        enc,
        names::PROBE_COST_RATIO,
        "Estimated CPU time of a probe group over its executable's processes' CPU time, last second (for a detached lifecycle group: at the creation rate the scans measure)",
        MetricType::Gauge,
        gauges(per_group(&|g| g.cost_ratio)),
    )?;
    family(
        enc,
        names::PROBE_GROUP_DETACHES,
        "Times the overhead budget detached a probe group from an executable",
        MetricType::Counter,
        per_group(&|g| g.detaches as f64)
            .into_iter()
            .map(|(l, v)| (l, ConstCounter::new(v as u64)))
            .collect::<Vec<_>>(),
    )?;
    if let Some(c) = &report.calibration {
        family(
            enc,
            names::PROBE_HIT_COST,
            "CPU time one probe hit costs the watched process, by program, measured at start (floor: the trap alone)",
            MetricType::Gauge,
            std::iter::once(("floor", c.floor_ns))
                .chain(c.programs.iter().map(|(p, ns)| (*p, *ns)))
                .map(|(p, ns)| (vec![("program", p.to_string())], ConstGauge::new(ns / 1e9)))
                .collect::<Vec<_>>(),
        )?;
    }
    if let Some(b) = report.budget {
        one(
            enc,
            names::OVERHEAD_BUDGET,
            "The overhead budget: the most probes may cost, as a fraction of the watched processes' CPU time",
            MetricType::Gauge,
            ConstGauge::new(b),
        )?;
    }
    Ok(())
}

fn discovery(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let (series, folded) = {
        let t = lock(&shared.series);
        (t.len(), t.folded_total)
    };
    one(
        enc,
        names::SERIES,
        "Metric label sets in use (bounded by --max-series)",
        MetricType::Gauge,
        ConstGauge::new(series as i64),
    )?;
    one(
        enc,
        names::SERIES_FOLDED,
        "Processes reported under exe=\"_folded\" because --max-series was reached",
        MetricType::Counter,
        ConstCounter::new(folded),
    )?;

    let stats = lock(&shared.stats);
    one(
        enc,
        names::ATTACHES,
        "Processes attached since the agent started",
        MetricType::Counter,
        ConstCounter::new(stats.attaches),
    )?;
    family(
        enc,
        names::SKIPPED,
        "Go processes found and not watched, by reason (excluded, max_processes)",
        MetricType::Counter,
        by("reason", &stats.skipped),
    )?;
    one(enc, names::PROC_EVENTS_LOST,
        "Exec/exit notices the kernel dropped because their buffer was full (the rescan catches up)",
        MetricType::Counter, ConstCounter::new(stats.proc_events_lost))?;
    one(
        enc,
        names::SCANS,
        "Full /proc scans for new processes",
        MetricType::Counter,
        ConstCounter::new(stats.scans),
    )?;
    one(
        enc,
        names::SCAN_SECONDS,
        "Time spent in full /proc scans",
        MetricType::Counter,
        ConstCounter::new(stats.scan_seconds),
    )?;
    let tables = stats.tables.iter().map(|(t, n)| {
        (
            vec![("table", (*t).to_string())],
            ConstGauge::new(*n as i64),
        )
    });
    family(
        enc,
        names::TABLE_ENTRIES,
        "Entries in the agent's bounded tables, by table",
        MetricType::Gauge,
        tables,
    )?;
    Ok(())
}

fn kube(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let kube = &shared.kube;
    let (pods, containers) = {
        let idx = kube
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (idx.pods(), idx.containers())
    };
    one(
        enc,
        names::KUBE_PODS,
        "Pods of this node in the metadata cache",
        MetricType::Gauge,
        ConstGauge::new(pods as i64),
    )?;
    one(
        enc,
        names::KUBE_CONTAINERS,
        "Containers with a known ID in the metadata cache",
        MetricType::Gauge,
        ConstGauge::new(containers as i64),
    )?;
    one(
        enc,
        names::KUBE_SYNCED,
        "1 once the pod cache has completed its first list, 0 before or without Kubernetes",
        MetricType::Gauge,
        ConstGauge::new(i64::from(kube.synced.load(Ordering::Relaxed))),
    )?;
    one(
        enc,
        names::KUBE_WATCH_ERRORS,
        "Errors from the pod list/watch (retried with back-off)",
        MetricType::Counter,
        ConstCounter::new(kube.watch_errors.load(Ordering::Relaxed)),
    )?;
    // Every reason from the start, at 0, so the first failure is an increase.
    let api = ApiError::ALL.iter().map(|&why| {
        let n = kube.api_errors[why as usize].load(Ordering::Relaxed);
        (
            vec![("reason", why.as_str().to_string())],
            ConstCounter::new(n),
        )
    });
    family(
        enc,
        names::KUBE_API_ERRORS,
        "Failed exchanges with the Kubernetes API server, by reason (connection, timeout, status, decode, too_large, stream)",
        MetricType::Counter,
        api,
    )
}
