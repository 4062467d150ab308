//! Deciding which parked goroutines are leaks, from evidence only.
//!
//! From outside the process we cannot prove a goroutine unreachable the way
//! the runtime's GC-based detector can, so a verdict combines: how long it
//! has been parked, on what, whether its creator is still running, whether
//! the channel is held by a package-level variable, and how the number of
//! goroutines parked the same way moves over time. See the README's rules.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
};

use super::{
    evidence::{
        channel_evidence, channel_report, creator_of, fingerprint, shared_channel,
        waiting_on_active_descendants, Growth,
    },
    goroutine::{GoidMap, GoidSet, Goroutine},
    group::{Creator, Group, Held, Summary, Verdict, MAX_GROUPS},
    input::G_WAITING,
    process::{ProcessState, TREND_LEN},
    proof::{Proof, Proofs},
    site::{blocking_pc, blocking_site, stack_of, start_function, Site, Start, Symbols},
    sitecache::SiteCache,
};
use crate::gobin::WaitReason;

/// What one evaluation of a process found.
pub struct Evaluation {
    /// The groups with a verdict, worst first.
    pub groups: Vec<Group>,
    /// The long-parked groups whose primitive a walk found reachable.
    pub held: Vec<Held>,
    /// The counts the metrics need.
    pub summary: Summary,
    /// Every group's size by fingerprint (for the trends).
    pub sizes: HashMap<u64, u64>,
}

/// Evaluates every parked goroutine of `proc` at `now_ns`.
pub fn evaluate(
    proc: &ProcessState,
    now_ns: u64,
    leak_after_ns: u64,
    symbols: &dyn Symbols,
    globals: &HashSet<u64>,
) -> Evaluation {
    let cache = SiteCache::new(symbols);
    let cx = Context::new(proc, now_ns, leak_after_ns, &cache);
    let (stuck, summary) = cx.stuck();
    let active_below = waiting_on_active_descendants(proc, &stuck, &|g| cx.system(g));
    let mut sizes = HashMap::new();
    let mut out = Vec::new();
    let mut held = Vec::new();
    for ((gopc, site_pc, _), parked) in cx.parked_groups() {
        let created_at = cx.site(gopc);
        let blocked_at = blocking_site(site_pc, &cache);
        let reason_name = proc.reason_name(parked.reason).to_string();
        let fp = fingerprint(&created_at, &blocked_at, &reason_name);
        sizes.insert(fp, parked.members.len() as u64);
        let ripe: Vec<&(u64, &Goroutine)> = parked
            .members
            .iter()
            .filter(|(_, g)| cx.blocked_for(g) >= leak_after_ns)
            .collect();
        let Some(&&(_, oldest)) = ripe.iter().max_by_key(|(_, g)| cx.blocked_for(g)) else {
            continue;
        };
        let chan = oldest.seen().and_then(super::goroutine::Seen::chan);
        let mut trend: Vec<u64> = proc
            .trends
            .get(&fp)
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default();
        trend.push(parked.members.len() as u64);
        if trend.len() > TREND_LEN {
            trend.remove(0);
        }
        let facts = Facts {
            class: parked.class,
            global: chan.is_some_and(|c| globals.contains(&c.address)),
            // Receivers sharing one channel are a pool's shape; senders
            // sharing one with no receiver are not.
            shared: shared_channel(&ripe)
                && matches!(parked.class, WaitReason::ChanReceive | WaitReason::Select),
            waits_on_work: ripe.iter().any(|(goid, _)| active_below.contains(goid)),
            creator: creator_of(proc, &ripe, &stuck),
            growth: Growth::of(&trend),
            reach: reach_of(&proc.proofs, &ripe),
        };
        let mut evidence = vec![format!(
            "{} goroutine(s) parked in \"{reason_name}\" for up to {:.0}s",
            ripe.len(),
            cx.blocked_for(oldest) as f64 / 1e9
        )];
        let Some(verdict) = rule(&facts, &trend, &mut evidence) else {
            if let Reach::Held { holder, settled } = facts.reach {
                held.push(Held {
                    start_function: start_function(oldest, &cache),
                    wait_reason: reason_name,
                    count: ripe.len() as u64,
                    oldest_blocked_seconds: cx.blocked_for(oldest) as f64 / 1e9,
                    holder,
                    settled,
                });
            }
            continue;
        };
        if let Some(c) = chan {
            evidence.push(channel_evidence(&c, parked.class));
        }
        out.push(Group {
            fingerprint: format!("{fp:016x}"),
            verdict,
            wait_reason: reason_name,
            wait_class: parked.class.as_str(),
            count: ripe.len() as u64,
            blocked: parked.members.len() as u64,
            oldest_blocked_seconds: cx.blocked_for(oldest) as f64 / 1e9,
            start_function: start_function(oldest, &cache),
            created_at,
            blocked_at,
            channel: chan.map(|c| channel_report(&c, parked.class, facts.global)),
            creator: facts.creator,
            trend,
            evidence,
            stack: stack_of(oldest, &cache),
        });
    }
    out.sort_by(|a, b| {
        a.verdict
            .cmp(&b.verdict)
            .then(b.count.cmp(&a.count))
            .then(a.fingerprint.cmp(&b.fingerprint))
    });
    out.truncate(MAX_GROUPS);
    held.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.start_function.cmp(&b.start_function))
    });
    held.truncate(MAX_GROUPS);
    Evaluation {
        groups: out,
        held,
        summary,
        sizes,
    }
}

