use gostray_common::{EventKind, GoroutineEvent, EVENT_SIZE};

use super::*;

fn info() -> ProcessInfo {
    ProcessInfo {
        exe: "svc".into(),
        go_version: "go1.24.0".into(),
    }
}

fn ev(kind: EventKind, pid: u32, goid: u64) -> GoroutineEvent {
    GoroutineEvent {
        kind: kind as u32,
        pid,
        goid,
        parent_goid: 1,
        gopc: 0x1000,
        startpc: 0x2000,
        ktime_ns: goid * 10,
    }
}

fn scanned(goid: u64) -> ScannedG {
    ScannedG {
        goid,
        status: 4,
        gopc: 0x10,
        startpc: 0x20,
        parent_goid: 0,
        ..ScannedG::default()
    }
}

#[test]
fn counts_creates_and_exits() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    t.merge_scan(7, &[]);
    for goid in 10..20 {
        t.apply(&Event::Goroutine(ev(EventKind::Create, 7, goid)));
    }
    for goid in 10..14 {
        t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, goid)));
    }
    let p = t.process(7).unwrap();
    assert_eq!(
        (p.created_total, p.exited_total, p.live_count()),
        (10, 4, 6)
    );
    assert_eq!(p.goroutine(15).unwrap().created_ns, 150);
    assert!(p.goroutine(12).is_none());
}

#[test]
fn scan_fills_goroutines_that_predate_attach_without_double_counting() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    // Created after attach and also seen by the scan.
    t.apply(&Event::Goroutine(ev(EventKind::Create, 7, 50)));
    t.merge_scan(7, &[scanned(1), scanned(2), scanned(50)]);
    let p = t.process(7).unwrap();
    assert_eq!(p.live_count(), 3);
    assert_eq!(p.created_total, 1);
    // The event's richer record wins over the scan's.
    assert_eq!(p.goroutine(50).unwrap().gopc, 0x1000);
}

#[test]
fn exit_seen_before_the_scan_merges_is_not_resurrected() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    // Goroutine 2 predates attach, exits while the scan runs, and the scan
    // (read a moment earlier) still reports it.
    t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, 2)));
    t.merge_scan(7, &[scanned(1), scanned(2)]);
    let p = t.process(7).unwrap();
    assert_eq!(p.live_count(), 1);
    assert!(p.goroutine(2).is_none());
    assert!(p.is_ready());
}

#[test]
fn table_is_bounded_and_overflow_is_counted() {
    let mut t = Tracker::new(3);
    t.add_process(7, info());
    t.merge_scan(7, &[]);
    for goid in 1..=5 {
        t.apply(&Event::Goroutine(ev(EventKind::Create, 7, goid)));
    }
    let p = t.process(7).unwrap();
    assert_eq!((p.live_count(), p.untracked), (5, 2));
    t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, 5))); // untracked one exits
    assert_eq!(t.process(7).unwrap().live_count(), 4);
}

#[test]
fn scans_past_the_bound_count_what_they_could_not_store() {
    let mut t = Tracker::new(3);
    t.add_process(7, info());
    t.merge_scan(7, &[]);
    // Two creations seen, four lost: the scan finds all six.
    for goid in 1..=2 {
        t.apply(&Event::Goroutine(ev(EventKind::Create, 7, goid)));
    }
    let all: Vec<ScannedG> = (1..=6).map(scanned).collect();
    t.observe_scan(7, 1_000, all.clone());
    let p = t.process(7).unwrap();
    assert_eq!((p.live_count(), p.untracked), (6, 3));
    // A torn table listing each twice counts each once.
    t.observe_scan(7, 2_000, [all.clone(), all].concat());
    assert_eq!(t.process(7).unwrap().live_count(), 6);
    // All but two exited, their exits lost.
    t.observe_scan(7, 3_000, (1..=2).map(scanned).collect());
    let p = t.process(7).unwrap();
    assert_eq!((p.live_count(), p.untracked), (2, 0));
}

