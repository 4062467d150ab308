//! What the heap walks proved about each parked goroutine, across walks.
//!
//! One walk races with the program: a pointer being moved between two
//! reads can be missed. So a goroutine is proven leaked only when two
//! walks, at least `min_gap_ns` apart, both found it unreachable, it stayed
//! parked on the same wait in between, no event of the process was lost in
//! between, and neither walk had a failed read or a rejected span.

use super::{goroutine::GoidMap, input::Walked};

/// One goroutine's unreachable sightings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sighting {
    first_ns: u64,
    last_ns: u64,
    walks: u32,
    /// The wait it was on: a change means a new wait, and a new proof.
    blocked_since: u64,
}

/// What is known of one goroutine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Proof<'a> {
    /// Unreachable at `walks` consecutive walks, the first and the last
    /// `seconds` apart; proven when [`Proofs::is_proven`] says so.
    Unreachable { walks: u32, seconds: f64 },
    /// The last `walks` walks in a row reached its primitive; from this
    /// holder at the last. One walk may have caught a stale or moving
    /// value: a hold counts from two walks on.
    Held(&'a str, u32),
    /// No walk judged it.
    Unknown,
}

/// Every parked goroutine's state across walks. Bounded by the goroutines
/// the last walk judged: entries of the others are dropped at each walk.
#[derive(Debug, Default)]
pub struct Proofs {
    sightings: GoidMap<Sighting>,
    /// What held each goroutine's primitive, and at how many walks in a
    /// row: a single walk may catch a stale value in a running
    /// goroutine's registers or a value being moved.
    held: GoidMap<(String, u32)>,
    lost_at_walk: u64,
    min_gap_ns: u64,
}

impl Proofs {
    /// Takes the result of a walk at `now_ns`. `blocked_since` gives each
    /// goroutine's current wait (0 if not parked); `lost_total` is the
    /// process's count of lost events.
    pub fn observe(
        &mut self,
        now_ns: u64,
        walked: Walked,
        blocked_since: impl Fn(u64) -> u64,
        lost_total: u64,
        min_gap_ns: u64,
    ) {
        self.min_gap_ns = min_gap_ns;
        // Lost events, or a walk that may have missed a chain: start over.
        if lost_total != self.lost_at_walk || !walked.trustworthy {
            self.sightings.clear();
        }
        self.lost_at_walk = lost_total;
        let mut next = GoidMap::default();
        if walked.trustworthy {
            for goid in walked.unreachable {
                let since = blocked_since(goid);
                if since == 0 {
                    continue;
                }
                let seen = match self.sightings.get(&goid) {
                    Some(s) if s.blocked_since == since => Sighting {
                        last_ns: now_ns,
                        walks: s.walks.saturating_add(1),
                        ..*s
                    },
                    _ => Sighting {
                        first_ns: now_ns,
                        last_ns: now_ns,
                        walks: 1,
                        blocked_since: since,
                    },
                };
                next.insert(goid, seen);
            }
        }
        self.sightings = next;
        let before = std::mem::take(&mut self.held);
        self.held = walked
            .held_by
            .into_iter()
            .map(|(goid, h)| {
                let walks = before.get(&goid).map_or(0, |(_, n)| *n);
                (goid, (h, walks.saturating_add(1)))
            })
            .collect();
    }

    pub fn of(&self, goid: u64) -> Proof<'_> {
        if let Some(s) = self.sightings.get(&goid) {
            return Proof::Unreachable {
                walks: s.walks,
                seconds: s.last_ns.saturating_sub(s.first_ns) as f64 / 1e9,
            };
        }
        self.held
            .get(&goid)
            .map_or(Proof::Unknown, |(h, walks)| Proof::Held(h, *walks))
    }

    /// Unreachable at two walks or more, far enough apart.
    pub fn is_proven(&self, goid: u64) -> bool {
        self.sightings
            .get(&goid)
            .is_some_and(|s| s.walks >= 2 && s.last_ns - s.first_ns >= self.min_gap_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(unreachable: &[u64], held: &[(u64, &str)], trustworthy: bool) -> Walked {
        Walked {
            candidates: unreachable.len() + held.len(),
            unreachable: unreachable.to_vec(),
            held_by: held.iter().map(|&(g, h)| (g, h.to_string())).collect(),
            trustworthy,
            ..Walked::default()
        }
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn two_walks_a_gap_apart_on_the_same_wait_prove_it() {
        let mut p = Proofs::default();
        p.observe(10 * SEC, walked(&[7], &[], true), |_| 5, 0, SEC);
        assert!(!p.is_proven(7), "one walk is not a proof");
        p.observe(11 * SEC, walked(&[7], &[], true), |_| 5, 0, 2 * SEC);
        assert!(!p.is_proven(7), "walks closer than the gap");
        p.observe(13 * SEC, walked(&[7], &[], true), |_| 5, 0, 2 * SEC);
        assert!(p.is_proven(7));
        assert_eq!(
            p.of(7),
            Proof::Unreachable {
                walks: 3,
                seconds: 3.0
            }
        );
    }

    #[test]
    fn a_new_wait_a_lost_event_or_an_untrustworthy_walk_starts_over() {
        let mut p = Proofs::default();
        p.observe(0, walked(&[7], &[], true), |_| 5, 0, 0);
        p.observe(SEC, walked(&[7], &[], true), |_| 6, 0, 0);
        assert!(!p.is_proven(7), "parked again in between");
        p.observe(2 * SEC, walked(&[7], &[], true), |_| 6, 1, 0);
        assert!(!p.is_proven(7), "an event was lost in between");
        p.observe(3 * SEC, walked(&[7], &[], false), |_| 6, 1, 0);
        assert!(!p.is_proven(7), "a walk with failed reads proves nothing");
        assert_eq!(p.of(7), Proof::Unknown);
        p.observe(4 * SEC, walked(&[7], &[], true), |_| 6, 1, 0);
        p.observe(5 * SEC, walked(&[7], &[], true), |_| 6, 1, 0);
        assert!(p.is_proven(7));
    }

    #[test]
    fn reachable_and_gone_goroutines_are_forgotten() {
        let mut p = Proofs::default();
        p.observe(0, walked(&[7, 8], &[], true), |_| 5, 0, 0);
        p.observe(SEC, walked(&[8], &[(7, "goroutine 3")], true), |_| 5, 0, 0);
        assert_eq!(p.of(7), Proof::Held("goroutine 3", 1));
        p.observe(SEC, walked(&[8], &[(7, "goroutine 3")], true), |_| 5, 0, 0);
        assert_eq!(p.of(7), Proof::Held("goroutine 3", 2));
        assert!(!p.is_proven(7));
        p.observe(2 * SEC, walked(&[], &[], true), |_| 5, 0, 0);
        assert_eq!(p.of(8), Proof::Unknown, "no longer judged");
        assert_eq!(p.of(7), Proof::Unknown);
    }
}
