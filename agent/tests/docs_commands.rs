//! Every `gostray …` command written in the README and the runbook runs
//! against a live agent and exits 0. The commands are read from the
//! markdown itself, so a command documented tomorrow is tested tomorrow:
//! the lines of fenced `sh` blocks (continuations joined, comments cut),
//! and inline code spans outside headings that start with `gostray ` (a
//! span with `…` is a quoted message, not a command).
//!
//! How a written command is made runnable here:
//! - `kubectl … exec … -- gostray …`: the part after `--`, as the agent's
//!   container runs it; `cargo xtask run -- ARGS` is `gostray ARGS` (all that
//!   xtask does past building).
//! - `$NAMESPACE` and `$POD` are what the stand-in API server reports for
//!   the fixture's pod; a PID (after `--pid`, or `inspect`'s) is the
//!   fixture's; a path that does not exist here, or `BINARY`, is the
//!   fixture's executable. `/usr/bin/prometheus` exists here and is read.
//! - `gostray leaks` talks to the live agent (`GOSTRAY_URL`), which watches
//!   the `patterns` fixture in a pod once its leaks are judged; each such
//!   command must also show that process.
//! - `gostray run …` starts an agent of its own: it must report ready on
//!   `/readyz` within 30 s and exit 0 on SIGTERM, as a `DaemonSet`'s pod
//!   stops. Its port comes from `GOSTRAY_LISTEN`, and in whole-host mode
//!   `GOSTRAY_INCLUDE` narrows it to the fixture, so that a test on a shared
//!   host never probes other people's processes (a rule on the command
//!   line, such as `--include 'api-*'`, still wins).

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    host::FakeContainerCgroup,
    http_get,
    kubeapi::{pod, KubeApi},
    Agent, KernelEnv, Proc,
};

/// The fixture's pod, named as in the README's example.
const NAMESPACE: &str = "shop";
const POD: &str = "cart-0";
const POD_UID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const CONTAINER_ID: &str = "6d1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";
/// The fixture's executable name: `api-*` rules in the docs match it.
const EXE: &str = "api-server";
const WAIT: Duration = Duration::from_secs(30);

/// The documents whose commands must work, from the repository root.
const DOCS: [&str; 2] = ["README.md", "deploy/RUNBOOK.md"];
const SHELLS: [&str; 4] = ["sh", "bash", "shell", "console"];

/// A `gostray` command as written, and where.
#[derive(Debug)]
struct Written {
    at: String,
    command: String,
}

/// The `gostray` command a shell line runs, if any.
fn gostray_part(line: &str) -> Option<String> {
    let line = line.split(" #").next().unwrap_or_default().trim();
    if line == "gostray" || line.starts_with("gostray ") {
        Some(line.to_string())
    } else if let Some((_, rest)) = line.split_once(" -- gostray ") {
        Some(format!("gostray {rest}"))
    } else {
        line.strip_prefix("cargo xtask run -- ")
            .map(|rest| format!("gostray {rest}"))
    }
}

