//! Checking, before touching the kernel, that we may: one clear line beats
//! an EPERM from deep inside the loader.

/// Capabilities the agent needs, with why.
const NEEDED: [(u32, &str); 3] = [
    (39, "CAP_BPF"),        // load programs, create maps
    (38, "CAP_PERFMON"),    // perf-event uprobes
    (19, "CAP_SYS_PTRACE"), // read other processes' memory and /proc/PID/exe
];

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
    // CAP_SYS_ADMIN (21) stands in for BPF and PERFMON on any kernel.
    let sys_admin = effective & (1 << 21) != 0;
    NEEDED
        .iter()
        .filter(|(bit, name)| {
            effective & (1 << bit) == 0 && !(sys_admin && *name != "CAP_SYS_PTRACE")
        })
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        assert_eq!(
            missing_from(0),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]
        );
        assert!(missing_from(u64::MAX).is_empty());
        assert_eq!(missing_from(1 << 21), vec!["CAP_SYS_PTRACE"]);
        assert_eq!(missing_from((1 << 39) | (1 << 19)), vec!["CAP_PERFMON"]);
    }
}
