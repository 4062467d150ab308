//! The run as a Markdown page: what ran, a row per (suite, server), every
//! group with a verdict and its evidence. Printed, and with `--write`
//! saved as docs/SERVERS.md.

use std::{fmt::Write as _, process::Command, sync::atomic::Ordering::Relaxed};

use super::{debian::Suite, debian::Unpacked, ServersArgs, Watched};
use crate::util;

const LOAD: &str = "Load, all on 127.0.0.1: **prometheus** scrapes itself and every other server of its suite every second, evaluates its rules every two (one alert always firing, sent to the alertmanager) and answers a PromQL query a second from the load thread (a range query every five, targets, rules, alerts and series every ten); **alertmanager**: four alerts POSTed every 3 s (API v2) over eight instances, a two-minute silence created and the previous one deleted every 30 s; **etcd**: `etcdctl watch --prefix` (same suite) held open, a put a second through the v3 JSON gateway, range reads, 3 s leases expiring, deletes; **caddy**: a page and a 64 KiB file to four kept-alive HTTP/1.1 clients, 20 requests a second, each client reconnecting every 30 s; **pushgateway**: a push every 2 s over four groups, reads, deletes; **node-exporter**: the scrapes, and a GET /metrics every 5 s.";

/// The whole page.
pub fn markdown(
    watched: &[Watched],
    trees: &[(Suite, Unpacked)],
    args: &ServersArgs,
    minutes: f64,
) -> String {
    let date = util::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(s, "# Debian's Go servers under load, watched by gostray\n");
    let _ = writeln!(
        s,
        "Run on {} with `{}`; {minutes:.1} min in all (fetch, build, start, run, stop). Each server runs from its Debian package (downloaded with `apt-get download`, unpacked, not installed) on loopback, with an agent of its own (`gostray run --pid PID --leak-after {}`) whose `/api/v1/leaks` is read every 10 s. Peaks are the most groups of a kind in one report; *held* groups are goroutines parked past --leak-after whose primitive a heap walk found still reachable (no verdict), when the agent reports them. *heap walks*: `gostray_heap_walks_total` of the server's agent, `done` and the other results.\n",
        date.trim(),
        command_line(args),
        args.leak_after
    );
    for (suite, tree) in trees {
        let packages: Vec<String> = tree
            .packages
            .iter()
            .map(|(p, v)| format!("{p} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "- {} ({}): {}",
            suite.release(),
            suite.name(),
            packages.join(", ")
        );
    }
    let _ = writeln!(s, "\n{LOAD}\n");
    let _ = writeln!(s, "| suite | server | package | Go | goroutines (end / peak) | load requests (failed) | reports | peak leak groups | peak suspect groups | peak held groups | heap walks done (other) |");
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for w in watched {
        s += &row(w);
    }
    if watched.iter().any(|w| w.seen.layout_guessed) {
        s += "\n\\* The binary is stripped and the agent's offsets table has no entry for its exact Go release: the runtime's struct offsets are another release's of the same line (`gostray_binaries_layout_guessed`; the agent logs which).\n";
    }
    groups(&mut s, watched);
    failures(&mut s, watched);
    s
}

/// One server's row of the table.
fn row(w: &Watched) -> String {
    let seen = &w.seen;
    let walks = |done: bool| -> u64 {
        seen.heap_walks
            .iter()
            .filter(|(r, _)| (r.as_str() == "done") == done)
            .map(|(_, n)| n)
            .sum()
    };
    let mut reports = seen.reports.to_string();
    if seen.failed_polls > 0 {
        let _ = write!(reports, ", {} failed", seen.failed_polls);
    }
    if let Some(d) = &w.died {
        let _ = write!(reports, ", stopped early: {d}");
    }
    format!(
        "| {} | {} | {} | {}{} | {} / {} | {} ({}) | {reports} | {} | {} | {} | {} ({}) |\n",
        w.suite.name(),
        w.kind.name(),
        w.version,
        seen.go_version,
        if seen.layout_guessed { "\\*" } else { "" },
        seen.goroutines,
        seen.peak_goroutines,
        w.counts.ok.load(Relaxed),
        w.counts.failed.load(Relaxed),
        seen.peak_leaks,
        seen.peak_suspects,
        seen.peak_held.map_or("n/a".into(), |n| n.to_string()),
        walks(true),
        walks(false),
    )
}

/// Every group that had a verdict, worst first, with its evidence.
fn groups(s: &mut String, watched: &[Watched]) {
    let _ = writeln!(s, "\n## Groups with a verdict\n");
    let mut any = false;
    for verdict in ["leak", "suspect"] {
        for w in watched {
            for g in w.seen.groups.values().filter(|g| g.verdict == verdict) {
                any = true;
                let _ = writeln!(
                    s,
                    "### {}: {verdict}, {} goroutine(s) at most\n\n- created by `{}`, blocked in `{}`, wait reason `{}`\n- in {} of {} reports{}\n- evidence:",
                    w.name(),
                    g.peak,
                    g.start_function,
                    g.blocked_at,
                    g.wait_reason,
                    g.reports,
                    w.seen.reports,
                    if g.at_end { ", still at the end" } else { ", gone by the end" },
                );
                for e in &g.evidence {
                    let _ = writeln!(s, "  - {e}");
                }
                s.push('\n');
            }
        }
    }
    if !any {
        let _ = writeln!(s, "None: no group was called a leak or a suspect.\n");
    }
}

/// The last failed request of each server whose load saw failures.
fn failures(s: &mut String, watched: &[Watched]) {
    let failed: Vec<&Watched> = watched
        .iter()
        .filter(|w| w.counts.failed.load(Relaxed) > 0)
        .collect();
    if failed.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Load failures\n");
    for w in failed {
        let _ = writeln!(
            s,
            "- {}: last: {}",
            w.name(),
            w.counts.last_failure.lock().expect("counts")
        );
    }
}

/// The command as it was given.
fn command_line(args: &ServersArgs) -> String {
    let mut c = format!("cargo xtask servers --minutes {}", args.minutes);
    let suites: Vec<&str> = args.suite.iter().map(|s| s.name()).collect();
    if suites != ["bookworm", "trixie"] {
        let _ = write!(c, " --suite {}", suites.join(","));
    }
    if !args.only.is_empty() {
        let only: Vec<&str> = args.only.iter().map(|k| k.name()).collect();
        let _ = write!(c, " --only {}", only.join(","));
    }
    if args.leak_after != "30s" {
        let _ = write!(c, " --leak-after {}", args.leak_after);
    }
    if args.write {
        c += " --write";
    }
    c
}

pub fn write(text: &str) -> anyhow::Result<()> {
    let path = util::root().join("docs/SERVERS.md");
    std::fs::write(&path, text)?;
    eprintln!("    wrote {}", path.display());
    Ok(())
}
