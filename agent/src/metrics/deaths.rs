//! `gostray_process_deaths_total`: processes that died of a fatal error or
//! an unrecovered panic, by workload and reason. The series outlive the
//! processes (a crash loop is a workload dying again and again); they are
//! bounded by the death log's workload bound.

use std::fmt;

use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, MetricType},
};

use super::{family::family, family::Labels, names};
use crate::{lock::lock, state::Shared};

pub fn encode(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let log = lock(&shared.deaths);
    let series = log.workloads().into_iter().flat_map(|(key, w)| {
        w.counts.iter().map(move |(reason, n)| {
            let mut labels = key.labels();
            labels.push(("reason", reason.as_str().to_string()));
            (labels, ConstCounter::new(*n))
        })
    });
    family(
        enc,
        names::DEATHS,
        "Processes that died of a fatal error or an unrecovered panic, by reason",
        MetricType::Counter,
        series,
    )?;
    let lost = log.unattributed + log.evicted;
    drop(log);
    let dropped = lock(&shared.tracker).deaths_dropped;
    family(
        enc,
        names::DEATHS_UNRECORDED,
        "Deaths seen but not in gostray_process_deaths_total: for a process the agent could no longer name, beyond the pending bound, or of a workload evicted at the bound",
        MetricType::Counter,
        [(Labels::new(), ConstCounter::new(lost + dropped))],
    )
}
