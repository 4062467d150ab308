//! What an evaluation produces: groups of parked goroutines with a verdict
//! and its evidence, misuse sites, and the counts the metrics need.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::site::Site;

/// How sure a group's verdict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Leak,
    Suspect,
}

/// Who created the goroutines of a group, and is it still able to run?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Creator {
    Alive,
    Exited,
    /// Parked for good itself.
    Stuck,
    /// Go < 1.21 records no parent, or the table is incomplete.
    Unknown,
}

/// The channel of a group's oldest member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelReport {
    pub address: String,
    pub capacity: u64,
    pub queued: u64,
    pub closed: bool,
    /// Whether any goroutine waits on the other side.
    pub counterpart_waiting: bool,
    /// Stored in a package-level variable, so code may still reach it.
    pub global: bool,
}

/// Goroutines parked the same way: same creation site, blocking site and reason.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub fingerprint: String,
    pub verdict: Verdict,
    pub wait_reason: String,
    pub wait_class: &'static str,
    /// Members parked at least `--leak-after`.
    pub count: u64,
    /// All members, however long parked.
    pub blocked: u64,
    pub oldest_blocked_seconds: f64,
    pub start_function: String,
    pub created_at: Site,
    pub blocked_at: Site,
    pub channel: Option<ChannelReport>,
    pub creator: Creator,
    /// Member counts at the last scans, oldest first.
    pub trend: Vec<u64>,
    pub evidence: Vec<String>,
    pub stack: Vec<Site>,
}

/// Goroutines parked past `--leak-after` whose primitive the heap walks
/// found reachable: not a leak, and what keeps them wakeable, which is the
/// first thing an operator asks of a long wait.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Held {
    pub start_function: String,
    pub wait_reason: String,
    pub count: u64,
    pub oldest_blocked_seconds: f64,
    /// The holder the last walk found for the first member, e.g. "goroutine
    /// 42" or "a global in .bss at 0x4f1e20" (`go tool nm` names it).
    #[serde(rename = "held_by")]
    pub holder: String,
    /// False while only the last walk saw the hold (one walk can catch a
    /// stale value); the group then has no verdict until the next walk.
    pub settled: bool,
}

/// A misuse site pair (double close: second and first closer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Misuse {
    pub kind: gostray_common::EventKind,
    /// Return addresses of the misusing goroutine, innermost first.
    pub pcs: [u64; gostray_common::EVENT_PCS],
    pub other_pc: u64,
}

/// Counts the metrics need, whatever the verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Parked goroutines by wait class, any duration.
    pub blocked_by_class: BTreeMap<&'static str, u64>,
    /// Goroutines parked sending on a channel for at least `--leak-after`.
    pub blocked_senders: u64,
}

/// Groups reported per process, worst first.
pub const MAX_GROUPS: usize = 100;

/// A channel misuse site, with how often it happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MisuseReport {
    /// The goroutine's site (for a double close: the second closer).
    pub site: SiteOut,
    /// A double close's first closer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_closer: Option<SiteOut>,
    pub count: u64,
}

/// A site as printed (owned, deserializable for the CLI).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SiteOut {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl From<Site> for SiteOut {
    fn from(s: Site) -> Self {
        Self {
            function: s.function,
            file: s.file,
            line: s.line,
        }
    }
}