/// Goroutines parked the same way (creation site, blocking site, reason).
struct Parked<'a> {
    members: Vec<(u64, &'a Goroutine)>,
    class: WaitReason,
    reason: u8,
}

/// What the rules look at for one group.
struct Facts {
    class: WaitReason,
    /// Its channel is held by a package-level variable.
    global: bool,
    /// Its members share one channel as a pool's receivers do.
    shared: bool,
    /// A member has a descendant still at work.
    waits_on_work: bool,
    creator: Creator,
    growth: Growth,
    /// What the heap walks say of its members.
    reach: Reach,
}

/// What the heap walks say of a group.
#[derive(Debug, Clone, PartialEq)]
enum Reach {
    /// A member was found unreachable by `walks` walks `seconds` apart.
    Proven { walks: u32, seconds: f64 },
    /// Every member's primitive was reachable at the last walk; what held
    /// the first member's. Settled when every hold was seen at two walks in
    /// a row; until then no verdict, the next walk settles it.
    Held { holder: String, settled: bool },
    /// No walk, or no conclusion.
    Unknown,
}

/// The strongest thing the walks say of `members`.
fn reach_of(proofs: &Proofs, members: &[&(u64, &Goroutine)]) -> Reach {
    let proven = members
        .iter()
        .filter(|(goid, _)| proofs.is_proven(*goid))
        .find_map(|(goid, _)| match proofs.of(*goid) {
            Proof::Unreachable { walks, seconds } => Some(Reach::Proven { walks, seconds }),
            _ => None,
        });
    if let Some(p) = proven {
        return p;
    }
    let holds: Option<Vec<(&str, u32)>> = members
        .iter()
        .map(|(goid, _)| match proofs.of(*goid) {
            Proof::Held(h, walks) => Some((h, walks)),
            _ => None,
        })
        .collect();
    match holds.as_deref() {
        Some([(first, _), ..]) => Reach::Held {
            holder: (*first).to_string(),
            settled: holds.iter().flatten().all(|&(_, w)| w >= 2),
        },
        _ => Reach::Unknown,
    }
}

/// The verdict rules, in order; each adds the evidence it rests on.
fn rule(f: &Facts, trend: &[u64], evidence: &mut Vec<String>) -> Option<Verdict> {
    if f.class.never_wakes() {
        evidence.push("nothing can ever wake this wait".into());
        Some(Verdict::Leak)
    } else if let Reach::Proven { walks, seconds } = f.reach {
        evidence.push(format!(
            "nothing reachable holds what it waits on: no global, no goroutine that can run \
             and no runtime reference ({walks} heap walks, {seconds:.0}s apart)"
        ));
        Some(Verdict::Leak)
    } else if matches!(f.reach, Reach::Held { .. }) {
        // Something that can still run holds its primitive: proxies such
        // as an exited creator do not outweigh that.
        None
    } else if f.global {
        evidence
            .push("the channel is held by a package-level variable: code may still use it".into());
        (f.growth == Growth::Strong).then_some(Verdict::Suspect)
    } else if f.waits_on_work && f.growth != Growth::Strong {
        // A goroutine it started (or one they started) is still at work
        // and may yet deliver: waiting on a sleeping or running
        // descendant is not being stuck.
        None
    } else if matches!(f.creator, Creator::Exited | Creator::Stuck)
        && !(f.shared && f.growth == Growth::None)
    {
        evidence.push(match f.creator {
            Creator::Exited => "the goroutine that created it has exited".into(),
            _ => "the goroutine that created it is itself parked for good".into(),
        });
        Some(Verdict::Leak)
    } else if f.growth == Growth::Strong {
        evidence.push(format!("the count at this site keeps growing: {trend:?}"));
        Some(Verdict::Leak)
    } else if f.growth == Growth::Weak
        || f.creator == Creator::Unknown
        || matches!(f.creator, Creator::Exited | Creator::Stuck)
    {
        evidence.push(match (f.growth, f.creator) {
            (Growth::Weak, _) => format!("the count at this site grew: {trend:?}"),
            (_, Creator::Unknown) => "its creator is unknown (Go < 1.21 records none)".into(),
            _ => "its creator is gone, but the goroutines share one channel like a worker pool"
                .into(),
        });
        Some(Verdict::Suspect)
    } else {
        None
    }
}

