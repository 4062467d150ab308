//! The overhead budget (`--overhead-budget`, issue 14) as the watched
//! program feels it: each workload bare, with the agent's default budget
//! once it has acted, and with the budget off, alternated run by run; and
//! whether the agent's estimate of its own cost matches the CPU the
//! program really spent.

use std::{fmt::Write as _, path::Path};

use super::{
    overhead::BUDGETED,
    report::Goals,
    stats::Series,
    window::{self, Budget, Timing, Window},
};

/// A workload the budget rows load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// bench-micro in this mode.
    Micro(&'static str),
    /// bench-http under wrk; `true`: a new connection per request.
    Http(bool),
}

pub const KINDS: [Kind; 4] = [
    Kind::Micro("spawn"),
    Kind::Micro("handoff"),
    Kind::Http(false),
    Kind::Http(true),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Micro(mode) => mode,
            Kind::Http(false) => "net/http keep-alive",
            Kind::Http(true) => "net/http new per request",
        }
    }
}

/// One workload's windows under each setup, paired by repetition.
pub struct Row {
    pub kind: Kind,
    pub bare: Vec<Window>,
    pub budget: Vec<Window>,
    pub off: Vec<Window>,
}

/// Every workload, `reps` times bare, budgeted and off, one after another.
pub fn measure(
    agent: &Path,
    micro_bin: &Path,
    http_bin: &Path,
    timing: Timing,
    reps: usize,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for kind in KINDS {
        let mut row = Row {
            kind,
            bare: Vec::new(),
            budget: Vec::new(),
            off: Vec::new(),
        };
        let run = |budget| match kind {
            Kind::Micro(mode) => window::micro(agent, budget, micro_bin, mode, timing),
            Kind::Http(close) => window::http(agent, budget, http_bin, close, timing),
        };
        for _ in 0..reps {
            row.bare.push(run(Budget::Bare)?);
            row.budget.push(run(Budget::Default)?);
            row.off.push(run(Budget::Off)?);
        }
        rows.push(row);
    }
    Ok(rows)
}

fn series(v: &[Window], f: fn(&Window) -> f64) -> Series {
    Series(v.iter().map(f).collect())
}

/// The section's two tables (after the budget acted, and the estimate
/// against the measured cost) for every Go line, and their goals.
pub fn section(lines: &[(String, Vec<Row>)], timing: Timing) -> (String, Vec<String>) {
    let mut s = String::new();
    let mut goals = Goals(Vec::new());
    let _ = writeln!(s, "\n## Overhead budget (`--overhead-budget`)\n\nThe agent measures what its probes cost each watched executable (kernel hit counts per probe group times a per-hit cost it calibrates at start, against the process's CPU from /proc) and detaches a group (`lifecycle`, `park`, `misuse`; never `fatal`) that stays over budget, 1% of the process's CPU by default; it re-arms the group later. The workloads run continuously here: bare, with the agent as it ships after {:.0} s under load (a group over budget for 3 s is detached), and with `--overhead-budget off` (every group attached, as in the rows above), each measured over a final {:.0} s window and alternated run by run (bare and off settle for {:.0} s first).\n", timing.warmup.as_secs_f64(), timing.window.as_secs_f64(), timing.settle.as_secs_f64());
    let _ = writeln!(s, "### After the budget has acted\n\nspawn and handoff: ns per operation (batches of 1000 goroutines that exit at once; values over an unbuffered channel), *agent/bare* above 1 is slower; net/http: requests per second under wrk (1 thread, 8 connections), below 1 is slower. *detached*: the groups the agent had detached at some poll of the window, in how many of the runs.\n");
    let _ = writeln!(s, "| Go | workload | bare | agent (default budget) | agent/bare | detached | budget off | off/bare |\n| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (go, rows) in lines {
        for r in rows {
            after_budget_row(&mut s, &mut goals, go, r);
        }
    }
    let _ = writeln!(s, "\n### The agent's estimate against the measured cost\n\nWith `--overhead-budget off`, paired with the bare run of the same repetition. *CPU/op*: the watched process's utime + stime (/proc/PID/stat) over the window, per operation (per request for net/http). *measured*: (CPU/op with the probes − bare CPU/op) / CPU/op with the probes. *estimated*: the sum over groups of `cost_ratio` from `/api/v1/overhead`, averaged over the window's polls.\n");
    let _ = writeln!(s, "| Go | workload | bare CPU ns/op | probed CPU ns/op | measured cost ratio | estimated cost ratio | estimated/measured |\n| --- | --- | --- | --- | --- | --- | --- |");
    for (go, rows) in lines {
        for r in rows {
            estimate_row(&mut s, &mut goals, go, r);
        }
    }
    (s, goals.0)
}

