//! Kubernetes metadata for real: a process in a cgroup named like a
//! containerd container is labelled with the pod that a stand-in API server
//! (real list/watch protocol on loopback) reports for that container.

mod support;

use std::{process::Command, time::Duration};

use support::{
    host::FakeContainerCgroup,
    http_get,
    kubeapi::{pod, KubeApi},
    Agent, KernelEnv, Proc,
};

const SETTLE: Duration = Duration::from_secs(10);

const CART_UID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
const CONTAINER_ID: &str = "5c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d";

/// A process in a cgroup named like a containerd container gets the labels
/// of the pod the API server reports for that container; no PID label.
#[test]
fn pod_labels_from_the_api_server() {
    let Some(env) = KernelEnv::get() else { return };
    // Listed at start: some other pod of the node. Ours arrives by the watch.
    let decoy_uid = "11111111-2222-3333-4444-555555555555";
    let api = KubeApi::start(vec![pod("shop", "web-0", decoy_uid, &"e".repeat(64), "90")]);

    let cgroup = FakeContainerCgroup::create("labels", CART_UID, CONTAINER_ID);
    let dir = std::env::temp_dir().join(format!("gostray-pod-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("cart-server");
    std::fs::copy(env.fixture("spawner", "1.27"), &binary).unwrap();
    let mut cart = Proc::spawn(&mut Command::new(&binary));
    assert_eq!(cart.line(), "ready");
    cgroup.enter(cart.pid());

    let args = [
        "--include",
        "cart-server",
        "--rescan-interval",
        "200ms",
        "--kube-api",
    ];
    let agent = Agent::start_with(
        &[&args[..], &[api.url().as_str()]].concat(),
        false,
        &[("NODE_NAME", "node-a")],
    );
    let m = agent.metrics_until(SETTLE, |m| m.scalar("gostray_kube_synced") == 1);
    assert_eq!(m.scalar("gostray_kube_pods_cached"), 1, "{}", m.0);
    // Attached before its pod is known: labelled by executable only.
    let m = agent.metrics_until(SETTLE, |m| !m.series("gostray_goroutines").is_empty());
    assert!(
        m.value("gostray_goroutines", &[("exe", "cart-server")])
            .is_some(),
        "{}",
        m.0
    );

    api.push(
        "ADDED",
        &pod(
            "shop",
            "cart-7d9f8b6c5d-x2x9q",
            CART_UID,
            CONTAINER_ID,
            "101",
        ),
    );
    let want = [
        ("namespace", "shop"),
        ("pod", "cart-7d9f8b6c5d-x2x9q"),
        ("container", "cart"),
        ("exe", "cart-server"),
    ];
    let m = agent.metrics_until(SETTLE, |m| m.value("gostray_goroutines", &want).is_some());
    assert!(
        m.value("gostray_goroutines", &want).is_some(),
        "no pod labels:\n{}",
        m.0
    );
    assert_eq!(m.scalar("gostray_kube_pods_cached"), 2);
    report_names_the_pod(&agent);
    let series = m.series("gostray_goroutines");
    assert_eq!(series.len(), 1, "one series, the labelled one: {series:?}");
    assert!(
        !series[0].contains("pid="),
        "pid label without --pid-label: {}",
        series[0]
    );
    // The owner: a ReplicaSet with the pod-template-hash, so its Deployment.
    let info = [
        ("pod", "cart-7d9f8b6c5d-x2x9q"),
        ("workload_kind", "Deployment"),
        ("workload", "cart"),
        ("go_version", "go1.27.3"),
    ];
    assert_eq!(m.value("gostray_process_info", &info), Some(1.0), "{}", m.0);

    // Counting still works under the new labels.
    cart.send("spawn 20 5");
    cart.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| {
        m.value("gostray_goroutines_created_total", &want) == Some(25.0)
    });
    assert_eq!(
        m.value("gostray_goroutines_created_total", &want),
        Some(25.0),
        "{}",
        m.0
    );

    check_requests(&api);
    // And the whole exposition passes Prometheus's own linter.
    let body = m.0.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    let out = promtool_check(&body);
    assert!(out.is_empty(), "promtool check metrics:\n{out}");

    relist_follows(&agent, &api);

    cart.send("quit");
    let _ = cart.child.wait();
    let m = agent.metrics_until(SETTLE, |m| m.series("gostray_goroutines").is_empty());
    assert!(
        m.series("gostray_goroutines").is_empty(),
        "stale series:\n{}",
        m.0
    );
    drop(cgroup);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The leak report names the pod too, once relabelled.
fn report_names_the_pod(agent: &Agent) {
    let report = http_get(agent.port, "/api/v1/leaks").unwrap_or_default();
    for field in [
        "\"namespace\": \"shop\"",
        "\"pod\": \"cart-7d9f8b6c5d-x2x9q\"",
        "\"container\": \"cart\"",
    ] {
        assert!(report.contains(field), "{field} missing:\n{report}");
    }
}

/// The server forgets history (410 Gone) and the pod went meanwhile: the
/// agent relists and its cache follows.
fn relist_follows(agent: &Agent, api: &KubeApi) {
    let errors = agent.metrics().scalar("gostray_kube_watch_errors_total");
    api.expire(Vec::new());
    let m = agent.metrics_until(SETTLE, |m| m.scalar("gostray_kube_pods_cached") == 0);
    assert_eq!(m.scalar("gostray_kube_pods_cached"), 0, "{}", m.0);
    assert_eq!(m.scalar("gostray_kube_synced"), 1);
    assert_eq!(
        m.scalar("gostray_kube_watch_errors_total"),
        errors + 1,
        "the 410, counted once"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("resourceVersion=200")),
        "no watch from the relist's version: {:?}",
        api.requests()
    );
}

/// The client asked for this node's pods only, and watched from the list's version.
fn check_requests(api: &KubeApi) {
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a") && !r.contains("watch")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("resourceVersion=100")),
        "{requests:?}"
    );
}

