//! The leak report: what `/api/v1/leaks` serves and `gostray leaks` prints.

use serde::{Deserialize, Serialize};

use crate::{
    deaths::WorkloadDeaths,
    tracker::{MisuseReport, ProcessState, Tracker},
};

/// The whole report, one entry per watched process, and the deaths of
/// every workload (they outlive their processes).
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub processes: Vec<ProcessReport>,
    /// Workloads that died of a fatal error or an unrecovered panic: counts
    /// by reason and the last deaths, newest first.
    #[serde(default)]
    pub deaths: Vec<WorkloadDeaths>,
    /// Probe groups the overhead budget has detached, by executable
    /// (details in `/api/v1/overhead`).
    #[serde(default)]
    pub probes_detached: Vec<DetachedGroup>,
}

/// A probe group the overhead budget took away from an executable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachedGroup {
    pub exe: String,
    pub group: String,
    /// The group's cost, as a share of the executable's CPU time, when it went.
    pub cost_ratio: f64,
    pub budget: f64,
    pub rearm_in_seconds: Option<f64>,
}

impl DetachedGroup {
    /// Every group detached in `overhead`.
    pub fn all(overhead: &crate::state::OverheadReport) -> Vec<Self> {
        let budget = overhead.budget.unwrap_or_default();
        overhead
            .executables
            .iter()
            .flat_map(|e| {
                e.groups.iter().filter(|g| !g.active).map(|g| Self {
                    exe: e.name.clone(),
                    group: g.group.to_string(),
                    cost_ratio: g.detached_at_cost_ratio.unwrap_or(g.cost_ratio),
                    budget,
                    rearm_in_seconds: g.rearm_in_seconds,
                })
            })
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub exe: String,
    /// The pod the process runs in; absent outside a pod, or until the
    /// API server has said.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    pub go_version: String,
    pub goroutines: u64,
    pub groups: Vec<serde_json::Value>,
    /// Goroutines parked past `--leak-after` that are not leaked: a heap
    /// walk found what can still wake them (`held_by`).
    #[serde(default)]
    pub held: Vec<serde_json::Value>,
    pub double_closes: Vec<MisuseReport>,
    pub sends_on_closed: Vec<MisuseReport>,
    pub closes_of_nil: Vec<MisuseReport>,
}

/// Builds the report from the tracker's last evaluation, keeping what
/// `filter` keeps.
pub fn build(tracker: &Tracker, filter: &Filter) -> Report {
    let mut processes: Vec<ProcessReport> = tracker
        .processes()
        .filter(|(_, p)| filter.keeps(&p.info.exe, &p.pod.namespace, &p.pod.pod))
        .map(|(pid, p)| process(pid, p))
        .collect();
    processes.sort_by_key(|p| p.pid);
    let mut report = Report {
        processes,
        deaths: Vec::new(),
        probes_detached: Vec::new(),
    };
    filter.apply(&mut report);
    report
}

fn process(pid: u32, p: &ProcessState) -> ProcessReport {
    let misuse = |kind| {
        p.misuse_report
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, r)| r.clone())
            .collect()
    };
    ProcessReport {
        pid,
        exe: p.info.exe.clone(),
        namespace: p.pod.namespace.clone(),
        pod: p.pod.pod.clone(),
        container: p.pod.container.clone(),
        go_version: p.info.go_version.clone(),
        goroutines: p.live_count(),
        groups: p
            .groups
            .iter()
            .filter_map(|g| serde_json::to_value(g).ok())
            .collect(),
        held: p
            .held
            .iter()
            .filter_map(|h| serde_json::to_value(h).ok())
            .collect(),
        double_closes: misuse(gostray_common::EventKind::DoubleClose),
        sends_on_closed: misuse(gostray_common::EventKind::SendClosed),
        closes_of_nil: misuse(gostray_common::EventKind::CloseNil),
    }
}

/// What `--verdict` and `?verdict=` accept: a group's verdict, or `held`
/// (parked long, but a heap walk found what can still wake it).
pub const VERDICTS: [&str; 3] = ["leak", "suspect", "held"];

/// Which part of the report to keep: `gostray leaks --namespace … --pod …
/// --exe … --verdict …`, or the same names as query parameters of
/// `/api/v1/leaks`. Each one given must match exactly.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub exe: Option<String>,
    /// One of [`VERDICTS`]: only those groups (or held groups) are kept,
    /// and channel misuse, which has no verdict, is left out.
    pub verdict: Option<String>,
}

