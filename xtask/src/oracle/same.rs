//! The same-process comparison: the goroutines the agent calls leaked (A)
//! against those the runtime's own detector marks leaked (R) in the same
//! process, its `goroutineleak` profile asked for right after the agent's
//! verdicts were read. The goal: A ⊆ R, and A covering ≥ 95 % of R.
//!
//! The profile is asked for until a request marks no more goroutines (at
//! most `MAX_LEAK_GCS` times) and R read from the last: each request runs
//! one leak-detection GC, and the runtime may need more than one to mark
//! every leaked goroutine (at its first, Go 1.27.3 leaves one of the 1000
//! of `MutexStack` and of `MutexHeap` unmarked). A goroutine once marked
//! stays `_Gleaked`, and those the agent calls leaked are parked, so the
//! process is the same between the requests.
//!
//! The agent reports groups (same creation site, blocking site and wait
//! reason, `count` members parked past `--leak-after`), not goroutine ids;
//! a group's members are the profile's goroutines with its wait reason,
//! created at its `created_at` line and with its `blocked_at` line on their
//! stack.

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::Value;

/// What the runner prints around the runtime's profile, or instead of it.
pub(super) const BEGIN: &str = "leak-profile-begin";
pub(super) const END: &str = "leak-profile-end";
pub(super) const ABSENT: &str = "leak-profile-absent";

/// How many times a process is asked for the profile at most.
pub(super) const MAX_LEAK_GCS: usize = 4;

/// One goroutine of a debug=2 profile.
#[derive(Debug)]
pub(super) struct Stanza {
    goid: u64,
    /// The header's status: the wait reason of a parked goroutine.
    reason: String,
    leaked: bool,
    /// `file:line` of each frame, innermost first, inlined calls included.
    frames: Vec<String>,
    /// `file:line` of the `go` statement; none for the main goroutine.
    created: Option<String>,
}

/// How the agent's leak set compared with the runtime's in one process.
#[derive(Debug, Clone)]
pub(super) enum SameProcess {
    /// The toolchain has no `goroutineleak` profile.
    NoProfile,
    /// The case never read the request (its `main` parked for good), or
    /// did not answer in time.
    NoAnswer,
    Compared(Comparison),
}

#[derive(Debug, Clone, Default)]
pub(super) struct Comparison {
    /// |R|: goroutines the runtime marked leaked.
    pub(super) runtime: usize,
    /// |R| and |A ∖ R| at the first leak-detection GC.
    pub(super) runtime_first: usize,
    pub(super) outside_first: usize,
    /// Leak-detection GCs run (profiles read).
    pub(super) gcs: usize,
    /// |A|: goroutines the agent called leaked (its leak groups' counts).
    pub(super) agent: usize,
    /// |A ∩ R|.
    pub(super) covered: usize,
    /// A ∖ R, one line per goroutine: its function, wait reason, and what
    /// the runtime said of it.
    pub(super) outside: Vec<String>,
}

/// The goroutines of each complete profile (`BEGIN` … `END`) in `lines`.
pub(super) fn parse_profiles(lines: &[String]) -> Vec<Vec<Stanza>> {
    let mut profiles = Vec::new();
    let mut rest = lines;
    while let Some(begin) = rest.iter().position(|l| l == BEGIN) {
        rest = &rest[begin + 1..];
        let Some(end) = rest.iter().position(|l| l == END) else {
            break;
        };
        profiles.push(parse_stanzas(&rest[..end]));
        rest = &rest[end + 1..];
    }
    profiles
}

/// The goroutines of one debug=2 profile.
fn parse_stanzas(lines: &[String]) -> Vec<Stanza> {
    let header = Regex::new(r"^goroutine (\d+)(?: [^\[]*)? \[(.*)\]:$").expect("valid regex");
    let mut stanzas: Vec<Stanza> = Vec::new();
    let mut created_next = false;
    for line in lines {
        if let Some(c) = header.captures(line) {
            let status = &c[2];
            let leaked = status.contains(" (leaked)");
            // ", 3 minutes", ", locked to thread" and the like follow the reason.
            let reason = status.split(", ").next().unwrap_or_default();
            stanzas.push(Stanza {
                goid: c[1].parse().unwrap_or_default(),
                reason: reason.replace(" (leaked)", "").replace(" (scan)", ""),
                leaked,
                frames: Vec::new(),
                created: None,
            });
        } else if let Some(s) = stanzas.last_mut() {
            if let Some(at) = line.strip_prefix('\t') {
                let at = at.split(" +0x").next().unwrap_or_default().to_string();
                if std::mem::take(&mut created_next) {
                    s.created = Some(at);
                } else {
                    s.frames.push(at);
                }
            } else {
                created_next = line.starts_with("created by ");
            }
        }
    }
    stanzas
}

/// Compares the agent's leak groups of one process (its `/api/v1/leaks`
/// entry) with the runtime's profiles of it, in the order asked for.
pub(super) fn compare(process: &Value, profiles: &[Vec<Stanza>]) -> Comparison {
    let (Some(first), Some(last)) = (profiles.first(), profiles.last()) else {
        return Comparison::default();
    };
    let at_first = compare_one(process, first);
    Comparison {
        runtime_first: at_first.runtime,
        outside_first: at_first.outside.len(),
        gcs: profiles.len(),
        ..compare_one(process, last)
    }
}

/// Whether another leak-detection GC may mark more: fewer than two
/// profiles, or the last marked more than the one before.
pub(super) fn still_marking(profiles: &[Vec<Stanza>]) -> bool {
    let leaked = |p: &Vec<Stanza>| p.iter().filter(|s| s.leaked).count();
    match profiles {
        [.., before, last] => leaked(last) > leaked(before),
        _ => true,
    }
}

