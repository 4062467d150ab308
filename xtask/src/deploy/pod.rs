//! A Go process made to look like a container of a Kubernetes pod, for the
//! end to end: moved into a cgroup named as the kubelet (systemd driver) and
//! containerd name a container's, with a stand-in API server on loopback
//! listing that pod for the agent's `--kube-api` (list, then a watch that
//! stays open and quiet). The agent labels the process with the pod's
//! `namespace`, `pod` and `container`, as on a node.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context};
use serde_json::json;

/// The node the agent believes it runs on (`NODE_NAME`).
pub(super) const NODE: &str = "node-a";
/// The pod the process is placed in, and its container.
pub(super) const NAMESPACE: &str = "shop";
pub(super) const POD: &str = "cart-7d9f8b6c5d-x2x9q";
pub(super) const CONTAINER: &str = "cart";
const POD_UID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const CONTAINER_ID: &str = "5c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";

/// The process's fake container cgroup and the API server naming its pod;
/// both go when dropped (the process must be gone first for the cgroup).
pub(super) struct FakePod {
    pub port: u16,
    stop: Arc<AtomicBool>,
    scope: PathBuf,
    slice: PathBuf,
}

impl FakePod {
    /// Moves `pid` into the pod's container cgroup and starts the API server.
    pub(super) fn start(pid: u32) -> anyhow::Result<Self> {
        let slice = cgroup2_mount()?.join(format!("gostray-e2e-{}.slice", std::process::id()));
        let scope = slice
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                POD_UID.replace('-', "_")
            ))
            .join(format!("cri-containerd-{CONTAINER_ID}.scope"));
        fs::create_dir_all(&scope).with_context(|| format!("creating {}", scope.display()))?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let stop = Arc::new(AtomicBool::new(false));
        let pod = Self {
            port: listener.local_addr()?.port(),
            stop: stop.clone(),
            scope,
            slice,
        };
        // Never create the file: anywhere but on a cgroup fs that would
        // "succeed" and move nothing.
        let mut procs = fs::OpenOptions::new()
            .write(true)
            .open(pod.scope.join("cgroup.procs"))?;
        write!(procs, "{pid}").with_context(|| format!("moving {pid} into its pod's cgroup"))?;
        let now = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !now.contains("cri-containerd-") {
            bail!("{pid} not moved into its pod's cgroup: {now}");
        }
        listener.set_nonblocking(true)?;
        thread::spawn(move || serve(&listener, &stop));
        Ok(pod)
    }

    pub(super) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A killed process leaves its cgroup a moment after it is reaped.
        for _ in 0..100 {
            if fs::remove_dir(&self.scope).is_ok() || !self.scope.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if let Some(pod) = self.scope.parent() {
            let _ = fs::remove_dir(pod);
        }
        let _ = fs::remove_dir(&self.slice);
    }
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on a hybrid host.
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

fn serve(listener: &TcpListener, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let stop = stop.clone();
                thread::spawn(move || {
                    let _ = answer(stream, &stop);
                });
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Answers the requests of one connection (the client keeps it alive from
/// list to watch): the pod list, then a watch held open with no events.
fn answer(stream: TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header == "\r\n" {
                break;
            }
        }
        let target = line.split(' ').nth(1).unwrap_or_default();
        if !target.starts_with("/api/v1/pods") {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#;
            write!(out, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
            continue;
        }
        if target.contains("watch=true") || target.contains("watch=1") {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            out.flush()?;
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(200));
            }
            return Ok(());
        }
        let body = json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "100"},
            "items": [pod()],
        })
        .to_string();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

/// The pod as the API server lists it: one running container whose ID is
/// the cgroup's.
fn pod() -> serde_json::Value {
    json!({
        "metadata": {
            "name": POD, "namespace": NAMESPACE, "uid": POD_UID, "resourceVersion": "99",
            "labels": {"app": CONTAINER, "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "cart-7d9f8b6c5d", "uid": "rs-uid", "controller": true}]
        },
        "spec": {"nodeName": NODE, "containers": [{"name": CONTAINER, "image": "example/cart:1"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": CONTAINER, "ready": true, "restartCount": 0,
                "image": "example/cart:1", "imageID": "example/cart@sha256:00",
                "containerID": format!("containerd://{CONTAINER_ID}"),
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        }
    })
}