#[test]
fn events_for_unknown_processes_or_kinds_are_counted_not_applied() {
    let mut t = Tracker::new(10);
    t.apply(&Event::Goroutine(ev(EventKind::Create, 99, 1)));
    let mut bad = ev(EventKind::Create, 99, 1);
    bad.kind = 77;
    t.apply(&Event::Goroutine(bad));
    assert_eq!(t.stray_events, 2);
    assert!(t.process(99).is_none());
}

#[test]
fn decodes_events_and_rejects_short_records() {
    let e = ev(EventKind::Exit, 3, 42);
    // SAFETY: reading a repr(C) struct of integers as bytes.
    let bytes = unsafe { std::slice::from_raw_parts((&raw const e).cast::<u8>(), EVENT_SIZE) };
    let mut unaligned = vec![0u8];
    unaligned.extend_from_slice(bytes);
    assert_eq!(decode_event(&unaligned[1..]), Some(Event::Goroutine(e)));
    assert_eq!(decode_event(&bytes[..EVENT_SIZE - 1]), None);
}

#[test]
fn removing_a_process_forgets_it() {
    let mut t = Tracker::new(10);
    t.add_process(7, info());
    assert!(t.remove_process(7).is_some());
    assert!(t.process(7).is_none());
}

#[test]
fn a_tracked_goroutine_takes_56_bytes() {
    // A million may be tracked: the table's cost per goroutine is this plus
    // the key and the hash table's slack (see docs/BENCHMARKS.md).
    assert_eq!(std::mem::size_of::<super::goroutine::Goroutine>(), 56);
}

#[test]
fn without_lifecycle_probes_the_scans_count_creations_and_exits() {
    let mut t = Tracker::new(100);
    t.count_from_scans();
    t.add_process(7, info());
    t.merge_scan(7, &[scanned(1), scanned(5)]);
    // 40 goroutines came and went between scans, three are new and alive,
    // goroutine 5 exited: IDs reached 48.
    t.observe_scan(
        7,
        1,
        vec![scanned(1), scanned(46), scanned(47), scanned(48)],
    );
    let p = t.process(7).unwrap();
    assert_eq!(
        (p.created_total, p.exited_total, p.live_count()),
        (43, 41, 4)
    );
    // Scan-found goroutines are not lost events here.
    assert_eq!((p.reconciled_creates, p.reconciled_exits), (0, 0));
    // Nothing new, two exits: the counters only grow.
    t.observe_scan(7, 1, vec![scanned(1), scanned(46)]);
    let p = t.process(7).unwrap();
    assert_eq!((p.created_total, p.exited_total), (43, 43));
}

#[test]
fn exits_keep_counting_from_the_scans_after_creation_events_were_lost() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    t.merge_scan(7, &[scanned(1)]);
    // A full ring: of 20 goroutines that came and went, the creation events
    // of 8 were lost and every exit arrived.
    for goid in 2..22 {
        if goid >= 10 {
            t.apply(&Event::Goroutine(ev(EventKind::Create, 7, goid)));
        }
        t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, goid)));
    }
    let p = t.process_mut(7).unwrap();
    assert_eq!((p.created_total, p.exited_total), (12, 20));
    p.set_lifecycle_probes(false);
    // Then 10 more come and go and 2 stay: IDs reach 33.
    t.observe_scan(7, 1_000, vec![scanned(1), scanned(32), scanned(33)]);
    let p = t.process(7).unwrap();
    assert_eq!(
        (p.created_total, p.exited_total, p.live_count()),
        (24, 30, 3)
    );
}

#[test]
fn a_switch_with_events_still_in_the_ring_counts_each_goroutine_once() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    t.merge_scan(7, &[scanned(1)]);
    for goid in 2..7 {
        t.apply(&Event::Goroutine(ev(EventKind::Create, 7, goid)));
    }
    // The scan runs ahead of the ring: 2 and 3 have exited and 7 and 8
    // exist, none of it drained yet.
    let listed = [1, 4, 5, 6, 7, 8];
    t.observe_scan(7, 1_000, listed.iter().map(|&g| scanned(g)).collect());
    t.process_mut(7).unwrap().set_lifecycle_probes(false);
    // The probes went; what was in the ring arrives, 7 among it exiting.
    for (kind, goid) in [
        (EventKind::Create, 7),
        (EventKind::Create, 8),
        (EventKind::Exit, 2),
        (EventKind::Exit, 3),
        (EventKind::Exit, 7),
    ] {
        t.apply(&Event::Goroutine(ev(kind, 7, goid)));
    }
    let listed = [1, 4, 5, 6, 8];
    t.observe_scan(7, 2_000, listed.iter().map(|&g| scanned(g)).collect());
    let p = t.process(7).unwrap();
    assert_eq!((p.created_total, p.exited_total, p.live_count()), (7, 3, 5));
}

