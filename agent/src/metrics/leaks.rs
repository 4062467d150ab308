//! The leak detector's families, per series (namespace, pod, container,
//! exe): verdicts by wait reason and blocking function, parked goroutines,
//! channel misuse, goroutine lifetimes, and the cost of the table scans.

use std::{collections::BTreeMap, fmt};

use gostray_common::EventKind;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use crate::lock::lock;
use crate::{
    metrics::series::SeriesKey,
    metrics::{
        family::{family, Labels},
        names,
    },
    state::Shared,
    tracker::{histogram::Histogram, ProcessState, Verdict},
};

/// Leak and suspect series per label set: the top sites by count, the
/// rest folded into `function="other"` so cardinality stays bounded.
pub const MAX_SITES_PER_SERIES: usize = 10;

/// A histogram whose buckets were counted elsewhere.
#[derive(Debug)]
struct ConstHistogram(Histogram);

impl EncodeMetric for ConstHistogram {
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

/// Everything one series adds up over its processes.
#[derive(Default)]
struct Row {
    leaked: BTreeMap<(&'static str, String), u64>,
    suspect: BTreeMap<(&'static str, String), u64>,
    blocked_senders: u64,
    blocked: BTreeMap<&'static str, u64>,
    reconciled: [u64; 2],
    misuse: [u64; 3],
    lifetimes: Histogram,
}

fn with(key: &SeriesKey, extra: &[(&'static str, &str)]) -> Labels {
    let mut l = key.labels();
    l.extend(extra.iter().map(|&(k, v)| (k, v.to_string())));
    l
}

/// The top sites of one verdict per series, the rest as "other".
fn top_sites(
    rows: &BTreeMap<SeriesKey, Row>,
    pick: fn(&Row) -> &BTreeMap<(&'static str, String), u64>,
) -> Vec<(Labels, ConstGauge)> {
    let mut out = Vec::new();
    for (key, row) in rows {
        let mut sites: Vec<_> = pick(row).iter().collect();
        sites.sort_by(|a, b| b.1.cmp(a.1));
        let mut folded: BTreeMap<&str, u64> = BTreeMap::new();
        for (i, ((class, function), n)) in sites.into_iter().enumerate() {
            if i < MAX_SITES_PER_SERIES {
                out.push((
                    with(key, &[("wait_reason", class), ("function", function)]),
                    ConstGauge::new(*n as i64),
                ));
            } else {
                *folded.entry(class).or_default() += n;
            }
        }
        out.extend(folded.into_iter().map(|(class, n)| {
            (
                with(key, &[("wait_reason", class), ("function", "other")]),
                ConstGauge::new(n as i64),
            )
        }));
    }
    out
}

/// Sums what the processes of each series have, by series.
fn rows(procs: &[(u32, &ProcessState)], shared: &Shared) -> BTreeMap<SeriesKey, Row> {
    let mut rows: BTreeMap<SeriesKey, Row> = BTreeMap::new();
    let table = lock(&shared.series);
    for (pid, p) in procs {
        let Some(key) = table.key(*pid) else { continue };
        let row = rows.entry(key.clone()).or_default();
        for g in &p.groups {
            let map = if g.verdict == Verdict::Leak {
                &mut row.leaked
            } else {
                &mut row.suspect
            };
            *map.entry((g.wait_class, g.blocked_at.function.clone()))
                .or_default() += g.count;
        }
        row.blocked_senders += p.summary.blocked_senders;
        for (class, n) in &p.summary.blocked_by_class {
            *row.blocked.entry(class).or_default() += n;
        }
        row.reconciled[0] += p.reconciled_creates;
        row.reconciled[1] += p.reconciled_exits;
        for (i, kind) in [
            EventKind::DoubleClose,
            EventKind::SendClosed,
            EventKind::CloseNil,
        ]
        .into_iter()
        .enumerate()
        {
            row.misuse[i] += p.misuse_total.get(&kind).copied().unwrap_or(0);
        }
        row.lifetimes.merge(&p.lifetimes);
    }
    rows
}

pub(crate) fn encode(
    enc: &mut DescriptorEncoder,
    procs: &[(u32, &ProcessState)],
    shared: &Shared,
) -> fmt::Result {
    let rows = rows(procs, shared);
    family(
        enc,
        names::LEAKED,
        "Goroutines judged leaked: parked for good, by wait reason and blocking function",
        MetricType::Gauge,
        top_sites(&rows, |r| &r.leaked),
    )?;
    family(
        enc,
        names::SUSPECT,
        "Goroutines parked at least --leak-after with some but not enough evidence of a leak",
        MetricType::Gauge,
        top_sites(&rows, |r| &r.suspect),
    )?;
    family(
        enc,
        names::BLOCKED_SENDERS,
        "Goroutines parked sending on a channel for at least --leak-after",
        MetricType::Gauge,
        rows.iter()
            .map(|(k, r)| (k.labels(), ConstGauge::new(r.blocked_senders as i64))),
    )?;
    let blocked = rows.iter().flat_map(|(k, r)| {
        r.blocked.iter().map(move |(class, n)| {
            (
                with(k, &[("wait_reason", class)]),
                ConstGauge::new(*n as i64),
            )
        })
    });
    family(
        enc,
        names::BLOCKED,
        "Goroutines parked at the last scan, by wait reason, any duration",
        MetricType::Gauge,
        blocked,
    )?;
    let reconciled = rows.iter().flat_map(|(k, r)| {
        [("create", r.reconciled[0]), ("exit", r.reconciled[1])]
            .map(|(kind, n)| (with(k, &[("kind", kind)]), ConstCounter::new(n)))
    });
    family(
        enc,
        names::RECONCILED,
        "Goroutine creations and exits found by memory scans, not events (events were lost)",
        MetricType::Counter,
        reconciled,
    )?;
    misuse_and_lifetimes(enc, &rows)?;
    scan_costs(enc, shared)
}

/// Channel misuse counters and goroutine lifetimes, per series.
fn misuse_and_lifetimes(
    enc: &mut DescriptorEncoder,
    rows: &BTreeMap<SeriesKey, Row>,
) -> fmt::Result {
    for (i, (name, help)) in [
        (
            names::DOUBLE_CLOSES,
            "Channels closed a second time (the runtime panics)",
        ),
        (
            names::SENDS_ON_CLOSED,
            "Sends on a closed channel (the runtime panics)",
        ),
        (
            names::NIL_CLOSES,
            "Closes of a nil channel (the runtime panics)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        family(
            enc,
            name,
            help,
            MetricType::Counter,
            rows.iter()
                .map(|(k, r)| (k.labels(), ConstCounter::new(r.misuse[i]))),
        )?;
    }
    family(
        enc,
        names::LIFETIME,
        "Lifetime of exited goroutines whose creation was seen",
        MetricType::Histogram,
        rows.iter()
            .map(|(k, r)| (k.labels(), ConstHistogram(r.lifetimes.clone()))),
    )?;
    Ok(())
}

/// What the goroutine table scans cost, agent-wide.
fn scan_costs(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let stats = lock(&shared.stats);
    family(
        enc,
        names::TABLE_SCANS,
        "Rounds of goroutine table scans (for the leak verdicts)",
        MetricType::Counter,
        [(Labels::new(), ConstCounter::new(stats.table_scans))],
    )?;
    family(
        enc,
        names::TABLE_SCAN_SECONDS,
        "Time spent scanning goroutine tables",
        MetricType::Counter,
        [(Labels::new(), ConstCounter::new(stats.table_scan_seconds))],
    )?;
    family(
        enc,
        names::HEAP_WALKS,
        "Heap walks that prove parked goroutines unreachable, by result (deferred: spaced after a long walk; over_budget: stopped at --walk-max-bytes or --walk-max-heap)",
        MetricType::Counter,
        stats
            .heap_walks
            .iter()
            .map(|(&result, &n)| (vec![("result", result.to_string())], ConstCounter::new(n))),
    )?;
    family(
        enc,
        names::HEAP_WALK_SECONDS,
        "Time spent walking heaps",
        MetricType::Counter,
        [(Labels::new(), ConstCounter::new(stats.heap_walk_seconds))],
    )?;
    family(
        enc,
        names::HEAP_WALK_BYTES,
        "Bytes of watched processes' memory read by heap walks",
        MetricType::Counter,
        [(Labels::new(), ConstCounter::new(stats.heap_walk_bytes))],
    )?;
    family(
        enc,
        names::LAYOUT_GUESSED,
        "Attached executables whose runtime struct offsets are guessed from another Go release",
        MetricType::Gauge,
        [(
            Labels::new(),
            ConstGauge::new(stats.layout_guessed.len() as i64),
        )],
    )?;
    Ok(())
}