/// The comparison against one profile.
fn compare_one(process: &Value, stanzas: &[Stanza]) -> Comparison {
    let mut c = Comparison {
        runtime: stanzas.iter().filter(|s| s.leaked).count(),
        ..Comparison::default()
    };
    let mut taken = BTreeSet::new();
    let groups = process["groups"].as_array().into_iter().flatten();
    for g in groups.filter(|g| g["verdict"] == "leak") {
        let count = g["count"].as_u64().unwrap_or_default() as usize;
        c.agent += count;
        let mut members: Vec<&Stanza> = stanzas
            .iter()
            .filter(|s| !taken.contains(&s.goid) && member_of(g, s))
            .collect();
        // Which members are past --leak-after the profile cannot say: when
        // the group has more, the runtime's leaked ones are taken first.
        members.sort_by_key(|s| !s.leaked);
        let what = format!(
            "`{}` [{}]",
            g["start_function"].as_str().unwrap_or_default(),
            g["wait_reason"].as_str().unwrap_or_default()
        );
        for i in 0..count {
            match members.get(i) {
                Some(s) => {
                    taken.insert(s.goid);
                    if s.leaked {
                        c.covered += 1;
                    } else {
                        c.outside
                            .push(format!("{what} (goroutine {}: [{}])", s.goid, s.reason));
                    }
                }
                None => c.outside.push(format!("{what} (not in the profile)")),
            }
        }
    }
    c
}

/// Whether profile goroutine `s` is one of agent group `g`'s members.
fn member_of(g: &Value, s: &Stanza) -> bool {
    let at = |site: &Value| {
        let line = site["line"].as_u64().unwrap_or_default();
        (line > 0).then(|| format!("{}:{line}", site["file"].as_str().unwrap_or_default()))
    };
    let blocked = at(&g["blocked_at"]);
    g["wait_reason"].as_str() == Some(s.reason.as_str())
        && at(&g["created_at"]) == s.created
        && blocked.is_some_and(|b| blocking_frame(s) == Some(&b))
}

/// The frame a goroutine blocks in, as the agent names it: the innermost
/// one outside the runtime's and `sync`'s machinery. (A looser "anywhere on
/// the stack" let a group blocked in a caller claim the members of a group
/// blocked in its callee, e.g. `initPlain` and `initPlain.func1` under
/// `sync.Once`.)
fn blocking_frame(s: &Stanza) -> Option<&String> {
    const MACHINERY: [&str; 3] = ["/src/runtime/", "/src/sync/", "/src/internal/"];
    s.frames
        .iter()
        .find(|f| !MACHINERY.iter().any(|m| f.contains(m)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PROFILE: &str = "leak-profile-begin
goroutine 1 [running]:
main.serve(0xe5652fb0e30)
\t/src/main.go:84 +0xc7

goroutine 18 [sync.WaitGroup.Wait (leaked)]:
sync.(*WaitGroup).Wait(0xe5653002030)
\t/go/src/sync/waitgroup.go:206 +0x85
main.Mixed.func1()
\t/src/simple.go:251 +0x9e
created by main.Mixed in goroutine 1
\t/src/simple.go:242 +0x30

goroutine 19 [chan send, 2 minutes]:
main.Mixed.func1.1()
\t/src/simple.go:247 +0x27
created by main.Mixed.func1 in goroutine 18
\t/src/simple.go:246 +0x94

leak-profile-end";

    fn group(function: &str, reason: &str, blocked: u64, created: u64, count: u64) -> Value {
        json!({
            "verdict": "leak", "start_function": function, "wait_reason": reason,
            "count": count,
            "blocked_at": {"file": "/src/simple.go", "line": blocked},
            "created_at": {"file": "/src/simple.go", "line": created},
        })
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn reads_goroutines_their_status_and_sites() {
        let profiles = parse_profiles(&lines(&format!("case output\n{PROFILE}\n{BEGIN}\n")));
        assert_eq!(profiles.len(), 1, "an unfinished profile is not read");
        let s = &profiles[0];
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[1].goid, s[1].reason.as_str(), s[1].leaked),
            (18, "sync.WaitGroup.Wait", true)
        );
        assert_eq!(s[1].frames[1], "/src/simple.go:251");
        assert_eq!(s[1].created.as_deref(), Some("/src/simple.go:242"));
        assert_eq!((s[2].reason.as_str(), s[2].leaked), ("chan send", false));
        assert_eq!(s[0].created, None);
    }

    #[test]
    fn agent_leaks_outside_the_runtimes_set_are_listed() {
        let first = PROFILE.replace(" (leaked)", "");
        let profiles = parse_profiles(&lines(&format!("{first}\n{PROFILE}")));
        let process = json!({"groups": [
            group("main.Mixed.func1", "sync.WaitGroup.Wait", 251, 242, 1),
            group("main.Mixed.func1.1", "chan send", 247, 246, 1),
            group("main.Gone", "select", 1, 2, 1),
        ]});
        let c = compare(&process, &profiles);
        assert_eq!(
            (c.runtime_first, c.outside_first),
            (0, 3),
            "the first GC marked none"
        );
        assert_eq!((c.runtime, c.agent, c.covered), (1, 3, 1));
        assert!(still_marking(&profiles), "the second GC marked one more");
        assert_eq!(
            c.outside,
            vec![
                "`main.Mixed.func1.1` [chan send] (goroutine 19: [chan send])",
                "`main.Gone` [select] (not in the profile)",
            ]
        );
    }
}
