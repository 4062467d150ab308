//! Whole-host mode (`gostray run` with no target): every Go process on the
//! node that the selection rules allow, up to `--max-processes`, found by the
//! exec notices at once and by a periodic `/proc` scan as a safety net.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use crate::lock::lock;
use crate::{
    cli::config::RunArgs,
    control::selection::{Decision, PodState, Selection},
    control::Agent,
    discovery::{self, Verdict},
    k8s::cgroup,
    proc::procfs,
};

/// Reasons a process is looked at and not watched (metric label values).
const EXCLUDED: &str = "excluded";
const MAX_PROCESSES: &str = "max_processes";
const ATTACH_FAILED: &str = "attach_failed";

pub struct Host {
    selection: Selection,
    max_processes: usize,
    /// Processes decided against, by PID with their start time, so that a
    /// rescan neither retries nor recounts them. Pruned to live PIDs by every
    /// scan, so bounded by the host's process count.
    declined: HashMap<u32, (u64, &'static str)>,
    self_pid: u32,
}

impl Host {
    pub fn new(args: &RunArgs) -> Self {
        Self {
            selection: Selection {
                include: args.include.clone(),
                exclude: args.exclude.clone(),
            },
            max_processes: args.max_processes as usize,
            declined: HashMap::new(),
            self_pid: std::process::id(),
        }
    }

    /// A watched process left: those turned away for lack of room may fit now.
    pub fn room_freed(&mut self) {
        self.declined.retain(|_, (_, why)| *why != MAX_PROCESSES);
    }

    pub fn declined_len(&self) -> usize {
        self.declined.len()
    }
}

impl Agent {
    /// Considers every process in `/proc`.
    pub(crate) fn scan_host(&mut self) {
        let begun = Instant::now();
        let pids = procfs::all_pids();
        if let Some(host) = self.host.as_mut() {
            let live: HashSet<u32> = pids.iter().copied().collect();
            host.declined.retain(|pid, _| live.contains(pid));
        }
        for pid in pids {
            self.consider_host(pid);
        }
        let mut stats = lock(&self.shared.stats);
        stats.scans += 1;
        stats.scan_seconds += begun.elapsed().as_secs_f64();
    }

    /// Watches `pid` if it is a Go process the rules allow and there is room.
    pub(crate) fn consider_host(&mut self, pid: u32) {
        if self.watched.contains_key(&pid) {
            return;
        }
        let Some(host) = self.host.as_mut() else {
            return;
        };
        if pid == host.self_pid {
            return;
        }
        if let Some((start, _)) = host.declined.get(&pid) {
            if procfs::start_time(pid).ok() == Some(*start) {
                return;
            }
            host.declined.remove(&pid);
        }
        // Kernel threads have no executable; a vanished PID has nothing.
        let Ok(fp) = discovery::fingerprint(pid) else {
            tracing::trace!(pid, "no executable");
            return;
        };
        if !matches!(self.classifier.classify(pid, fp), Ok(Verdict::Go { .. })) {
            tracing::trace!(pid, "not Go");
            return;
        }
        let exe = procfs::exe_name(pid).unwrap_or_default();
        let pod_rules = host.selection.needs_pod();
        let placement = if pod_rules {
            cgroup::placement(pid)
        } else {
            cgroup::Placement::default()
        };
        let found = pod_rules
            .then(|| self.shared.kube.lookup(&placement))
            .flatten();
        // The kubelet names every pod's cgroup after its UID: a container
        // without one (plain Docker, say) is in no pod and never will be.
        let in_pod = placement.pod_uid.is_some();
        let pod = match &found {
            Some(c) => PodState::Known(&c.pod),
            None if in_pod && self.shared.kube.enabled() => PodState::Pending,
            None => PodState::NotInPod,
        };
        let decision = host.selection.decide(&exe, pod);
        let full = self.watched.len() >= host.max_processes;
        match decision {
            Decision::Pending => {}
            Decision::Skip => self.decline(pid, EXCLUDED),
            Decision::Watch if full => self.decline(pid, MAX_PROCESSES),
            Decision::Watch => {
                if let Err(e) = self.attach(pid) {
                    self.count_failure(pid, &e);
                    self.decline(pid, ATTACH_FAILED);
                }
            }
        }
    }

    fn decline(&mut self, pid: u32, why: &'static str) {
        let (Some(host), Ok(start)) = (self.host.as_mut(), procfs::start_time(pid)) else {
            return;
        };
        host.declined.insert(pid, (start, why));
        if why != ATTACH_FAILED {
            *lock(&self.shared.stats).skipped.entry(why).or_default() += 1;
        }
    }
}
