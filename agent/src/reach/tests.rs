//! Verdicts on synthetic heaps: who holds the channel decides.

use super::testmem::{cand, global, stack_root, walk, with_chan, World, CLASSIC, HCHAN, RANDOM};
use super::{AddrRange, Input, Root, RootKind, Scan};

/// Go ≤ 1.26 puts the heap here; 1.27 randomises it.
#[test]
fn global_holds_channel_reachable_and_attributed() {
    for base in [CLASSIC, RANDOM] {
        let (mut w, ch) = with_chan(base);
        let g = w.global(16);
        w.put(g.lo + 8, ch);
        let st = w.stack(4096);
        let input = Input {
            roots: vec![global("main.jobs", g)],
            candidates: vec![cand(7, vec![ch], st)],
            ..Input::default()
        };
        let out = walk(&mut w, &input);
        assert!(out.unreachable.is_empty(), "base {base:#x}");
        assert_eq!(
            out.held_by,
            vec![(
                7,
                RootKind::Global {
                    name: "main.jobs".into()
                }
            )]
        );
        assert_eq!(out.stats.reads_failed, 0);
        assert_eq!(out.stats.spans, 1, "the stack's manual span is not heap");
    }
}

#[test]
fn running_goroutine_stack_holds_channel() {
    let (mut w, ch) = with_chan(RANDOM);
    let running = w.stack(8192);
    w.put(running.lo + 128, ch);
    let st = w.stack(4096);
    let input = Input {
        roots: vec![stack_root(1, running)],
        candidates: vec![cand(9, vec![ch], st)],
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert!(out.unreachable.is_empty());
    assert_eq!(out.held_by, vec![(9, RootKind::Stack { goid: 1 })]);
}

#[test]
fn only_own_stack_holds_channel_is_unreachable() {
    let (mut w, ch) = with_chan(CLASSIC);
    let st = w.stack(4096);
    w.put(st.lo + 64, ch);
    let input = Input {
        candidates: vec![cand(5, vec![ch], st)],
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert_eq!(out.unreachable, vec![5]);
    assert!(out.held_by.is_empty());
}

#[test]
fn ab_ba_both_unreachable() {
    let mut w = World::new(CLASSIC);
    let span = w.span(1, HCHAN, false);
    let (ca, cb) = (span, span + HCHAN);
    let (sa, sb) = (w.stack(4096), w.stack(4096));
    // A waits on ca and holds cb; B waits on cb and holds ca.
    w.put(sa.lo, cb);
    w.put(sb.lo, ca);
    let input = Input {
        candidates: vec![cand(1, vec![ca], sa), cand(2, vec![cb], sb)],
        ..Input::default()
    };
    assert_eq!(walk(&mut w, &input).unreachable, vec![1, 2]);
}

#[test]
fn fixpoint_wakes_through_a_woken_candidate() {
    let mut w = World::new(RANDOM);
    let span = w.span(1, HCHAN, false);
    let (ca, cb) = (span, span + HCHAN);
    let (sa, sb) = (w.stack(4096), w.stack(4096));
    let g = w.global(8);
    w.put(g.lo, cb); // B is reachable from a global
    w.put(sb.lo + 40, ca); // and B's stack holds A's channel
    let input = Input {
        roots: vec![global("main.q", g)],
        // A listed first, so a single pass would miss it.
        candidates: vec![cand(1, vec![ca], sa), cand(2, vec![cb], sb)],
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert!(out.unreachable.is_empty());
    assert_eq!(
        out.held_by,
        vec![
            (
                2,
                RootKind::Global {
                    name: "main.q".into()
                }
            ),
            (1, RootKind::Stack { goid: 2 })
        ]
    );
}

#[test]
fn chain_through_heap_objects_and_interior_pointers() {
    for cut in [false, true] {
        let mut w = World::new(RANDOM);
        let small = w.span(1, 48, false);
        let big = w.large(100_000, false);
        let ch = w.span(1, HCHAN, false) + 3 * HCHAN;
        let g = w.global(8);
        w.put(g.lo, small + 48 + 16); // interior pointer into the second slot
        w.put(small + 48 + 40, big + 8); // its last word points inside the big object
        if !cut {
            w.put(big + 99_992, ch + 24); // deep in the big object: into the hchan
        }
        let st = w.stack(4096);
        let input = Input {
            roots: vec![global("main.root", g)],
            candidates: vec![cand(3, vec![ch], st)],
            ..Input::default()
        };
        let out = walk(&mut w, &input);
        assert_eq!(out.unreachable.is_empty(), !cut, "cut={cut}");
        assert_eq!(out.stats.objects_marked, if cut { 2 } else { 3 });
    }
}

#[test]
fn noscan_span_is_not_scanned() {
    for noscan in [true, false] {
        let (mut w, ch) = with_chan(CLASSIC);
        let bytes = w.span(1, 64, noscan);
        let g = w.global(8);
        w.put(g.lo, bytes);
        w.put(bytes + 8, ch); // looks like a pointer, but the class holds none
        let st = w.stack(4096);
        let input = Input {
            roots: vec![global("main.buf", g)],
            candidates: vec![cand(4, vec![ch], st)],
            ..Input::default()
        };
        assert_eq!(
            walk(&mut w, &input).unreachable.is_empty(),
            !noscan,
            "noscan={noscan}"
        );
    }
}

#[test]
fn opaque_sudog_does_not_reach_its_channel() {
    for opaque in [true, false] {
        let (mut w, ch) = with_chan(RANDOM);
        let sudog = w.span(1, 96, false) + 96;
        let g = w.global(8);
        w.put(g.lo, sudog + 8); // e.g. the semtable holds the sudog
        w.put(sudog + 40, ch); // sudog.c
        let st = w.stack(4096);
        let input = Input {
            roots: vec![Root {
                kind: RootKind::Runtime {
                    what: "semtable".into(),
                },
                scan: Scan::Range(g),
            }],
            candidates: vec![cand(6, vec![ch], st)],
            opaque: if opaque { vec![sudog] } else { Vec::new() },
            ..Input::default()
        };
        let out = walk(&mut w, &input);
        assert_eq!(out.unreachable.is_empty(), !opaque, "opaque={opaque}");
        // The sudog itself is marked either way; its channel only if scanned.
        assert_eq!(out.stats.objects_marked, if opaque { 1 } else { 2 });
        if !opaque {
            assert_eq!(
                out.held_by,
                vec![(
                    6,
                    RootKind::Runtime {
                        what: "semtable".into()
                    }
                )]
            );
        }
    }
}

#[test]
fn select_wakes_on_any_reachable_channel() {
    let mut w = World::new(CLASSIC);
    let span = w.span(1, HCHAN, false);
    let (lost, held) = (span, span + 2 * HCHAN);
    let running = w.stack(4096);
    w.put(running.lo + 8, held);
    let (st, st2) = (w.stack(4096), w.stack(4096));
    let input = Input {
        roots: vec![stack_root(1, running)],
        candidates: vec![cand(8, vec![lost, held], st), cand(9, vec![lost], st2)],
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert_eq!(out.unreachable, vec![9]);
    assert_eq!(out.held_by, vec![(8, RootKind::Stack { goid: 1 })]);
}

#[test]
fn long_wake_chain_reaches_the_end() {
    // Candidate i waits on channel i and its stack holds channel i+1: one
    // global wakes all of them, one at a time, in reverse input order.
    let n: u64 = 10_000;
    let mut w = World::new(RANDOM);
    let chans = w.span(n * HCHAN / 8192 + 1, HCHAN, false);
    let stacks = w.stack(n * 8);
    let g = w.global(8);
    w.put(g.lo, chans);
    let candidates = (0..n)
        .rev()
        .map(|i| {
            let slot = AddrRange {
                lo: stacks.lo + i * 8,
                hi: stacks.lo + i * 8 + 8,
            };
            w.put(slot.lo, chans + (i + 1) * HCHAN);
            cand(i, vec![chans + i * HCHAN], slot)
        })
        .collect();
    let input = Input {
        roots: vec![global("main.head", g)],
        candidates,
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert!(out.unreachable.is_empty());
    assert_eq!(out.held_by.len(), n as usize);
    assert_eq!(
        out.held_by[0],
        (
            0,
            RootKind::Global {
                name: "main.head".into()
            }
        )
    );
    assert_eq!(
        out.held_by[n as usize - 1],
        (n - 1, RootKind::Stack { goid: n - 2 })
    );
}
