//! Deciding which parked goroutines are leaks, from evidence only.
//!
//! From outside the process we cannot prove a goroutine unreachable the way
//! the runtime's GC-based detector can, so a verdict combines: how long it
//! has been parked, on what, whether its creator is still running, whether
//! the channel is held by a package-level variable, and how the number of
//! goroutines parked the same way moves over time. See the README's rules.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::process::{GoidSet, Goroutine, ProcessState, TREND_LEN};
use crate::{
    gobin::WaitReason,
    proc::scan::{ChanState, G_WAITING},
};

/// A source location, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Site {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Names PCs of one process (runtime addresses; the implementation removes
/// the load bias).
pub trait Symbols {
    /// The physical function at `pc` (the PC of an instruction).
    fn site(&self, pc: u64) -> Option<Site>;

    /// The frames at `pc`, innermost first: the calls the compiler inlined
    /// there, then the physical function, as the runtime's tracebacks show
    /// them.
    fn frames(&self, pc: u64) -> Vec<Site> {
        self.site(pc).into_iter().collect()
    }

    /// Whether the physical function at `pc` is a compiler wrapper, which
    /// the runtime leaves out of tracebacks; `None` when unknown (then the
    /// wrapper is recognised by name).
    fn is_wrapper(&self, _pc: u64) -> Option<bool> {
        None
    }
}

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

/// A misuse site pair (double close: second and first closer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Misuse {
    pub kind: gostray_common::EventKind,
    /// Return addresses of the misusing goroutine, innermost first.
    pub pcs: [u64; gostray_common::EVENT_PCS],
    pub other_pc: u64,
}

