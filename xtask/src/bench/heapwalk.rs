//! What a heap walk costs: the agent's CPU, the bytes it reads and its
//! peak memory per walk of a heap of a given size, and the watched
//! program's throughput while it is walked, as a ratio to the same process
//! before the agent came, measured in one run.

use std::{path::Path, thread, time::Duration};

use anyhow::bail;

use super::proc::{self, Agent, Workload};

/// One heap size.
#[derive(Debug, Default, Clone, Copy)]
pub struct Walk {
    pub heap_mib: u64,
    pub walks: u64,
    /// Per walk: agent CPU seconds (user + system, the whole agent), wall
    /// seconds of the walk itself, bytes read.
    pub cpu_s: f64,
    pub wall_s: f64,
    pub bytes: f64,
    /// The agent's peak RSS over the run.
    pub peak_rss: u64,
    /// The program's ns per unit of work before the agent, and while walked.
    pub bare_ns: f64,
    pub walked_ns: f64,
    /// Goroutines the walks proved leaked (the program leaks exactly one).
    pub leaked: f64,
}

/// Walks `mib` MiB of heap in `binary` (the `walkheap` fixture) `walks`
/// times, with no other scan work than the walk's own.
pub fn measure(agent: &Path, binary: &Path, mib: u64, walks: u64) -> anyhow::Result<Walk> {
    let mut w = Workload::start(binary, &[mib.to_string()])?;
    let bare_ns = w.measure()?;
    let a = Agent::start(
        agent,
        &[
            "--pid".into(),
            w.pid().to_string(),
            "--leak-after".into(),
            "1s".into(),
            "--scan-interval".into(),
            "1s".into(),
            "--probes".into(),
            "none".into(),
            // The default bound (1 GiB read) would put the 1 GiB heap over
            // budget: the cost of the walk itself is what is measured.
            "--walk-max-bytes".into(),
            format!("{}MiB", mib * 2 + 256),
        ],
    )?;
    let done = |a: &Agent| {
        a.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("gostray_heap_walks_total{result=\"done\"} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // The first walk waits for --leak-after; time a window of `walks`.
    let first = wait_walks(&a, 1.0, &done)?;
    let cpu0 = proc::cpu_seconds(a.pid());
    let m0 = a.metrics();
    // The program's throughput over the window of `walks` walks, their
    // spacing included: what a service sees while it is watched.
    let target = first + walks as f64;
    let mut rates = Vec::new();
    while done(&a) < target {
        rates.push(w.measure()?);
        if rates.len() > 120 {
            bail!("fewer than {walks} heap walks in 4 min");
        }
    }
    let walked_ns = rates.iter().sum::<f64>() / rates.len() as f64;
    let m1 = a.metrics();
    let cpu = proc::cpu_seconds(a.pid()) - cpu0;
    let n = done(&a) - first;
    let delta = |name: &str| proc::sample(&m1, name) - proc::sample(&m0, name);
    Ok(Walk {
        heap_mib: mib,
        walks: n as u64,
        cpu_s: cpu / n,
        wall_s: delta("gostray_heap_walk_seconds_total") / n,
        bytes: delta("gostray_heap_walk_read_bytes_total") / n,
        peak_rss: proc::peak_rss_bytes(a.pid()),
        bare_ns,
        walked_ns,
        leaked: proc::sample(&m1, "gostray_leaked_goroutines"),
    })
}

/// Waits until the agent has done at least `n` walks; returns how many.
fn wait_walks(a: &Agent, n: f64, done: &dyn Fn(&Agent) -> f64) -> anyhow::Result<f64> {
    for _ in 0..600 {
        let d = done(a);
        if d >= n {
            return Ok(d);
        }
        thread::sleep(Duration::from_millis(200));
    }
    let over = a
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("gostray_heap_walks_total{result=\"over_budget\"} "))
        .unwrap_or("0")
        .trim()
        .to_string();
    bail!("fewer than {n} heap walks in 120 s ({over} over budget)")
}

/// The report's section for the walks, and its goal lines: a 1 GiB heap
/// walked in at most 2 s of agent CPU, the program keeping ≥ 98% of its
/// throughput while walked.
pub fn section(walks: &[Walk]) -> (String, Vec<String>) {
    use std::fmt::Write as _;
    let mut s = String::from(
        "\n## Heap walks (the leak prover)\n\nThe `walkheap` program: a linked heap of 64-byte nodes held by a global, one goroutine parked on a channel the heap holds, one on a channel nothing holds. The agent runs with `--probes none --leak-after 1s --scan-interval 1s`, so its CPU is the walks' (and the 1 s table scans of a few goroutines). *agent CPU/walk*: the whole agent's user + system time over the window, per walk; *walk*: the walk's own wall time; *throughput*: the program's work rate over the window (walks and their spacing) as a ratio to the same process before the agent started.\n\n| heap | walks | agent CPU/walk s | walk s | read/walk MiB | agent peak RSS MiB | throughput walked/bare | leaked found |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let mut goals = Vec::new();
    for w in walks {
        let ratio = w.bare_ns / w.walked_ns;
        let _ = writeln!(
            s,
            "| {} MiB | {} | {:.2} | {:.2} | {:.0} | {:.1} | {ratio:.3} | {} |",
            w.heap_mib,
            w.walks,
            w.cpu_s,
            w.wall_s,
            w.bytes / f64::from(1u32 << 20),
            w.peak_rss as f64 / f64::from(1u32 << 20),
            w.leaked,
        );
        let verdict = |met: bool| if met { "met" } else { "**missed**" };
        if w.heap_mib >= 1024 {
            goals.push(format!(
                "- {}: a {} MiB heap walked in ≤ 2 s of agent CPU: {:.2} s",
                verdict(w.cpu_s <= 2.0),
                w.heap_mib,
                w.cpu_s
            ));
        }
        goals.push(format!(
            "- {}: the program keeps ≥ 98% of its throughput while its {} MiB heap is walked: {:.1}%",
            verdict(ratio >= 0.98),
            w.heap_mib,
            ratio * 100.0
        ));
    }
    (s, goals)
}
