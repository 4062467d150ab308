//! Memory that lies: torn span tables, cycles, holes, huge lengths. The walk
//! must end, stay inside its budget and never panic; a fuzz loop checks that
//! over a few thousand mutated heaps.

use super::testmem::{global, small_budget, World, MHEAP};
use super::{run, AddrRange, Budget, Candidate, HeapMap, Input, Scan, WalkError};

const BASE: u64 = 0x00c0_0000_0000;
const RANDOM: u64 = 0x7f3a_4000_0000;

#[test]
fn lying_spans_are_rejected_and_the_rest_still_works() {
    let mut w = World::new(BASE);
    let layout = w.layout;
    let good = w.span(1, 96, false);
    let put = |w: &mut World, ms: u64, off: u32, v: u64| w.put(ms + u64::from(off), v);
    let at = w.cursor;
    let huge = w.raw_span(at, 1, 64, at + 8192, 2, 1);
    put(&mut w, huge, layout.span_npages, 1 << 50);
    let outside = w.raw_span(at + 8192, 1, 64, at + 16384, 2, 1);
    put(&mut w, outside, layout.span_start, 0x1000);
    let zero = w.raw_span(at + 2 * 8192, 1, 0, at + 3 * 8192, 2, 1);
    let past = w.raw_span(at + 3 * 8192, 1, 64, at + 9 * 8192, 2, 1);
    // X covers four pages; Y claims the second of them too.
    let wide = w.raw_span(at + 4 * 8192, 4, 64, at + 8 * 8192, 2, 1);
    w.raw_span(at + 5 * 8192, 1, 64, at + 6 * 8192, 2, 1);
    let _ = (zero, past, wide);
    let heap = HeapMap::build(&mut w.mem, &layout, &Budget::default()).expect("build");
    assert_eq!(heap.stats.spans, 2, "the good span and X");
    assert_eq!(heap.stats.spans_rejected, 5);
    assert!(heap.object_of(0x1000).is_none());
    assert_eq!(
        heap.object_of(at + 5 * 8192 + 70).map(|o| o.base),
        Some(at + 5 * 8192 + 64)
    );

    let g = w.global(8);
    w.put(g.lo, good);
    let input = Input {
        roots: vec![global("g", g)],
        candidates: vec![Candidate {
            goid: 1,
            primitives: vec![good + 8],
            guessed: false,
            packable: false,
            stack: Scan::Slots(vec![]),
        }],
        ..Input::default()
    };
    assert!(run(&mut w.mem, &layout, &input, &Budget::default())
        .expect("walk")
        .unreachable
        .is_empty());
}

/// The runtime leaves a freed page's span table entry as it was and
/// recycles mspan structs: a free page lower in the arena can still name an
/// mspan that now describes a span further on. That is no lie.
#[test]
fn a_stale_entry_naming_a_recycled_mspan_is_no_lie() {
    let mut w = World::new(BASE);
    let free_page = w.cursor;
    w.cursor += 3 * 8192;
    let start = w.span(1, 64, false);
    let ms = w.raw_span(start, 1, 64, start + 8192, 2, 1);
    w.set_page(free_page, ms);
    // And one page before the span itself, adjacent to it.
    w.set_page(start - 8192, ms);
    let heap = HeapMap::build(&mut w.mem, &w.layout, &Budget::default()).expect("build");
    assert_eq!(heap.stats.spans_rejected, 0);
    assert_eq!(heap.stats.spans, 1);
    assert_eq!(heap.object_of(start + 70).map(|o| o.base), Some(start + 64));
    assert!(heap.object_of(free_page + 8).is_none());
}

#[test]
fn span_table_full_of_one_pointer() {
    let mut w = World::new(RANDOM);
    let ms = w.raw_span(RANDOM, 1, 64, RANDOM + 8192, 2, 1);
    let mid = w.raw_span(RANDOM + 8192, 1, 64, RANDOM + 16384, 2, 1);
    for page in 0..8192 {
        w.set_page(RANDOM + page * 8192, if page < 4096 { ms } else { mid });
    }
    let heap = HeapMap::build(&mut w.mem, &w.layout, &Budget::default()).expect("build");
    // `mid` says it starts at page 1 but the table names it first at 4096.
    assert_eq!((heap.stats.spans, heap.stats.spans_rejected), (1, 1));
}

#[test]
fn distinct_garbage_pointers_exceed_the_span_budget() {
    let mut w = World::new(BASE);
    for page in 0..8192 {
        w.set_page(BASE + page * 8192, 0x9000_0000 + page * 64);
    }
    let err = HeapMap::build(&mut w.mem, &w.layout, &small_budget()).expect_err("over budget");
    assert_eq!(err, WalkError::OverBudget { what: "spans" });
}

