//! A Kubernetes API server that is slow, down, or answers garbage: the
//! agent keeps watching and counting its processes, never grows without
//! bound, spaces out its retries, says what failed in
//! `gostray_kube_api_errors_total`, and labels series once the API answers.

mod support;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{
    host::FakeContainerCgroup,
    http_get,
    kubeapi::{pod, Fault, KubeApi},
    Agent, KernelEnv, Metrics, Proc,
};

const SETTLE: Duration = Duration::from_secs(10);

/// A spawner fixture named `cart-server`, inside a fake container cgroup
/// that a stand-in pod names.
struct Cart {
    proc: Proc,
    _cgroup: FakeContainerCgroup,
    dir: PathBuf,
}

impl Cart {
    fn start(env: &KernelEnv, tag: &str, uid: &str, container: &str) -> Self {
        let cgroup = FakeContainerCgroup::create(tag, uid, container);
        let dir = std::env::temp_dir().join(format!("gostray-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let binary = dir.join("cart-server");
        std::fs::copy(env.fixture("spawner", "1.24"), &binary).unwrap();
        let mut proc = Proc::spawn(&mut Command::new(&binary));
        assert_eq!(proc.line(), "ready");
        cgroup.enter(proc.pid());
        Self {
            proc,
            _cgroup: cgroup,
            dir,
        }
    }
}

impl Drop for Cart {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn agent_for(api: &KubeApi) -> Agent {
    let url = api.url();
    Agent::start_with(
        &[
            "--include",
            "cart-server",
            "--rescan-interval",
            "200ms",
            "--kube-api",
            &url,
        ],
        true,
        &[("NODE_NAME", "node-a")],
    )
}

fn api_errors(m: &Metrics, reason: &str) -> u64 {
    m.value("gostray_kube_api_errors_total", &[("reason", reason)])
        .unwrap_or_else(|| {
            panic!(
                "no gostray_kube_api_errors_total{{reason={reason:?}}}:\n{}",
                m.0
            )
        }) as u64
}

fn healthy(agent: &Agent) {
    let r = http_get(agent.port, "/healthz").unwrap_or_default();
    assert!(r.starts_with("HTTP/1.1 200"), "/healthz: {r}");
}

/// The API holds every answer for seconds: the agent is ready, serves and
/// counts before the pod list arrives, and labels once it does.
#[test]
fn a_slow_api_server_delays_labels_not_the_agent() {
    const UID: &str = "51051051-aaaa-bbbb-cccc-000000000001";
    let container = "5".repeat(64);
    let Some(env) = KernelEnv::get() else { return };
    let api = KubeApi::start(vec![pod("shop", "cart-0", UID, &container, "90")]);
    api.fault(Fault::Slow(Duration::from_secs(6)));
    let mut cart = Cart::start(&env, "slow", UID, &container);
    let pid = cart.proc.pid();
    let agent = agent_for(&api);
    // Attached and counted while the list is still held.
    let m = agent.wait_attached(pid, SETTLE);
    assert_eq!(m.scalar("gostray_kube_synced"), 0, "list answered early?");
    healthy(&agent);
    let before = m.counts(pid).0;
    cart.proc.send("spawn 10 0");
    cart.proc.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid).0 == before + 10);
    assert_eq!(m.counts(pid).0, before + 10, "{}", m.0);
    assert_eq!(m.scalar("gostray_kube_synced"), 0, "{}", m.0);

    let want = [
        ("namespace", "shop"),
        ("pod", "cart-0"),
        ("exe", "cart-server"),
    ];
    let m = agent.metrics_until(Duration::from_secs(15), |m| {
        m.value("gostray_goroutines", &want).is_some()
    });
    assert!(m.value("gostray_goroutines", &want).is_some(), "{}", m.0);
    assert_eq!(m.counts(pid).0, before + 10, "{}", m.0);
    // Slow is not failed: nothing timed out, nothing counted.
    for reason in ["timeout", "connection", "status", "decode", "too_large"] {
        assert_eq!(api_errors(&m, reason), 0, "{reason}:\n{}", m.0);
    }
}

/// A list that never comes is given up on and asked again: labels arrive
/// from the second list. (Without a client timeout the first would be
/// waited on forever.)
#[test]
fn a_list_that_never_comes_times_out_and_is_retried() {
    const UID: &str = "51051051-aaaa-bbbb-cccc-000000000002";
    let container = "6".repeat(64);
    let Some(env) = KernelEnv::get() else { return };
    let api = KubeApi::start(vec![pod("shop", "cart-1", UID, &container, "90")]);
    api.hang_lists(1);
    let cart = Cart::start(&env, "hang", UID, &container);
    let agent = agent_for(&api);
    agent.wait_attached(cart.proc.pid(), SETTLE);
    let want = [("namespace", "shop"), ("pod", "cart-1")];
    let m = agent.metrics_until(Duration::from_secs(25), |m| {
        m.value("gostray_goroutines", &want).is_some()
    });
    assert!(m.value("gostray_goroutines", &want).is_some(), "{}", m.0);
    assert_eq!(api_errors(&m, "timeout"), 1, "{}", m.0);
    let lists = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch"))
        .count();
    assert_eq!(lists, 2, "{:?}", api.requests());
}

/// The API goes away mid-watch: labels already known stay, retries are
/// spaced out (a handful in seconds, not a hot loop), and the watch resumes
/// when the server is back.
#[test]
fn an_api_server_that_goes_away_and_comes_back() {
    const UID: &str = "51051051-aaaa-bbbb-cccc-000000000003";
    let container = "7".repeat(64);
    let Some(env) = KernelEnv::get() else { return };
    let api = KubeApi::start(vec![pod("shop", "cart-2", UID, &container, "90")]);
    let mut cart = Cart::start(&env, "down", UID, &container);
    let pid = cart.proc.pid();
    let agent = agent_for(&api);
    let want = [("namespace", "shop"), ("pod", "cart-2")];
    let m = agent.metrics_until(SETTLE, |m| m.value("gostray_goroutines", &want).is_some());
    assert!(m.value("gostray_goroutines", &want).is_some(), "{}", m.0);

    api.fault(Fault::Down);
    let cpu0 = cpu_ticks(agent.proc.pid());
    let failures = |m: &Metrics| api_errors(m, "connection") + api_errors(m, "stream");
    let start = failures(&agent.metrics());
    let window = Duration::from_secs(8);
    let t0 = Instant::now();
    while t0.elapsed() < window {
        healthy(&agent);
        std::thread::sleep(Duration::from_millis(500));
    }
    let m = agent.metrics();
    let retries = failures(&m) - start;
    let cpu = cpu_ticks(agent.proc.pid()) - cpu0;
    eprintln!("API down for {window:?}: {retries} failed attempts, agent CPU {cpu} ticks");
    assert!(retries >= 2, "not retrying:\n{}", m.0);
    // Back-off from 0.8 s doubling: about five in 8 s; a hot loop is thousands.
    assert!(retries <= 12, "{retries} attempts in {window:?}:\n{}", m.0);
    assert!(
        m.value("gostray_goroutines", &want).is_some(),
        "labels lost:\n{}",
        m.0
    );
    let before = m.counts(pid).0;
    cart.proc.send("spawn 5 0");
    cart.proc.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(pid).0 == before + 5);
    assert_eq!(m.counts(pid).0, before + 5, "{}", m.0);

