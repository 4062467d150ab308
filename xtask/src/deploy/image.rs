//! The image, built offline and run as the `DaemonSet` runs it: Podman with
//! the host's PID namespace and network, every capability dropped but the
//! least-privilege set read from deploy/kubernetes/daemonset.yaml, a
//! read-only root filesystem (no tmpfs added: Kubernetes adds none),
//! `no-new-privileges`, the default seccomp profile, `AppArmor` unconfined,
//! `/sys/fs/cgroup` read-only. It must attach to a Go process of the host
//! and serve it in `/metrics`.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use super::{caps, http, Tally};
use crate::{
    build::Arch,
    image,
    util::{output, root, Guard},
};

/// Ports the run check may listen on (clear of the other tests' ports).
const PORTS: std::ops::Range<u16> = 9400..9500;

pub fn check(tally: &mut Tally, fixtures: &std::path::Path) {
    let mut built = false;
    tally.check(
        "image builds offline for amd64 and arm64 (static agents, buildah, from scratch, manifest list)",
        || {
            let started = Instant::now();
            image::image(&Arch::ALL, false)?;
            println!("    built in {:.0}s", started.elapsed().as_secs_f64());
            built = true;
            Ok(())
        },
    );
    tally.check(
        "image carries the OCI labels deploy/Dockerfile sets",
        || {
            if !built {
                bail!("no image");
            }
            Arch::ALL.iter().try_for_each(|&a| labels_match(a))
        },
    );
    tally.check(
        "image's platforms are the architectures the DaemonSet schedules on, and no other",
        || {
            if !built {
                bail!("no image");
            }
            platforms_match()
        },
    );
    tally.check(
        "image runs as the DaemonSet does and watches a host Go process",
        || {
            if !built {
                bail!("no image");
            }
            run_check(fixtures)
        },
    );
}

/// The architectures a manifest's text schedules on: the list after
/// `architectures:` (the chart's values) or the `values:` list under the
/// `kubernetes.io/arch` key (a static manifest's node affinity).
fn scheduled_architectures(text: &str) -> Option<Vec<String>> {
    let list = |line: &str| -> Vec<String> {
        line.trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(|a| a.trim().trim_matches('"').to_string())
            .filter(|a| !a.is_empty())
            .collect()
    };
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("architectures:") {
            return Some(list(rest));
        }
        if line.trim() == "- key: kubernetes.io/arch" {
            let values = lines.find_map(|l| l.trim().strip_prefix("values:"))?;
            return Some(list(values));
        }
    }
    None
}

/// The manifest list names linux/<arch> for exactly the architectures the
/// chart's default values and both static `DaemonSets` schedule on.
fn platforms_match() -> anyhow::Result<()> {
    let mut platforms = image::manifest_platforms()?;
    platforms.sort();
    println!(
        "    manifest list {}: {}",
        image::tag(),
        platforms.join(", ")
    );
    for file in [
        "deploy/helm/gostray/values.yaml",
        "deploy/kubernetes/daemonset.yaml",
        "deploy/kubernetes/daemonset-privileged.yaml",
    ] {
        let text = fs::read_to_string(root().join(file))?;
        let mut archs: Vec<String> = scheduled_architectures(&text)
            .with_context(|| format!("{file} names no kubernetes.io/arch"))?
            .into_iter()
            .map(|a| format!("linux/{a}"))
            .collect();
        archs.sort();
        if archs != platforms {
            bail!("{file} schedules on {archs:?}, the image has {platforms:?}");
        }
    }
    Ok(())
}

/// `arch`'s image has the labels `image::labels`, and the Dockerfile's
/// runtime stage sets each of them (the revision from its build argument).
fn labels_match(arch: Arch) -> anyhow::Result<()> {
    let json = output(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{json .Labels}}",
        &image::arch_tag(arch),
    ]))
    .context("podman image inspect")?;
    let got: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json.trim())?;
    let dockerfile = fs::read_to_string(root().join("deploy/Dockerfile"))?;
    for (key, value) in image::labels("REVISION") {
        let in_image = got.get(key).and_then(|v| v.as_str());
        if key != "org.opencontainers.image.revision" && in_image != Some(value.as_str()) {
            bail!(
                "{} label {key} is {in_image:?}, expected {value:?}",
                image::arch_tag(arch)
            );
        }
        let wanted = if key == "org.opencontainers.image.revision" {
            format!("{key}=\"${{REVISION}}\"")
        } else {
            format!("{key}=\"{value}\"")
        };
        if !dockerfile.contains(&wanted) {
            bail!("deploy/Dockerfile does not set {wanted}");
        }
    }
    Ok(())
}

