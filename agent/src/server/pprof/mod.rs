//! `/debug/pprof/goroutineleak`: the leaked goroutines as a pprof profile,
//! in the format of the runtime's own `goroutineleak` profile (Go ≥ 1.26),
//! so that `go tool pprof`, Pyroscope and Grafana show them as they are.
//!
//! One sample per leak group: its count, the stack of its oldest member,
//! and the labels `pid`, `exe`, `namespace`, `pod`, `container` (when
//! known), `verdict` and `wait_reason`. Query: `pid=N`, or `namespace=…`
//! and/or `pod=…` (all given must match); `suspect=1` adds suspects;
//! `debug=1` gives the runtime's text format instead of gzipped protobuf.

mod profile;
mod proto;
mod text;

use crate::{
    lock::lock,
    metrics::series::SeriesKey,
    state::Shared,
    tracker::{group::Group, Site, Verdict},
};

use profile::{CountProfile, Sample};

/// The sample type, as the runtime names this profile.
const NAME: &str = "goroutineleak";

/// The whole HTTP response to `target` (the request's path and query).
pub fn respond(target: &str, shared: &Shared) -> Vec<u8> {
    let query = match Query::parse(target.split_once('?').map_or("", |(_, q)| q)) {
        Ok(q) => q,
        Err(why) => return super::reply(400, "text/plain", &format!("{why}\n")),
    };
    let time_nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let built = {
        // Lock order: tracker, then series.
        let tracker = lock(&shared.tracker);
        let series = lock(&shared.series);
        let targets = tracker.processes().map(|(pid, p)| Target {
            pid,
            exe: &p.info.exe,
            key: series.key(pid),
            groups: &p.groups,
        });
        build(targets, &query, time_nanos)
    };
    match built {
        Err(why) => {
            let hint =
                if (query.namespace.is_some() || query.pod.is_some()) && !shared.kube.enabled() {
                    " (this agent has no Kubernetes API, so no pod metadata)"
                } else {
                    ""
                };
            super::reply(404, "text/plain", &format!("{why}{hint}\n"))
        }
        Ok(p) if query.debug > 0 => {
            super::reply(200, "text/plain; charset=utf-8", &text::render(&p))
        }
        Ok(p) => super::reply_bytes(200, "application/octet-stream", &proto::gzipped(&p)),
    }
}

/// A watched process as the profile sees it.
struct Target<'a> {
    pid: u32,
    exe: &'a str,
    /// Its series labels: pod metadata when known. A process folded past
    /// `--max-series` has none, and no `namespace`/`pod` selects it.
    key: Option<&'a SeriesKey>,
    groups: &'a [Group],
}

/// What the request asked for.
#[derive(Debug, Default, PartialEq)]
struct Query {
    pid: Option<u32>,
    namespace: Option<String>,
    pod: Option<String>,
    suspects: bool,
    debug: u32,
}

impl Query {
    /// Parses `a=b&c=d`; unknown parameters (`seconds`, `gc`, which
    /// net/http/pprof takes) are ignored.
    fn parse(query: &str) -> Result<Self, String> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            match key {
                "pid" => {
                    q.pid = Some(value.parse().map_err(|_| "pid must be a process ID")?);
                }
                "namespace" => q.namespace = Some(value),
                "pod" => q.pod = Some(value),
                "suspect" => q.suspects = matches!(value.as_str(), "1" | "true"),
                "debug" => q.debug = value.parse().map_err(|_| "debug must be 0 or 1")?,
                _ => {}
            }
        }
        Ok(q)
    }

    fn selects(&self, t: &Target) -> bool {
        let label = |f: fn(&SeriesKey) -> &str| t.key.map_or("", f);
        self.pid.is_none_or(|pid| pid == t.pid)
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| ns == label(|k| &k.namespace))
            && self.pod.as_ref().is_none_or(|pod| pod == label(|k| &k.pod))
    }

    /// The selector as asked, for a 404.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(pid) = self.pid {
            parts.push(format!("pid={pid}"));
        }
        for (name, value) in [("namespace", &self.namespace), ("pod", &self.pod)] {
            if let Some(v) = value {
                parts.push(format!("{name}={v:?}"));
            }
        }
        parts.join(" ")
    }
}

/// Percent-decoding of a query value (`+` is a space, as in forms).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The profile of the selected processes; an error when a selector matched
/// no watched process.
fn build<'a>(
    targets: impl Iterator<Item = Target<'a>>,
    query: &Query,
    time_nanos: i64,
) -> Result<CountProfile, String> {
    let mut chosen: Vec<Target> = targets.filter(|t| query.selects(t)).collect();
    let selector = query.describe();
    if chosen.is_empty() && !selector.is_empty() {
        return Err(format!("no watched process with {selector}"));
    }
    chosen.sort_by_key(|t| t.pid);
    let mut groups: Vec<(&Target, &Group)> = chosen
        .iter()
        .flat_map(|t| t.groups.iter().map(move |g| (t, g)))
        .filter(|(_, g)| g.verdict == Verdict::Leak || query.suspects)
        .collect();
    // As the runtime orders its samples: the largest count first (then
    // leaks before suspects, then by process).
    groups.sort_by_key(|(t, g)| (std::cmp::Reverse(g.count), g.verdict, t.pid));
    let samples = groups
        .into_iter()
        .map(|(t, g)| Sample {
            count: g.count,
            stack: stack(g),
            labels: labels(t, g),
        })
        .collect();
    let binary = match chosen.as_slice() {
        [first, rest @ ..] if rest.iter().all(|t| t.exe == first.exe) => first.exe.to_string(),
        _ => String::new(),
    };
    let what = if query.suspects {
        "leaked and suspect goroutines"
    } else {
        "leaked goroutines"
    };
    let mut comments = vec![format!("gostray: {what}, one sample per group")];
    if !selector.is_empty() {
        comments.push(format!("selected: {selector}"));
    }
    Ok(CountProfile {
        name: NAME,
        samples,
        binary,
        comments,
        time_nanos,
    })
}

/// The oldest member's stack; where no scan walked it, the blocking site.
/// Without `runtime.goexit`, which the runtime leaves out of its profiles.
fn stack(g: &Group) -> Vec<Site> {
    let stack: Vec<Site> = g
        .stack
        .iter()
        .filter(|s| s.function != "runtime.goexit")
        .cloned()
        .collect();
    if stack.is_empty() {
        vec![g.blocked_at.clone()]
    } else {
        stack
    }
}

fn labels(t: &Target, g: &Group) -> Vec<(&'static str, String)> {
    let mut out = vec![("pid", t.pid.to_string()), ("exe", t.exe.to_string())];
    // The pod labels the metrics carry (`exe` is the process's own: a
    // folded series says `_folded`).
    let pod = t.key.map(SeriesKey::labels).unwrap_or_default();
    out.extend(
        pod.into_iter()
            .filter(|(name, _)| matches!(*name, "namespace" | "pod" | "container")),
    );
    let verdict = match g.verdict {
        Verdict::Leak => "leak",
        Verdict::Suspect => "suspect",
    };
    out.push(("verdict", verdict.to_string()));
    out.push(("wait_reason", g.wait_reason.clone()));
    out
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
