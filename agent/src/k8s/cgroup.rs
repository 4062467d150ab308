//! From `/proc/PID/cgroup` to the container (and pod) a process runs in.
//!
//! Container runtimes name the leaf cgroup after the container ID; the
//! shape depends on the runtime and the cgroup driver:
//!
//! ```text
//! systemd driver   …/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//!                  …/crio-<id>.scope        …/docker-<id>.scope
//! cgroupfs driver  /kubepods/burstable/pod<uid>/<id>
//! plain Docker     /docker/<id>
//! ```
//!
//! cgroup v2 has one line (`0::/path`); v1 one per hierarchy, all naming the
//! same leaf for a container, so any line that yields an ID will do.

use std::fs;

/// Runtime prefixes of systemd scope names; `crio-conmon-` is CRI-O's
/// monitor process, not the container.
const SCOPE_PREFIXES: [&str; 4] = ["cri-containerd-", "crio-", "docker-", "libpod-"];

/// Where a process sits, as far as Kubernetes is concerned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// 64 lowercase hex digits, without the `containerd://` scheme.
    pub container_id: Option<String>,
    /// The pod UID with dashes, from a `pod<uid>` path element.
    pub pod_uid: Option<String>,
}

/// Reads and parses `/proc/PID/cgroup`; a process that is gone has no placement.
pub fn placement(pid: u32) -> Placement {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|s| parse(&s))
        .unwrap_or_default()
}

/// Parses the contents of a `/proc/PID/cgroup` file.
pub fn parse(content: &str) -> Placement {
    let mut out = Placement::default();
    for line in content.lines() {
        // hierarchy-ID:controllers:path; the path may itself contain ':'.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        for element in path.split('/').rev() {
            if out.container_id.is_none() {
                out.container_id = container_id(element);
            }
            if out.pod_uid.is_none() {
                out.pod_uid = pod_uid(element);
            }
        }
        if out.container_id.is_some() {
            break;
        }
    }
    out
}

fn container_id(element: &str) -> Option<String> {
    let bare = match element.strip_suffix(".scope") {
        Some(scope) => {
            if scope.starts_with("crio-conmon-") {
                return None;
            }
            SCOPE_PREFIXES.iter().find_map(|p| scope.strip_prefix(p))?
        }
        None => element,
    };
    is_container_id(bare).then(|| bare.to_ascii_lowercase())
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn pod_uid(element: &str) -> Option<String> {
    // systemd: kubepods-besteffort-pod<uid>.slice with '_' for '-';
    // cgroupfs: pod<uid>.
    let element = element.strip_suffix(".slice").unwrap_or(element);
    let uid = &element[element.rfind("pod")? + 3..];
    let uid = uid.replace('_', "-");
    let ok = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    ok.then_some(uid)
}

/// A container ID as Kubernetes reports it (`containerd://<id>`,
/// `cri-o://<id>`, `docker://<id>`), reduced to the bare ID.
pub fn strip_scheme(status_id: &str) -> Option<String> {
    let bare = status_id.rsplit("://").next()?;
    is_container_id(bare).then(|| bare.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a7c1e9b8d4f6a0c5e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a";
    const UID: &str = "d9e3b5a1-7c2f-4e8b-9a6d-1f0c3e5b7a92";

    fn uid_us() -> String {
        UID.replace('-', "_")
    }

    fn check(content: &str) {
        let p = parse(content);
        assert_eq!(p.container_id.as_deref(), Some(ID), "{content}");
        assert_eq!(p.pod_uid.as_deref(), Some(UID), "{content}");
    }

    #[test]
    fn containerd_cgroup_v2_systemd() {
        check(&format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope\n", uid_us()));
    }

    #[test]
    fn crio_cgroup_v2_systemd() {
        check(&format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{ID}.scope\n",
            uid_us()
        ));
    }

    #[test]
    fn crio_monitor_is_not_the_container() {
        let p = parse(&format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope\n",
            uid_us()
        ));
        assert_eq!(p.container_id, None);
        assert_eq!(p.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn docker_cgroup_v1_systemd() {
        check(&format!(
            "12:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope\n\
             11:cpu,cpuacct:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope\n",
            u = uid_us()
        ));
    }

    #[test]
    fn containerd_cgroup_v1_cgroupfs() {
        check(&format!(
            "10:memory:/kubepods/burstable/pod{UID}/{ID}\n9:cpuset:/kubepods/burstable/pod{UID}/{ID}\n"
        ));
    }

    #[test]
    fn containerd_cgroup_v2_cgroupfs() {
        check(&format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"));
    }

    #[test]
    fn plain_docker_and_host_processes() {
        let p = parse(&format!("0::/docker/{ID}\n"));
        assert_eq!((p.container_id.as_deref(), p.pod_uid), (Some(ID), None));
        assert_eq!(
            parse("0::/user.slice/user-0.slice/session-1.scope\n"),
            Placement::default()
        );
        assert_eq!(parse("0::/\n"), Placement::default());
        assert_eq!(parse("garbage"), Placement::default());
    }

    #[test]
    fn status_ids_lose_their_scheme() {
        assert_eq!(
            strip_scheme(&format!("containerd://{ID}")).as_deref(),
            Some(ID)
        );
        assert_eq!(strip_scheme(&format!("cri-o://{ID}")).as_deref(), Some(ID));
        assert_eq!(strip_scheme("docker://short"), None);
    }
}
