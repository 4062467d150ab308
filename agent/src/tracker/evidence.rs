//! The facts the verdict rules weigh: how a group's count moves, who
//! created it, whether its members wait on work still going on, on a
//! shared channel; and how a group and its channel are named.

use std::collections::HashSet;

use super::{
    goroutine::{GoidSet, Goroutine},
    group::{ChannelReport, Creator},
    input::ChanState,
    process::ProcessState,
    site::Site,
};
use crate::gobin::WaitReason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Growth {
    None,
    /// Grew at least once and never shrank.
    Weak,
    /// Grew at three or more scans and never shrank.
    Strong,
}

impl Growth {
    pub(super) fn of(trend: &[u64]) -> Self {
        let steps: Vec<i64> = trend
            .windows(2)
            .map(|w| w[1] as i64 - w[0] as i64)
            .collect();
        let ups = steps.iter().filter(|&&d| d > 0).count();
        if ups == 0 || steps.iter().any(|&d| d < 0) {
            Self::None
        } else if ups >= 3 {
            Self::Strong
        } else {
            Self::Weak
        }
    }
}

pub(super) fn creator_of(
    proc: &ProcessState,
    members: &[&(u64, &Goroutine)],
    stuck: &GoidSet,
) -> Creator {
    let mut verdicts = members.iter().map(|(_, g)| {
        if g.parent_goid == 0 || proc.untracked > 0 {
            Creator::Unknown
        } else if stuck.contains(&g.parent_goid) {
            Creator::Stuck
        } else if proc.live.contains_key(&g.parent_goid) {
            Creator::Alive
        } else {
            Creator::Exited
        }
    });
    let first = verdicts.next().unwrap_or(Creator::Unknown);
    // One live creator is enough to call the group's creator alive.
    verdicts.fold(first, |acc, c| {
        if c == Creator::Alive || acc == Creator::Alive {
            Creator::Alive
        } else {
            acc
        }
    })
}

/// Goroutines with a live descendant (child, grandchild…) that is not
/// parked for good: whatever they wait for may still come from it.
pub(super) fn waiting_on_active_descendants(
    proc: &ProcessState,
    stuck: &GoidSet,
    system: &dyn Fn(&Goroutine) -> bool,
) -> GoidSet {
    // Mark every ancestor of an active goroutine, walking parent links up.
    // Each goroutine is marked once, so this is linear in the table.
    let mut marked = GoidSet::default();
    for (&goid, g) in &proc.live {
        if stuck.contains(&goid) || system(g) {
            continue;
        }
        let mut parent = g.parent_goid;
        let mut hops = 0;
        while parent != 0 && hops < 10_000 && marked.insert(parent) {
            parent = proc
                .live
                .get(&parent)
                .map(|p| p.parent_goid)
                .or_else(|| proc.exit_links.get(&parent).copied())
                .unwrap_or(0);
            hops += 1;
        }
    }
    marked
}

/// True when two or more members wait on the same channel (a pool shape).
pub(super) fn shared_channel(members: &[&(u64, &Goroutine)]) -> bool {
    let mut seen = HashSet::new();
    members
        .iter()
        .filter_map(|(_, g)| g.seen()?.chan().map(|c| c.address))
        .any(|a| !seen.insert(a))
}

pub(super) fn channel_evidence(c: &ChanState, class: WaitReason) -> String {
    let kind = if c.dataqsiz == 0 {
        "unbuffered".to_string()
    } else {
        format!("buffer {}/{}", c.qcount, c.dataqsiz)
    };
    let other = match class {
        WaitReason::ChanSend if !c.receivers_waiting => ", no receiver waiting",
        WaitReason::ChanReceive if !c.senders_waiting => ", no sender waiting",
        _ => "",
    };
    format!("channel {:#x} ({kind}{other})", c.address)
}

/// A stable FNV-1a hash of what identifies a group.
pub(super) fn fingerprint(created: &Site, blocked: &Site, reason: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        created.function.as_str(),
        &created.line.to_string(),
        &blocked.function,
        &blocked.line.to_string(),
        reason,
    ] {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

pub(super) fn channel_report(c: &ChanState, class: WaitReason, global: bool) -> ChannelReport {
    ChannelReport {
        address: format!("{:#x}", c.address),
        capacity: c.dataqsiz,
        queued: c.qcount,
        closed: c.closed,
        counterpart_waiting: if class == WaitReason::ChanSend {
            c.receivers_waiting
        } else {
            c.senders_waiting
        },
        global,
    }
}