    // Back: the watch resumes and sees a pod added meanwhile.
    let back = Instant::now();
    api.push(
        "ADDED",
        &pod(
            "shop",
            "web-9",
            "51051051-0000-0000-0000-000000000009",
            &"8".repeat(64),
            "120",
        ),
    );
    api.fault(Fault::None);
    let m = agent.metrics_until(Duration::from_secs(30), |m| {
        m.scalar("gostray_kube_pods_cached") == 2
    });
    assert_eq!(m.scalar("gostray_kube_pods_cached"), 2, "{}", m.0);
    eprintln!("recovered {:?} after the server came back", back.elapsed());
    healthy(&agent);
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn response(status: &str, kind: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Garbage of every kind: each is survived, counted under its reason, and
/// the agent keeps counting goroutines with bounded memory.
#[test]
fn garbage_from_the_api_server_is_counted_and_survived() {
    let Some(env) = KernelEnv::get() else { return };
    let mut p = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.24")));
    assert_eq!(p.line(), "ready");
    let list_ok = json!({"kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "100"}, "items": []})
    .to_string();
    let cases: Vec<(&str, Fault, &str)> = vec![
        (
            "invalid JSON",
            Fault::List(response("200 OK", "application/json", r#"{"kind":"PodList","items":[{"#)),
            "decode",
        ),
        (
            "a list that is not a PodList",
            Fault::List(response("200 OK", "application/json", r#"{"items":"many"}"#)),
            "decode",
        ),
        (
            "HTML",
            Fault::List(response("200 OK", "text/html", "<html>login</html>")),
            "decode",
        ),
        (
            "500",
            Fault::List(response("500 Internal Server Error", "text/plain", "oops")),
            "status",
        ),
        ("256 MiB list", Fault::HugeList(256 << 20), "too_large"),
        (
            "a list cut short",
            Fault::List(format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                list_ok.len(),
                &list_ok[..20]
            )),
            "stream",
        ),
        (
            "a watch cut mid-chunk",
            Fault::Watch(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{\"type\":\"ADD"
                    .into(),
            ),
            "stream",
        ),
        (
            "watch lines that are not events",
            Fault::Watch(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nnope!\n\r\n6\r\n{\"a\":\n\r\n0\r\n\r\n"
                    .into(),
            ),
            "decode",
        ),
    ];
    for (what, fault, reason) in cases {
        let watch_fault = matches!(fault, Fault::Watch(_));
        let api = KubeApi::start(Vec::new());
        api.fault(fault);
        let agent = Agent::start(&["--pid", &p.pid().to_string(), "--kube-api", &api.url()]);
        let m = agent.metrics_until(SETTLE, |m| api_errors(m, reason) >= 1);
        assert!(
            api_errors(&m, reason) >= 1,
            "{what}: not counted as {reason}:\n{}",
            m.0
        );
        assert_eq!(
            m.scalar("gostray_kube_synced"),
            u64::from(watch_fault),
            "{what}:\n{}",
            m.0
        );
        if watch_fault {
            // kube ends a broken watch quietly and starts another at once:
            // spaced out, a few in 5 s rather than hundreds.
            let watches = |api: &KubeApi| {
                api.requests()
                    .iter()
                    .filter(|r| r.contains("watch"))
                    .count()
            };
            let w0 = watches(&api);
            std::thread::sleep(Duration::from_secs(5));
            let n = watches(&api) - w0;
            eprintln!("{what}: {n} watch requests in 5 s");
            assert!(n <= 6, "{what}: {n} watches in 5 s: {:?}", api.requests());
        }
        healthy(&agent);
        let m = agent.metrics();
        let rss = m.scalar("process_resident_memory_bytes");
        eprintln!("{what}: RSS {} MiB", rss >> 20);
        assert!(rss < 160 << 20, "{what}: RSS {rss}");
        // Still counting.
        let before = m.counts(p.pid()).0;
        p.send("spawn 3 0");
        p.expect_line("done");
        let m = agent.metrics_until(SETTLE, |m| m.counts(p.pid()).0 == before + 3);
        assert_eq!(m.counts(p.pid()).0, before + 3, "{what}:\n{}", m.0);
    }
}

/// A pod with absurd fields (10 000-character names, 500 labels, 1 000
/// containers): the agent labels with trimmed values and stays small.
#[test]
fn an_absurd_pod_is_trimmed() {
    const UID: &str = "51051051-aaaa-bbbb-cccc-000000000004";
    let container = "9".repeat(64);
    let Some(env) = KernelEnv::get() else { return };
    let long = "n".repeat(10_000);
    let mut absurd = pod(&long, &long, UID, &container, "90");
    let labels: serde_json::Map<String, Value> = (0..500)
        .map(|i| (format!("k{i}"), Value::from(long.clone())))
        .collect();
    absurd["metadata"]["labels"] = Value::Object(labels);
    let mut statuses: Vec<Value> = (0..1000)
        .map(|i| {
            json!({"name": long, "containerID": format!("containerd://{i:064x}"),
            "image": "i", "imageID": "", "ready": true, "restartCount": 0})
        })
        .collect();
    statuses.insert(0, absurd["status"]["containerStatuses"][0].clone());
    absurd["status"]["containerStatuses"] = Value::Array(statuses);
    let api = KubeApi::start(vec![absurd]);
    let cart = Cart::start(&env, "absurd", UID, &container);
    let agent = agent_for(&api);
    let trimmed = "n".repeat(253);
    let want = [
        ("namespace", trimmed.as_str()),
        ("pod", trimmed.as_str()),
        ("container", "cart"),
    ];
    let m = agent.metrics_until(SETTLE, |m| m.value("gostray_goroutines", &want).is_some());
    assert!(
        m.value("gostray_goroutines", &want).is_some(),
        "{}",
        &m.0[..m.0.len().min(4000)]
    );
    assert!(!m.0.contains(&"n".repeat(254)), "an untrimmed value");
    assert_eq!(m.scalar("gostray_kube_containers_cached"), 64);
    assert!(m.for_pid("gostray_goroutines", cart.proc.pid()).is_some());
}
