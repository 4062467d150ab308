//! The cases and their expected leaks, as the runtime's test lists them,
//! and how a leak list is scored against them.

use regex::Regex;
use serde_json::Value;

/// Which test program a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Program {
    Main,
    Goker,
}

#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) program: Program,
    pub(super) name: String,
    pub(super) flaky: bool,
    pub(super) simple: bool,
    pub(super) leaks: Vec<String>,
}

/// Reads the `makeTest`/`makeFlakyTest` calls of the runtime's test file.
pub(super) fn parse_cases(src: &str) -> Vec<Case> {
    let goker_at = src
        .find("gokerTestCases := []testCase{")
        .unwrap_or(src.len());
    let mut out = Vec::new();
    let mut rest = src;
    let mut base = 0;
    while let Some(i) = rest.find("make") {
        let at = base + i;
        let tail = &rest[i..];
        let (flaky, call) = if tail.starts_with("makeFlakyTest(\"") {
            (true, &tail["makeFlakyTest(".len()..])
        } else if tail.starts_with("makeTest(\"") {
            (false, &tail["makeTest(".len()..])
        } else {
            rest = &rest[i + 4..];
            base = at + 4;
            continue;
        };
        let mut args = Vec::new();
        let mut s = call;
        loop {
            s = s.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
            if let Some(r) = s.strip_prefix("//") {
                s = r.split_once('\n').map_or("", |x| x.1);
            } else if let Some(r) = s.strip_prefix('"') {
                let (a, r) = r.split_once('"').unwrap_or((r, ""));
                args.push(a.to_string());
                s = r;
            } else if let Some(r) = s.strip_prefix('`') {
                let (a, r) = r.split_once('`').unwrap_or((r, ""));
                args.push(a.to_string());
                s = r;
            } else {
                break;
            }
        }
        if let Some((name, leaks)) = args.split_first() {
            out.push(Case {
                program: if at > goker_at {
                    Program::Goker
                } else {
                    Program::Main
                },
                name: name.clone(),
                flaky,
                simple: !flaky,
                leaks: leaks.to_vec(),
            });
        }
        let consumed = tail.len() - s.len();
        rest = &tail[consumed.max(4)..];
        base = at + consumed.max(4);
    }
    out
}

/// The runtime test's own reading of a debug=2 leak profile: for each
/// goroutine marked "(leaked)", "`function()` [wait reason]".
pub(super) fn go_detector_leaks(output: &str) -> Vec<String> {
    let header = Regex::new(r"goroutine \d+ \[").expect("valid regex");
    let mut leaks = Vec::new();
    for stack in output.split("\n\ngoroutine") {
        let lines: Vec<&str> = stack.lines().collect();
        if lines.len() < 5 || !lines[0].contains("(leaked)") {
            continue;
        }
        let reason = header.replace_all(lines[0], "[").replace(" (leaked)", "");
        let reason = reason.trim_end_matches(':');
        let reason = &reason[reason.find('[').unwrap_or(0)..];
        if let Some(i) = (0..lines.len())
            .rev()
            .find(|&i| lines[i].contains("created by"))
        {
            if i >= 2 {
                let f = lines[i - 2];
                leaks.push(format!("{} {reason}", f.strip_prefix("main.").unwrap_or(f)));
            }
        }
    }
    leaks
}

