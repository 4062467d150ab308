//! The pods of this node, indexed by container ID and pod UID, built from
//! the API server's Pod objects. Bounded: a node runs ~110 pods by default;
//! the index refuses more than [`MAX_PODS`], and trims labels.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::core::v1::Pod;

use super::cgroup::{strip_scheme, Placement};

/// Hard bound on pods held (far above any node's pod limit).
pub const MAX_PODS: usize = 5_000;
/// Labels and containers kept per pod, and the longest string kept (names,
/// label keys and values; Kubernetes allows 253 characters in a name).
const MAX_LABELS: usize = 64;
const MAX_CONTAINERS: usize = 64;
const MAX_VALUE: usize = 253;

/// What a pod contributes to its processes' labels and selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub labels: Vec<(String, String)>,
    /// The controller that owns the pod (`Deployment` for a `ReplicaSet` with
    /// a `pod-template-hash`), or empty for a bare pod.
    pub workload_kind: String,
    pub workload: String,
}

/// A container known to the index: its pod and its name in the pod spec.
#[derive(Debug, Clone)]
pub struct ContainerMeta {
    pub pod: Arc<PodMeta>,
    pub container: String,
}

/// A container's (bare ID, name in the pod spec).
type Container = (String, String);

#[derive(Debug, Default)]
pub struct PodIndex {
    /// By pod UID: the pod and its (container ID, name) pairs.
    pods: HashMap<String, (Arc<PodMeta>, Vec<Container>)>,
    by_container: HashMap<String, ContainerMeta>,
}

impl PodIndex {
    /// Adds or updates a pod.
    pub fn apply(&mut self, pod: &Pod) {
        let Some((meta, containers)) = extract(pod) else {
            return;
        };
        self.remove_uid(&meta.uid);
        if self.pods.len() >= MAX_PODS {
            return;
        }
        let meta = Arc::new(meta);
        for (id, name) in &containers {
            self.by_container.insert(
                id.clone(),
                ContainerMeta {
                    pod: meta.clone(),
                    container: name.clone(),
                },
            );
        }
        self.pods.insert(meta.uid.clone(), (meta, containers));
    }

    pub fn delete(&mut self, pod: &Pod) {
        if let Some(uid) = &pod.metadata.uid {
            self.remove_uid(uid);
        }
    }

    /// Replaces everything (after a full relist).
    pub fn replace(&mut self, pods: &[Pod]) {
        *self = Self::default();
        for pod in pods {
            self.apply(pod);
        }
    }

    fn remove_uid(&mut self, uid: &str) {
        if let Some((_, containers)) = self.pods.remove(uid) {
            for (id, _) in containers {
                self.by_container.remove(&id);
            }
        }
    }

    /// The container (or at least the pod) a process placement names.
    pub fn lookup(&self, at: &Placement) -> Option<ContainerMeta> {
        if let Some(c) = at
            .container_id
            .as_ref()
            .and_then(|id| self.by_container.get(id))
        {
            return Some(c.clone());
        }
        let (pod, _) = self.pods.get(at.pod_uid.as_ref()?)?;
        Some(ContainerMeta {
            pod: pod.clone(),
            container: String::new(),
        })
    }

    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    pub fn containers(&self) -> usize {
        self.by_container.len()
    }
}

fn extract(pod: &Pod) -> Option<(PodMeta, Vec<Container>)> {
    let m = &pod.metadata;
    let uid = trim(m.uid.as_deref()?);
    let labels: Vec<(String, String)> = m
        .labels
        .iter()
        .flatten()
        .take(MAX_LABELS)
        .map(|(k, v)| (trim(k), trim(v)))
        .collect();
    let (mut workload_kind, mut workload) = m
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| (trim(&o.kind), trim(&o.name)))
        .unwrap_or_default();
    // Deployments own pods through a ReplicaSet named <deployment>-<hash>.
    let hash = labels.iter().find(|(k, _)| k == "pod-template-hash");
    if let (true, Some((_, hash))) = (workload_kind == "ReplicaSet", hash) {
        if let Some(deployment) = workload.strip_suffix(&format!("-{hash}")) {
            workload = deployment.to_string();
            workload_kind = "Deployment".into();
        }
    }
    let meta = PodMeta {
        namespace: trim(m.namespace.as_deref().unwrap_or_default()),
        pod: trim(m.name.as_deref().unwrap_or_default()),
        uid,
        labels,
        workload_kind,
        workload,
    };
    let status = pod.status.as_ref();
    let statuses = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .chain(&s.init_container_statuses)
                .chain(&s.ephemeral_container_statuses)
                .flatten()
        })
        .filter_map(|c| Some((strip_scheme(c.container_id.as_deref()?)?, trim(&c.name))));
    Some((meta, statuses.take(MAX_CONTAINERS).collect()))
}