impl Filter {
    /// Parses a query string (`namespace=shop&pod=cart-0`, percent-encoded).
    /// An unknown name or verdict is an error, not a filter silently ignored.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut f = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or("bad percent-encoding")?;
            let slot = match name {
                "namespace" => &mut f.namespace,
                "pod" => &mut f.pod,
                "exe" => &mut f.exe,
                "verdict" if VERDICTS.contains(&value.as_str()) => &mut f.verdict,
                "verdict" => return Err(format!("verdict is one of {}", VERDICTS.join(", "))),
                _ => return Err("filters are namespace, pod, exe and verdict".into()),
            };
            *slot = Some(value);
        }
        Ok(f)
    }

    /// The query string that [`Filter::from_query`] reads back (empty, or
    /// starting with `?`).
    pub fn to_query(&self) -> String {
        let pairs: Vec<String> = [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("exe", &self.exe),
            ("verdict", &self.verdict),
        ]
        .into_iter()
        .filter_map(|(name, v)| Some(format!("{name}={}", percent_encode(v.as_deref()?))))
        .collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }

    /// Whether a process of this executable and pod is kept.
    pub fn keeps(&self, exe: &str, namespace: &str, pod: &str) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.exe, exe) && ok(&self.namespace, namespace) && ok(&self.pod, pod)
    }

    /// Drops from `report` what this filter does not keep.
    pub fn apply(&self, report: &mut Report) {
        report
            .processes
            .retain(|p| self.keeps(&p.exe, &p.namespace, &p.pod));
        report
            .deaths
            .retain(|d| self.keeps(&d.exe, &d.namespace, &d.pod));
        let Some(verdict) = self.verdict.as_deref() else {
            return;
        };
        // Deaths have no verdict, like channel misuse.
        report.deaths.clear();
        for p in &mut report.processes {
            p.groups.retain(|g| g["verdict"] == verdict);
            if verdict != "held" {
                p.held.clear();
            }
            p.double_closes.clear();
            p.sends_on_closed.clear();
            p.closes_of_nil.clear();
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, exe: &str, namespace: &str, pod: &str) -> ProcessReport {
        let group = |verdict| serde_json::json!({ "verdict": verdict, "count": 1 });
        ProcessReport {
            pid,
            exe: exe.into(),
            namespace: namespace.into(),
            pod: pod.into(),
            container: String::new(),
            go_version: "go1.27.3".into(),
            goroutines: 3,
            groups: vec![group("leak"), group("suspect")],
            held: vec![serde_json::json!({ "count": 1 })],
            double_closes: Vec::new(),
            sends_on_closed: Vec::new(),
            closes_of_nil: Vec::new(),
        }
    }

    fn kept(query: &str) -> Vec<(u32, usize, usize)> {
        let mut r = Report {
            processes: vec![
                process(1, "api", "shop", "cart-0"),
                process(2, "api", "shop", "web-0"),
                process(3, "kubelet", "", ""),
            ],
            deaths: Vec::new(),
            probes_detached: Vec::new(),
        };
        Filter::from_query(query).unwrap().apply(&mut r);
        r.processes
            .iter()
            .map(|p| (p.pid, p.groups.len(), p.held.len()))
            .collect()
    }

    #[test]
    fn filters_keep_what_matches_exactly() {
        assert_eq!(kept("").len(), 3);
        assert_eq!(kept("namespace=shop&pod=cart-0"), [(1, 2, 1)]);
        assert_eq!(kept("exe=api"), [(1, 2, 1), (2, 2, 1)]);
        assert!(kept("exe=ap").is_empty());
        assert_eq!(kept("pod=web-0&verdict=leak"), [(2, 1, 0)]);
        assert_eq!(kept("exe=kubelet&verdict=held"), [(3, 0, 1)]);
        // No pod: a pod filter never keeps it.
        assert_eq!(kept("namespace="), [(3, 2, 1)]);
    }

    #[test]
    fn queries_round_trip_and_refuse_the_unknown() {
        let f = Filter {
            namespace: Some("a b&c=d".into()),
            pod: Some("cart-0".into()),
            exe: Some("api/ü".into()),
            verdict: Some("suspect".into()),
        };
        let q = f.to_query();
        assert_eq!(Filter::from_query(&q[1..]), Ok(f));
        assert_eq!(Filter::default().to_query(), "");
        assert!(Filter::from_query("verdict=bad").is_err());
        assert!(Filter::from_query("file=/etc/passwd").is_err());
        assert!(Filter::from_query("pod=%zz").is_err());
        assert_eq!(
            Filter::from_query("pod=a+b").unwrap().pod.as_deref(),
            Some("a b")
        );
    }

    #[test]
    fn pod_fields_are_absent_when_unknown() {
        let json = serde_json::to_value(process(3, "kubelet", "", "")).unwrap();
        assert!(
            json.get("namespace").is_none() && json.get("pod").is_none(),
            "{json}"
        );
        let json = serde_json::to_value(process(1, "api", "shop", "cart-0")).unwrap();
        assert_eq!(
            (json["namespace"].as_str(), json["pod"].as_str()),
            (Some("shop"), Some("cart-0"))
        );
        let back: ProcessReport = serde_json::from_value(json).unwrap();
        assert_eq!(back.container, "");
    }
}
