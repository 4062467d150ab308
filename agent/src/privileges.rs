//! Checking, before touching the kernel, that we may: one clear line beats
//! an EPERM from deep inside the loader.
//!
//! Uprobes through the perf PMU need CAP_SYS_ADMIN from Linux 6.16 (and the
//! stable kernels updated since July 2025); before that CAP_BPF with
//! CAP_PERFMON was enough. Reading other processes' memory and executables
//! needs CAP_SYS_PTRACE. See deploy/README.md for the tested sets.

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
    missing_from(effective)
}

fn missing_from(effective: u64) -> Vec<&'static str> {
    let has = |bit: u32| effective & (1 << bit) != 0;
    let mut out = Vec::new();
    if !has(CAP_SYS_ADMIN) && !(has(CAP_BPF) && has(CAP_PERFMON)) {
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
        assert_eq!(missing_from(0), vec!["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        assert!(missing_from(u64::MAX).is_empty());
        assert!(missing_from((1 << CAP_SYS_ADMIN) | (1 << CAP_SYS_PTRACE)).is_empty());
        // Older kernels: BPF and PERFMON stand in for SYS_ADMIN.
        assert!(
            missing_from((1 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_SYS_PTRACE)).is_empty()
        );
        assert_eq!(
            missing_from((1 << CAP_BPF) | (1 << CAP_SYS_PTRACE)),
            vec!["CAP_SYS_ADMIN"]
        );
    }
}