/// The agent's leak groups for one process, in the same form.
pub(super) fn agent_leaks(process: &Value) -> Vec<String> {
    process["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["verdict"] == "leak")
        // The harness's own goroutine, which runs the case, is not the case's.
        .filter(|g| g["start_function"] != RUNNER)
        .map(|g| {
            let f = g["start_function"].as_str().unwrap_or_default();
            format!(
                "{}() [{}]",
                f.strip_prefix("main.").unwrap_or(f),
                g["wait_reason"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// The goroutine in which xtask/go/oracle/main.go.txt runs a case.
pub(super) const RUNNER: &str = "main.main.func1";

/// How one detector did on one case.
#[derive(Debug, Default, Clone)]
pub(super) struct Score {
    pub(super) expected: usize,
    pub(super) found: usize,
    pub(super) missed: Vec<String>,
    pub(super) false_leaks: Vec<String>,
}

/// Before Go 1.20 (and for `WaitGroup` before 1.25) the runtime names every
/// sync wait "semacquire"; the expectations use today's names. A leak in
/// "[semacquire]" matches an expectation of any sync wait at that function.
pub(super) const SYNC_NAMES: [&str; 5] = [
    "sync.WaitGroup.Wait",
    "sync.Mutex.Lock",
    "sync.RWMutex.RLock",
    "sync.RWMutex.Lock",
    "sync.Cond.Wait",
];

pub(super) fn leak_matches(p: &Regex, leak: &str) -> bool {
    p.is_match(leak)
        || leak.strip_suffix("[semacquire]").is_some_and(|head| {
            SYNC_NAMES
                .iter()
                .any(|n| p.is_match(&format!("{head}[{n}]")))
        })
}

pub(super) fn score(case: &Case, leaks: &[String]) -> Score {
    let patterns: Vec<Regex> = case
        .leaks
        .iter()
        .filter_map(|p| Regex::new(p).ok())
        .collect();
    let mut s = Score::default();
    if !case.flaky {
        s.expected = patterns.len();
        for (p, src) in patterns.iter().zip(&case.leaks) {
            if leaks.iter().any(|l| leak_matches(p, l)) {
                s.found += 1;
            } else {
                s.missed.push(src.clone());
            }
        }
    }
    s.false_leaks = leaks
        .iter()
        .filter(|l| !patterns.iter().any(|p| leak_matches(p, l)))
        .cloned()
        .collect();
    s.false_leaks.sort();
    s.false_leaks.dedup();
    s
}

#[cfg(test)]
mod tests {
    use super::{super::Runner, *};
    use crate::util;

    #[test]
    fn parses_cases_with_raw_patterns_and_comments() {
        let src = r#"
	microTests := []testCase{
		makeTest("NilRecv",
			`NilRecv\.func1\(.* \[chan receive \(nil chan\)\]`,
		),
		makeTest("NoLeakGlobal"),
	}
	gokerTestCases := []testCase{
		makeFlakyTest("Cockroach584",
			// a comment, with "quotes"
			`Cockroach584\.func2\(.* \[sync\.Mutex\.Lock\]`,
		),
	}"#;
        let cases = parse_cases(src);
        assert_eq!(cases.len(), 3);
        assert_eq!(
            (cases[0].name.as_str(), cases[0].program, cases[0].flaky),
            ("NilRecv", Program::Main, false)
        );
        assert_eq!(
            cases[0].leaks,
            vec![r"NilRecv\.func1\(.* \[chan receive \(nil chan\)\]"]
        );
        assert!(cases[1].leaks.is_empty());
        assert_eq!((cases[2].program, cases[2].flaky), (Program::Goker, true));
    }

    #[test]
    fn reads_the_runtime_profile_like_its_test() {
        let out = "header\n\ngoroutine 7 [chan send (leaked)]:\nmain.leaked()\n\t./foo.go:37 +0x100\nmain.ChanSend.func1()\n\t./x.go:1\ncreated by main.ChanSend in goroutine 1\n\t./x.go:2 +0x20\n";
        assert_eq!(go_detector_leaks(out), vec!["ChanSend.func1() [chan send]"]);
    }

    /// Both mains must define what the runtime's case files use, and only
    /// the upstream one may call the case from `main` itself.
    #[test]
    fn runner_templates_provide_the_case_helpers() {
        for runner in [Runner::Upstream, Runner::Wrapped] {
            let text = std::fs::read_to_string(util::root().join(runner.template()))
                .expect("runner template");
            for helper in [
                "const yieldCount",
                "func register(",
                "func registerInit(",
                "func stayAlive(",
                // The same-process comparison's request, served by main.
                "pprof.Lookup(\"goroutineleak\")",
            ] {
                assert!(text.contains(helper), "{runner:?}: no {helper}");
            }
            // One tab deep: a statement of main itself, not of a closure.
            let calls_in_main = text.lines().any(|l| l == "\tf()");
            assert_eq!(calls_in_main, runner == Runner::Upstream, "{runner:?}");
        }
    }

    #[test]
    fn scores_matches_misses_and_false_leaks() {
        let case = Case {
            program: Program::Main,
            name: "X".into(),
            flaky: false,
            simple: true,
            leaks: vec![r"A\(.* \[chan send\]".into(), r"B\(.* \[select\]".into()],
        };
        let s = score(&case, &["A() [chan send]".into(), "C() [select]".into()]);
        assert_eq!(
            (s.expected, s.found, s.missed.len(), s.false_leaks.len()),
            (2, 1, 1, 1)
        );
    }
}