#[test]
fn pointer_cycles_terminate() {
    let mut w = World::new(BASE);
    let span = w.span(1, 32, false);
    let (first, second) = (span, span + 32);
    w.put(first, second);
    w.put(second + 8, first + 16);
    w.put(second + 16, second); // a self-pointer too
    let g = w.global(8);
    w.put(g.lo, first);
    let input = Input {
        roots: vec![global("g", g)],
        ..Input::default()
    };
    let out = run(&mut w.mem, &w.layout, &input, &Budget::default()).expect("walk");
    assert_eq!(out.stats.objects_marked, 2);
}

#[test]
fn unmapped_object_pages_count_as_failed_reads() {
    let mut w = World::new(BASE);
    let s = w.span(2, 8192, false);
    let ch = w.span(1, 96, false);
    w.put(s + 8192 + 8, ch);
    w.mem.pages.retain(|&pg, _| pg != (s + 8192) / 4096); // a hole in the object
    let g = w.global(8);
    w.put(g.lo, s + 8192);
    let input = Input {
        roots: vec![global("g", g)],
        candidates: vec![Candidate {
            goid: 1,
            primitives: vec![ch],
            guessed: false,
            packable: false,
            stack: Scan::Slots(vec![7]),
        }],
        ..Input::default()
    };
    let out = run(&mut w.mem, &w.layout, &input, &Budget::default()).expect("walk");
    // The chain is cut: the verdict says so through reads_failed.
    assert_eq!(out.unreachable, vec![1]);
    assert_eq!(out.stats.reads_failed, 1, "the object with the hole");
}

#[test]
fn all_arenas_lies() {
    let hdr = MHEAP + u64::from(super::testmem::test_layout().mheap_all_arenas);
    for (len, ptr, want) in [
        (u64::MAX, None, WalkError::OverBudget { what: "heap bytes" }),
        (1000, None, WalkError::OverBudget { what: "heap bytes" }),
        (
            1,
            Some(0xdead_0000),
            WalkError::Unreadable {
                what: "mheap_.allArenas",
            },
        ),
    ] {
        let mut w = World::new(BASE);
        w.put(hdr + 8, len);
        if let Some(p) = ptr {
            w.put(hdr, p);
        }
        let err = HeapMap::build(&mut w.mem, &w.layout, &Budget::default()).expect_err("lie");
        assert_eq!(err, want, "len {len}");
    }
    // Arena indexes past the L1×L2 range are dropped, not followed.
    let mut w = World::new(BASE);
    w.add_arena(BASE + (64 << 20));
    w.put(0x0068_0000 + 8, u64::MAX);
    let heap = HeapMap::build(&mut w.mem, &w.layout, &Budget::default()).expect("build");
    assert_eq!(heap.stats.spans, 0);
}

#[test]
fn every_read_fails() {
    let mut w = World::new(BASE);
    w.mem.broken = true;
    let err = HeapMap::build(&mut w.mem, &w.layout, &Budget::default()).expect_err("broken");
    assert_eq!(
        err,
        WalkError::Unreadable {
            what: "mheap_.allArenas"
        }
    );
}

#[test]
fn budgets_hold() {
    let mut w = World::new(BASE);
    let s = w.span(1, 16, false);
    for i in 0..100 {
        w.put(s + i * 16, s + (i + 1) * 16);
    }
    let g = w.global(8);
    w.put(g.lo, s);
    let input = Input {
        roots: vec![global("g", g)],
        ..Input::default()
    };
    let few = Budget {
        max_objects: 50,
        ..Budget::default()
    };
    let err = run(&mut w.mem, &w.layout, &input, &few).expect_err("objects");
    assert_eq!(err, WalkError::OverBudget { what: "objects" });
    let tiny = Budget {
        max_bytes_read: 66_000,
        ..Budget::default()
    };
    let err = run(&mut w.mem, &w.layout, &input, &tiny).expect_err("bytes");
    assert_eq!(err, WalkError::OverBudget { what: "bytes read" });
    // A root range covering the address space ends by budget, not by time.
    let all = Input {
        roots: vec![global(
            "g",
            AddrRange {
                lo: 0,
                hi: u64::MAX,
            },
        )],
        ..Input::default()
    };
    let err = run(&mut w.mem, &w.layout, &all, &small_budget()).expect_err("bytes");
    assert_eq!(err, WalkError::OverBudget { what: "bytes read" });
}

#[test]
fn bad_layout_is_refused() {
    let mut w = World::new(BASE);
    let mut l = w.layout;
    l.span_state = 1 << 30;
    assert_eq!(
        HeapMap::build(&mut w.mem, &l, &Budget::default()).expect_err("layout"),
        WalkError::BadLayout {
            what: "field offset"
        }
    );
    l = w.layout;
    l.arena_spans = 1 << 23;
    assert_eq!(
        HeapMap::build(&mut w.mem, &l, &Budget::default()).expect_err("spans"),
        WalkError::BadLayout {
            what: "field offset"
        }
    );
    l = w.layout;
    l.geometry.page_bytes = 3000;
    assert!(matches!(
        HeapMap::build(&mut w.mem, &l, &Budget::default()),
        Err(WalkError::BadLayout { .. })
    ));
}