fn commands_in(doc: &str, text: &str) -> Vec<Written> {
    let mut out = Vec::new();
    let mut fence: Option<bool> = None; // Some(is a shell block)
    let mut pending = String::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{doc}:{}", i + 1);
        if let Some(info) = line.trim_start().strip_prefix("```") {
            fence = match fence {
                None => Some(SHELLS.contains(&info.trim())),
                Some(_) => None,
            };
            continue;
        }
        match fence {
            Some(true) => {
                let joined = format!("{pending}{}", line.trim());
                if let Some(head) = joined.strip_suffix('\\') {
                    pending = format!("{head} ");
                    continue;
                }
                pending.clear();
                if let Some(command) = gostray_part(&joined) {
                    out.push(Written { at, command });
                }
            }
            Some(false) => {}
            None if line.starts_with('#') => {}
            None => {
                for span in line.split('`').skip(1).step_by(2) {
                    if span.starts_with("gostray ") && !span.contains('…') {
                        out.push(Written {
                            at: at.clone(),
                            command: span.to_string(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The values placeholders stand for.
struct Fixture {
    pid: u32,
    path: PathBuf,
}

/// `command` with its placeholders replaced (shell variables are left to
/// the shell, which gets them in its environment).
fn runnable(command: &str, f: &Fixture) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let path = f.path.to_str().expect("UTF-8 path");
    let pid = f.pid.to_string();
    let mut out: Vec<&str> = Vec::new();
    for (i, &w) in words.iter().enumerate() {
        let after = i.checked_sub(1).map(|j| words[j]);
        let is_pid = !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
        let placeholder = w.len() > 2 && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
        out.push(match (after, w) {
            (Some("--pid" | "inspect"), _) if is_pid => &pid,
            (_, "BINARY") => path,
            _ if placeholder => panic!("{command:?}: what does {w} stand for? (add it here)"),
            _ if w.starts_with('/') && !Path::new(w).exists() => path,
            _ => w,
        });
    }
    out.join(" ")
}

fn starts_agent(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    words.get(1) == Some(&"run") && !words.iter().any(|w| matches!(*w, "--help" | "-h"))
}

/// A directory holding `gostray` (the binary under test), for `PATH`.
fn bin_dir(scratch: &Path) -> String {
    let dir = scratch.join("bin");
    fs::create_dir_all(&dir).unwrap();
    let link = dir.join("gostray");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(support::agent_bin(), &link).unwrap();
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs a command that ends by itself; its exit status and output.
fn run_to_end(command: &str, env: &[(&str, String)]) -> (bool, String) {
    let out = Command::new("timeout")
        .args(["60", "sh", "-c", command])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Starts an agent command, waits for it to be ready, stops it with
/// SIGTERM; whether all went well, and what it logged.
fn run_agent(command: &str, env: &[(&str, String)], scratch: &Path) -> (bool, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = scratch.join("agent.log");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &format!("exec {command}")])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("GOSTRAY_LISTEN", format!("127.0.0.1:{port}"))
        .stderr(fs::File::create(&log).unwrap());
    let whole_host = !command.contains("--pid") && !command.contains("--binary");
    if whole_host {
        cmd.env("GOSTRAY_INCLUDE", EXE);
    }
    let mut agent = Proc::spawn(&mut cmd);
    let deadline = Instant::now() + WAIT;
    let mut ready = false;
    while !ready && Instant::now() < deadline {
        if let Ok(Some(_)) = agent.child.try_wait() {
            break;
        }
        ready = http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200"));
        thread::sleep(Duration::from_millis(100));
    }
    let status = agent.terminate(Duration::from_secs(20));
    let logged = fs::read_to_string(&log).unwrap_or_default();
    let ok = ready && status.is_some_and(|s| s.success());
    (ok, format!("ready: {ready}, exit: {status:?}\n{logged}"))
}

/// A leak report from the live agent shows the fixture; one asked for its
/// pod as a table shows the pod and its leaks.
fn shows_the_fixture(command: &str, output: &str, pid: u32) -> bool {
    if !command.starts_with("gostray leaks") {
        return true;
    }
    let pod_table = command.contains("--pod") && !command.contains("--json");
    output.contains(&pid.to_string())
        && (!pod_table
            || output.contains(&format!("{NAMESPACE}/{POD}"))
                && output.contains("main.leakySend.func1"))
}

fn leak_report(agent: &Agent, query: &str) -> Value {
    let raw = http_get(agent.port, &format!("/api/v1/leaks{query}")).expect("GET /api/v1/leaks");
    let body = raw.split_once("\r\n\r\n").expect("http body").1;
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {raw}"))
}

/// Starts the live agent on the fixture, has the fixture leak, and waits
/// for the verdicts; checks the report's pod fields and its filters.
fn leaking_in_its_pod(fixture: &mut Proc, api: &KubeApi) -> Agent {
    let pid = fixture.pid();
    let agent = Agent::start_with(
        &[
            "--pid",
            &pid.to_string(),
            "--leak-after",
            "2s",
            "--scan-interval",
            "500ms",
            "--kube-api",
            &api.url(),
        ],
        false,
        &[("NODE_NAME", "node-a")],
    );
    fixture.send("leaks");
    assert_eq!(fixture.line(), "ok leaks");
    let query = format!("?namespace={NAMESPACE}&pod={POD}&verdict=leak");
    let deadline = Instant::now() + WAIT;
    let report = loop {
        let r = leak_report(&agent, &query);
        let leaks = r["processes"][0]["groups"].as_array().map_or(0, Vec::len);
        if leaks >= 6 || Instant::now() >= deadline {
            break r;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let p = &report["processes"][0];
    assert_eq!(
        report["processes"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_eq!(
        (&p["pid"], &p["namespace"], &p["pod"], &p["container"]),
        (&pid.into(), &NAMESPACE.into(), &POD.into(), &"cart".into()),
        "{report:#}"
    );
    assert!(
        p["groups"].as_array().is_some_and(|g| g.len() >= 6),
        "{report:#}"
    );
    let none = leak_report(&agent, "?namespace=elsewhere");
    assert_eq!(
        none["processes"].as_array().map(Vec::len),
        Some(0),
        "{none:#}"
    );
    agent
}

#[test]
fn every_documented_command_runs() {
    let Some(env) = KernelEnv::get() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let written: Vec<Written> = DOCS
        .iter()
        .flat_map(|doc| {
            let text = fs::read_to_string(root.join(doc)).expect(doc);
            commands_in(doc, &text)
        })
        .collect();
    assert!(
        written.iter().any(|w| w.at.starts_with("deploy/RUNBOOK.md")
            && w.command.contains("--namespace \"$NAMESPACE\"")),
        "the runbook's first command was not found: {written:#?}"
    );

    // The fixture, in a pod the stand-in API server reports, leaking.
    let api = KubeApi::start(vec![pod(NAMESPACE, POD, POD_UID, CONTAINER_ID, "100")]);
    let cgroup = FakeContainerCgroup::create("docs", POD_UID, CONTAINER_ID);
    let scratch = std::env::temp_dir().join(format!("gostray-docs-{}", std::process::id()));
    fs::create_dir_all(&scratch).unwrap();
    let path = scratch.join(EXE);
    fs::copy(env.fixture("patterns", "1.27"), &path).unwrap();
    let mut fixture = Proc::spawn(&mut Command::new(&path));
    assert_eq!(fixture.line(), "ready");
    cgroup.enter(fixture.pid());
    let pid = fixture.pid();
    let agent = leaking_in_its_pod(&mut fixture, &api);

    let shell_env = [
        ("PATH", bin_dir(&scratch)),
        ("GOSTRAY_URL", format!("http://127.0.0.1:{}", agent.port)),
        ("NAMESPACE", NAMESPACE.to_string()),
        ("POD", POD.to_string()),
    ];
    let f = Fixture { pid, path };
    let mut failed = Vec::new();
    let (mut agents, mut others) = (0, 0);
    for w in &written {
        let command = runnable(&w.command, &f);
        let (ok, output) = if starts_agent(&command) {
            agents += 1;
            run_agent(&command, &shell_env, &scratch)
        } else {
            others += 1;
            let (ok, output) = run_to_end(&command, &shell_env);
            (ok && shows_the_fixture(&command, &output, pid), output)
        };
        eprintln!("{} {}: {command}", if ok { "ok  " } else { "FAIL" }, w.at);
        if !ok {
            failed.push(format!("{}: {command}\n{output}", w.at));
        }
    }
    eprintln!(
        "{} documented commands: {agents} agent runs, {others} others",
        written.len()
    );
    assert!(failed.is_empty(), "failed:\n{}", failed.join("\n---\n"));
    // Filters that keep nothing say so, and still exit 0.
    let (ok, out) = run_to_end("gostray leaks --namespace elsewhere", &shell_env);
    assert!(
        ok && out.contains("no leaked or suspect goroutines"),
        "{out}"
    );
    let (ok, out) = run_to_end(
        &format!("gostray leaks --exe {EXE} --verdict suspect --json"),
        &shell_env,
    );
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{ok} {out}"));
    assert!(
        json["processes"][0]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().all(|g| g["verdict"] == "suspect")),
        "{json:#}"
    );

    drop(agent);
    drop(fixture);
    drop(cgroup);
    let _ = fs::remove_dir_all(&scratch);
}
