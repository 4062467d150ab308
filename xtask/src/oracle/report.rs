//! The score table.

use std::fmt::Write as _;

use super::{cases::Program, cases::Score, run::Outcome};

/// Totals: (expected, found, false leaks).
pub(super) fn totals(
    outcomes: &[Outcome],
    pick: impl Fn(&Outcome) -> &Score,
) -> (usize, usize, usize) {
    outcomes.iter().map(pick).fold((0, 0, 0), |(e, f, x), s| {
        (e + s.expected, f + s.found, x + s.false_leaks.len())
    })
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
    let _ = writeln!(s, "| case | kind | expected | gostray found | gostray false | runtime found | gostray missed / false |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for o in outcomes {
        let notes: Vec<String> = o
            .agent
            .missed
            .iter()
            .map(|m| format!("missed `{m}`"))
            .chain(o.agent.false_leaks.iter().map(|l| format!("false `{l}`")))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {} | {} | {} | {} |",
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
