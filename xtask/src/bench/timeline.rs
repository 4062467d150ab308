//! The overhead budget over time: one program quiet, then hot, then quiet
//! again (`bench-phases`), watched by the agent as it ships, its status
//! read once a second. A quiet service should keep every probe group, a hot
//! one lose `lifecycle`, and everything should come back once it is quiet.

use std::{fmt::Write as _, path::Path};

use anyhow::{bail, Context};

use super::{
    overhead::{self, Status, BUDGETED},
    proc::{Agent, Workload},
    report::Goals,
};

/// The full run: quiet long enough to see the budget leave it alone, hot
/// long enough to detach, quiet long enough for the re-arm back-off.
pub const PHASES: &str = "quiet:10s,hot:20s,quiet:60s";
/// The smoke run's: only long enough to see lifecycle detached.
pub const SMOKE_PHASES: &str = "quiet:3s,hot:16s,quiet:2s";
/// The smoke run's bound on the time from the hot phase's start to
/// lifecycle detached.
const DETACH_WITHIN_S: u64 = 15;

/// One second of the run.
#[derive(Debug, Clone)]
pub struct Tick {
    pub t: u64,
    pub phase: String,
    /// Goroutines the program started in that second.
    pub started: u64,
    pub status: Status,
}

pub struct Timeline {
    pub go: String,
    pub phases: &'static str,
    pub ticks: Vec<Tick>,
}

/// Runs `binary` (bench-phases) through `phases` under the agent with its
/// default budget.
pub fn measure(
    agent: &Path,
    binary: &Path,
    go: &str,
    phases: &'static str,
) -> anyhow::Result<Timeline> {
    let mut w = Workload::start(binary, &["-phases".into(), phases.into()])?;
    let pid = w.pid();
    let a = Agent::start_budgeted(agent, &["--pid".into(), pid.to_string()])?;
    w.go()?;
    let mut ticks = Vec::new();
    loop {
        let line = w.line()?;
        if line == "done" {
            break;
        }
        let tick = parse_tick(&line).with_context(|| format!("unexpected output {line:?}"))?;
        ticks.push(Tick {
            status: overhead::status(a.port, pid)?,
            ..tick
        });
    }
    Ok(Timeline {
        go: go.into(),
        phases,
        ticks,
    })
}

/// Reads `tick <seconds> <phase> <started>`.
fn parse_tick(line: &str) -> Option<Tick> {
    let mut f = line.strip_prefix("tick ")?.split(' ');
    Some(Tick {
        t: f.next()?.parse().ok()?,
        phase: f.next()?.into(),
        started: f.next()?.parse().ok()?,
        status: Status::default(),
    })
}

/// Seconds from the hot phase's first tick to the first tick with
/// lifecycle detached, if it was detached while hot.
fn detached_after(ticks: &[Tick]) -> Option<u64> {
    let hot = ticks.iter().find(|t| t.phase == "hot")?;
    ticks
        .iter()
        .filter(|t| t.phase == "hot")
        .find(|t| t.status.active("lifecycle") == Some(false))
        .map(|t| t.t - hot.t + 1)
}

/// The ticks of the final quiet phase (after the hot one).
fn final_quiet(ticks: &[Tick]) -> &[Tick] {
    let last_hot = ticks.iter().rposition(|t| t.phase == "hot");
    last_hot.map_or(&[], |i| &ticks[i + 1..])
}

/// The smoke run's check, on nothing timing-sensitive: the status answers
/// every second, and lists the program with the default budget from the
/// first time it does on, and a program spawning at
/// full rate loses lifecycle within [`DETACH_WITHIN_S`], the status saying
/// so (detached, counted, with a re-arm time).
pub fn check(t: &Timeline) -> anyhow::Result<()> {
    // The status is published after the agent's first one-second look:
    // from then on it lists the program, under the default budget.
    let listed = t
        .ticks
        .iter()
        .skip_while(|tick| tick.status.groups.is_empty());
    for tick in listed {
        if tick.status.budget.is_none() || tick.status.groups.is_empty() {
            bail!(
                "at {} s the overhead status shows no budget or does not list the program: {:?}",
                tick.t,
                tick.status
            );
        }
    }
    let Some(after) = detached_after(&t.ticks) else {
        bail!("lifecycle was never detached while the program spawned at full rate");
    };
    if after > DETACH_WITHIN_S {
        bail!("lifecycle was detached {after} s into the hot phase (bound: {DETACH_WITHIN_S} s)");
    }
    let explained = t.ticks.iter().any(|tick| {
        tick.status
            .group("lifecycle")
            .is_some_and(|g| !g.active && g.detaches >= 1 && g.rearm_in_seconds.is_some())
    });
    if !explained {
        bail!("the status never showed lifecycle detached with a detach counted and a re-arm time");
    }
    Ok(())
}

fn yes(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    }
}

