//! A deterministic fuzz loop: mutate a synthetic heap's words a few
//! thousand times and walk each version with a small budget.

use crate::testrng::Rng;

use super::testmem::{global, small_budget, World, MHEAP};
use super::{run, Candidate, Input, Scan};

const RANDOM: u64 = 0x7f3a_4000_0000;

#[test]
fn fuzz_mutated_heaps_stay_in_budget() {
    let mut w = World::new(RANDOM);
    let chans = w.span(1, 96, false);
    let objs = w.span(2, 48, false);
    let big = w.large(20_000, false);
    let st = w.stack(4096);
    let g = w.global(32);
    w.put(g.lo, objs + 8);
    w.put(objs + 16, big + 100);
    w.put(big + 19_000, chans + 96);
    w.put(st.lo, chans);
    let mut interesting = vec![RANDOM, chans, objs, big, st.lo, g.lo, MHEAP, 0, u64::MAX];
    interesting.extend(w.mem.pages.keys().map(|p| p * 4096));
    let input = Input {
        roots: vec![global("g", g)],
        candidates: (0..3)
            .map(|i| Candidate {
                goid: i,
                primitives: vec![chans + i * 96],
                guessed: false,
                packable: false,
                stack: Scan::Range(st),
            })
            .collect(),
        opaque: vec![objs + 48],
        ..Input::default()
    };
    let budget = small_budget();
    let pages: Vec<u64> = w.mem.pages.keys().copied().collect();
    // Every non-zero word is structure (a table entry, a span field, a
    // pointer): half the mutations aim there, the rest anywhere.
    let hot: Vec<u64> = w
        .mem
        .pages
        .iter()
        .flat_map(|(p, b)| {
            b.chunks_exact(8)
                .enumerate()
                .filter(|(_, c)| c.iter().any(|&x| x != 0))
                .map(move |(i, _)| p * 4096 + i as u64 * 8)
        })
        .collect();
    let baseline = run(&mut w.mem.clone(), &w.layout, &input, &budget).expect("baseline");
    assert_eq!(baseline.unreachable, vec![2]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err, mut changed) = (0, 0, 0);
    for _ in 0..3000 {
        let mut mem = w.mem.clone();
        for _ in 0..=rng.next() % 8 {
            let at = if rng.next().is_multiple_of(2) {
                hot[(rng.next() % hot.len() as u64) as usize]
            } else {
                pages[(rng.next() % pages.len() as u64) as usize] * 4096
                    + ((rng.next() % 4096) & !7)
            };
            let v = match rng.next() % 4 {
                0 => rng.next(),
                1 => interesting[(rng.next() % interesting.len() as u64) as usize]
                    .wrapping_add(rng.next() % 256),
                2 => rng.next() % 16,
                _ => rng.next() % (1 << 40),
            };
            mem.write_u64(at, v);
        }
        match run(&mut mem, &w.layout, &input, &budget) {
            Ok(out) => {
                ok += 1;
                assert!(out.stats.bytes_read <= budget.max_bytes_read);
                assert!(out.stats.objects_marked <= budget.max_objects);
                assert_eq!(
                    out.unreachable.len() + out.held_by.len(),
                    input.candidates.len()
                );
                changed += usize::from(out.unreachable != baseline.unreachable);
            }
            Err(_) => err += 1,
        }
    }
    // The mutations must actually reach the walk: some change the verdict.
    assert!(
        ok > 500 && changed > 0 && err > 0,
        "ok {ok} err {err} changed {changed}"
    );
    eprintln!("fuzz: ok {ok} err {err} changed {changed}");
}
