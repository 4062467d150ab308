//! What each tick of each server's load sends: bounded, on 127.0.0.1.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context;

use super::{
    encode::{base64, rfc3339},
    http::{Body, Conn, Counts},
};
use crate::util::{encode, Guard};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `PromQL` over what it scrapes, one instant query a second; a range query
/// every five, the targets, rules, alerts and series every ten.
const QUERIES: [&str; 6] = [
    "up",
    "sum by (job) (up)",
    "rate(go_gc_duration_seconds_count[30s])",
    "topk(3, go_goroutines)",
    "histogram_quantile(0.9, sum by (le) (rate(prometheus_http_request_duration_seconds_bucket[1m])))",
    "job:go_goroutines:sum",
];

pub fn prometheus(counts: &Counts, conn: &mut Conn, n: u64) {
    let q = QUERIES[n as usize % QUERIES.len()];
    counts.get(conn, &format!("/api/v1/query?query={}", encode(q)));
    if n.is_multiple_of(5) {
        let end = unix_now();
        let path = format!(
            "/api/v1/query_range?query={}&start={:.0}&end={end:.0}&step=5",
            encode("sum by (job) (go_goroutines)"),
            end - 300.0
        );
        counts.get(conn, &path);
    }
    if n.is_multiple_of(10) {
        for path in [
            "/api/v1/targets",
            "/api/v1/rules",
            "/api/v1/alerts",
            "/api/v1/series?match[]=up",
        ] {
            counts.get(conn, path);
        }
    }
}

/// Four alerts every three seconds over eight instances, each ending 20 s
/// later unless posted again; every 30 s a two-minute silence of one
/// instance replaces the last one.
pub fn alertmanager(counts: &Counts, conn: &mut Conn, silence: &mut Option<String>, n: u64) {
    let now = unix_now() as u64;
    let alerts: Vec<String> = (0..4)
        .map(|i| {
            format!(
                r#"{{"labels":{{"alertname":"Load","instance":"i{}"}},"annotations":{{"n":"{n}"}},"endsAt":"{}"}}"#,
                (n * 4 + i) % 8,
                rfc3339(now + 20)
            )
        })
        .collect();
    counts.send(
        conn,
        "POST",
        "/api/v2/alerts",
        &Body::Json(&format!("[{}]", alerts.join(","))),
    );
    counts.get(conn, "/api/v2/alerts/groups");
    if !n.is_multiple_of(10) {
        return;
    }
    let body = format!(
        r#"{{"matchers":[{{"name":"instance","value":"i{}","isRegex":false}}],"startsAt":"{}","endsAt":"{}","createdBy":"gostray","comment":"load"}}"#,
        n / 10 % 8,
        rfc3339(now),
        rfc3339(now + 120)
    );
    let created = counts.send(conn, "POST", "/api/v2/silences", &Body::Json(&body));
    if let Some(old) = silence.take() {
        counts.send(
            conn,
            "DELETE",
            &format!("/api/v2/silence/{old}"),
            &Body::None,
        );
    }
    *silence = created
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| Some(v.get("silenceID")?.as_str()?.to_string()));
    counts.get(conn, "/api/v2/silences");
}

/// `etcdctl watch --prefix /load/` from the same suite, held open the
/// whole run: every put, lease expiry and delete below reaches it.
pub fn etcd_watch(root: &Path, port: u16) -> anyhow::Result<Guard> {
    let child = Command::new(root.join("usr/bin/etcdctl"))
        .args([
            &format!("--endpoints=127.0.0.1:{port}"),
            "watch",
            "--prefix",
            "/load/",
        ])
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcdctl watch")?;
    Ok(Guard(child))
}

/// A put a second over 16 keys (v3 JSON gateway); every five a range
/// read, every ten a 3 s lease and a key on it, every 30 a delete.
pub fn etcd(counts: &Counts, conn: &mut Conn, n: u64) {
    let put = |conn: &mut Conn, key: &str, extra: &str| {
        let body = format!(
            r#"{{"key":"{}","value":"{}"{extra}}}"#,
            base64(key),
            base64(&n.to_string())
        );
        counts.send(conn, "POST", "/v3/kv/put", &Body::Json(&body))
    };
    put(conn, &format!("/load/k{}", n % 16), "");
    if n.is_multiple_of(5) {
        let body = format!(
            r#"{{"key":"{}","range_end":"{}","limit":8}}"#,
            base64("/load/"),
            base64("/load0")
        );
        counts.send(conn, "POST", "/v3/kv/range", &Body::Json(&body));
    }
    if n.is_multiple_of(10) {
        let lease = counts
            .send(conn, "POST", "/v3/lease/grant", &Body::Json(r#"{"TTL":3}"#))
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| Some(v.get("ID")?.as_str()?.to_string()));
        if let Some(id) = lease {
            put(conn, "/load/leased", &format!(r#","lease":"{id}""#));
        }
    }
    if n.is_multiple_of(30) {
        let body = format!(
            r#"{{"key":"{}"}}"#,
            base64(&format!("/load/k{}", n / 30 % 16))
        );
        counts.send(conn, "POST", "/v3/kv/deleterange", &Body::Json(&body));
    }
}

/// Four kept-alive clients taking turns, 20 requests a second in all: the
/// page, the 64 KiB file every 20th; each client reconnects every 30 s.
pub fn caddy(counts: &Counts, conns: &mut [Conn], n: u64) {
    let conn = &mut conns[n as usize % 4];
    counts.get(
        conn,
        if n.is_multiple_of(20) {
            "/big.bin"
        } else {
            "/index.html"
        },
    );
    if n % 600 < 4 {
        conn.close();
    }
}

/// A push every two seconds over four groups, the pushed metrics read
/// every ten, one group deleted every twenty.
pub fn pushgateway(counts: &Counts, conn: &mut Conn, n: u64) {
    let body = format!(
        "# TYPE load_pushes counter\nload_pushes {n}\n# TYPE load_value gauge\nload_value{{kind=\"a\"}} {}\n",
        n % 7
    );
    counts.send(
        conn,
        "POST",
        &format!("/metrics/job/load/instance/i{}", n % 4),
        &Body::Text(&body),
    );
    if n.is_multiple_of(5) {
        counts.get(conn, "/api/v1/metrics");
    }
    if n.is_multiple_of(10) {
        counts.send(
            conn,
            "DELETE",
            &format!("/metrics/job/load/instance/i{}", n / 10 % 4),
            &Body::None,
        );
    }
}