/// The report's timeline subsection, and its goals.
pub fn section(t: &Timeline) -> (String, Vec<String>) {
    let mut s = String::new();
    let mut goals = Goals(Vec::new());
    let _ = writeln!(s, "\n### Quiet → hot → quiet (Go {})\n\nThe `bench-phases` program ({}): quiet, it starts 10 goroutines a second that each spend 1 ms of CPU; hot, goroutines that exit at once, as fast as one goroutine can start them. The agent runs as it ships; its status is read every second. *cost ratio*: the estimated cost of the attached groups together, over the process's CPU; *lifecycle's*: that group's alone, which while it is detached is what it would cost at the creation rate the table scans see (what its re-arming waits on).\n", t.go, t.phases.replace(',', ", "));
    let _ = writeln!(s, "| s | phase | goroutines started/s | cost ratio | lifecycle's | lifecycle | park | misuse | lifecycle re-arm in s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for tick in &t.ticks {
        let st = &tick.status;
        let lifecycle = st.group("lifecycle");
        let rearm = lifecycle
            .and_then(|g| g.rearm_in_seconds)
            .map_or("–".into(), |r| format!("{r:.0}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {} | {} | {} | {} | {rearm} |",
            tick.t,
            tick.phase,
            tick.started,
            st.cost_ratio(),
            lifecycle.map_or("–".into(), |g| format!("{:.4}", g.cost_ratio)),
            yes(st.active("lifecycle")),
            yes(st.active("park")),
            yes(st.active("misuse")),
        );
    }
    // The agent lists the program from its first one-second look on.
    let first_quiet: Vec<&Tick> = t
        .ticks
        .iter()
        .take_while(|tick| tick.phase == "quiet")
        .filter(|tick| !tick.status.groups.is_empty())
        .collect();
    let lost: Vec<String> = first_quiet
        .iter()
        .filter(|tick| !tick.status.all_active())
        .map(|tick| tick.t.to_string())
        .collect();
    goals.check(
        !first_quiet.is_empty() && lost.is_empty(),
        &format!("Go {}: a quiet service keeps every probe group", t.go),
        if first_quiet.is_empty() {
            "the agent never listed it while quiet".into()
        } else if lost.is_empty() {
            format!(
                "all of {} attached at each of {} polls",
                BUDGETED.join(", "),
                first_quiet.len()
            )
        } else {
            format!("a group was detached at second {}", lost.join(", "))
        },
    );
    let after = detached_after(&t.ticks);
    goals.check(
        after.is_some(),
        &format!(
            "Go {}: lifecycle is detached while the service is hot",
            t.go
        ),
        after.map_or("never detached".into(), |a| {
            format!("detached {a} s into the hot phase")
        }),
    );
    let quiet = final_quiet(&t.ticks);
    let back = quiet
        .iter()
        .rposition(|tick| !tick.status.all_active())
        .map_or(Some(0), |i| {
            quiet.get(i + 1).map(|tick| tick.t - quiet[0].t + 1)
        });
    goals.check(
        !quiet.is_empty() && back.is_some(),
        &format!(
            "Go {}: every group re-armed by the end of the final quiet phase",
            t.go
        ),
        match back {
            Some(b) if !quiet.is_empty() => {
                format!("all attached from {b} s into it ({} s long)", quiet.len())
            }
            _ => "still detached at the end".into(),
        },
    );
    (s, goals.0)
}

#[cfg(test)]
mod tests {
    use super::{check, detached_after, final_quiet, parse_tick, Tick, Timeline};
    use crate::bench::overhead::{Group, Status};

    fn tick(t: u64, phase: &str, lifecycle: bool) -> Tick {
        Tick {
            status: Status {
                budget: Some(0.01),
                groups: vec![Group {
                    name: "lifecycle".into(),
                    active: lifecycle,
                    hits_per_second: 0.0,
                    cost_ratio: 0.0,
                    detaches: u64::from(!lifecycle),
                    rearm_in_seconds: None,
                }],
            },
            ..parse_tick(&format!("tick {t} {phase} 10")).unwrap()
        }
    }

    #[test]
    fn finds_the_detach_and_the_final_quiet() {
        let ticks = vec![
            tick(1, "quiet", true),
            tick(2, "hot", true),
            tick(3, "hot", true),
            tick(4, "hot", false),
            tick(5, "quiet", false),
            tick(6, "quiet", true),
        ];
        assert_eq!(detached_after(&ticks), Some(3));
        let mut unlisted = tick(0, "quiet", true);
        unlisted.status = Status::default();
        let mut run = Timeline {
            go: "1.27".into(),
            phases: "",
            ticks: [vec![unlisted], ticks.clone()].concat(),
        };
        let err = check(&run).unwrap_err().to_string();
        assert!(err.contains("re-arm time"), "{err}");
        run.ticks[4].status.groups[0].rearm_in_seconds = Some(9.0);
        check(&run).unwrap();
        run.ticks[5].status.budget = None;
        assert!(check(&run).is_err());
        assert_eq!(final_quiet(&ticks).len(), 2);
        assert_eq!(detached_after(&ticks[..3]), None);
        assert!(parse_tick("tick x hot 1").is_none());
    }
}