/// The first of `pcs` (return addresses) outside the runtime's machinery.
pub fn user_site(pcs: &[u64], symbols: &dyn Symbols) -> Site {
    let sites: Vec<Site> = pcs
        .iter()
        .filter(|&&p| p != 0)
        .filter_map(|&p| symbols.site(p.saturating_sub(1)))
        .collect();
    sites
        .iter()
        .find(|s| !MECHANISM.iter().any(|m| s.function.starts_with(m)))
        .or(sites.first())
        .cloned()
        .unwrap_or_default()
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

/// Package prefixes whose frames are the mechanism of a wait, not its site.
const MECHANISM: [&str; 5] = [
    "runtime.",
    "sync.",
    "internal/sync.",
    "sync/atomic.",
    "internal/",
];

/// Evaluates every parked goroutine of `proc` at `now_ns`.
pub fn evaluate(
    proc: &ProcessState,
    now_ns: u64,
    leak_after_ns: u64,
    symbols: &dyn Symbols,
    globals: &HashSet<u64>,
) -> (Vec<Group>, Summary, HashMap<u64, u64>) {
    let cache = super::sitecache::SiteCache::new(symbols);
    let symbols: &dyn Symbols = &cache;
    let mut summary = Summary::default();
    // Classified once per value and per start PC, not once per goroutine.
    let reasons: Vec<WaitReason> = (0..=u8::MAX)
        .map(|r| WaitReason::from_name(proc.reason_name(r)))
        .collect();
    let class_of = |g: &Goroutine| -> Option<(WaitReason, u8)> {
        let seen = g.seen().filter(|s| u32::from(s.status) == G_WAITING)?;
        Some((reasons[usize::from(seen.waitreason)], seen.waitreason))
    };
    let starts = std::cell::RefCell::new(super::process::GoidMap::<Start>::default());
    let start_of = |g: &Goroutine| {
        *starts.borrow_mut().entry(g.startpc).or_insert_with(|| {
            match symbols.site(g.startpc).map(|s| s.function) {
                Some(f) if f == "runtime.main" => Start::Main,
                Some(f) if f.starts_with("runtime.") => Start::Runtime,
                _ => Start::User,
            }
        })
    };
    let system = |g: &Goroutine| start_of(g) == Start::Runtime;
    let main_goroutine = |g: &Goroutine| start_of(g) == Start::Main;
    let blocked_for = |g: &Goroutine| g.blocked_since().map_or(0, |s| now_ns.saturating_sub(s));

    // Goroutines that will not run again on their own: parked long on a
    // blocking primitive, or parked where nothing can wake them.
    let mut stuck = GoidSet::default();
    for (&goid, g) in &proc.live {
        let Some((class, _)) = class_of(g) else {
            continue;
        };
        *summary.blocked_by_class.entry(class.as_str()).or_default() += 1;
        if class == WaitReason::ChanSend && blocked_for(g) >= leak_after_ns && !system(g) {
            summary.blocked_senders += 1;
        }
        if class.never_wakes()
            || (class.is_blocking() && blocked_for(g) >= leak_after_ns && !main_goroutine(g))
        {
            stuck.insert(goid);
        }
    }

    let active_below = waiting_on_active_descendants(proc, &stuck, &system);

    struct Acc<'a> {
        members: Vec<(u64, &'a Goroutine)>,
        class: WaitReason,
        reason: u8,
    }
    let mut groups: HashMap<(u64, u64, u8), Acc> = HashMap::new();
    for (&goid, g) in &proc.live {
        let Some((class, reason)) = class_of(g) else {
            continue;
        };
        if !class.is_blocking() || system(g) || main_goroutine(g) {
            continue;
        }
        let site_pc = blocking_pc(g, proc, symbols).unwrap_or(0);
        let key = (g.gopc, site_pc, reason);
        groups
            .entry(key)
            .or_insert_with(|| Acc {
                members: Vec::new(),
                class,
                reason,
            })
            .members
            .push((goid, g));
    }

    let mut sizes = HashMap::new();
    let mut out = Vec::new();
    for ((gopc, site_pc, _), acc) in groups {
        let created_at = symbols.site(gopc.saturating_sub(1)).unwrap_or_default();
        let blocked_at = symbols.site(site_pc.saturating_sub(1)).unwrap_or_default();
        let reason_name = proc.reason_name(acc.reason).to_string();
        let fp = fingerprint(&created_at, &blocked_at, &reason_name);
        sizes.insert(fp, acc.members.len() as u64);
        let ripe: Vec<&(u64, &Goroutine)> = acc
            .members
            .iter()
            .filter(|(_, g)| blocked_for(g) >= leak_after_ns)
            .collect();
        let Some(&&(_, oldest)) = ripe.iter().max_by_key(|(_, g)| blocked_for(g)) else {
            continue;
        };

        let creator = creator_of(proc, &ripe, &stuck);
        let chan = oldest.seen().and_then(super::process::Seen::chan);
        let global = chan.is_some_and(|c| globals.contains(&c.address));
        // Receivers sharing one channel are a pool's shape; senders sharing
        // one with no receiver are not.
        let shared = shared_channel(&ripe)
            && matches!(acc.class, WaitReason::ChanReceive | WaitReason::Select);
        let waits_on_work = ripe.iter().any(|(goid, _)| active_below.contains(goid));
        let mut trend: Vec<u64> = proc
            .trends
            .get(&fp)
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default();
        trend.push(acc.members.len() as u64);
        if trend.len() > TREND_LEN {
            trend.remove(0);
        }
        let growth = Growth::of(&trend);

        let mut evidence = vec![format!(
            "{} goroutine(s) parked in \"{reason_name}\" for up to {:.0}s",
            ripe.len(),
            blocked_for(oldest) as f64 / 1e9
        )];
        let verdict = if acc.class.never_wakes() {
            evidence.push("nothing can ever wake this wait".into());
            Some(Verdict::Leak)
        } else if global {
            evidence.push(
                "the channel is held by a package-level variable: code may still use it".into(),
            );
            (growth == Growth::Strong).then_some(Verdict::Suspect)
        } else if waits_on_work && growth != Growth::Strong {
            // A goroutine it started (or one they started) is still at work
            // and may yet deliver: waiting on a sleeping or running
            // descendant is not being stuck.
            None
        } else if matches!(creator, Creator::Exited | Creator::Stuck)
            && !(shared && growth == Growth::None)
        {
            evidence.push(match creator {
                Creator::Exited => "the goroutine that created it has exited".into(),
                _ => "the goroutine that created it is itself parked for good".into(),
            });
            Some(Verdict::Leak)
        } else if growth == Growth::Strong {
            evidence.push(format!("the count at this site keeps growing: {trend:?}"));
            Some(Verdict::Leak)
        } else if growth == Growth::Weak
            || creator == Creator::Unknown
            || matches!(creator, Creator::Exited | Creator::Stuck)
        {
            evidence.push(match (growth, creator) {
                (Growth::Weak, _) => format!("the count at this site grew: {trend:?}"),
                (_, Creator::Unknown) => "its creator is unknown (Go < 1.21 records none)".into(),
                _ => "its creator is gone, but the goroutines share one channel like a worker pool"
                    .into(),
            });
            Some(Verdict::Suspect)
        } else {
            None
        };
        let Some(verdict) = verdict else { continue };
        if let Some(c) = chan {
            evidence.push(channel_evidence(&c, acc.class));
        }
        out.push(Group {
            fingerprint: format!("{fp:016x}"),
            verdict,
            wait_reason: reason_name,
            wait_class: acc.class.as_str(),
            count: ripe.len() as u64,
            blocked: acc.members.len() as u64,
            oldest_blocked_seconds: blocked_for(oldest) as f64 / 1e9,
            start_function: start_function(oldest, symbols),
            created_at,
            blocked_at,
            channel: chan.map(|c| ChannelReport {
                address: format!("{:#x}", c.address),
                capacity: c.dataqsiz,
                queued: c.qcount,
                closed: c.closed,
                counterpart_waiting: if acc.class == WaitReason::ChanSend {
                    c.receivers_waiting
                } else {
                    c.senders_waiting
                },
                global,
            }),
            creator,
            trend,
            evidence,
            stack: stack_of(oldest, symbols),
        });
    }
    out.sort_by(|a, b| {
        a.verdict
            .cmp(&b.verdict)
            .then(b.count.cmp(&a.count))
            .then(a.fingerprint.cmp(&b.fingerprint))
    });
    out.truncate(MAX_GROUPS);
    (out, summary, sizes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Growth {
    None,
    /// Grew at least once and never shrank.
    Weak,
    /// Grew at three or more scans and never shrank.
    Strong,
}

impl Growth {
    fn of(trend: &[u64]) -> Self {
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

/// The first frame that is not the waiting machinery: where user code waits.
fn blocking_pc(g: &Goroutine, proc: &ProcessState, symbols: &dyn Symbols) -> Option<u64> {
    let is_user = |pc: u64| {
        symbols
            .site(pc.saturating_sub(1))
            .is_some_and(|s| !MECHANISM.iter().any(|m| s.function.starts_with(m)))
    };
    // Walked by a scan (the parked PC first, then return addresses), else
    // the return addresses the park probe saw.
    match (g.seen(), g.park_stack(proc)) {
        (Some(s), _) if !s.stack().is_empty() => {
            let frames = &s.stack()[1..];
            frames
                .iter()
                .copied()
                .find(|&pc| is_user(pc))
                .or(frames.last().copied())
        }
        (_, Some(pcs)) => {
            let mut frames = pcs.iter().copied().filter(|&p| p != 0);
            frames
                .clone()
                .find(|&pc| is_user(pc))
                .or_else(|| frames.next_back())
        }
        _ => None,
    }
}

/// The goroutine's own function: the bottom of its stack, past the
/// compiler's wrappers (`go f(x)` wrappers, into which `f` may be inlined)
/// and `goexit`, as the runtime's tracebacks show it; else its start PC's
/// function.
pub(super) fn start_function(g: &Goroutine, symbols: &dyn Symbols) -> String {
    let pcs = stack_pcs(g);
    // Only a walk that reached the goroutine's bottom frame says where it began.
    let complete = pcs
        .last()
        .and_then(|&pc| symbols.site(pc))
        .is_some_and(|s| is_goexit(&s.function));
    let from_stack = complete
        .then(|| {
            pcs.iter().rev().find_map(|&pc| {
                let frames = symbols.frames(pc);
                let (physical, inlined) = frames.split_last()?;
                let hidden = is_goexit(&physical.function)
                    || symbols
                        .is_wrapper(pc)
                        .unwrap_or_else(|| is_go_wrapper_name(&physical.function));
                // Outermost first: the physical function, then what it inlined.
                (!hidden)
                    .then_some(physical)
                    .into_iter()
                    .chain(inlined.iter().rev())
                    .map(|s| &s.function)
                    .find(|f| !is_go_wrapper_name(f))
                    .cloned()
            })
        })
        .flatten();
    from_stack
        .or_else(|| symbols.site(g.startpc).map(|s| s.function))
        .unwrap_or_default()
}

/// What a goroutine's start function makes it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    Main,
    Runtime,
    User,
}

fn is_goexit(f: &str) -> bool {
    f.starts_with("runtime.goexit")
}

/// The compiler's name for a `go f(x)` wrapper (Go ≥ 1.22): `….gowrapN`.
fn is_go_wrapper_name(f: &str) -> bool {
    f.rsplit('.')
        .next()
        .is_some_and(|last| last.starts_with("gowrap"))
}

/// The goroutine's PCs as instruction addresses: the first is where it
/// stopped, the others are return addresses, whose call is a byte before.
fn stack_pcs(g: &Goroutine) -> Vec<u64> {
    let Some(seen) = g.seen() else {
        return Vec::new();
    };
    seen.stack()
        .iter()
        .enumerate()
        .map(|(i, &pc)| if i == 0 { pc } else { pc.saturating_sub(1) })
        .collect()
}

/// The goroutine's stack, innermost first, with inlined calls expanded.
pub(super) fn stack_of(g: &Goroutine, symbols: &dyn Symbols) -> Vec<Site> {
    stack_pcs(g)
        .into_iter()
        .flat_map(|pc| symbols.frames(pc))
        .collect()
}

fn creator_of(proc: &ProcessState, members: &[&(u64, &Goroutine)], stuck: &GoidSet) -> Creator {
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
fn waiting_on_active_descendants(
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
fn shared_channel(members: &[&(u64, &Goroutine)]) -> bool {
    let mut seen = HashSet::new();
    members
        .iter()
        .filter_map(|(_, g)| g.seen()?.chan().map(|c| c.address))
        .any(|a| !seen.insert(a))
}

fn channel_evidence(c: &ChanState, class: WaitReason) -> String {
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
fn fingerprint(created: &Site, blocked: &Site, reason: &str) -> u64 {
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
