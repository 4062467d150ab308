//! `cargo xtask oracle`: scores the agent's leak verdicts against the leak
//! cases that ship with the Go toolchain.
//!
//! `$GOROOT/src/runtime/testdata/testgoroutineleakprofile/` holds small
//! programs (micro cases, common patterns, and the `GoKer` kernels of real
//! bugs) and `runtime/goroutineleakprofile_test.go` lists, as regular
//! expressions, the leaks each must show. Each case is built with a main of
//! our own (`--runner`: `upstream` calls the case from `main`, as the
//! runtime's own test does; `wrapped` runs it in a goroutine that returns)
//! that then stays alive, the agent watches it, and its `leak` groups are
//! matched against the list. The same
//! cases also print the runtime's own GC-based leak profile, scored the same
//! way, as the anchor.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use regex::Regex;
use serde_json::Value;

use crate::{tools::GoRelease, util};

#[derive(clap::Args, Clone)]
pub struct OracleArgs {
    /// Go release line to build the cases with (must ship the testdata: 1.26+).
    #[arg(long, default_value = "1.27")]
    pub go: String,
    /// Which cases: `all`, or `core` (the micro cases and common patterns
    /// that are not flaky: the bounded slice `cargo xtask test` runs).
    #[arg(long, default_value = "all")]
    pub suite: String,
    /// Only cases whose name matches this regular expression.
    #[arg(long)]
    pub only: Option<String>,
    /// Cases run at once.
    #[arg(long, default_value_t = 12)]
    pub parallel: usize,
    /// How each case is called: `upstream` from `main`, which lives on (the
    /// runtime's own runner); `wrapped` from a goroutine that returns, which
    /// gives every leak an exited creator.
    #[arg(long, value_enum, default_value_t = Runner::Upstream)]
    pub runner: Runner,
    /// Write the table to docs/ORACLE-go<go>.md (`-upstream` appended for that runner).
    #[arg(long)]
    pub write: bool,
}

/// The main a case is built with (a template under xtask/go/oracle/).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// `main` calls the case, then lives on, as upstream's runner does.
    Upstream,
    /// The case runs in a goroutine that returns (the original harness).
    Wrapped,
}

impl Runner {
    fn template(self) -> &'static str {
        match self {
            Self::Upstream => "xtask/go/oracle/upstream.go.txt",
            Self::Wrapped => "xtask/go/oracle/main.go.txt",
        }
    }

    /// Appended to build directories and document names; empty for the
    /// original runner, so its paths stay as they were.
    fn suffix(self) -> &'static str {
        match self {
            Self::Upstream => "-upstream",
            Self::Wrapped => "",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Upstream => "Each case is called from `main`, as upstream's runner does, and `main` then lives on (blocked reading stdin), so the goroutines a case starts directly have a live creator.",
            Self::Wrapped => "Each case runs in a goroutine of its own that returns, then the process stays alive.",
        }
    }
}

/// Which test program a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Main,
    Goker,
}

#[derive(Debug, Clone)]
struct Case {
    program: Program,
    name: String,
    flaky: bool,
    simple: bool,
    leaks: Vec<String>,
}

