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
    /// How the server misbehaves, set by [`KubeApi::fault`].
    fault: Fault,
    /// List requests still to be held unanswered (see [`KubeApi::hang_lists`]).
    hang_lists: usize,
}

/// Ways the stand-in server can fail.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Fault {
    #[default]
    None,
    /// Every answer (a list, a watch's headers) held this long first.
    Slow(Duration),
    /// Not listening: connections are refused and open watches cut off.
    Down,
    /// Lists answered with these raw bytes (status line onwards), then closed.
    List(String),
    /// Lists answered with `200 OK` and this many bytes of JSON-looking junk.
    HugeList(usize),
    /// Watches answered with these raw bytes, then closed; lists are fine.
    Watch(String),
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
        listener.set_nonblocking(true).unwrap();
        let shared = state.clone();
        thread::spawn(move || accept(Some(listener), port, &shared));
        Self { port, state }
    }

    /// Misbehaves from now on (`Fault::None` to stop); open watches are cut.
    pub fn fault(&self, fault: Fault) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().fault = fault;
        cv.notify_all();
    }

    /// The next `n` lists are read and never answered (the connection is
    /// held open for two minutes).
    pub fn hang_lists(&self, n: usize) {
        self.state.0.lock().unwrap().hang_lists = n;
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

/// Accepts until the test ends; while [`Fault::Down`] the port is closed.
fn accept(mut listener: Option<TcpListener>, port: u16, state: &Arc<(Mutex<State>, Condvar)>) {
    loop {
        let down = state.0.lock().unwrap().fault == Fault::Down;
        if down {
            listener = None;
        } else if listener.is_none() {
            listener = TcpListener::bind(("127.0.0.1", port)).ok();
            if let Some(l) = &listener {
                l.set_nonblocking(true).unwrap();
            }
        }
        match listener.as_ref().map(TcpListener::accept) {
            Some(Ok((stream, _))) => {
                stream.set_nonblocking(false).unwrap();
                let state = state.clone();
                thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
            _ => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Holds an answer while the fault says slow (less if the fault changes).
fn hold(state: &(Mutex<State>, Condvar)) {
    let (lock, cv) = state;
    let mut s = lock.lock().unwrap();
    if let Fault::Slow(d) = s.fault {
        let until = std::time::Instant::now() + d;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            if !matches!(s.fault, Fault::Slow(_)) {
                break;
            }
            s = cv.wait_timeout(s, left).unwrap().0;
        }
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
        let fault = state.0.lock().unwrap().fault.clone();
        if fault == Fault::Down {
            return Ok(());
        }
        hold(state);
        if target.contains("watch=true") || target.contains("watch=1") {
            if let Fault::Watch(raw) = fault {
                return out.write_all(raw.as_bytes());
            }
            return stream_events(out, state);
        }
        match fault {
            Fault::List(raw) => return out.write_all(raw.as_bytes()),
            Fault::HugeList(n) => return huge(out, n),
            _ => {}
        }
        let hang = {
            let mut s = state.0.lock().unwrap();
            let hang = s.hang_lists > 0;
            s.hang_lists = s.hang_lists.saturating_sub(1);
            hang
        };
        if hang {
            thread::sleep(Duration::from_mins(2));
            return Ok(());
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

/// `200 OK` with `n` bytes of one never-ending JSON document.
fn huge(mut out: TcpStream, n: usize) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
    )?;
    let block = "[".repeat(1 << 16);
    let mut left = n;
    while left > 0 {
        let k = left.min(block.len());
        out.write_all(&block.as_bytes()[..k])?;
        left -= k;
    }
    Ok(())
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
                if s.fault == Fault::Down {
                    // Cut off mid-stream, without the final chunk.
                    return Ok(());
                }
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
