//! Which series a watched process reports under: its executable name and,
//! in Kubernetes, its pod, found through its cgroup. A process can start
//! before the API server reports its container, so labels are retried.

use crate::lock::lock;
use crate::{
    control::Agent,
    k8s::cgroup::{self, Placement},
    metrics::series::SeriesKey,
    tracker::PodPlace,
};

/// The pod part of a series' labels, for the leak report (which names the
/// pod even when the series itself was folded past `--max-series`).
pub(crate) fn pod_place(key: &SeriesKey) -> PodPlace {
    PodPlace {
        namespace: key.namespace.clone(),
        pod: key.pod.clone(),
        container: key.container.clone(),
    }
}

impl Agent {
    /// The series a process reports under, and whether its pod labels are
    /// final (known, or not in a pod at all).
    pub(crate) fn series_key(&self, pid: u32, exe: &str, at: &Placement) -> (SeriesKey, bool) {
        let mut key = SeriesKey {
            exe: exe.to_string(),
            pid: self.pid_label.then_some(pid),
            ..SeriesKey::default()
        };
        let in_pod = at.container_id.is_some() || at.pod_uid.is_some();
        match self.shared.kube.lookup(at) {
            Some(c) => {
                key.namespace.clone_from(&c.pod.namespace);
                key.pod.clone_from(&c.pod.pod);
                key.container = c.container;
                key.workload_kind.clone_from(&c.pod.workload_kind);
                key.workload.clone_from(&c.pod.workload);
                // Found by pod UID only: the container ID may still come.
                let done = !key.container.is_empty();
                (key, done)
            }
            None => (key, !in_pod || !self.shared.kube.enabled()),
        }
    }

    /// Gives pod labels to watched processes whose pod was not in the cache
    /// when they were attached (a container often starts before the API
    /// server reports its ID).
    pub(crate) fn relabel(&mut self) {
        if !self.shared.kube.enabled() {
            return;
        }
        let pending: Vec<(u32, cgroup::Placement)> = self
            .watched
            .iter()
            .filter(|(_, w)| !w.labelled)
            .map(|(pid, w)| (*pid, w.placement.clone()))
            .collect();
        for (pid, placement) in pending {
            let Some(old) = lock(&self.shared.series).key(pid).cloned() else {
                continue;
            };
            let (key, labelled) = self.series_key(pid, &old.exe, &placement);
            if key.pod.is_empty() || key == old {
                continue;
            }
            if let Some(p) = lock(&self.shared.tracker).process_mut(pid) {
                p.pod = pod_place(&key);
            }
            lock(&self.shared.series).assign(pid, key);
            if let Some(w) = self.watched.get_mut(&pid) {
                w.labelled = labelled;
            }
        }
    }
}
