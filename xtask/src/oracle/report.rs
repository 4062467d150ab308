//! The score table.

use std::fmt::Write as _;

use super::{
    cases::{Program, Score},
    run::Outcome,
    same::{self, SameProcess},
};

/// Totals: (expected, found, false leaks).
pub(super) fn totals(
    outcomes: &[Outcome],
    pick: impl Fn(&Outcome) -> &Score,
) -> (usize, usize, usize) {
    outcomes.iter().map(pick).fold((0, 0, 0), |(e, f, x), s| {
        (e + s.expected, f + s.found, x + s.false_leaks.len())
    })
}

/// The same-process comparison summed over the cases.
#[derive(Debug, Default, Clone, Copy)]
pub struct SameTotals {
    /// Cases compared.
    pub compared: usize,
    /// Cases whose toolchain has no `goroutineleak` profile.
    pub absent: usize,
    /// Cases that did not answer the request (`main` never came back).
    pub unanswered: usize,
    /// |A|, the goroutines the agent called leaked.
    pub agent: usize,
    /// |A ∖ R|, those the runtime did not mark leaked (goal: 0).
    pub outside: usize,
    /// |A ∩ R|.
    pub covered: usize,
    /// |R|, the goroutines the runtime marked leaked.
    pub runtime: usize,
    /// |A ∖ R| and |R| at the runtime's first leak-detection GC.
    pub outside_first: usize,
    pub runtime_first: usize,
}

impl SameTotals {
    /// One line for the caller: |A|, |A ∖ R|, |A ∩ R| / |R|.
    pub fn brief(&self) -> String {
        if self.compared == 0 {
            return format!(
                "same process n/a ({} case(s) without the profile, {} without an answer)",
                self.absent, self.unanswered
            );
        }
        format!(
            "same process: |A| = {}, |A∖R| = {}, |A∩R|/|R| = {}/{} ({:.1}%)",
            self.agent,
            self.outside,
            self.covered,
            self.runtime,
            pct(self.covered, self.runtime)
        )
    }

    /// Whether the comparison holds: the agent's set inside the runtime's.
    /// No case answering at all means the harness broke, not that it held.
    pub fn subset(&self) -> bool {
        self.outside == 0 && self.compared + self.absent > 0
    }
}

pub(super) fn same_totals(outcomes: &[Outcome]) -> SameTotals {
    let mut t = SameTotals::default();
    for o in outcomes {
        match &o.same {
            SameProcess::NoProfile => t.absent += 1,
            SameProcess::NoAnswer => t.unanswered += 1,
            SameProcess::Compared(c) => {
                t.compared += 1;
                t.agent += c.agent;
                t.outside += c.outside.len();
                t.covered += c.covered;
                t.runtime += c.runtime;
                t.outside_first += c.outside_first;
                t.runtime_first += c.runtime_first;
            }
        }
    }
    t
}

/// The summary line of the same-process comparison.
fn same_line(t: &SameTotals, go_version: &str) -> String {
    if t.compared == 0 && t.absent > 0 {
        return format!("Same process: n/a, Go {go_version} has no `goroutineleak` profile.");
    }
    format!(
        "Same process (the runtime's `goroutineleak` profile of the agent's process, asked for once the agent's verdicts were read, again while a request marked more, at most {} times), {} cases compared, {} n/a: the agent called {} goroutines leaked, {} of them not leaked per the runtime (goal 0; {} at its first leak-detection GC, which marked {}); they cover {}/{} of the runtime's leaked goroutines ({:.1}%, goal ≥ 95%).",
        same::MAX_LEAK_GCS,
        t.compared,
        t.absent + t.unanswered,
        t.agent,
        t.outside,
        t.outside_first,
        t.runtime_first,
        t.covered,
        t.runtime,
        pct(t.covered, t.runtime),
    )
}

/// The three same-process cells of a case's row.
fn same_cells(same: &SameProcess) -> [String; 3] {
    match same {
        SameProcess::NoProfile => ["n/a (no profile)".into(), "n/a".into(), "n/a".into()],
        SameProcess::NoAnswer => ["n/a (no answer)".into(), "n/a".into(), "n/a".into()],
        SameProcess::Compared(c) => [
            if c.runtime_first == c.runtime {
                c.runtime.to_string()
            } else {
                format!(
                    "{} ({} at the first of {} GCs)",
                    c.runtime, c.runtime_first, c.gcs
                )
            },
            if c.outside.is_empty() {
                "yes".into()
            } else {
                format!("no ({} of {})", c.outside.len(), c.agent)
            },
            format!("{}/{}", c.covered, c.runtime),
        ],
    }
}

pub(super) fn pct(found: usize, expected: usize) -> f64 {
    if expected == 0 {
        100.0
    } else {
        found as f64 * 100.0 / expected as f64
    }
}

pub(super) fn table(outcomes: &[Outcome], go_version: &str) -> String {
    let mut s = String::new();
    let (e, f, x) = totals(outcomes, |o| &o.agent);
    let (ge, gf, gx) = totals(outcomes, |o| &o.go);
    let _ = writeln!(s, "Go {go_version}, {} cases: gostray found {f}/{e} expected leaks ({:.1}%), {x} false leak group(s); the runtime's own detector found {gf}/{ge} ({:.1}%), {gx} unexpected.\n", outcomes.len(), pct(f, e), pct(gf, ge));
    let _ = writeln!(s, "{}\n", same_line(&same_totals(outcomes), go_version));
    let _ = writeln!(s, "| case | kind | expected | gostray found | gostray false | runtime found | same process: runtime leaked | agent ⊆ runtime | agent covers | gostray missed / false |");
    let _ = writeln!(
        s,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for o in outcomes {
        let notes: Vec<String> = o
            .agent
            .missed
            .iter()
            .map(|m| format!("missed `{m}`"))
            .chain(o.agent.false_leaks.iter().map(|l| format!("false `{l}`")))
            .chain(outside(&o.same).map(|l| format!("not leaked per the runtime: {l}")))
            .collect();
        let [same_runtime, same_subset, same_covers] = same_cells(&o.same);
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} | {} | {same_runtime} | {same_subset} | {same_covers} | {} |",
            o.case.name,
            if o.case.program == Program::Goker {
                "goker"
            } else {
                "runtime"
            },
            if o.case.flaky { ", flaky" } else { "" },
            o.agent.expected,
            o.agent.found,
            o.agent.false_leaks.len(),
            o.go.found,
            notes.join("; ").replace('|', "\\|"),
        );
    }
    s
}

/// The agent's leaks outside the runtime's set, in one case.
fn outside(same: &SameProcess) -> impl Iterator<Item = &String> {
    match same {
        SameProcess::Compared(c) => c.outside.iter(),
        SameProcess::NoProfile | SameProcess::NoAnswer => [].iter(),
    }
}
