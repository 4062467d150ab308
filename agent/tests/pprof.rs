//! `/debug/pprof/goroutineleak` read by the Go toolchain's own
//! `go tool pprof`: the leaked functions of the `patterns` fixture must show
//! in `-top` and `-traces`, fetched over HTTP as a user would and from a
//! saved file. Root, `cargo xtask test` fixtures and a Go toolchain
//! (`GOSTRAY_GO_TOOLS`) required; under CI=true they fail rather than skip.

mod support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use support::{
    host::FakeContainerCgroup,
    http_get,
    kubeapi::{pod, KubeApi},
    Agent, KernelEnv, Proc,
};

const FAST: [&str; 4] = ["--leak-after", "2s", "--scan-interval", "500ms"];

/// The leaking patterns of the `patterns` fixture (as in `leaks.rs`).
const LEAKED: [&str; 6] = [
    "main.leakySend.func1",
    "main.leakyRecv.func1",
    "main.leakyNil.func1",
    "main.leakyWaitGroup.func1",
    "main.leakyMutex.func1",
    "main.leakyContext.func1",
];

/// The newest `go` of `GOSTRAY_GO_TOOLS` (`line=path` pairs, set by
/// `cargo xtask test`); `None` skips, never under CI.
fn go_command() -> Option<PathBuf> {
    let newest = std::env::var("GOSTRAY_GO_TOOLS").ok().and_then(|tools| {
        tools
            .split(',')
            .filter_map(|pair| pair.split_once('=').map(|(_, go)| PathBuf::from(go)))
            .rfind(|go| go.exists())
    });
    if newest.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "no Go toolchain: GOSTRAY_GO_TOOLS unset under CI (run `cargo xtask test`)"
        );
        eprintln!("SKIPPED: GOSTRAY_GO_TOOLS is not set; run `cargo xtask test`");
    }
    newest
}

/// `go tool pprof` with a scratch directory for what it saves (profiles
/// fetched over HTTP go to `$PPROF_TMPDIR`, not `$HOME/pprof`), removed
/// when dropped.
struct Pprof {
    go: PathBuf,
    tmp: PathBuf,
}

impl Pprof {
    fn new(go: PathBuf, tag: &str) -> Self {
        let tmp = std::env::temp_dir().join(format!("gostray-pprof-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        Self { go, tmp }
    }

    /// `go tool pprof ARGS`; its stdout, after asserting success.
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.go)
            .args(["tool", "pprof"])
            .args(args)
            .env("GOTOOLCHAIN", "local")
            .env("PPROF_TMPDIR", &self.tmp)
            .output()
            .expect("run go tool pprof");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "go tool pprof {args:?}: {}\n{stdout}\n{stderr}",
            out.status
        );
        eprintln!("go tool pprof {}:\n{stdout}", args.join(" "));
        stdout
    }
}

