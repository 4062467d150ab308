//! Kubernetes metadata: which pod and container each process belongs to.
//!
//! Like other node agents, gostray watches only the pods scheduled on its
//! own node (`spec.nodeName` field selector, node name from `NODE_NAME`)
//! and joins them to processes by the container ID in the process's cgroup.
//! Outside Kubernetes nothing here runs and labels are simply absent: the
//! agent never fails for lack of an API server.

pub mod cgroup;
mod guard;
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
    /// Failed exchanges with the API server, by [`ApiError`].
    pub api_errors: [AtomicU64; ApiError::ALL.len()],
}

/// Why an exchange with the API server failed: the `reason` label of
/// `gostray_kube_api_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiError {
    /// No connection, or it failed before an answer.
    Connection,
    /// No answer (or no complete list) within the request timeout.
    Timeout,
    /// An HTTP error status, or an error `Status` in a watch stream.
    Status,
    /// Not JSON, or not the objects asked for.
    Decode,
    /// A document over the size bound.
    TooLarge,
    /// An answer cut off part-way (a truncated list or watch stream).
    Stream,
}

impl ApiError {
    pub const ALL: [Self; 6] = [
        Self::Connection,
        Self::Timeout,
        Self::Status,
        Self::Decode,
        Self::TooLarge,
        Self::Stream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Timeout => "timeout",
            Self::Status => "status",
            Self::Decode => "decode",
            Self::TooLarge => "too_large",
            Self::Stream => "stream",
        }
    }
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

    pub fn count(&self, why: ApiError) {
        self.api_errors[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `e` under `why`, logs it, and hands it back.
    fn failed(
        &self,
        why: ApiError,
        e: Box<dyn std::error::Error + Send + Sync>,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        self.count(why);
        tracing::warn!(reason = why.as_str(), error = %e, "Kubernetes API");
        e
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where the API server is and how to reach it; see [`client`].
pub struct Connection(kube::Config);

/// Finds the API server: `--kube-api` names it (no credentials: a local
/// `kubectl proxy` or a test server); else in-cluster config or KUBECONFIG.
/// `None`, with one log line, when there is no Kubernetes here.
pub async fn client(api: Option<&str>) -> Option<Connection> {
    let mut config = match api {
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
    // A SYN into the void is given up on sooner than kube's 30 s.
    config.connect_timeout = Some(guard::REQUEST_TIMEOUT);
    // kube would retry 429/503/504 itself, up to 15 times and as long as a
    // Retry-After asks, unseen; the watcher's back-off handles them instead,
    // and each is counted.
    config.default_retry = false;
    // Checked here so that a broken configuration is one line at start.
    match kube::client::ClientBuilder::try_from(config.clone()) {
        Ok(_) => Some(Connection(config)),
        Err(e) => {
            tracing::warn!(error = %e, "Kubernetes client; pod labels disabled");
            None
        }
    }
}

/// Keeps `kube`'s pod cache current until the task is dropped: list, then
/// watch from the list's resourceVersion, relisting when the server says the
/// version is gone, with exponential back-off on errors.
pub async fn watch_pods(conn: Connection, node: Option<String>, kube: Arc<Kube>) {
    let client = match kube::client::ClientBuilder::try_from(conn.0) {
        Ok(b) => b.with_layer(&guard::Guard::new(kube.clone())).build(),
        Err(e) => {
            tracing::warn!(error = %e, "Kubernetes client; pod labels disabled");
            return;
        }
    };
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
                if let Some(why) = unseen(&e) {
                    kube.count(why);
                }
                tracing::warn!(error = %e, "pod watch");
            }
        }
    }
}

/// The API error behind a watcher error that the guard could not see: it
/// sees transport and HTTP status, not what a 200 body says.
fn unseen(e: &watcher::Error) -> Option<ApiError> {
    use kube::Error as K;
    use watcher::Error as W;
    match e {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e)
            if matches!(
                e,
                K::SerdeError(_) | K::FromUtf8(_) | K::LinesCodecMaxLineLengthExceeded
            ) =>
        {
            Some(ApiError::Decode)
        }
        W::NoResourceVersion => Some(ApiError::Decode),
        // A Status line in a watch stream, in place of an event.
        W::WatchFailed(K::Api(_)) => Some(ApiError::Status),
        // 410 Gone is the protocol asking for a relist, not a failure.
        W::WatchError(status) if status.code != 410 => Some(ApiError::Status),
        _ => None,
    }
}