/// One evaluation's view of a process: wait reasons and start functions
/// classified once per value and per start PC, not once per goroutine.
struct Context<'a> {
    proc: &'a ProcessState,
    now_ns: u64,
    leak_after_ns: u64,
    symbols: &'a dyn Symbols,
    reasons: Vec<WaitReason>,
    starts: RefCell<GoidMap<Start>>,
}

impl<'a> Context<'a> {
    fn new(
        proc: &'a ProcessState,
        now_ns: u64,
        leak_after_ns: u64,
        symbols: &'a dyn Symbols,
    ) -> Self {
        Self {
            proc,
            now_ns,
            leak_after_ns,
            symbols,
            reasons: (0..=u8::MAX)
                .map(|r| WaitReason::from_name(proc.reason_name(r)))
                .collect(),
            starts: RefCell::new(GoidMap::default()),
        }
    }

    fn class_of(&self, g: &Goroutine) -> Option<(WaitReason, u8)> {
        let seen = g.seen().filter(|s| u32::from(s.status) == G_WAITING)?;
        Some((self.reasons[usize::from(seen.waitreason)], seen.waitreason))
    }

    fn start_of(&self, g: &Goroutine) -> Start {
        *self
            .starts
            .borrow_mut()
            .entry(g.startpc)
            .or_insert_with(|| match self.symbols.site(g.startpc).map(|s| s.function) {
                Some(f) if f == "runtime.main" => Start::Main,
                Some(f) if f.starts_with("runtime.") => Start::Runtime,
                _ => Start::User,
            })
    }

    fn system(&self, g: &Goroutine) -> bool {
        self.start_of(g) == Start::Runtime
    }

    fn main_goroutine(&self, g: &Goroutine) -> bool {
        self.start_of(g) == Start::Main
    }

    fn blocked_for(&self, g: &Goroutine) -> u64 {
        g.blocked_since()
            .map_or(0, |s| self.now_ns.saturating_sub(s))
    }

    /// The site of the call before return address `pc`.
    fn site(&self, pc: u64) -> Site {
        self.symbols.site(pc.saturating_sub(1)).unwrap_or_default()
    }

    /// Goroutines that will not run again on their own (parked long on a
    /// blocking primitive, or where nothing can wake them), and the counts
    /// of every parked goroutine.
    fn stuck(&self) -> (GoidSet, Summary) {
        let mut summary = Summary::default();
        let mut stuck = GoidSet::default();
        for (&goid, g) in &self.proc.live {
            let Some((class, _)) = self.class_of(g) else {
                continue;
            };
            *summary.blocked_by_class.entry(class.as_str()).or_default() += 1;
            let ripe = self.blocked_for(g) >= self.leak_after_ns;
            if class == WaitReason::ChanSend && ripe && !self.system(g) {
                summary.blocked_senders += 1;
            }
            if class.never_wakes() || (class.is_blocking() && ripe && !self.main_goroutine(g)) {
                stuck.insert(goid);
            }
        }
        (stuck, summary)
    }

    /// User goroutines parked on blocking primitives, grouped by creation
    /// site, blocking site and wait reason.
    fn parked_groups(&self) -> HashMap<(u64, u64, u8), Parked<'a>> {
        let mut groups: HashMap<(u64, u64, u8), Parked> = HashMap::new();
        for (&goid, g) in &self.proc.live {
            let Some((class, reason)) = self.class_of(g) else {
                continue;
            };
            if !class.is_blocking() || self.system(g) || self.main_goroutine(g) {
                continue;
            }
            let park = g.park_stack(&self.proc.park_stacks);
            let site_pc = blocking_pc(g, park, self.symbols).unwrap_or(0);
            groups
                .entry((g.gopc, site_pc, reason))
                .or_insert_with(|| Parked {
                    members: Vec::new(),
                    class,
                    reason,
                })
                .members
                .push((goid, g));
        }
        groups
    }
}
