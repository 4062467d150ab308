//! The command line's answers to bad input: one clear line, non-zero exit,
//! no panic. No root needed: targets are checked before anything is loaded.

use std::process::Command;

fn gostray(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gostray"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (ok, stderr) = gostray(args);
    assert!(!ok, "{args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "{args:?} printed:\n{stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?} printed {stderr:?}, wanted {needle:?}"
    );
    assert!(!stderr.contains("panicked"));
}

#[test]
fn missing_pid_is_one_clear_line() {
    assert_one_line_error(&["run", "--pid", "999999"], "no process with PID 999999");
}

#[test]
fn non_go_binary_is_one_clear_line() {
    assert_one_line_error(&["run", "--binary", "/bin/ls"], "not a Go binary");
}

#[test]
fn missing_binary_is_one_clear_line() {
    assert_one_line_error(&["run", "--binary", "/nonexistent/app"], "/nonexistent/app");
}

#[test]
fn bad_selection_rules_are_rejected() {
    let (ok, stderr) = gostray(&["run", "--include", "pod=x"]);
    assert!(!ok);
    assert!(
        stderr.contains("expected exe=, namespace= or label:KEY="),
        "{stderr}"
    );
    let (ok, stderr) = gostray(&["run", "--exclude", "exe~("]);
    assert!(!ok);
    assert!(stderr.contains("exe~("), "{stderr}");
}

#[test]
fn bad_flag_values_are_rejected() {
    let (ok, stderr) = gostray(&["run", "--pid", "1", "--drain-interval", "5"]);
    assert!(!ok);
    assert!(stderr.contains("unit"), "{stderr}");
}