impl Drop for Pprof {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// The profile's address on `agent`, as `go tool pprof` is given it.
fn profile_url(agent: &Agent, query: &str) -> String {
    format!(
        "http://127.0.0.1:{}/debug/pprof/goroutineleak?{query}",
        agent.port
    )
}

/// The `patterns` fixture of Go `go_line`, its leaks started, watched by an
/// agent run with `--pid PID` and `args`; `place` runs on the PID before
/// the agent starts.
fn leaking(
    env: &KernelEnv,
    go_line: &str,
    place: impl FnOnce(u32),
    args: &[&str],
    vars: &[(&str, &str)],
) -> (Proc, Agent) {
    let mut fixture = Proc::spawn(&mut Command::new(env.fixture("patterns", go_line)));
    assert_eq!(fixture.line(), "ready");
    let pid = fixture.pid().to_string();
    place(fixture.pid());
    let args = [&["--pid", &pid][..], &FAST, args].concat();
    let agent = Agent::start_with(&args, false, vars);
    for cmd in ["quiet", "leaks"] {
        fixture.send(cmd);
        assert_eq!(fixture.line(), format!("ok {cmd}"));
    }
    (fixture, agent)
}

/// A GET of a binary body: (status line, body).
fn get_bytes(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let status = String::from_utf8_lossy(&raw[..at])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    (status, raw[at + 4..].to_vec())
}

/// Waits until the text profile that `selector` picks shows every leaked
/// pattern.
fn wait_for_leaks(agent: &Agent, selector: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = http_get(
            agent.port,
            &format!("/debug/pprof/goroutineleak?{selector}&debug=1"),
        )
        .unwrap_or_default();
        if LEAKED.iter().all(|f| page.contains(f)) || Instant::now() >= deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn pprof_shows_the_leaks(go_line: &str) {
    let Some(env) = KernelEnv::get() else { return };
    let Some(go) = go_command() else { return };
    let pprof = Pprof::new(go, go_line);
    let (fixture, agent) = leaking(&env, go_line, |_| {}, &[], &[]);
    let pid = fixture.pid();

    // debug=1: the runtime's text format, one record per leaked pattern.
    let text = wait_for_leaks(&agent, &format!("pid={pid}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert!(
        body.starts_with(&format!("goroutineleak profile: total {}\n", LEAKED.len())),
        "Go {go_line}:\n{text}"
    );
    for f in LEAKED {
        assert!(
            body.contains(&format!("\t{f}\t")),
            "Go {go_line}: {f} missing:\n{body}"
        );
    }
    assert!(
        body.contains(&format!(
            "# labels: {{\"exe\":\"patterns-{go_line}\", \"pid\":\"{pid}\""
        )),
        "Go {go_line}:\n{body}"
    );

    // The profile fetched by pprof itself, as `go tool pprof URL` is used.
    let top = pprof.run(&["-top", &profile_url(&agent, &format!("pid={pid}"))]);
    assert!(top.contains("Type: goroutineleak"), "Go {go_line}:\n{top}");
    assert!(
        top.contains(&format!("File: patterns-{go_line}")),
        "Go {go_line}:\n{top}"
    );
    for f in LEAKED {
        // One goroutine each: "1 16.67% … main.leakySend.func1".
        assert!(
            top.lines().any(|l| l.trim_end().ends_with(f)),
            "Go {go_line}: {f} not in -top:\n{top}"
        );
    }

    // The same profile saved to a file, then its stacks with their labels.
    let (status, gz) = get_bytes(agent.port, &format!("/debug/pprof/goroutineleak?pid={pid}"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzipped protobuf");
    let file = pprof.tmp.join("goroutineleak.pb.gz");
    std::fs::write(&file, &gz).unwrap();
    let traces = pprof.run(&["-traces", file.to_str().unwrap()]);
    for f in LEAKED {
        assert!(
            traces.contains(f),
            "Go {go_line}: {f} not in -traces:\n{traces}"
        );
    }
    assert!(
        traces.contains(&format!("pid:  {pid}")),
        "Go {go_line}: no pid label:\n{traces}"
    );
    assert!(traces.contains("verdict:  leak"), "Go {go_line}:\n{traces}");
    assert!(
        traces.contains("wait_reason:  chan send"),
        "Go {go_line}:\n{traces}"
    );

    // Every process at once, and a PID the agent does not watch.
    let (status, _) = get_bytes(agent.port, "/debug/pprof/goroutineleak");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (status, body) = get_bytes(agent.port, "/debug/pprof/goroutineleak?pid=1");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(body, b"no watched process with pid=1\n");
}

#[test]
fn pprof_shows_the_leaks_go_1_27() {
    pprof_shows_the_leaks("1.27");
}

/// Go 1.19: older runtime frames and wait reasons ("semacquire").
#[test]
fn pprof_shows_the_leaks_go_1_19() {
    pprof_shows_the_leaks("1.19");
}

const UID: &str = "0f0f0f0f-1111-2222-3333-444444444444";
const CONTAINER_ID: &str = "aa1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";
const POD: &str = "cart-7d9f8b6c5d-x2x9q";

/// A leaking process in a (stand-in) containerd container of a pod that a
/// stand-in API server reports: its profile is selected by namespace and
/// pod and carries them as labels; another pod's is a 404.
#[test]
fn pprof_selects_by_pod() {
    let Some(env) = KernelEnv::get() else { return };
    let Some(go) = go_command() else { return };
    let pprof = Pprof::new(go, "pod");
    let api = KubeApi::start(vec![pod("shop", POD, UID, CONTAINER_ID, "90")]);
    // Dropped after the fixture: a cgroup goes once its processes have.
    let cgroup = FakeContainerCgroup::create("pprof", UID, CONTAINER_ID);
    let (fixture, agent) = leaking(
        &env,
        "1.27",
        |pid| cgroup.enter(pid),
        &["--kube-api", &api.url()],
        &[("NODE_NAME", "node-a")],
    );
    let pid = fixture.pid();

    let selector = format!("namespace=shop&pod={POD}");
    let text = wait_for_leaks(&agent, &selector);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let traces = pprof.run(&["-traces", &profile_url(&agent, &selector)]);
    for f in LEAKED {
        assert!(traces.contains(f), "{f} not in -traces:\n{traces}");
    }
    for label in [
        "namespace:  shop".to_string(),
        format!("pod:  {POD}"),
        "container:  cart".to_string(),
        format!("pid:  {pid}"),
    ] {
        assert!(traces.contains(&label), "no {label:?}:\n{traces}");
    }
    let (status, body) = get_bytes(
        agent.port,
        "/debug/pprof/goroutineleak?namespace=shop&pod=web-0",
    );
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "no watched process with namespace=\"shop\" pod=\"web-0\"\n"
    );
}
