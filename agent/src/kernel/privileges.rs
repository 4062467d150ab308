//! Checking, before touching the kernel, that we may: one clear line beats
//! an EPERM from deep inside the loader.
//!
//! Uprobes through the perf PMU need `CAP_SYS_ADMIN` from Linux 6.16 (and the
//! stable kernels updated since July 2025); before that `CAP_BPF` with
//! `CAP_PERFMON` was enough. Reading other processes' memory and executables
//! needs `CAP_SYS_PTRACE`. See deploy/README.md for the tested sets.

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What to grant, for the error message.
pub const NEEDED: &str =
    "root, or CAP_SYS_ADMIN (CAP_BPF + CAP_PERFMON on kernels before 6.16) and CAP_SYS_PTRACE";

/// The names of needed capabilities missing from the effective set.
pub fn missing() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    missing_from(effective, uprobes_need_sys_admin(&release))
}

/// Linux 6.16 reverted uprobes to `CAP_SYS_ADMIN` (commit ba677dbe77af); the
/// stable kernels that took the revert in July 2025 have lower versions and
/// still fail later, at `perf_event_open`, with EACCES.
fn uprobes_need_sys_admin(release: &str) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 16)
}

fn missing_from(effective: u64, sys_admin_only: bool) -> Vec<&'static str> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    let mut out = Vec::new();
    let bpf_perfmon = !sys_admin_only && has(CAP_BPF) && has(CAP_PERFMON);
    if !has(CAP_SYS_ADMIN) && !bpf_perfmon {
        out.push("CAP_SYS_ADMIN");
    }
    if !has(CAP_SYS_PTRACE) {
        out.push("CAP_SYS_PTRACE");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        for new in [false, true] {
            assert_eq!(
                missing_from(0, new),
                vec!["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]
            );
            assert!(missing_from(u64::MAX, new).is_empty());
            assert!(missing_from((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE), new).is_empty());
            assert_eq!(
                missing_from((1 << CAP_BPF) | (1 << CAP_SYS_PTRACE), new),
                vec!["CAP_SYS_ADMIN"]
            );
        }
        // Before 6.16, BPF and PERFMON stand in for SYS_ADMIN; not after.
        let bpf = (1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE);
        assert!(missing_from(bpf, false).is_empty());
        assert_eq!(missing_from(bpf, true), vec!["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn kernel_releases() {
        assert!(uprobes_need_sys_admin("6.18.0-1-amd64\n"));
        assert!(uprobes_need_sys_admin("6.16.0"));
        assert!(uprobes_need_sys_admin("7.0.1"));
        assert!(!uprobes_need_sys_admin("6.15.9"));
        assert!(!uprobes_need_sys_admin("5.10.0-30-cloud-amd64"));
        assert!(!uprobes_need_sys_admin("garbage"));
    }
}