fn after_budget_row(s: &mut String, goals: &mut Goals, go: &str, r: &Row) {
    let (bare, budget, off, digits) = match r.kind {
        Kind::Micro(_) => {
            let ns = |w: &Window| w.ns_per_op;
            (
                series(&r.bare, ns),
                series(&r.budget, ns),
                series(&r.off, ns),
                1,
            )
        }
        Kind::Http(_) => {
            let rps = |w: &Window| 1e9 / w.ns_per_op;
            (
                series(&r.bare, rps),
                series(&r.budget, rps),
                series(&r.off, rps),
                0,
            )
        }
    };
    let ratio = budget.ratio_to(&bare);
    let detached: Vec<String> = BUDGETED
        .iter()
        .filter_map(|g| {
            let n = r.budget.iter().filter(|w| w.detached(g)).count();
            (n > 0).then(|| format!("{g} {n}/{}", r.budget.len()))
        })
        .collect();
    let _ = writeln!(
        s,
        "| {go} | {} | {} | {} | {} | {} | {} | {} |",
        r.kind.name(),
        bare.show(digits),
        budget.show(digits),
        ratio.show(3),
        if detached.is_empty() {
            "none".into()
        } else {
            detached.join(", ")
        },
        off.show(digits),
        off.ratio_to(&bare).show(3),
    );
    let m = ratio.median();
    match r.kind {
        Kind::Micro(mode) => goals.check(
            m <= 1.3,
            &format!("Go {go} {mode} with the default budget, after it has acted: ≤ 1.3× bare ns/op"),
            format!("{m:.2}×"),
        ),
        Kind::Http(_) => goals.check(
            m >= 0.97,
            &format!(
                "Go {go} {} with the default budget, after it has acted, keeps ≥ 97% of bare throughput",
                r.kind.name()
            ),
            format!("{:.1}%", m * 100.0),
        ),
    }
}

fn estimate_row(s: &mut String, goals: &mut Goals, go: &str, r: &Row) {
    let cpu = |w: &Window| w.cpu_ns_per_op;
    let (bare, off) = (series(&r.bare, cpu), series(&r.off, cpu));
    let measured = Series(
        off.0
            .iter()
            .zip(&bare.0)
            .map(|(o, b)| (o - b) / o)
            .collect(),
    );
    let estimated = series(&r.off, Window::estimate);
    let honesty = estimated.ratio_to(&measured);
    let _ = writeln!(
        s,
        "| {go} | {} | {} | {} | {} | {} | {} |",
        r.kind.name(),
        bare.show(1),
        off.show(1),
        measured.show(3),
        estimated.show(3),
        honesty.show(2),
    );
    let x = honesty.median();
    goals.check(
        (0.5..=2.0).contains(&x),
        &format!(
            "Go {go} {}: the agent's estimated cost ratio within 2× of the measured one",
            r.kind.name()
        ),
        format!(
            "{:.3} estimated vs {:.3} measured ({x:.2}×)",
            estimated.median(),
            measured.median()
        ),
    );
}
