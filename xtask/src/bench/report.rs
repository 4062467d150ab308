//! The bench's Markdown report: the machine, one table per kind of cost,
//! and each goal with its figure and verdict.

use std::{fmt::Write, process::Command};

use super::{
    agentcost::Memory, heapwalk::Walk, http::Load, stats::Series, LineResult, MicroResult, GROUPS,
};
use crate::util::output;

/// Per probe hit, ns: `(x − bare) / hits`, paired run by run.
fn per_hit(x: &Series, bare: &Series, hits: f64) -> Series {
    Series(
        x.0.iter()
            .zip(&bare.0)
            .map(|(a, b)| (a - b) / hits)
            .collect(),
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cmd = |c: &str, a: &[&str]| {
        output(Command::new(c).args(a))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    format!(
        "{} UTC; {} CPUs ({cpu}), Linux {}",
        cmd("date", &["-u", "+%Y-%m-%d %H:%M"]),
        cmd("nproc", &[]),
        cmd("uname", &["-r"])
    )
}

/// Goal lines collected while rendering.
pub struct Goals(pub Vec<String>);

impl Goals {
    pub fn check(&mut self, met: bool, what: &str, figure: impl std::fmt::Display) {
        let verdict = if met { "met" } else { "**missed**" };
        self.0.push(format!("- {verdict}: {what}: {figure}"));
    }

    /// net/http keeps ≥ 97% of bare throughput with keep-alive, ≥ 90% with
    /// a new connection per request (`how`: the agent's setup, if not the default).
    fn http(&mut self, go: &str, close: bool, how: &str, ratio: &Series) {
        let (goal, kind) = if close {
            (0.90, "new per request")
        } else {
            (0.97, "keep-alive")
        };
        self.check(
            ratio.median() >= goal,
            &format!(
                "Go {go} net/http {kind}{how} keeps ≥ {:.0}% of bare throughput",
                goal * 100.0
            ),
            format!("{:.1}%", ratio.median() * 100.0),
        );
    }
}

pub fn render(
    lines: &[LineResult],
    memory: &[Memory],
    attach: &[Series; 4],
    walks: &[Walk],
    budget: &(String, Vec<String>),
    reps: usize,
) -> String {
    let mut s = String::new();
    let mut goals = Goals(Vec::new());
    let go: Vec<&str> = lines.iter().map(|l| l.go.as_str()).collect();
    let _ = writeln!(s, "# gostray benchmarks\n\n`cargo xtask bench`, {}; Go {}; {reps} alternating repetitions, median ±half the range. The machine is shared and noisy: compare ratios within one run, not figures across runs.\n", machine(), go.join(", "));
    let _ = writeln!(s, "## Cost to the watched program\n\nns per operation in-process (spawn: 1M goroutines that exit at once; handoff: 1M values over an unbuffered channel; buffered: 20M sends that never block). *floor*: the same probes attached but filtering the workload out (a PID lookup and return): the least any uprobe at these instructions costs. *hits/op*: probe runs per operation, counted by the kernel (`run_cnt`); *in BPF*: time inside the programs per hit (`run_time_ns`), the rest of a hit is the uprobe trap itself. bpftrace: `uprobe:BIN:runtime.newproc1` and `runtime.goexit0` counting (2 hits per goroutine). The fatal-path probes (`runtime.throw`, `runtime.fatal`, `runtime.fatalpanic`, group `fatal`) are attached in every run with the agent and must cost nothing, so must never fire: after each workload (these and the net/http ones) the kernel's own count of their runs in any process, `gostray_fatal_probe_hits_total`, must be 0, or the benchmark fails.\n");
    let _ = writeln!(s, "| Go | workload | bare | agent | agent/bare | floor | hits/op | agent ns/hit | floor ns/hit | agent/floor | in BPF ns/hit | bpftrace | bpftrace ns/hit |");
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for l in lines {
        for m in &l.micro {
            micro_row(&mut s, &mut goals, &l.go, m);
        }
    }
    let _ = writeln!(
        s,
        "\n## net/http under wrk (loopback, 1 thread, 8 connections)\n"
    );
    let _ = writeln!(s, "| Go | connections | bare req/s | agent req/s | agent/bare | bare p99 µs | agent p99 µs | p99 agent/bare | agent events/s | floor/bare |");
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for l in lines {
        for h in &l.http {
            let f = |v: &[Load], g: fn(&Load) -> f64| Series(v.iter().map(g).collect());
            let (br, ar) = (f(&h.bare, |x| x.rps), f(&h.agent, |x| x.rps));
            let (bp, ap) = (f(&h.bare, |x| x.p99_us), f(&h.agent, |x| x.p99_us));
            let ratio = ar.ratio_to(&br);
            let kind = if h.close {
                "new per request"
            } else {
                "keep-alive"
            };
            let _ = writeln!(
                s,
                "| {} | {kind} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.go,
                br.show(0),
                ar.show(0),
                ratio.show(3),
                bp.show(0),
                ap.show(0),
                ap.ratio_to(&bp).show(2),
                f(&h.agent, |x| x.events_per_s).show(0),
                f(&h.floor, |x| x.rps).ratio_to(&br).show(3)
            );
            goals.http(&l.go, h.close, "", &ratio);
        }
    }
    groups_section(&mut s, &mut goals, lines);
    agent_section(&mut s, &mut goals, lines, memory, attach);
    let (walk_text, walk_goals) = super::heapwalk::section(walks);
    s.push_str(&walk_text);
    goals.0.extend(walk_goals);
    s.push_str(&budget.0);
    goals.0.extend(budget.1.iter().cloned());
    let _ = writeln!(s, "\n## Goals\n\n{}", goals.0.join("\n"));
    let _ = write!(s, "\n{}", include_str!("notes.md"));
    s
}

fn micro_row(s: &mut String, goals: &mut Goals, go: &str, m: &MicroResult) {
    let ratio = m.agent.ratio_to(&m.bare);
    let (agent_hit, floor_hit) = if m.hits >= 0.01 {
        (
            per_hit(&m.agent, &m.bare, m.hits),
            per_hit(&m.floor, &m.bare, m.hits),
        )
    } else {
        (Series::default(), Series::default())
    };
    let vs_floor = Series(vec![agent_hit.median() / floor_hit.median()]);
    let bt_hit = per_hit(&m.bpftrace, &m.bare, 2.0);
    let _ = writeln!(
        s,
        "| {go} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
        m.mode,
        m.bare.show(1),
        m.agent.show(1),
        ratio.show(3),
        m.floor.show(1),
        m.hits,
        agent_hit.show(0),
        floor_hit.show(0),
        if agent_hit.0.is_empty() {
            "–".into()
        } else {
            format!("{:.2}", vs_floor.median())
        },
        if m.hits >= 0.01 {
            format!("{:.0}", m.prog_ns)
        } else {
            "–".into()
        },
        m.bpftrace.show(0),
        bt_hit.show(0),
    );
    if m.hits >= 0.01 {
        goals.check(
            vs_floor.median() <= 1.3,
            &format!("Go {go} {}: probe cost per hit ≤ 1.3× the floor", m.mode),
            format!(
                "{:.0} ns vs {:.0} ns ({:.2}×)",
                agent_hit.median(),
                floor_hit.median(),
                vs_floor.median()
            ),
        );
    } else {
        // The kernel's count is the proof; the ratio only has to stay within
        // this machine's noise: what it does to two setups that fire nothing
        // (bare against floor, both 0 hits here), widened by the ratio's own
        // run-to-run half range (at least 5%).
        let half_range = (ratio.spread_pct() / 200.0).max(0.05);
        let noise = m.floor.ratio_to(&m.bare).median().max(1.0) + half_range;
        goals.check(
            m.hits < 0.001 && ratio.median() <= noise,
            &format!("Go {go} {}: no probe fires, no measurable cost", m.mode),
            format!(
                "{:.4} hits/op, agent/bare {} (noise bound {noise:.3})",
                m.hits,
                ratio.show(3)
            ),
        );
    }
    if !m.bpftrace.0.is_empty() && !agent_hit.0.is_empty() {
        let x = bt_hit.median() / agent_hit.median();
        goals.check(
            x >= 10.0,
            &format!("Go {go} {}: ≥ 10× cheaper per event than bpftrace", m.mode),
            format!(
                "{x:.1}× ({:.0} ns vs {:.0} ns per hit)",
                bt_hit.median(),
                agent_hit.median()
            ),
        );
    }
}

/// Each probe group alone, and none (the scan-only mode), as the
/// workload's time (in-process) or throughput (net/http) relative to bare.
fn groups_section(s: &mut String, goals: &mut Goals, lines: &[LineResult]) {
    let _ = writeln!(s, "\n## Probe groups (`--probes`)\n\nEach group alone against bare, paired run by run: time per operation for the in-process workloads (above 1 is slower), requests per second for net/http (below 1 is slower). *all* is the default; *none* attaches no probe and counts from the goroutine table scans.\n");
    let _ = writeln!(s, "| Go | workload | all | {} |", GROUPS.join(" | "));
    let _ = writeln!(s, "| --- | --- | --- |{}", " --- |".repeat(GROUPS.len()));
    for l in lines {
        for m in &l.micro {
            let cells: Vec<String> = m
                .groups
                .iter()
                .map(|g| g.ratio_to(&m.bare).show(3))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                l.go,
                m.mode,
                m.agent.ratio_to(&m.bare).show(3),
                cells.join(" | ")
            );
        }
        for h in &l.http {
            let rps = |v: &[Load]| Series(v.iter().map(|x| x.rps).collect());
            let bare = rps(&h.bare);
            let cells: Vec<String> = h
                .groups
                .iter()
                .map(|g| rps(g).ratio_to(&bare).show(3))
                .collect();
            let kind = if h.close {
                "new per request"
            } else {
                "keep-alive"
            };
            let _ = writeln!(
                s,
                "| {} | net/http {kind} | {} | {} |",
                l.go,
                rps(&h.agent).ratio_to(&bare).show(3),
                cells.join(" | ")
            );
            let none = GROUPS
                .iter()
                .position(|&g| g == "none")
                .expect("none is a group");
            let ratio = rps(&h.groups[none]).ratio_to(&bare);
            goals.http(&l.go, h.close, " with `--probes none`", &ratio);
        }
    }
}

fn agent_section(
    s: &mut String,
    goals: &mut Goals,
    lines: &[LineResult],
    memory: &[Memory],
    attach: &[Series; 4],
) {
    let _ = writeln!(s, "\n## The agent itself\n");
    let _ = writeln!(s, "| figure | value |\n| --- | --- |");
    for l in lines {
        for m in &l.micro {
            // Only spawn sends an event per hit: parks are throttled in the
            // kernel (one event per goroutine per 100 ms) and buffered sends
            // fire nothing, so a CPU share per hit would mean nothing there.
            if m.mode == "spawn" && !m.cpu_per_100k.0.is_empty() {
                let _ = writeln!(
                    s,
                    "| Go {} {}: agent CPU, % of one core per 100k events/s (at {} events/s) | {} |",
                    l.go,
                    m.mode,
                    m.events_per_s.show(0),
                    m.cpu_per_100k.show(2)
                );
            }
            let _ = writeln!(
                s,
                "| Go {} {}: events lost (4 MiB ring buffer) | {} |",
                l.go, m.mode, m.lost
            );
        }
    }
    if let Some(m) = lines
        .iter()
        .flat_map(|l| &l.micro)
        .find(|m| m.mode == "spawn" && !m.cpu_per_100k.0.is_empty())
    {
        goals.check(
            m.cpu_per_100k.median() <= 5.0,
            "agent ≤ 5% of one core at 100k events/s",
            format!("{:.2}%", m.cpu_per_100k.median()),
        );
    }
    let lost: f64 = lines.iter().flat_map(|l| &l.micro).map(|m| m.lost).sum();
    goals.check(
        lost == 0.0,
        "no events lost at the workloads' highest rate",
        format!("{lost} lost"),
    );
    for m in memory {
        let per_g = m.rss.saturating_sub(m.base_rss) as f64 / m.n as f64;
        let _ = writeln!(s, "| RSS with {} parked goroutines tracked (before they existed) | {:.1} MiB ({:.1} MiB), {per_g:.0} B per goroutine |", m.n, m.rss as f64 / 1_048_576.0, m.base_rss as f64 / 1_048_576.0);
        let _ = writeln!(
            s,
            "| one memory scan of {} goroutines | {:.1} ms |",
            m.n,
            m.scan_s * 1e3
        );
        goals.check(
            m.rss as f64 <= 64.0 * 1_048_576.0 + 128.0 * m.n as f64,
            &format!("RSS ≤ 64 MiB + 128 B × {} goroutines", m.n),
            format!("{:.1} MiB", m.rss as f64 / 1_048_576.0),
        );
        if m.n == 100_000 {
            goals.check(
                m.scan_s <= 0.05,
                "a scan of 100k goroutines ≤ 50 ms",
                format!("{:.1} ms", m.scan_s * 1e3),
            );
        }
    }
    for (i, what) in ["small binary", "/usr/bin/prometheus"]
        .into_iter()
        .enumerate()
    {
        let _ = writeln!(
            s,
            "| exec → PID in /metrics, {what} (`--binary`: exec tracepoint, default 1 s walk as fallback), ms | {} |",
            attach[2 * i].show(0)
        );
        let _ = writeln!(
            s,
            "| exec → PID in /metrics, {what} (same, `--rescan-interval 100ms`), ms | {} |",
            attach[2 * i + 1].show(0)
        );
    }
    goals.check(
        attach[0].median() <= 100.0,
        "attach within 100 ms of exec (small binary)",
        format!("{:.0} ms", attach[0].median()),
    );
    goals.check(
        attach[2].median() <= 300.0,
        "attach within 300 ms of exec (prometheus)",
        format!("{:.0} ms", attach[2].median()),
    );
}

/// `doc` with its section under `heading` (`## …`, up to the next `## `
/// heading) replaced by `section`, or `section` put before the goals when
/// `doc` has none: what a run of one section (`--only`) writes.
pub fn splice(doc: &str, heading: &str, section: &str) -> String {
    let heading = format!("\n{heading}");
    let section = section.trim_end_matches('\n');
    if let Some(at) = doc.find(&heading) {
        let rest = &doc[at + 1..];
        let end = rest.find("\n## ").map_or(doc.len(), |e| at + 1 + e);
        return format!("{}{section}\n{}", &doc[..at], &doc[end..]);
    }
    match doc.find("\n## Goals") {
        Some(at) => format!("{}{section}\n{}", &doc[..at], &doc[at..]),
        None => format!("{doc}{section}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::splice;

    #[test]
    fn splice_replaces_the_section_or_inserts_it_before_the_goals() {
        let doc = "# B\n\n## A\n\na\n\n## Goals\n\ng\n";
        let h = "## Heap walks";
        let once = splice(doc, h, "\n## Heap walks (x)\n\nrows 1\n");
        assert_eq!(
            once,
            "# B\n\n## A\n\na\n\n## Heap walks (x)\n\nrows 1\n\n## Goals\n\ng\n"
        );
        let twice = splice(&once, h, "\n## Heap walks (x)\n\nrows 2\n");
        assert_eq!(twice, once.replace("rows 1", "rows 2"));
        let last = splice(
            "# B\n\n## Heap walks\n\nold\n",
            h,
            "\n## Heap walks\n\nnew\n",
        );
        assert_eq!(last, "# B\n\n## Heap walks\n\nnew\n");
        let sub = splice(
            "# B\n\n## O\n\n### a\n\nold\n\n## Goals\n",
            "## O",
            "\n## O\n\n### a\n\nnew\n",
        );
        assert_eq!(sub, "# B\n\n## O\n\n### a\n\nnew\n\n## Goals\n");
    }
}
