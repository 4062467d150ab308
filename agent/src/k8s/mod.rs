//! Kubernetes metadata: which pod and container each process belongs to.
//!
//! Like other node agents, gostray watches only the pods scheduled on its
//! own node (`spec.nodeName` field selector, node name from `NODE_NAME`)
//! and joins them to processes by the container ID in the process's cgroup.
//! Outside Kubernetes nothing here runs and labels are simply absent: the
//! agent never fails for lack of an API server.

pub mod cgroup;
mod pods;

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, RwLock,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{watcher, WatchStreamExt};
pub use pods::{ContainerMeta, PodIndex, PodMeta};

/// The pod cache and its health, shared by the watch task (writer), the
/// control loop and the metrics (readers).
#[derive(Debug, Default)]
pub struct Kube {
    pub index: RwLock<PodIndex>,
    /// A watch was started (some API server was configured).
    pub enabled: AtomicBool,
    /// The initial list completed and the cache is current.
    pub synced: AtomicBool,
    pub watch_errors: AtomicU64,
}

impl Kube {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The container a placement names, if the cache knows it.
    pub fn lookup(&self, at: &cgroup::Placement) -> Option<ContainerMeta> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .lookup(at)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Builds a client: `--kube-api` names the server (no credentials: a local
/// `kubectl proxy` or a test server); else in-cluster config or KUBECONFIG.
/// `None`, with one log line, when there is no Kubernetes here.
pub async fn client(api: Option<&str>) -> Option<kube::Client> {
    let config = match api {
        Some(url) => match url.parse::<http::Uri>() {
            Ok(uri) => kube::Config::new(uri),
            Err(e) => {
                tracing::warn!(url, error = %e, "--kube-api is not a URL; pod labels disabled");
                return None;
            }
        },
        None => match kube::Config::infer().await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(reason = %e, "no Kubernetes configuration; pod labels disabled");
                return None;
            }
        },
    };
    match kube::Client::try_from(config) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "Kubernetes client; pod labels disabled");
            None
        }
    }
}

/// Keeps `kube`'s pod cache current until the task is dropped: list, then
/// watch from the list's resourceVersion, relisting when the server says the
/// version is gone, with exponential back-off on errors.
pub async fn watch_pods(client: kube::Client, node: Option<String>, kube: Arc<Kube>) {
    let mut config = watcher::Config::default();
    if let Some(node) = &node {
        config = config.fields(&format!("spec.nodeName={node}"));
    } else {
        tracing::warn!("NODE_NAME is not set: watching the pods of every node");
    }
    let api: kube::Api<Pod> = kube::Api::all(client);
    let mut events = watcher(api, config).default_backoff().boxed();
    // A relist is gathered aside and swapped in whole, so lookups never see
    // a half-built cache.
    let mut relist: Option<Vec<Pod>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => relist = Some(Vec::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(list) = relist.as_mut().filter(|l| l.len() < pods::MAX_PODS) {
                    list.push(pod);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let list = relist.take().unwrap_or_default();
                kube.write().replace(&list);
                kube.synced.store(true, Ordering::Relaxed);
                tracing::info!(pods = list.len(), node = ?node, "pod cache synced");
            }
            Ok(watcher::Event::Apply(pod)) => kube.write().apply(&pod),
            Ok(watcher::Event::Delete(pod)) => kube.write().delete(&pod),
            Err(e) => {
                kube.watch_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "pod watch");
            }
        }
    }
}
