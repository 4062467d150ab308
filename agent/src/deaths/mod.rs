//! Processes that died of a fatal error or an unrecovered panic: the cause
//! as the runtime stated it, classified, with the dying goroutine's stack,
//! kept per workload after the process is gone.
//!
//! Pure state: the control loop resolves the kernel's records (labels and
//! symbols of the process) and pushes them here; the metrics and the report
//! read it. Bounded: a crash-looping service keeps its last
//! [`RECENT_PER_WORKLOAD`] deaths and counts the rest; at most
//! [`MAX_WORKLOADS`] workloads are kept, the one that died longest ago goes first.

pub mod classify;

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

pub use classify::{classify, Reason, Source};

use crate::{metrics::series::SeriesKey, tracker::Site};

/// Deaths kept in full per workload, newest first.
pub const RECENT_PER_WORKLOAD: usize = 8;
/// Workloads whose deaths are kept (and exported as series).
pub const MAX_WORKLOADS: usize = 512;

/// One death, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    /// Unix time of the death, in seconds.
    pub time: u64,
    pub pid: u32,
    pub reason: Reason,
    /// The runtime's message: the fatal error, or the panic's value.
    pub message: String,
    /// `fatal_error` or `panic`.
    pub kind: String,
    /// The goroutine that died (0: the runtime's own, with no user goroutine).
    pub goroutine: u64,
    pub go_version: String,
    /// The first frame outside the runtime's and `sync`'s machinery: where
    /// the program did it.
    pub top: Site,
    /// The dying goroutine's stack, innermost first, inlined calls expanded.
    pub stack: Vec<Site>,
}

/// The deaths of one workload (one label set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadDeaths {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    pub exe: String,
    /// Deaths since the agent started, and by reason.
    pub total: u64,
    pub counts: BTreeMap<Reason, u64>,
    /// The last deaths, newest first.
    pub recent: VecDeque<Death>,
}

/// Every workload's deaths.
#[derive(Debug, Default)]
pub struct DeathLog {
    workloads: HashMap<SeriesKey, (u64, WorkloadDeaths)>,
    /// Order of the last death, to evict the workload that died longest ago.
    seq: u64,
    /// Workloads dropped at the bound (their counts are gone with them).
    pub evicted: u64,
    /// Deaths reported by the kernel for a process the agent could not
    /// name any more (counted, never silently dropped).
    pub unattributed: u64,
}

impl DeathLog {
    /// Records `death` for the workload `key`.
    pub fn record(&mut self, key: &SeriesKey, death: Death) {
        self.seq += 1;
        if !self.workloads.contains_key(key) && self.workloads.len() >= MAX_WORKLOADS {
            if let Some(oldest) = self
                .workloads
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(k, _)| k.clone())
            {
                self.workloads.remove(&oldest);
                self.evicted += 1;
            }
        }
        let (seq, w) = self.workloads.entry(key.clone()).or_insert_with(|| {
            (
                0,
                WorkloadDeaths {
                    namespace: key.namespace.clone(),
                    pod: key.pod.clone(),
                    container: key.container.clone(),
                    exe: key.exe.clone(),
                    ..WorkloadDeaths::default()
                },
            )
        });
        *seq = self.seq;
        w.total += 1;
        *w.counts.entry(death.reason).or_default() += 1;
        w.recent.push_front(death);
        w.recent.truncate(RECENT_PER_WORKLOAD);
    }

    /// Every workload with its series key, in label order.
    pub fn workloads(&self) -> Vec<(&SeriesKey, &WorkloadDeaths)> {
        let mut out: Vec<_> = self.workloads.iter().map(|(k, (_, w))| (k, w)).collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    pub fn len(&self) -> usize {
        self.workloads.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death(pid: u32, reason: Reason) -> Death {
        Death {
            time: 1,
            pid,
            reason,
            message: "concurrent map writes".into(),
            kind: "fatal_error".into(),
            goroutine: 7,
            go_version: "go1.27.3".into(),
            top: Site::default(),
            stack: Vec::new(),
        }
    }

    fn key(exe: &str) -> SeriesKey {
        SeriesKey {
            exe: exe.into(),
            ..SeriesKey::default()
        }
    }

    #[test]
    fn a_crash_loop_keeps_counts_exact_and_memory_bounded() {
        let mut log = DeathLog::default();
        for pid in 0..10_000 {
            let reason = if pid % 2 == 0 {
                Reason::ConcurrentMapAccess
            } else {
                Reason::Panic
            };
            log.record(&key("api"), death(pid, reason));
        }
        let all = log.workloads();
        let w = all[0].1;
        assert_eq!(w.total, 10_000);
        assert_eq!(w.counts[&Reason::ConcurrentMapAccess], 5_000);
        assert_eq!(w.counts[&Reason::Panic], 5_000);
        assert_eq!(w.recent.len(), RECENT_PER_WORKLOAD);
        assert_eq!(w.recent[0].pid, 9_999, "newest first");
    }

    #[test]
    fn workloads_are_bounded_and_the_longest_dead_goes_first() {
        let mut log = DeathLog::default();
        for i in 0..MAX_WORKLOADS {
            log.record(&key(&format!("w{i}")), death(1, Reason::Panic));
        }
        // w0 dies again: w1 is now the one that died longest ago.
        log.record(&key("w0"), death(2, Reason::Panic));
        log.record(&key("new"), death(3, Reason::Other));
        assert_eq!(log.len(), MAX_WORKLOADS);
        assert_eq!(log.evicted, 1);
        let names: Vec<&str> = log
            .workloads()
            .iter()
            .map(|(k, _)| k.exe.as_str())
            .collect();
        assert!(names.contains(&"w0") && names.contains(&"new") && !names.contains(&"w1"));
    }
}
