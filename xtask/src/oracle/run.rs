//! Building the case programs and running a batch of them under the agent
//! and under the runtime's own detector.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::Value;

use super::{
    cases::{agent_leaks, go_detector_leaks, score, Case, Program, Score},
    same::{self, SameProcess},
    Runner,
};
use crate::util;

/// One case's outcome.
pub(super) struct Outcome {
    pub(super) case: Case,
    pub(super) agent: Score,
    pub(super) go: Score,
    /// The agent's leak set against the runtime's, in the agent's process.
    pub(super) same: SameProcess,
}

/// Copies a test program's sources, swaps in our main, and builds it. The
/// `anchor` build keeps the runtime's leak profile; the agent's build asks
/// for the plain goroutine profile instead, so the runtime never marks a
/// goroutine leaked (status `_Gleaked`) that the agent then merely reads.
pub(super) fn build_program(
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

pub(super) fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_string())
}

/// A running case: its child, and its stdout as lines.
pub(super) struct Running {
    pub(super) case: Case,
    pub(super) child: Child,
    pub(super) lines: Arc<Mutex<Vec<String>>>,
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
        self.count(line) > 0
    }

    fn count(&self, line: &str) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| *l == line)
            .count()
    }

    fn send(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
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

pub(super) fn wait_for(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
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
pub(super) fn run_batch(
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
        r.send("go");
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
        r.send("go");
    }
    wait_for(Duration::from_secs(10), || {
        running.iter().all(|r| r.saw("case-done"))
    });
    // Verdicts need --leak-after plus a couple of scans.
    thread::sleep(leak_after + Duration::from_millis(2500));
    let report: Value = http_get(port, "/api/v1/leaks")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null);
    // Only now, with the agent's verdicts read: the profile's GC marks the
    // leaked goroutines _Gleaked, which the agent would then merely read.
    ask_leak_profiles(&mut running);
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
                same: same_process(r, &process),
            }
        })
        .collect()
}

/// Asks every case whose `main` came back to read stdin for the runtime's
/// leak profile, again while a request marks more goroutines leaked (at
/// most `same::MAX_LEAK_GCS` times), and waits for the answers. A case that
/// parks `main` for good (`SelectNoCasesMain` under `upstream`) never reads
/// the request.
fn ask_leak_profiles(running: &mut [Running]) {
    let mut asking: Vec<usize> = (0..running.len())
        .filter(|&i| running[i].saw("case-done"))
        .collect();
    for round in 1..=same::MAX_LEAK_GCS {
        for &i in &asking {
            running[i].send("leak-profile");
        }
        wait_for(Duration::from_secs(10), || {
            asking
                .iter()
                .all(|&i| running[i].count(same::END) >= round || running[i].saw(same::ABSENT))
        });
        asking.retain(|&i| {
            let lines = running[i].lines.lock().expect("lines");
            let profiles = same::parse_profiles(&lines);
            profiles.len() == round && same::still_marking(&profiles)
        });
    }
}

/// The agent's leak set against the runtime's profile of the same process.
fn same_process(r: &Running, process: &Value) -> SameProcess {
    if r.saw(same::ABSENT) {
        return SameProcess::NoProfile;
    }
    if !r.saw(same::END) {
        return SameProcess::NoAnswer;
    }
    let lines = r.lines.lock().expect("lines");
    SameProcess::Compared(same::compare(process, &same::parse_profiles(&lines)))
}
