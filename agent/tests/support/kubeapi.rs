//! A stand-in Kubernetes API server on loopback that speaks the real
//! list/watch protocol for pods: a list answers a `PodList` with a
//! `resourceVersion`; `?watch=true` answers a chunked stream of
//! `{"type": …, "object": Pod}` lines that stays open, fed by the test.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::Duration,
};

use serde_json::{json, Value};

#[derive(Default)]
struct State {
    /// Pods returned by a list (no `kind`/`apiVersion` per item, as real servers do).
    listed: Vec<Value>,
    /// Watch events in order; every watch connection streams them all.
    events: Vec<Value>,
    /// Request lines seen, for the test to check what the client asked.
    requests: Vec<String>,
    /// Bumped by [`KubeApi::expire`]: open watches end with 410 Gone.
    generation: u64,
}

pub struct KubeApi {
    pub port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
}

impl KubeApi {
    pub fn start(listed: Vec<Value>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new((
            Mutex::new(State {
                listed,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Self { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Streams `{"type": kind, "object": pod}` to every watcher.
    pub fn push(&self, kind: &str, pod: &Value) {
        let (lock, cv) = &*self.state;
        lock.lock()
            .unwrap()
            .events
            .push(json!({"type": kind, "object": pod}));
        cv.notify_all();
    }

    /// Forgets history, as an API server does when its watch cache moves
    /// on: open watches get a 410 Gone `ERROR` event and close, and the next
    /// list returns `listed`.
    pub fn expire(&self, listed: Vec<Value>) {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        s.generation += 1;
        s.listed = listed;
        s.events.clear();
        cv.notify_all();
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.0.lock().unwrap().requests.clone()
    }
}

fn serve(stream: TcpStream, state: &(Mutex<State>, Condvar)) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    // Keep-alive: the client reuses one connection for list, then watch.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
        }
        let target = line.split(' ').nth(1).unwrap_or_default().to_string();
        state.0.lock().unwrap().requests.push(target.clone());
        if !target.starts_with("/api/v1/pods") {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#;
            write!(out, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())?;
            continue;
        }
        if target.contains("watch=true") || target.contains("watch=1") {
            return stream_events(out, state);
        }
        let (items, generation) = {
            let s = state.0.lock().unwrap();
            (s.listed.clone(), s.generation)
        };
        let body = json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": (100 + generation * 100).to_string()},
            "items": items,
        })
        .to_string();
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

fn stream_events(mut out: TcpStream, state: &(Mutex<State>, Condvar)) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    out.flush()?;
    let (lock, cv) = state;
    let mut sent = 0;
    let generation = lock.lock().unwrap().generation;
    loop {
        let pending: Vec<Value> = {
            let mut s = lock.lock().unwrap();
            while s.events.len() == sent && s.generation == generation {
                s = cv.wait_timeout(s, Duration::from_secs(1)).unwrap().0;
            }
            if s.generation != generation {
                drop(s);
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "Expired", "code": 410,
                    "message": "too old resource version"}});
                let line = format!("{gone}\n");
                write!(out, "{:x}\r\n{line}\r\n0\r\n\r\n", line.len())?;
                return out.flush();
            }
            s.events[sent..].to_vec()
        };
        for e in pending {
            let line = format!("{e}\n");
            write!(out, "{:x}\r\n{line}\r\n", line.len())?;
            sent += 1;
        }
        out.flush()?;
    }
}

/// A `Pod` object as the API server serves it, owned by a `Deployment`'s
/// `ReplicaSet`, with one running container whose ID is `container_id`.
pub fn pod(namespace: &str, name: &str, uid: &str, container_id: &str, rv: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid, "resourceVersion": rv,
            "labels": {"app": "cart", "pod-template-hash": "7d9f8b6c5d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "cart-7d9f8b6c5d", "uid": "rs-uid", "controller": true,
                "blockOwnerDeletion": true}]
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "cart", "image": "example/cart:1"}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "cart", "ready": true, "restartCount": 0,
                "image": "example/cart:1", "imageID": "example/cart@sha256:00",
                "containerID": format!("containerd://{container_id}"),
                "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
        }
    })
}