fn trim(s: &str) -> String {
    s.chars().take(MAX_VALUE).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a7c1e9b8d4f6a0c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a";

    fn pod(uid: &str, container_id: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "cart-7d9f8b6c5d-x2x9q", "namespace": "shop", "uid": uid,
                "labels": {"app": "cart", "pod-template-hash": "7d9f8b6c5d"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "cart-7d9f8b6c5d", "uid": "u", "controller": true}]
            },
            "spec": {"containers": [{"name": "cart"}]},
            "status": {"containerStatuses": [{"name": "cart", "containerID": container_id,
                "image": "i", "imageID": "", "ready": true, "restartCount": 0}]}
        }))
        .unwrap()
    }

    #[test]
    fn containers_map_to_their_pod_and_deployment() {
        let mut idx = PodIndex::default();
        idx.apply(&pod("u1", &format!("containerd://{ID}")));
        let at = Placement {
            container_id: Some(ID.into()),
            pod_uid: None,
        };
        let c = idx.lookup(&at).unwrap();
        assert_eq!(c.container, "cart");
        assert_eq!(
            (c.pod.namespace.as_str(), c.pod.pod.as_str()),
            ("shop", "cart-7d9f8b6c5d-x2x9q")
        );
        assert_eq!(
            (c.pod.workload_kind.as_str(), c.pod.workload.as_str()),
            ("Deployment", "cart")
        );
        // By pod UID when the container is not (yet) in the pod's status.
        let by_uid = idx.lookup(&Placement {
            container_id: None,
            pod_uid: Some("u1".into()),
        });
        assert_eq!(by_uid.unwrap().container, "");
        idx.delete(&pod("u1", ""));
        assert!(idx.lookup(&at).is_none());
        assert_eq!((idx.pods(), idx.containers()), (0, 0));
    }

    #[test]
    fn updates_replace_and_the_index_stays_bounded() {
        let mut idx = PodIndex::default();
        idx.apply(&pod("u1", "containerd://short"));
        assert_eq!((idx.pods(), idx.containers()), (1, 0));
        idx.apply(&pod("u1", &format!("cri-o://{ID}")));
        assert_eq!((idx.pods(), idx.containers()), (1, 1));
        let many: Vec<Pod> = (0..MAX_PODS + 10)
            .map(|i| pod(&i.to_string(), ""))
            .collect();
        idx.replace(&many);
        assert_eq!(idx.pods(), MAX_PODS);
    }

    #[test]
    fn absurd_pods_are_trimmed() {
        let long = "x".repeat(1_000);
        let statuses: Vec<_> = (0..500)
            .map(|i| {
                serde_json::json!({"name": long, "containerID": format!("containerd://{i:064x}"),
                "image": "i", "imageID": "", "ready": true, "restartCount": 0})
            })
            .collect();
        let labels: serde_json::Map<_, _> = (0..500)
            .map(|i| (format!("{long}{i}"), serde_json::Value::from(long.clone())))
            .collect();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": long, "namespace": long, "uid": long, "labels": labels,
                "ownerReferences": [{"apiVersion": "v1", "kind": long, "name": long,
                    "uid": "u", "controller": true}]},
            "status": {"containerStatuses": statuses}
        }))
        .unwrap();
        let mut idx = PodIndex::default();
        idx.apply(&pod);
        assert_eq!((idx.pods(), idx.containers()), (1, MAX_CONTAINERS));
        let c = idx
            .lookup(&Placement {
                container_id: Some(format!("{:064x}", 0)),
                pod_uid: None,
            })
            .unwrap();
        let p = &c.pod;
        assert_eq!(p.labels.len(), MAX_LABELS);
        let strings = [
            &p.namespace,
            &p.pod,
            &p.uid,
            &p.workload_kind,
            &p.workload,
            &c.container,
        ];
        let strings = strings
            .into_iter()
            .chain(p.labels.iter().flat_map(|(k, v)| [k, v]));
        for s in strings {
            assert_eq!(s.chars().count(), MAX_VALUE);
        }
    }
}