/// Runs `promtool check metrics` on `body`; its complaints, if any.
fn promtool_check(body: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An API server that does not answer is not the agent's failure: it runs,
/// watches its processes, counts the errors and keeps retrying.
#[test]
fn an_unreachable_api_server_is_not_fatal() {
    let Some(env) = KernelEnv::get() else { return };
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut p = Proc::spawn(&mut Command::new(env.fixture("spawner", "1.24")));
    assert_eq!(p.line(), "ready");
    let agent = Agent::start(&[
        "--pid",
        &p.pid().to_string(),
        "--kube-api",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let m = agent.metrics_until(SETTLE, |m| m.scalar("gostray_kube_watch_errors_total") >= 1);
    assert!(m.scalar("gostray_kube_watch_errors_total") >= 1, "{}", m.0);
    assert_eq!(m.scalar("gostray_kube_synced"), 0);
    p.send("spawn 10 0");
    p.expect_line("done");
    let m = agent.metrics_until(SETTLE, |m| m.counts(p.pid()).0 == 10);
    assert_eq!(m.counts(p.pid()).0, 10, "{}", m.0);
}

/// `--include namespace=shop`: a containerised process whose pod is not
/// known yet waits; once the watch reports its pod in that namespace it is
/// watched. The same program outside any pod never is.
#[test]
fn namespace_rules_wait_for_the_pod_and_then_select() {
    const UID: &str = "12345678-9abc-def0-1234-56789abcdef0";
    let container = "c0ffee".repeat(10) + "c0ff";
    let Some(env) = KernelEnv::get() else { return };
    let api = KubeApi::start(Vec::new());
    let cgroup = FakeContainerCgroup::create("select", UID, &container);
    let dir = std::env::temp_dir().join(format!("gostray-select-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("shop-server");
    std::fs::copy(env.fixture("spawner", "1.24"), &binary).unwrap();
    let mut inside = Proc::spawn(&mut Command::new(&binary));
    assert_eq!(inside.line(), "ready");
    cgroup.enter(inside.pid());
    let mut outside = Proc::spawn(&mut Command::new(&binary));
    assert_eq!(outside.line(), "ready");

    let agent = Agent::start_with(
        &[
            "--include",
            "namespace=shop",
            "--kube-api",
            &api.url(),
            "--rescan-interval",
            "200ms",
        ],
        true,
        &[("NODE_NAME", "node-a")],
    );
    let (pid_in, pid_out) = (inside.pid(), outside.pid());
    let m = agent.metrics_until(SETTLE, |m| m.scalar("gostray_kube_synced") == 1);
    assert_eq!(m.scalar("gostray_kube_synced"), 1, "{}", m.0);
    // A few rescans with the pod unknown: neither is watched.
    std::thread::sleep(Duration::from_millis(600));
    let m = agent.metrics();
    assert!(m.for_pid("gostray_goroutines", pid_in).is_none(), "{}", m.0);
    assert!(
        m.for_pid("gostray_goroutines", pid_out).is_none(),
        "{}",
        m.0
    );

    api.push("ADDED", &pod("shop", "shop-0", UID, &container, "101"));
    let m = agent.metrics_until(SETTLE, |m| {
        m.for_pid("gostray_goroutines", pid_in).is_some()
    });
    let pid = pid_in.to_string();
    let want = [
        ("namespace", "shop"),
        ("pod", "shop-0"),
        ("pid", pid.as_str()),
    ];
    assert!(m.value("gostray_goroutines", &want).is_some(), "{}", m.0);
    assert!(
        m.for_pid("gostray_goroutines", pid_out).is_none(),
        "outside any pod, yet watched:\n{}",
        m.0
    );
    inside.send("quit");
    outside.send("quit");
    let _ = inside.child.wait();
    drop(cgroup);
    let _ = std::fs::remove_dir_all(&dir);
}
