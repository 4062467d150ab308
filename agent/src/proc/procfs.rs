//! What `/proc` tells about a process: its executable, start time, mappings.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Longest executable name kept (it ends up in labels and logs).
const MAX_EXE_LEN: usize = 64;

/// Identity of an executable file: same device and inode, same binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> io::Result<Self> {
        let m = fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// `/proc/PID/exe`: opening through it reaches the file in the process's own
/// mount namespace, even when that file was deleted or replaced since.
pub fn exe_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/exe"))
}

/// The executable's base name, bounded, without the " (deleted)" suffix.
pub fn exe_name(pid: u32) -> io::Result<String> {
    let target = fs::read_link(exe_path(pid))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    Ok(bounded(name))
}

/// Keeps at most [`MAX_EXE_LEN`] characters of printable text.
pub fn bounded(s: &str) -> String {
    bounded_to(s, MAX_EXE_LEN)
}

/// Keeps at most `max` characters of printable text: strings taken from a
/// target go into labels, JSON and terminals.
pub fn bounded_to(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The process start time (clock ticks since boot, field 22 of
/// `/proc/PID/stat`): with the PID it identifies a process across PID reuse.
pub fn start_time(pid: u32) -> io::Result<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
}

/// The start time of `pid` if it is running: `None` once it has exited,
/// including as a zombie not yet reaped (its /proc entry outlives it).
pub fn running_since(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat[stat.rfind(')')? + 1..].split_whitespace().next()?;
    if matches!(state, "Z" | "X" | "x") {
        return None;
    }
    parse_start_time(&stat)
}

/// True while `pid` is the process that started at `start_time` and has not
/// exited: a zombie has exited even though its entry remains.
pub fn alive(pid: u32, start_time: u64) -> bool {
    running_since(pid) == Some(start_time)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    stat_field(stat, 22)
}

/// CPU time `pid` has used, user and system, in clock ticks (fields 14 and
/// 15 of `/proc/PID/stat`).
pub fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat_field(&stat, 14)? + stat_field(&stat, 15)?)
}

/// Field `n` (numbered from 1, as proc(5) does) of a stat line, for `n` ≥ 3.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split
    // after its last ')'. Field 3 is then the first.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// The address where the executable with inode `ino` is mapped at file
/// offset 0 in `pid`, from `/proc/PID/maps`.
pub fn image_start(pid: u32, id: FileId) -> io::Result<Option<u64>> {
    Ok(parse_image_start(
        &fs::read_to_string(format!("/proc/{pid}/maps"))?,
        id.ino,
    ))
}

fn parse_image_start(maps: &str, ino: u64) -> Option<u64> {
    maps.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let _dev = f.next()?;
        let inode: u64 = f.next()?.parse().ok()?;
        (inode == ino && offset == 0)
            .then(|| u64::from_str_radix(range.split('-').next()?, 16).ok())?
    })
}

/// Every PID in `/proc` (processes, not threads).
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process gone between listing and reading: every reader says so
    /// with an error or `None`, never a panic or a stale value.
    #[test]
    fn vanished_processes() {
        let gone = u32::MAX - 1; // above pid_max: never a live process
        assert!(start_time(gone).is_err());
        assert_eq!(running_since(gone), None);
        assert!(exe_name(gone).is_err());
        assert!(image_start(gone, FileId { dev: 0, ino: 0 }).is_err());
        assert!(running_since(std::process::id()).is_some());
    }

    #[test]
    fn start_time_survives_hostile_command_names() {
        let stat = "4242 (my) (evil) prog) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 8 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(stat_field(stat, 14), Some(0));
        assert_eq!(stat_field(stat, 4), Some(1));
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn finds_the_image_mapping_by_inode_at_offset_zero() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fd:01 1234 /app/svc
55d0c0100000-55d0c0300000 r-xp 00100000 fd:01 1234 /app/svc
7f0000000000-7f0000001000 r--p 00000000 fd:01 999 /lib/other.so";
        assert_eq!(parse_image_start(maps, 1234), Some(0x55d0_c000_0000));
        assert_eq!(parse_image_start(maps, 5), None);
    }

    #[test]
    fn alive_means_same_start_and_not_exited() {
        let me = std::process::id();
        let start = start_time(me).unwrap();
        assert!(alive(me, start));
        assert!(!alive(me, start + 1), "another process under a reused PID");
        let mut zombie = std::process::Command::new("true").spawn().unwrap();
        let pid = zombie.id();
        let start = start_time(pid).unwrap();
        // Exited but not reaped: a zombie still has its /proc entry.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!alive(pid, start));
        zombie.wait().unwrap();
        assert!(!alive(pid, start));
    }

    /// Every read the attach makes, against a process that has exited but
    /// is not reaped (its /proc directory stays, its executable link,
    /// mappings and memory are gone) and then against the reaped PID: each
    /// says "no" with an error or an empty answer, none panics.
    #[test]
    fn reads_of_an_exited_process() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let check = |state: &str| {
            assert!(FileId::of(&exe_path(pid)).is_err(), "{state}");
            assert!(exe_name(pid).is_err(), "{state}");
            assert!(crate::discovery::fingerprint(pid).is_err(), "{state}");
            let image = image_start(pid, FileId { dev: 0, ino: 0 });
            assert!(!matches!(image, Ok(Some(_))), "{state}: {image:?}");
            let mut word = [0u8; 8];
            assert!(
                crate::proc::mem::read(pid, 0x40_0000, &mut word).is_err(),
                "{state}"
            );
            assert!(
                crate::proc::mem::read_u64(pid, 0x40_0000).is_err(),
                "{state}"
            );
            // A zombie still has a cgroup file; a reaped PID has none.
            let placement = crate::k8s::cgroup::placement(pid);
            assert_eq!(placement.container_id, None, "{state}");
        };
        check("zombie");
        child.wait().unwrap();
        check("reaped");
        assert!(running_since(pid).is_none());
    }

    #[test]
    fn bounds_and_cleans_names() {
        assert_eq!(bounded("a\nb\u{1b}[31m"), "ab[31m");
        assert_eq!(bounded(&"x".repeat(500)).len(), MAX_EXE_LEN);
    }
}
