//! Where a primitive lives decides who can wake its waiter: heap object,
//! static data, a stack (its owner's fate), nil, or nowhere known.

use super::testmem::{cand, global, stack_root, walk, with_chan, World, CLASSIC, HCHAN, RANDOM};
use super::{Budget, Candidate, HeapMap, Input, Object, Root, RootKind, Scan, StackBounds};

#[test]
fn primitives_on_stacks_follow_their_owner() {
    let mut w = World::new(RANDOM);
    let (s1, s2, s3, s4) = (w.stack(4096), w.stack(4096), w.stack(4096), w.stack(4096));
    let g = w.global(8);
    let span = w.span(1, HCHAN, false);
    w.put(g.lo, span); // wakes candidate 30, whose stack holds the mutex of 40
    let stacks = [(10, s1), (20, s2), (30, s3), (40, s4)]
        .map(|(goid, range)| StackBounds { goid, range })
        .to_vec();
    let input = Input {
        roots: vec![global("main.x", g), stack_root(10, s1)],
        candidates: vec![
            cand(20, vec![s2.lo + 16], s2), // a mutex on its own stack: never
            cand(40, vec![s3.lo + 8], s4),  // on 30's stack: once 30 runs
            cand(30, vec![span], s3),
            cand(50, vec![s1.lo + 8], s4), // on a runnable goroutine's stack
        ],
        stacks,
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert_eq!(out.unreachable, vec![20]);
    assert!(out.held_by.contains(&(40, RootKind::Stack { goid: 30 })));
    assert!(out.held_by.contains(&(50, RootKind::Stack { goid: 10 })));
}

#[test]
fn nil_and_unresolved_primitives() {
    let mut w = World::new(CLASSIC);
    let st = w.stack(4096);
    let input = Input {
        candidates: vec![
            cand(1, vec![0], st),
            cand(2, vec![0x1234_5678], st),
            cand(3, vec![], st),
        ],
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert_eq!(out.unreachable, vec![1, 3]);
    assert_eq!(
        out.held_by,
        vec![(2, RootKind::Unresolved { addr: 0x1234_5678 })]
    );
}

/// A `sync.Cond` waiter's primitives are every word of its frames: words
/// that are no address are skipped, a heap word still decides, and with no
/// address at all the waiter cannot be judged (reachable).
#[test]
fn guessed_primitives_skip_words_that_are_no_address() {
    let (mut w, ch) = with_chan(RANDOM);
    let st = w.stack(4096);
    let guessed = |goid, primitives| Candidate {
        guessed: true,
        ..cand(goid, primitives, st)
    };
    let input = Input {
        candidates: vec![
            guessed(1, vec![42, 0x1234_5678, ch]),
            guessed(2, vec![42, 0x1234_5678]),
        ],
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert_eq!(out.unreachable, vec![1], "the heap word decides");
    assert_eq!(out.held_by, vec![(2, RootKind::Unresolved { addr: 42 })]);
    let g = w.global(8);
    w.put(g.lo, ch);
    let held = Input {
        roots: vec![global("g", g)],
        ..input
    };
    assert_eq!(walk(&mut w, &held).unreachable, Vec::<u64>::new());
}

#[test]
fn primitive_in_static_data_is_reachable() {
    let mut w = World::new(CLASSIC);
    let mu = w.global(8); // var mu sync.Mutex
    let st = w.stack(4096);
    let input = Input {
        roots: vec![global("main.mu", mu)],
        candidates: vec![cand(1, vec![mu.lo], st)],
        ..Input::default()
    };
    assert_eq!(
        walk(&mut w, &input).held_by,
        vec![(
            1,
            RootKind::Global {
                name: "main.mu".into()
            }
        )]
    );
}

#[test]
fn precise_slots_read_only_live_words() {
    for live in [true, false] {
        let (mut w, ch) = with_chan(RANDOM);
        let running = w.stack(4096);
        w.put(running.lo + 24, ch); // a dead slot holds a stale pointer
        let slots = if live {
            vec![running.lo + 24]
        } else {
            vec![running.lo + 32]
        };
        let st = w.stack(4096);
        let input = Input {
            roots: vec![Root {
                kind: RootKind::Stack { goid: 1 },
                scan: Scan::Slots(slots),
            }],
            candidates: vec![cand(2, vec![ch], st)],
            ..Input::default()
        };
        assert_eq!(
            walk(&mut w, &input).unreachable.is_empty(),
            live,
            "live={live}"
        );
    }
}

#[test]
fn object_of_resolves_interior_and_large_objects_across_arenas() {
    let arena = 64 << 20;
    let mut w = World::new(RANDOM);
    w.add_arena(RANDOM + arena);
    let small = w.span(2, 48, true);
    // A large object crossing into the second arena.
    w.cursor = RANDOM + arena - 8192;
    let big = w.large(3 * 8192, false);
    let heap = HeapMap::build(&mut w.mem, &w.layout, &Budget::default()).expect("build");
    assert_eq!(heap.stats.spans, 2);
    let obj = |base, size, noscan| Some(Object { base, size, noscan });
    assert_eq!(heap.object_of(small), obj(small, 48, true));
    assert_eq!(heap.object_of(small + 100), obj(small + 96, 48, true));
    // 16384 / 48 = 341 slots: the tail past the last slot is no object.
    assert_eq!(heap.object_of(small + 341 * 48), None);
    assert_eq!(heap.object_of(big + 9000), obj(big, 3 * 8192, false));
    assert_eq!(heap.object_of(big + 20_000), obj(big, 3 * 8192, false));
    assert_eq!(heap.object_of(big + 3 * 8192), None);
    assert_eq!(heap.object_of(small - 1), None);
}

/// A lone mutex may share a 16-byte pointer-free block with unrelated
/// small values: a packable primitive reached only through such a block is
/// woken as `Packed` (neither held nor leaked), a primitive in a larger
/// object as what reached it, and an unmarked block still proves nothing
/// reaches the mutex.
#[test]
fn packed_blocks_neither_hold_nor_free_a_lone_mutex() {
    let mut w = World::new(CLASSIC);
    let tiny = w.span(1, 16, true);
    let big = w.span(1, 32, true);
    let st = w.stack(4096);
    let g = w.global(16);
    w.put(g.lo, tiny);
    w.put(g.lo + 8, big);
    let packable = |goid, p| Candidate {
        packable: true,
        ..cand(goid, vec![p], st)
    };
    let input = Input {
        roots: vec![global("g", g)],
        candidates: vec![
            packable(1, tiny + 12),
            packable(2, big + 12),
            cand(3, vec![tiny + 12], st),
            packable(4, tiny + 16 + 12),
        ],
        ..Input::default()
    };
    let out = walk(&mut w, &input);
    assert_eq!(out.unreachable, vec![4]);
    assert!(out
        .held_by
        .contains(&(1, RootKind::Packed { addr: tiny + 12 })));
    assert!(out
        .held_by
        .contains(&(2, RootKind::Global { name: "g".into() })));
    assert!(out
        .held_by
        .contains(&(3, RootKind::Global { name: "g".into() })));
}
