//! A deliberately small HTTP/1.1 server: GET only, bounded request size, one
//! request per connection. Nothing here writes state or reads a file named
//! by the client.

mod pprof;
mod ratelimit;
pub mod report;

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use prometheus_client::registry::Registry;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::lock::lock;
use crate::{
    metrics,
    metrics::text,
    server::ratelimit::{RateLimiter, RETRY_AFTER},
    state::Shared,
};

const MAX_REQUEST: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; the rest wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Binds `addr`; the returned future serves until dropped.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let registry = Arc::new(metrics::registry(shared.clone()));
    let limiter = Arc::new(RateLimiter::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (shared, registry, limiter) = (shared.clone(), registry.clone(), limiter.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &shared, &registry, &limiter).await {
                tracing::debug!(error = %e, "http connection");
            }
            drop(permit);
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    shared: &Shared,
    registry: &Registry,
    limiter: &RateLimiter,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok::<_, std::io::Error>(Some(end));
            }
            if buf.len() >= MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or(Ok(None))?;
    let response = match head_end {
        None => reply(400, "text/plain", "bad request\n"),
        Some(end) => route(
            &String::from_utf8_lossy(&buf[..end]),
            shared,
            registry,
            limiter,
        ),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn route(head: &str, shared: &Shared, registry: &Registry, limiter: &RateLimiter) -> Vec<u8> {
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if method != "GET" && method != "HEAD" {
        return reply(405, "text/plain", "only GET\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if matches!(
        path,
        "/metrics" | "/api/v1/leaks" | "/debug/pprof/goroutineleak"
    ) && !limiter.allow()
    {
        return reply(429, "text/plain", "too many requests\n");
    }
    match path {
        "/metrics" => {
            let om = metrics::render(registry);
            if text::wants_openmetrics(head) {
                reply(200, metrics::CONTENT_TYPE, &om)
            } else {
                reply(200, text::CONTENT_TYPE, &text::from_openmetrics(&om))
            }
        }
        "/api/v1/leaks" => {
            let query = target.split_once('?').map_or("", |(_, q)| q);
            let filter = match report::Filter::from_query(query) {
                Ok(f) => f,
                Err(e) => return reply(400, "text/plain", &format!("{e}\n")),
            };
            let mut report = {
                let tracker = lock(&shared.tracker);
                report::build(&tracker, &filter)
            };
            report.deaths = lock(&shared.deaths)
                .workloads()
                .into_iter()
                .map(|(_, w)| w.clone())
                .collect();
            report.probes_detached = report::DetachedGroup::all(&lock(&shared.overhead));
            filter.apply(&mut report);
            match serde_json::to_string_pretty(&report) {
                Ok(json) => reply(200, "application/json", &json),
                Err(_) => reply(500, "text/plain", "report failed\n"),
            }
        }
        "/api/v1/overhead" => match serde_json::to_string_pretty(&*lock(&shared.overhead)) {
            Ok(json) => reply(200, "application/json", &json),
            Err(_) => reply(500, "text/plain", "report failed\n"),
        },
        "/debug/pprof/goroutineleak" => pprof::respond(target, shared),
        "/healthz" => reply(200, "text/plain", "ok\n"),
        "/readyz" if shared.ready.load(Ordering::Relaxed) => reply(200, "text/plain", "ready\n"),
        "/readyz" => reply(503, "text/plain", "not ready\n"),
        "/" => reply(
            200,
            "text/plain",
            "gostray: see /metrics, /api/v1/leaks, /api/v1/overhead, /debug/pprof/goroutineleak, /healthz, /readyz\n",
        ),
        _ => reply(404, "text/plain", "not found\n"),
    }
}

fn reply(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    reply_bytes(status, content_type, body.as_bytes())
}

fn reply_bytes(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let retry = if status == 429 {
        format!("Retry-After: {}\r\n", RETRY_AFTER.as_secs())
    } else {
        String::new()
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{retry}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refuses() {
        let shared = Arc::new(Shared::new(10, 10));
        let registry = metrics::registry(shared.clone());
        let limiter = RateLimiter::new(1.0, 3.0);
        let get =
            |head: &str| String::from_utf8(route(head, &shared, &registry, &limiter)).unwrap();
        assert!(get("GET /healthz HTTP/1.1").starts_with("HTTP/1.1 200"));
        assert!(get("GET /readyz HTTP/1.1").starts_with("HTTP/1.1 503"));
        shared.ready.store(true, Ordering::Relaxed);
        assert!(get("GET /readyz HTTP/1.1").starts_with("HTTP/1.1 200"));
        assert!(get("POST /metrics HTTP/1.1").starts_with("HTTP/1.1 405"));
        assert!(get("GET /../etc/passwd HTTP/1.1").starts_with("HTTP/1.1 404"));
        let metrics = get("GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text");
        assert!(metrics.contains("gostray_build_info{version="), "{metrics}");
        assert!(metrics.contains("# EOF"));
        let plain = get("GET /metrics HTTP/1.1");
        assert!(plain.contains("text/plain; version=0.0.4"), "{plain}");
        assert!(plain.contains("# TYPE gostray_stray_events_total counter"));
        assert!(!plain.contains("# EOF"));
        // The burst of 3 is spent after the leak report: the next render is
        // refused, health is not.
        let refused = get("GET /api/v1/leaks HTTP/1.1");
        assert!(refused.starts_with("HTTP/1.1 200"), "{refused}");
        let refused = get("GET /metrics HTTP/1.1");
        assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
        assert!(refused.contains("Retry-After: 1\r\n"), "{refused}");
        assert!(get("GET /healthz HTTP/1.1").starts_with("HTTP/1.1 200"));
    }
}
