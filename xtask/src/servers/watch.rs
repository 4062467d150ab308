//! The agent watching one server, and what it has seen of it over the
//! run: its leak report polled, the peaks kept, every group remembered.

use std::{
    collections::BTreeMap,
    fs::File,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::Value;

use super::http::Conn;
use crate::util::Guard;

/// `gostray run --pid PID` serving on its own loopback port.
pub struct Agent {
    guard: Guard,
    conn: Conn,
}

impl Agent {
    /// Starts the agent on `pid`, logging to `log`, and waits for /readyz.
    pub fn start(
        agent: &Path,
        pid: u32,
        port: u16,
        leak_after: &str,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let child = Command::new(agent)
            .arg("run")
            .args(["--pid", &pid.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--leak-after", leak_after, "--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log)?)
            .spawn()
            .context("starting the agent")?;
        let mut a = Self {
            guard: Guard(child),
            conn: Conn::new(port),
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        while Instant::now() < deadline {
            if matches!(a.conn.get("/readyz"), Ok((200, _))) {
                return Ok(a);
            }
            if let Ok(Some(status)) = a.guard.0.try_wait() {
                bail!(
                    "the agent for pid {pid} exited ({status}); see {}",
                    log.display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the agent for pid {pid} was not ready within 60 s; see {}",
            log.display()
        )
    }

    /// `/api/v1/leaks`.
    pub fn report(&mut self) -> anyhow::Result<Value> {
        let (status, body) = self.conn.get("/api/v1/leaks")?;
        if status != 200 {
            bail!("/api/v1/leaks answered {status}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// `/metrics`, as text.
    pub fn metrics(&mut self) -> anyhow::Result<String> {
        Ok(self.conn.get("/metrics")?.1)
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.guard.0.try_wait(), Ok(None))
    }
}

/// A group as the agent reported it, at its largest.
#[derive(Clone, Debug)]
pub struct GroupSeen {
    pub verdict: String,
    pub wait_reason: String,
    pub start_function: String,
    pub blocked_at: String,
    pub evidence: Vec<String>,
    /// Most members parked past --leak-after in one report.
    pub peak: u64,
    /// Reports that carried it, and whether the last one did.
    pub reports: u64,
    pub at_end: bool,
}

/// What one agent reported about its server over the run.
#[derive(Default)]
pub struct Seen {
    pub go_version: String,
    pub goroutines: u64,
    pub peak_goroutines: u64,
    pub reports: u64,
    pub failed_polls: u64,
    pub peak_leaks: usize,
    pub peak_suspects: usize,
    /// Most groups parked past --leak-after that a heap walk found still
    /// reachable (`held`), if the agent reports them.
    pub peak_held: Option<usize>,
    /// Keyed by (verdict, fingerprint): a group called a suspect first and a
    /// leak later shows as both.
    pub groups: BTreeMap<(String, String), GroupSeen>,
    /// `gostray_heap_walks_total` by result.
    pub heap_walks: BTreeMap<String, u64>,
    /// Whether the agent guessed the runtime's struct offsets from another
    /// release (`gostray_binaries_layout_guessed`): a stripped binary of a
    /// Go release its table lacks.
    pub layout_guessed: bool,
}

impl Seen {
    /// Folds one `/api/v1/leaks` report (one process) in.
    pub fn record(&mut self, report: &Value) {
        let Some(p) = report["processes"].as_array().and_then(|p| p.first()) else {
            self.failed_polls += 1;
            return;
        };
        self.reports += 1;
        self.go_version = p["go_version"].as_str().unwrap_or_default().to_string();
        self.goroutines = p["goroutines"].as_u64().unwrap_or_default();
        self.peak_goroutines = self.peak_goroutines.max(self.goroutines);
        for g in self.groups.values_mut() {
            g.at_end = false;
        }
        let groups = p["groups"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let count = |verdict: &str| groups.iter().filter(|g| g["verdict"] == verdict).count();
        self.peak_leaks = self.peak_leaks.max(count("leak"));
        self.peak_suspects = self.peak_suspects.max(count("suspect"));
        if let Some(held) = p["held"].as_array() {
            self.peak_held = Some(self.peak_held.unwrap_or(0).max(held.len()));
        }
        for g in groups {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let key = (text(&g["verdict"]), text(&g["fingerprint"]));
            let members = g["count"].as_u64().unwrap_or_default();
            let seen = self.groups.entry(key).or_insert_with(|| GroupSeen {
                verdict: text(&g["verdict"]),
                wait_reason: text(&g["wait_reason"]),
                start_function: text(&g["start_function"]),
                blocked_at: format!(
                    "{} ({}:{})",
                    text(&g["blocked_at"]["function"]),
                    text(&g["blocked_at"]["file"]),
                    g["blocked_at"]["line"]
                ),
                evidence: Vec::new(),
                peak: 0,
                reports: 0,
                at_end: false,
            });
            if members >= seen.peak {
                seen.peak = members;
                seen.evidence = g["evidence"]
                    .as_array()
                    .map(|e| e.iter().map(text).collect())
                    .unwrap_or_default();
            }
            seen.reports += 1;
            seen.at_end = true;
        }
    }

    /// Reads the agent's counters of interest from a `/metrics` scrape.
    pub fn record_metrics(&mut self, metrics: &str) {
        let value = |l: &str| l.rsplit(' ').next()?.parse::<f64>().ok();
        self.heap_walks = metrics
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("gostray_heap_walks_total{result=\"")?;
                Some((rest.split_once('"')?.0.to_string(), value(l)? as u64))
            })
            .collect();
        self.layout_guessed = metrics
            .lines()
            .filter(|l| l.starts_with("gostray_binaries_layout_guessed "))
            .any(|l| value(l).is_some_and(|n| n > 0.0));
    }

    pub fn leaks(&self) -> impl Iterator<Item = &GroupSeen> {
        self.groups.values().filter(|g| g.verdict == "leak")
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    #[test]
    fn keeps_peaks_and_groups() {
        let report = |verdicts: &[(&str, u64)]| {
            let groups: Vec<_> = verdicts
                .iter()
                .map(|(v, n)| {
                    serde_json::json!({"fingerprint": "f1", "verdict": v, "count": n,
                        "wait_reason": "chan receive", "start_function": "main.worker",
                        "blocked_at": {"function": "main.worker", "file": "/w.go", "line": 7},
                        "evidence": [format!("{n} parked")]})
                })
                .collect();
            serde_json::json!({"processes": [{"pid": 1, "go_version": "go1.24.4", "goroutines": 40 + groups.len(), "groups": groups}]})
        };
        let mut seen = Seen::default();
        seen.record(&report(&[("suspect", 2)]));
        seen.record(&report(&[("suspect", 5), ("leak", 1)]));
        seen.record(&report(&[]));
        assert_eq!(
            (seen.reports, seen.goroutines, seen.peak_goroutines),
            (3, 40, 42)
        );
        assert_eq!(
            (seen.peak_leaks, seen.peak_suspects, seen.peak_held),
            (1, 1, None)
        );
        let suspect = &seen.groups[&("suspect".into(), "f1".into())];
        assert_eq!(
            (suspect.peak, suspect.reports, suspect.at_end),
            (5, 2, false)
        );
        assert_eq!(suspect.evidence, ["5 parked"]);
        assert_eq!(suspect.blocked_at, "main.worker (/w.go:7)");
        assert_eq!(seen.leaks().count(), 1);
        assert_eq!(seen.go_version, "go1.24.4");
    }

    #[test]
    fn reads_heap_walks_and_the_layout() {
        let m = "# TYPE gostray_heap_walks_total counter\ngostray_heap_walks_total{result=\"done\"} 12\n\
                 gostray_heap_walks_total{result=\"failed\"} 0\ngostray_heap_walk_seconds_total 0.1\n\
                 gostray_binaries_layout_guessed 1\n";
        let mut seen = Seen::default();
        seen.record_metrics(m);
        let w = &seen.heap_walks;
        assert_eq!((w["done"], w["failed"], w.len()), (12, 0, 2));
        assert!(seen.layout_guessed);
        seen.record_metrics("gostray_binaries_layout_guessed 0\n");
        assert!(!seen.layout_guessed);
    }
}
