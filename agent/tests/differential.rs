//! Differential tests: the agent never changes what the program it watches
//! does. The `torture` fixture (churn, channels, select, mutexes, deep
//! recursion with stack copying, recovered panics, cgo, GC pressure) runs
//! bare and under the agent with every Go release of the matrix; stdout and
//! the exit code must be identical and no fatal runtime error may appear.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use support::{Agent, KernelEnv, Proc};

/// What the Go runtime prints when a probe broke it.
const FATAL: [&str; 6] = [
    "fatal error",
    "unexpected return pc",
    "runtime: ",
    "panic: ",
    "SIGSEGV",
    "SIGTRAP",
];

/// The exit code `torture` ends with, so that exit codes are compared too.
const EXIT_CODE: i32 = 3;

fn assert_clean(what: &str, stderr: &str) {
    for f in FATAL {
        assert!(!stderr.contains(f), "{what}: {f:?} on stderr:\n{stderr}");
    }
}

fn bare_run(binary: &std::path::Path) -> String {
    let out = Command::new(binary).output().expect("run fixture");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_clean(&format!("bare {}", binary.display()), &stderr);
    assert_eq!(out.status.code(), Some(EXIT_CODE), "bare exit status");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// One agent watches every version's binary (`--binary`, so each run is
/// attached on start) with memory scans every 100 ms, so the scan reads g
/// structs and stacks while the runtime moves them.
#[test]
fn output_and_exit_code_are_unchanged_under_the_agent_for_every_go_release() {
    let Some(env) = KernelEnv::get() else { return };
    let lines = env.go_lines();
    let binaries: Vec<_> = lines.iter().map(|l| env.fixture("torture", l)).collect();
    let mut args = vec![
        "--rescan-interval",
        "100ms",
        "--scan-interval",
        "100ms",
        "--leak-after",
        "1s",
    ];
    for b in &binaries {
        args.extend(["--binary", b.to_str().expect("utf-8 path")]);
    }
    let agent = Agent::start(&args);
    for (line, binary) in lines.iter().zip(&binaries) {
        let begun = Instant::now();
        let bare = bare_run(binary);
        assert!(bare.contains("spawned "), "Go {line}: bare output {bare}");

        let mut watched = Proc::spawn_with_stderr(Command::new(binary).arg("-wait"));
        assert_eq!(watched.line(), "ready");
        let pid = watched.pid();
        agent.wait_attached(pid, Duration::from_secs(10));
        watched.send("go");
        let mut out = String::new();
        loop {
            let l = watched.line();
            out.push_str(&l);
            out.push('\n');
            if l.starts_with("spawned ") {
                break;
            }
        }
        // The probes saw the program's goroutines while it ran.
        let spawned: u64 = bare
            .lines()
            .find_map(|l| l.strip_prefix("spawned "))
            .and_then(|n| n.parse().ok())
            .expect("spawned count");
        let m = agent.metrics_until(Duration::from_secs(10), |m| m.counts(pid).0 >= spawned);
        let (created, exited, _) = m.counts(pid);
        assert!(
            created >= spawned && exited > 0,
            "Go {line}: agent saw {created} created, {exited} exited of {spawned}:\n{}",
            m.0
        );
        let status = watched
            .wait_exit(Duration::from_secs(10))
            .expect("fixture exits");
        let stderr = watched.stderr();
        assert_clean(&format!("Go {line} under the agent"), &stderr);
        assert_eq!(status.code(), Some(EXIT_CODE), "Go {line}: exit status");
        assert_eq!(out, bare, "Go {line}: output differs under the agent");
        eprintln!("Go {line}: identical ({:?})", begun.elapsed());
    }
    // The agent itself is still healthy after all of it.
    assert!(agent.metrics().0.contains("gostray_build_info"));
}