/// A container stopped (and, being `--rm`, removed) when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["stop", "--time", "5", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> anyhow::Result<u16> {
    PORTS
        .clone()
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .context("no free port in 9400-9499")
}

/// This process's hard limit on open files (`/proc/self/limits`), 1024
/// if unreadable.
fn open_files_limit() -> u64 {
    fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(4).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}

fn run_check(fixtures: &std::path::Path) -> anyhow::Result<()> {
    // A copy with a name of this run's own, so the agent is narrowed to it
    // and other Go processes of the machine stay out.
    let dir = std::env::temp_dir().join(format!("gostray-image-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let name = format!("spawner-img{}", std::process::id());
    let exe = dir.join(&name);
    fs::copy(fixtures.join("spawner-1.27"), &exe)?;
    let mut target = Guard(
        Command::new(&exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the Go target")?,
    );
    let mut out = BufReader::new(target.0.stdout.take().expect("piped"));
    let mut ready = String::new();
    out.read_line(&mut ready)?;
    if ready.trim() != "ready" {
        bail!("target said {ready:?}, not ready");
    }

    let caps = caps::daemonset_capabilities()?;
    let port = free_port()?;
    let container = format!("gostray-image-check-{}", std::process::id());
    let node = output(&mut Command::new("hostname")).unwrap_or_default();
    let nofile = open_files_limit();
    let started = output(
        Command::new("podman")
            .args(["run", "--rm", "--detach", "--name", &container])
            // runc, not crun: crun refuses this machine's hybrid cgroup
            // layout (v1 controllers, a v2 hierarchy beside them).
            .args(["--runtime", "runc"])
            // Podman's defaults for root raise RLIMIT_NOFILE and
            // RLIMIT_NPROC, which fails where root lacks CAP_SYS_RESOURCE
            // (this machine): keep this process's open-file limit, and a
            // modest process count (the agent runs a handful of threads).
            .arg(format!("--ulimit=nofile={nofile}:{nofile}"))
            .arg("--ulimit=nproc=4096:4096")
            .args(["--pid=host", "--network=host", "--cap-drop=ALL"])
            .arg(format!("--cap-add={}", caps.join(",")))
            .args(["--read-only", "--read-only-tmpfs=false"])
            .args(["--security-opt", "no-new-privileges"])
            .args(["--security-opt", "apparmor=unconfined"])
            .args(["--volume", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
            .arg(format!("--env=NODE_NAME={}", node.trim()))
            .arg(format!("--env=GOSTRAY_LISTEN=127.0.0.1:{port}"))
            .arg("--env=GOSTRAY_LOG_FORMAT=json")
            .arg(image::tag())
            .args(["run", "--include", &name]),
    );
    if started.is_none() {
        bail!(
            "podman run failed (run it by hand: podman run --rm {})",
            image::tag()
        );
    }
    let running = Container(container.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    let needle = format!("exe=\"{name}\"");
    loop {
        if let Ok((200, body)) = http::get(port, "/metrics") {
            if let Some(line) = body
                .lines()
                .find(|l| l.starts_with("gostray_goroutines{") && l.contains(&needle))
            {
                println!("    {line}");
                break;
            }
        }
        if Instant::now() > deadline {
            let logs = output(Command::new("podman").args(["logs", "--tail", "20", &container]))
                .unwrap_or_default();
            bail!("no gostray_goroutines series for {name} within 30 s; agent log:\n{logs}");
        }
        thread::sleep(Duration::from_millis(200));
    }
    drop(running);
    drop(target);
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::scheduled_architectures;

    #[test]
    fn reads_the_architectures_of_values_and_of_a_daemonset() {
        let values = "nodeSelector:\n  kubernetes.io/os: linux\narchitectures: [amd64, arm64]\n";
        assert_eq!(
            scheduled_architectures(values),
            Some(vec!["amd64".into(), "arm64".into()])
        );
        let daemonset = "            nodeSelectorTerms:\n              - matchExpressions:\n                  - key: kubernetes.io/arch\n                    operator: In\n                    values: [\"arm64\"]\n";
        assert_eq!(
            scheduled_architectures(daemonset),
            Some(vec!["arm64".into()])
        );
        assert_eq!(scheduled_architectures("kind: DaemonSet\n"), None);
    }
}