/// Reads the `makeTest`/`makeFlakyTest` calls of the runtime's test file.
fn parse_cases(src: &str) -> Vec<Case> {
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
fn go_detector_leaks(output: &str) -> Vec<String> {
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
fn agent_leaks(process: &Value) -> Vec<String> {
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
const RUNNER: &str = "main.main.func1";

/// How one detector did on one case.
#[derive(Debug, Default, Clone)]
struct Score {
    expected: usize,
    found: usize,
    missed: Vec<String>,
    false_leaks: Vec<String>,
}

/// Before Go 1.20 (and for `WaitGroup` before 1.25) the runtime names every
/// sync wait "semacquire"; the expectations use today's names. A leak in
/// "[semacquire]" matches an expectation of any sync wait at that function.
const SYNC_NAMES: [&str; 5] = [
    "sync.WaitGroup.Wait",
    "sync.Mutex.Lock",
    "sync.RWMutex.RLock",
    "sync.RWMutex.Lock",
    "sync.Cond.Wait",
];

fn leak_matches(p: &Regex, leak: &str) -> bool {
    p.is_match(leak)
        || leak.strip_suffix("[semacquire]").is_some_and(|head| {
            SYNC_NAMES
                .iter()
                .any(|n| p.is_match(&format!("{head}[{n}]")))
        })
}

fn score(case: &Case, leaks: &[String]) -> Score {
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

/// One case's outcome.
struct Outcome {
    case: Case,
    agent: Score,
    go: Score,
}

/// Copies a test program's sources, swaps in our main, and builds it. The
/// `anchor` build keeps the runtime's leak profile; the agent's build asks
/// for the plain goroutine profile instead, so the runtime never marks a
/// goroutine leaked (status `_Gleaked`) that the agent then merely reads.
fn build_program(
    go: &Path,
    testdata: &Path,
    out: &Path,
    program: Program,
    anchor: bool,
    runner: Runner,
) -> anyhow::Result<PathBuf> {
    let (sub, exe) = match (program, anchor) {
        (Program::Main, false) => ("", "leakcases"),
        (Program::Goker, false) => ("goker", "gokercases"),
        (Program::Main, true) => ("", "leakcases-anchor"),
        (Program::Goker, true) => ("goker", "gokercases-anchor"),
    };
    let src_dir = testdata.join(sub);
    let work = out.join(format!("{exe}-src"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    for entry in std::fs::read_dir(&src_dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "go")
            && path.file_name().is_some_and(|n| n != "main.go")
        {
            let mut text = std::fs::read_to_string(&path)?;
            if !anchor {
                text = text.replace(
                    "pprof.Lookup(\"goroutineleak\")",
                    "pprof.Lookup(\"goroutine\")",
                );
                // A case that ends its process after profiling would leave
                // nothing to watch: keep it alive instead.
                text = text.replace("os.Exit(0)", "stayAlive()");
            }
            std::fs::write(work.join(path.file_name().expect("file name")), text)?;
        }
    }
    std::fs::copy(util::root().join(runner.template()), work.join("main.go"))?;
    std::fs::write(work.join("go.mod"), "module leakcases\n\ngo 1.21\n")?;
    let binary = out.join(exe);
    util::run_quiet(
        Command::new(go)
            .current_dir(&work)
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-buildvcs=false")
            .env("GOCACHE", util::root().join("target/go-cache")),
    )
    .with_context(|| format!("building the {exe} oracle program"))?;
    Ok(binary)
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// A running case: its child, and its stdout as lines.
struct Running {
    case: Case,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(case: &Case, exe: &Path) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.arg(&case.name)
            .env("GODEBUG", "asyncpreemptoff=1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if case.simple {
            cmd.env("GOMAXPROCS", "1");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting case {}", case.name))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("piped");
        let sink = lines.clone();
        thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(l);
            }
        });
        Ok(Self {
            case: case.clone(),
            child,
            lines,
        })
    }

    fn saw(&self, line: &str) -> bool {
        self.lines.lock().expect("lines").iter().any(|l| l == line)
    }

    fn send(&mut self) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(b"go\n");
        }
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    ok()
}

/// Runs a batch of cases under one agent and scores them.
fn run_batch(
    batch: &[&Case],
    exes: &HashMap<&'static str, PathBuf>,
    port: u16,
    leak_after: Duration,
) -> Vec<Outcome> {
    let exe_of = |c: &Case| {
        exes[if c.program == Program::Goker {
            "goker"
        } else {
            "main"
        }]
        .clone()
    };
    let anchor_of = |c: &Case| {
        exes[if c.program == Program::Goker {
            "goker-anchor"
        } else {
            "main-anchor"
        }]
        .clone()
    };
    // The runtime's own detector, on the unmodified cases, without the agent.
    let mut anchors: Vec<Running> = batch
        .iter()
        .filter_map(|c| Running::start(c, &anchor_of(c)).ok())
        .collect();
    wait_for(Duration::from_secs(10), || {
        anchors.iter().all(|r| r.saw("ready"))
    });
    for r in &mut anchors {
        r.send();
    }
    wait_for(Duration::from_secs(10), || {
        anchors.iter().all(|r| r.saw("case-done"))
    });
    let go_scores: HashMap<String, Score> = anchors
        .iter()
        .map(|r| {
            (
                r.case.name.clone(),
                score(&r.case, &go_detector_leaks(&r.output())),
            )
        })
        .collect();
    drop(anchors);

    let mut running: Vec<Running> = batch
        .iter()
        .filter_map(|c| {
            Running::start(c, &exe_of(c))
                .map_err(|e| eprintln!("    {e:#}"))
                .ok()
        })
        .collect();
    wait_for(Duration::from_secs(10), || {
        running.iter().all(|r| r.saw("ready"))
    });
    // Attached once the agent lists the PID.
    wait_for(Duration::from_secs(10), || {
        let report = http_get(port, "/api/v1/leaks").unwrap_or_default();
        running
            .iter()
            .all(|r| report.contains(&format!("\"pid\": {}", r.child.id())))
    });
    for r in &mut running {
        r.send();
    }
    wait_for(Duration::from_secs(10), || {
        running.iter().all(|r| r.saw("case-done"))
    });
    // Verdicts need --leak-after plus a couple of scans.
    thread::sleep(leak_after + Duration::from_millis(2500));
    let report: Value = http_get(port, "/api/v1/leaks")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null);
    running
        .iter()
        .map(|r| {
            let pid = r.child.id();
            let process = report["processes"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["pid"] == pid))
                .cloned()
                .unwrap_or(Value::Null);
            Outcome {
                case: r.case.clone(),
                agent: score(&r.case, &agent_leaks(&process)),
                go: go_scores.get(&r.case.name).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// Totals: (expected, found, false leaks).
fn totals(outcomes: &[Outcome], pick: impl Fn(&Outcome) -> &Score) -> (usize, usize, usize) {
    outcomes.iter().map(pick).fold((0, 0, 0), |(e, f, x), s| {
        (e + s.expected, f + s.found, x + s.false_leaks.len())
    })
}

fn pct(found: usize, expected: usize) -> f64 {
    if expected == 0 {
        100.0
    } else {
        found as f64 * 100.0 / expected as f64
    }
}

fn table(outcomes: &[Outcome], go_version: &str) -> String {
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

/// Runs the oracle; returns (recall %, false leak groups).
pub fn oracle(args: &OracleArgs, agent: &Path) -> anyhow::Result<(f64, usize)> {
    let release = crate::tools::GO_RELEASES
        .iter()
        .find(|r| r.line == args.go)
        .copied()
        .with_context(|| format!("Go {} is not in the toolchain list", args.go))?;
    let go = GoRelease::ensure(&release)?;
    // The cases and their expectations ship with Go ≥ 1.26; older
    // toolchains build the newest toolchain's copy.
    let newest = GoRelease::ensure(&crate::tools::GO_NEWEST)?;
    let goroot = newest
        .parent()
        .and_then(Path::parent)
        .context("GOROOT")?
        .to_path_buf();
    let testdata = goroot.join("src/runtime/testdata/testgoroutineleakprofile");
    let test_file = goroot.join("src/runtime/goroutineleakprofile_test.go");
    if !testdata.exists() || !test_file.exists() {
        bail!(
            "Go {} ships no goroutine leak cases",
            crate::tools::GO_NEWEST.line
        );
    }
    let mut cases = parse_cases(&std::fs::read_to_string(&test_file)?);
    if args.suite == "core" {
        cases.retain(|c| c.program == Program::Main && !c.flaky);
    }
    if let Some(only) = &args.only {
        let re = Regex::new(only)?;
        cases.retain(|c| re.is_match(&c.name));
    }
    let out = util::root().join(format!(
        "target/oracle/go-{}{}",
        args.go,
        args.runner.suffix()
    ));
    std::fs::create_dir_all(&out)?;
    let t = util::step(&format!(
        "building the leak cases with Go {} ({:?} runner)",
        args.go, args.runner
    ));
    let goker = cases.iter().any(|c| c.program == Program::Goker);
    let exes = build_programs(&go, &testdata, &out, goker, args.runner)?;
    util::done(t);

    let port = 9990;
    let leak_after = Duration::from_secs(2);
    let mut agent_cmd = Command::new(agent);
    agent_cmd.args([
        "run",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--leak-after",
        "2s",
        "--scan-interval",
        "500ms",
        "--rescan-interval",
        "200ms",
        "--log",
        "warn",
    ]);
    for key in ["main", "goker"] {
        if let Some(exe) = exes.get(key) {
            agent_cmd.arg("--binary").arg(exe);
        }
    }
    let mut agent_proc = util::Guard(agent_cmd.spawn().context("starting the agent")?);
    if !wait_for(Duration::from_secs(30), || {
        http_get(port, "/readyz").is_some_and(|b| b.starts_with("ready"))
    }) {
        bail!("the agent did not become ready");
    }
    let t = util::step(&format!(
        "running {} cases, {} at a time",
        cases.len(),
        args.parallel
    ));
    let mut outcomes = Vec::new();
    for batch in cases
        .iter()
        .collect::<Vec<_>>()
        .chunks(args.parallel.max(1))
    {
        outcomes.extend(run_batch(batch, &exes, port, leak_after));
        if matches!(agent_proc.0.try_wait(), Ok(Some(_))) {
            bail!("the agent exited during the oracle");
        }
    }
    util::done(t);
    let version = util::output(Command::new(&go).arg("version")).unwrap_or_default();
    let version = version
        .split_whitespace()
        .nth(2)
        .unwrap_or(&args.go)
        .trim_start_matches("go")
        .to_string();
    let report = table(&outcomes, &version);
    println!("{report}");
    if args.write {
        write_doc(args, &report)?;
    }
    let (e, f, x) = totals(&outcomes, |o| &o.agent);
    Ok((pct(f, e), x))
}

/// Builds the agent's and the anchor's program for the runtime's cases,
/// and for the `GoKer` kernels when `goker`, keyed as `run_batch` reads them.
fn build_programs(
    go: &Path,
    testdata: &Path,
    out: &Path,
    goker: bool,
    runner: Runner,
) -> anyhow::Result<HashMap<&'static str, PathBuf>> {
    let mut programs = vec![
        ("main", Program::Main, false),
        ("main-anchor", Program::Main, true),
    ];
    if goker {
        programs.extend([
            ("goker", Program::Goker, false),
            ("goker-anchor", Program::Goker, true),
        ]);
    }
    programs
        .into_iter()
        .map(|(key, program, anchor)| {
            Ok((
                key,
                build_program(go, testdata, out, program, anchor, runner)?,
            ))
        })
        .collect()
}

/// Writes the table to docs/ORACLE-go<go>[-upstream].md.
fn write_doc(args: &OracleArgs, report: &str) -> anyhow::Result<()> {
    let date = util::output(Command::new("date").args(["-u", "+%Y-%m-%d"])).unwrap_or_default();
    let doc = format!(
        "# Oracle: gostray against the Go runtime's goroutine leak cases\n\nRun on {} with `cargo xtask oracle --go {} --runner {} --write` (--leak-after 2s). {} In the agent's build the cases ask for the plain goroutine profile, so the runtime never marks a goroutine leaked for the agent to read, and `os.Exit(0)` becomes a sleep, so the process stays to be watched. The runtime column is the runtime's own GC-based detector on the unmodified cases (Go ≥ 1.26 only). Before Go 1.20 the runtime names every sync wait `semacquire`: such a leak matches an expectation of a sync wait at the same function.\n\n{report}",
        date.trim(),
        args.go,
        format!("{:?}", args.runner).to_lowercase(),
        args.runner.describe(),
    );
    std::fs::write(
        util::root().join(format!(
            "docs/ORACLE-go{}{}.md",
            args.go,
            args.runner.suffix()
        )),
        doc,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
