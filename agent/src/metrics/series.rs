//! Which metric series a process reports under, and the bound on them.
//!
//! Series are named by workload, not by PID (`namespace`, `pod`,
//! `container`, `exe`), so a restarted process continues its series rather
//! than starting a new one. Processes that share a label set are summed;
//! the counters of one that leaves are kept until the last one leaves, so a
//! shared counter never goes backwards. Past `--max-series` label sets, new
//! processes are folded into one overflow set and counted.

use std::collections::HashMap;

/// The labels of one series. Empty strings are unknown and left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub exe: String,
    /// Only with `--pid-label` (debugging): one series per process.
    pub pid: Option<u32>,
    /// The pod's controller (`Deployment`, `StatefulSet`…) and its name.
    /// Determined by the pod, so they add no series; exposed only on
    /// `gostray_process_info` to keep every other series small.
    pub workload_kind: String,
    pub workload: String,
}

/// `exe` of the overflow set that processes beyond `--max-series` share.
pub const FOLDED_EXE: &str = "_folded";

impl SeriesKey {
    /// Label pairs for exposition, known ones only, in a fixed order.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(5);
        for (name, value) in [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("container", &self.container),
        ] {
            if !value.is_empty() {
                out.push((name, value.clone()));
            }
        }
        out.push(("exe", self.exe.clone()));
        if let Some(pid) = self.pid {
            out.push(("pid", pid.to_string()));
        }
        out
    }

    /// Labels of the info series: the series' labels, the workload and `go_version`.
    pub fn info_labels(&self, go_version: &str) -> Vec<(&'static str, String)> {
        let mut out = self.labels();
        for (name, value) in [
            ("workload_kind", &self.workload_kind),
            ("workload", &self.workload),
        ] {
            if !value.is_empty() {
                out.push((name, value.clone()));
            }
        }
        out.push(("go_version", go_version.to_string()));
        out
    }

    fn folded() -> Self {
        Self {
            exe: FOLDED_EXE.into(),
            ..Self::default()
        }
    }
}

/// Counter values a departed process leaves to its series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub created: u64,
    pub exited: u64,
    pub lost: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.created += o.created;
        self.exited += o.exited;
        self.lost += o.lost;
    }
}

#[derive(Debug, Default)]
struct Entry {
    refs: usize,
    retired: Counters,
}

/// Label sets in use, bounded.
#[derive(Debug)]
pub struct SeriesTable {
    max: usize,
    by_pid: HashMap<u32, SeriesKey>,
    sets: HashMap<SeriesKey, Entry>,
    /// Processes put in the overflow set because the table was full.
    pub folded_total: u64,
}

impl SeriesTable {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            by_pid: HashMap::new(),
            sets: HashMap::new(),
            folded_total: 0,
        }
    }

    /// Puts `pid` under `key`, or under the overflow set when `key` is new
    /// and the table is full. Returns the key used.
    pub fn assign(&mut self, pid: u32, key: SeriesKey) -> SeriesKey {
        self.release(pid, Counters::default());
        let folded = SeriesKey::folded();
        let used = self.sets.len() - usize::from(self.sets.contains_key(&folded));
        let key = if self.sets.contains_key(&key) || used < self.max {
            key
        } else {
            self.folded_total += 1;
            folded
        };
        self.sets.entry(key.clone()).or_default().refs += 1;
        self.by_pid.insert(pid, key.clone());
        key
    }

    /// `pid` left with these final counters: they stay in its series while
    /// other processes keep it alive; the series ends with its last process.
    pub fn release(&mut self, pid: u32, last: Counters) {
        let Some(key) = self.by_pid.remove(&pid) else {
            return;
        };
        if let Some(entry) = self.sets.get_mut(&key) {
            entry.refs -= 1;
            entry.retired += last;
            if entry.refs == 0 {
                self.sets.remove(&key);
            }
        }
    }

    pub fn key(&self, pid: u32) -> Option<&SeriesKey> {
        self.by_pid.get(&pid)
    }

    /// Counters of departed processes still carried by `key`.
    pub fn retired(&self, key: &SeriesKey) -> Counters {
        self.sets.get(key).map(|e| e.retired).unwrap_or_default()
    }

    /// Label sets in use, the overflow set included.
    pub fn len(&self) -> usize {
        self.sets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(exe: &str) -> SeriesKey {
        SeriesKey {
            exe: exe.into(),
            ..SeriesKey::default()
        }
    }

    #[test]
    fn shared_series_keep_counters_until_the_last_process_leaves() {
        let mut t = SeriesTable::new(10);
        t.assign(1, key("api"));
        t.assign(2, key("api"));
        assert_eq!(t.len(), 1);
        let c = Counters {
            created: 5,
            exited: 3,
            lost: 0,
        };
        t.release(1, c);
        assert_eq!(t.retired(&key("api")), c);
        t.release(2, c);
        assert_eq!(t.len(), 0, "the series ends with its last process");
        assert_eq!(t.retired(&key("api")), Counters::default());
    }

    #[test]
    fn beyond_the_bound_new_sets_are_folded_and_counted() {
        let mut t = SeriesTable::new(2);
        assert_eq!(t.assign(1, key("a")), key("a"));
        assert_eq!(t.assign(2, key("b")), key("b"));
        assert_eq!(t.assign(3, key("c")).exe, FOLDED_EXE);
        assert_eq!(t.assign(4, key("d")).exe, FOLDED_EXE);
        // An existing set still takes new members.
        assert_eq!(t.assign(5, key("a")), key("a"));
        assert_eq!((t.len(), t.folded_total), (3, 2));
        t.release(1, Counters::default());
        t.release(5, Counters::default());
        assert_eq!(t.assign(6, key("e")), key("e"), "room again");
    }

    #[test]
    fn labels_leave_out_the_unknown_and_pid_unless_asked() {
        let mut k = key("api");
        assert_eq!(k.labels(), vec![("exe", "api".to_string())]);
        k.namespace = "shop".into();
        k.pid = Some(7);
        let names: Vec<_> = k.labels().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["namespace", "exe", "pid"]);
    }
}
