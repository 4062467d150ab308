//! The leak detector's view of a binary: the offsets its memory scans
//! read, gathered from [`GoBinary`]. Where its probes go is the probe
//! registry's ([`super::sites`]).

use super::GoBinary;

/// Offsets of `runtime.g` fields used by the memory scan, within g.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GScanOffsets {
    pub waitreason: u32,
    /// `g.waiting`: the sudog list of a goroutine parked on channels.
    pub waiting: u32,
    pub sched_pc: u32,
    pub sched_bp: u32,
    /// `g.m` and `m.curg`: the creator of a goroutine on Go < 1.21.
    pub m: u32,
    pub m_curg: u32,
}

/// Offsets in `runtime.hchan`, `runtime.waitq` and `runtime.sudog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChanOffsets {
    pub qcount: u32,
    pub dataqsiz: u32,
    pub closed: u32,
    pub lock: u32,
    /// `hchan.recvq.first` and `hchan.sendq.first`.
    pub recvq_first: u32,
    pub sendq_first: u32,
    /// `sudog.c`.
    pub sudog_c: u32,
}

#[derive(Debug, Clone)]
pub struct LeakLayout {
    pub g: GScanOffsets,
    pub chan: ChanOffsets,
}

impl LeakLayout {
    pub fn from_bin(bin: &GoBinary) -> Self {
        let (o, h) = (bin.offsets, bin.hchan);
        Self {
            g: GScanOffsets {
                waitreason: o.waitreason,
                waiting: o.waiting,
                sched_pc: o.sched_pc,
                sched_bp: o.sched_bp,
                m: o.m,
                m_curg: o.m_curg,
            },
            chan: ChanOffsets {
                qcount: h.qcount,
                dataqsiz: h.dataqsiz,
                closed: h.closed,
                lock: h.lock,
                recvq_first: h.recvq + bin.waitq.first,
                sendq_first: h.sendq + bin.waitq.first,
                sudog_c: bin.sudog.c,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use gostray_common::{PROG_CHAN_CLOSE, PROG_GOROUTINE_BLOCK, PROG_SEND_CLOSED};

    use crate::gobin::GoBinary;

    /// On every fixture (all Go lines and builds): blocking-path probes in
    /// chansend and chanrecv, closechan's entry, and exactly chansend's two
    /// "send on closed channel" panics (Go 1.24+ adds a third gopanic for
    /// synctest, which must not be probed).
    #[test]
    fn leak_sites_on_every_fixture() {
        let Some(dir) = std::env::var_os("GOSTRAY_FIXTURES").map(PathBuf::from) else {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "GOSTRAY_FIXTURES unset under CI"
            );
            eprintln!("SKIPPED: fixtures not built; run `cargo xtask test`");
            return;
        };
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures dir") {
            let path = entry.expect("entry").path();
            if !path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("spawner-"))
            {
                continue;
            }
            let bin = GoBinary::open(&path).expect("fixture parses");
            let probed = |program: &str| {
                bin.sites
                    .iter()
                    .filter(|s| s.attach && s.spec.program == program)
                    .count()
            };
            let what = path.display();
            assert_eq!(probed(PROG_SEND_CLOSED), 2, "{what}");
            // select, sync.Cond and select{} code is linked out of programs that do not use it.
            let parks = probed(PROG_GOROUTINE_BLOCK);
            assert!(parks >= 4, "{what}: {parks}");
            assert_eq!(probed(PROG_CHAN_CLOSE), 1, "{what}");
            seen += 1;
        }
        assert!(seen >= 8, "only {seen} spawner fixtures");
    }
}
