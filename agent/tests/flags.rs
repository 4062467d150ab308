//! Every invalid flag or environment value is refused at start, before
//! anything is loaded, with a message naming the flag and the problem; no
//! panic, no half-started agent.

use std::process::Command;

/// Runs `gostray run --pid <self> <args>` with `env`; returns (success, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let me = std::process::id().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_gostray"))
        .args(["run", "--pid", &me])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn refused(args: &[&str], env: &[(&str, &str)], flag: &str, why: &str) {
    let (ok, stderr) = run(args, env);
    assert!(!ok, "{args:?} {env:?} accepted");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains(flag) && stderr.contains(why),
        "{args:?} {env:?}: first line {first:?} should name {flag} and say {why:?}:\n{stderr}"
    );
}

#[test]
fn invalid_values_are_refused_naming_the_flag() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--listen", "localhost"],
            "--listen",
            "invalid socket address",
        ),
        (
            &["--listen", "127.0.0.1:99999"],
            "--listen",
            "invalid socket address",
        ),
        (
            &["--ring-buffer-bytes", "5000"],
            "--ring-buffer-bytes",
            "power of two",
        ),
        (
            &["--ring-buffer-bytes", "1024"],
            "--ring-buffer-bytes",
            "at least 4096",
        ),
        (
            &["--ring-buffer-bytes", "8589934592"],
            "--ring-buffer-bytes",
            "not a number",
        ),
        (&["--drain-interval", "0ms"], "--drain-interval", "between"),
        (&["--drain-interval", "5m"], "--drain-interval", "between"),
        (&["--drain-interval", "5"], "--drain-interval", "unit"),
        (&["--drain-interval=-1s"], "--drain-interval", "duration"),
        (
            &["--rescan-interval", "10ms"],
            "--rescan-interval",
            "between",
        ),
        (
            &["--rescan-interval", "99999999999999999999s"],
            "--rescan-interval",
            "duration",
        ),
        (&["--scan-interval", "1h"], "--scan-interval", "between"),
        (&["--leak-after", "0s"], "--leak-after", "between"),
        (&["--leak-after", "1y"], "--leak-after", "unit"),
        (&["--kernel-log", "loud"], "--kernel-log", "possible values"),
        (&["--probes", "exits"], "--probes", "unknown probe group"),
        (&["--probes", ""], "--probes", "unknown probe group"),
        (
            &["--max-goroutines", "0"],
            "--max-goroutines",
            "not in 1..=50000000",
        ),
        (
            &["--max-goroutines", "60000000"],
            "--max-goroutines",
            "not in 1..=50000000",
        ),
        (&["--pid=-3"], "--pid", "is not in"),
        (&["--pid", "x"], "--pid", "invalid digit"),
    ];
    for (args, flag, why) in cases {
        refused(args, &[], flag, why);
    }
}

/// The same checks hold for values from the environment (a `DaemonSet` sets
/// flags that way).
#[test]
fn invalid_environment_values_are_refused() {
    refused(
        &[],
        &[("GOSTRAY_RING_BUFFER_BYTES", "3")],
        "--ring-buffer-bytes",
        "power of two",
    );
    refused(
        &[],
        &[("GOSTRAY_LEAK_AFTER", "soon")],
        "--leak-after",
        "duration",
    );
    refused(
        &[],
        &[("GOSTRAY_LISTEN", "0.0.0.0")],
        "--listen",
        "invalid socket address",
    );
    refused(
        &[],
        &[("GOSTRAY_MAX_GOROUTINES", "-1")],
        "--max-goroutines",
        "",
    );
}

/// A port already taken is one line naming the address (as root, the
/// capability check passes and the bind is reached).
#[test]
fn a_taken_port_is_one_line() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "needs root under CI");
        eprintln!("SKIPPED: needs root");
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (ok, stderr) = run(&["--listen", &addr], &[]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("gostray: error: listening on {addr}: ")),
        "{stderr}"
    );
}