#[test]
fn a_dying_goroutine_read_after_its_exit_event_is_not_brought_back() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    t.merge_scan(7, &[scanned(1)]);
    t.apply(&Event::Goroutine(ev(EventKind::Create, 7, 5)));
    t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, 5)));
    // The scan reads 5 still running (not yet marked dead), and 9, running,
    // whose creation event was lost.
    let running = |goid| ScannedG {
        status: super::input::G_RUNNING,
        ..scanned(goid)
    };
    t.observe_scan(7, 1_000, vec![scanned(1), running(5), running(9)]);
    let p = t.process(7).unwrap();
    assert_eq!((p.live_count(), p.reconciled_creates), (1, 0));
    // 9 settles (parked) by the next scan, which repairs it.
    t.observe_scan(7, 2_000, vec![scanned(1), scanned(9)]);
    let p = t.process(7).unwrap();
    assert_eq!((p.live_count(), p.reconciled_creates), (2, 1));
}

#[test]
fn a_creation_event_arriving_during_a_scan_pass_keeps_the_goroutine() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    t.merge_scan(7, &[scanned(1)]);
    // The pass lists goroutine 9 before its creation event is drained;
    // the event (created before the pass began) must not undo the mark.
    t.begin_scan(7);
    t.observe_part(7, 1_000, vec![scanned(1), scanned(9)]);
    t.apply(&Event::Goroutine(ev(EventKind::Create, 7, 9)));
    t.end_scan(7, 1_000);
    let p = t.process(7).unwrap();
    assert_eq!((p.live_count(), p.created_total), (2, 1));
    assert_eq!(p.goroutine(9).unwrap().gopc, 0x1000);
}

#[test]
fn lifecycle_probes_switched_off_and_on_mid_run_keep_the_counts() {
    let mut t = Tracker::new(100);
    t.add_process(7, info());
    t.merge_scan(7, &[scanned(1)]);
    for goid in 2..12 {
        t.apply(&Event::Goroutine(ev(EventKind::Create, 7, goid)));
    }
    for goid in 2..6 {
        t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, goid)));
    }
    // 10 created, 4 exited, 7 live (1 and 6..=11). The budget detaches the
    // lifecycle probes; one creation and one exit were still in flight.
    let p = t.process_mut(7).unwrap();
    p.set_lifecycle_probes(false);
    assert!(!p.lifecycle_probes());
    t.apply(&Event::Goroutine(ev(EventKind::Create, 7, 12)));
    t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, 6)));
    let p = t.process(7).unwrap();
    assert_eq!(
        (p.created_total, p.exited_total, p.live_count()),
        (11, 4, 7)
    );
    // Then IDs reach 30 between scans; 6..=9 and most new ones are gone.
    let live = [1, 10, 11, 12, 29, 30];
    t.observe_scan(7, 1_000, live.iter().map(|&g| scanned(g)).collect());
    let p = t.process(7).unwrap();
    assert_eq!(
        (p.created_total, p.exited_total, p.live_count()),
        (29, 24, 6)
    );
    assert_eq!(p.created_total - p.exited_total + 1, p.live_count());
    // Re-armed: events count again, from the same totals.
    t.process_mut(7).unwrap().set_lifecycle_probes(true);
    t.apply(&Event::Goroutine(ev(EventKind::Create, 7, 31)));
    t.apply(&Event::Goroutine(ev(EventKind::Exit, 7, 29)));
    let p = t.process(7).unwrap();
    assert_eq!(
        (p.created_total, p.exited_total, p.live_count()),
        (30, 25, 6)
    );
    // Switching to what it is already is a no-op.
    t.process_mut(7).unwrap().set_lifecycle_probes(true);
    assert_eq!(t.process(7).unwrap().created_total, 30);
}
