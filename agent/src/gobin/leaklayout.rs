//! The leak detector's view of a binary: the offsets its scans and probes
//! read and where its probes go, gathered from [`GoBinary`].

use gostray_common::block_cookie;
use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use crate::gobin::{sites, FuncRange, GoBinary};

/// The message of the panics the send-on-closed probe is for; chansend
/// has others (Go 1.24+: "send on synctest channel from outside bubble").
const SEND_ON_CLOSED: &[u8] = b"send on closed channel";

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

/// A probe location with its attach cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieSite {
    pub file_offset: u64,
    pub cookie: u64,
}

#[derive(Debug, Clone)]
pub struct LeakLayout {
    pub g: GScanOffsets,
    pub chan: ChanOffsets,
    pub block_sites: Vec<CookieSite>,
    pub close_site: Option<u64>,
    pub send_closed_sites: Vec<u64>,
}

impl LeakLayout {
    pub fn from_bin(bin: &GoBinary) -> Self {
        let (o, h) = (bin.offsets, bin.hchan);
        let offsets = |name: &str| -> Vec<u64> {
            bin.sites
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.site.file_offset)
                .collect()
        };
        let mut block_sites = Vec::new();
        for (name, unlock_form, chan_lock) in [
            (sites::SITE_BLOCK_CHAN, false, true),
            (sites::SITE_BLOCK, false, false),
            (sites::SITE_BLOCK_UNLOCK, true, false),
        ] {
            block_sites.extend(offsets(name).into_iter().map(|file_offset| CookieSite {
                file_offset,
                cookie: block_cookie::encode(unlock_form, chan_lock),
            }));
        }
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
            block_sites,
            close_site: offsets(sites::SITE_CLOSE).first().copied(),
            send_closed_sites: bin
                .sites
                .iter()
                .filter(|s| {
                    s.name == sites::SITE_SEND_CLOSED
                        && panics_with(bin, s.function, s.site.address) != Some(false)
                })
                .map(|s| s.site.file_offset)
                .collect(),
        }
    }

    /// Number of leak probe sites.
    pub fn probe_count(&self) -> usize {
        self.block_sites.len()
            + usize::from(self.close_site.is_some())
            + self.send_closed_sites.len()
    }
}

/// Whether the `gopanic` call at `call` (in `function`) panics with
/// [`SEND_ON_CLOSED`], read from the `plainError` string header the code
/// loads into RBX just before the call; `None` when that cannot be read.
fn panics_with(bin: &GoBinary, function: &str, call: u64) -> Option<bool> {
    let f = bin.function(function)?;
    let code = bin.code(FuncRange {
        entry: f.entry,
        end: call,
    })?;
    let header = Decoder::with_ip(64, code, f.entry, DecoderOptions::NONE)
        .into_iter()
        .filter(|i| {
            i.mnemonic() == Mnemonic::Lea
                && i.op0_register() == Register::RBX
                && i.op1_kind() == OpKind::Memory
                && i.is_ip_rel_memory_operand()
        })
        .last()?
        .ip_rel_memory_address();
    let raw = bin.code(FuncRange {
        entry: header,
        end: header + 16,
    })?;
    let ptr = u64::from_le_bytes(raw[..8].try_into().ok()?);
    let len = u64::from_le_bytes(raw[8..16].try_into().ok()?);
    if len > 256 {
        return None;
    }
    let text = bin.code(FuncRange {
        entry: ptr,
        end: ptr + len,
    })?;
    Some(text == SEND_ON_CLOSED)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::LeakLayout;
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
            let leak = LeakLayout::from_bin(&bin);
            let what = path.display();
            assert_eq!(leak.send_closed_sites.len(), 2, "{what}");
            // select, sync.Cond and select{} code is linked out of programs that do not use it.
            assert!(
                leak.block_sites.len() >= 4,
                "{what}: {}",
                leak.block_sites.len()
            );
            assert!(leak.close_site.is_some(), "{what}");
            seen += 1;
        }
        assert!(seen >= 8, "only {seen} spawner fixtures");
    }
}
