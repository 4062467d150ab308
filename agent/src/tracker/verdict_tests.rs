//! The verdict rules on synthetic process state: no kernel, no process.

use std::collections::{HashMap, HashSet};

use gostray_common::{EventKind, GoroutineEvent};

use super::input::{ChanState, ScannedG, Walked, G_WAITING};
use super::{
    group::{Creator, Verdict},
    site::{Site, Symbols},
    Event, ProcessInfo, Tracker,
};

const PID: u32 = 1;
const SEC: u64 = 1_000_000_000;
const LEAK_AFTER: u64 = 10 * SEC;
/// Wait reasons by index, as a binary's waitReasonStrings would give them.
const REASONS: [&str; 6] = [
    "",
    "chan send",
    "chan receive",
    "chan receive (nil chan)",
    "sleep",
    "IO wait",
];
const SEND: u8 = 1;
const RECV: u8 = 2;
const NIL_RECV: u8 = 3;
const SLEEP: u8 = 4;

/// PCs name functions by their high byte: 0x1xxx main.creator, …
struct Names;

impl Symbols for Names {
    fn site(&self, pc: u64) -> Option<Site> {
        let function = match pc >> 12 {
            1 => "runtime.main",
            2 => "main.handler",
            3 => "main.worker",
            4 => "runtime.gopark",
            5 => "main.pool",
            6 => "main.sleeper",
            _ => return None,
        };
        Some(Site {
            function: function.into(),
            file: String::new(),
            line: 0,
        })
    }
}

/// A test process with a clock.
struct World {
    t: Tracker,
    now: u64,
}

impl World {
    fn new() -> Self {
        let mut t = Tracker::new(1000);
        t.add_process(
            PID,
            ProcessInfo {
                exe: "svc".into(),
                go_version: "go1.27.0".into(),
            },
        );
        t.merge_scan(PID, &[]);
        t.process_mut(PID).unwrap().wait_reasons =
            REASONS.iter().map(ToString::to_string).collect();
        Self { t, now: 100 * SEC }
    }

    fn create(&mut self, goid: u64, parent: u64, startpc: u64) {
        let e = GoroutineEvent {
            kind: EventKind::Create as u32,
            pid: PID,
            goid,
            parent_goid: parent,
            gopc: startpc,
            startpc,
            ktime_ns: self.now,
        };
        self.t.apply(&Event::Goroutine(e));
    }

    fn exit(&mut self, goid: u64) {
        let e = GoroutineEvent {
            kind: EventKind::Exit as u32,
            pid: PID,
            goid,
            ktime_ns: self.now,
            ..GoroutineEvent::default()
        };
        self.t.apply(&Event::Goroutine(e));
    }

    /// A scan seeing `parked` (goid, reason, channel) parked and every other
    /// live goroutine running; then an evaluation.
    fn scan(&mut self, parked: &[(u64, u8, Option<u64>)], globals: &[u64]) {
        let p = self.t.process_mut(PID).unwrap();
        let live: Vec<(u64, u64, u64)> = p
            .live
            .iter()
            .map(|(&id, g)| (id, g.startpc, g.parent_goid))
            .collect();
        let scanned = live
            .into_iter()
            .map(|(goid, startpc, parent)| {
                let park = parked.iter().find(|p| p.0 == goid);
                ScannedG {
                    goid,
                    status: if park.is_some() { G_WAITING } else { 2 },
                    gopc: startpc,
                    startpc,
                    parent_goid: parent,
                    waitreason: park.map_or(0, |p| p.1),
                    chan: park.and_then(|p| p.2).map(|address| ChanState {
                        address,
                        qcount: 0,
                        dataqsiz: 0,
                        closed: false,
                        receivers_waiting: false,
                        senders_waiting: false,
                    }),
                    stack: vec![0x4000, startpc + 0x10],
                }
            })
            .collect();
        self.t.observe_scan(PID, self.now, scanned);
        let globals: HashSet<u64> = globals.iter().copied().collect();
        self.t.evaluate(PID, self.now, LEAK_AFTER, &Names, &globals);
    }

    /// A heap walk's result, taken before the next scan's evaluation.
    fn walked(&mut self, unreachable: &[u64], held: &[(u64, &str)]) {
        let walked = Walked {
            candidates: unreachable.len() + held.len(),
            unreachable: unreachable.to_vec(),
            held_by: held.iter().map(|&(g, h)| (g, h.to_string())).collect(),
            trustworthy: true,
            ..Walked::default()
        };
        self.t.observe_walk(PID, self.now, walked, 5 * SEC);
    }

    fn advance(&mut self, secs: u64) {
        self.now += secs * SEC;
    }

    fn verdicts(&self) -> HashMap<String, (Verdict, u64, Creator)> {
        let p = self.t.processes().find(|(pid, _)| *pid == PID).unwrap().1;
        p.groups
            .iter()
            .map(|g| (g.start_function.clone(), (g.verdict, g.count, g.creator)))
            .collect()
    }
}

#[test]
fn a_sender_whose_creator_exited_is_a_leak_once_parked_long_enough() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(10, 1, 0x2000); // handler
    w.create(20, 10, 0x3000); // its worker
    w.exit(10);
    w.scan(&[(20, SEND, Some(0xc000))], &[]);
    assert!(w.verdicts().is_empty(), "not yet --leak-after");
    w.advance(11);
    w.scan(&[(20, SEND, Some(0xc000))], &[]);
    assert_eq!(
        w.verdicts()["main.worker"],
        (Verdict::Leak, 1, Creator::Exited)
    );
    let summary =
        &w.t.processes()
            .find(|(pid, _)| *pid == PID)
            .unwrap()
            .1
            .summary;
    assert_eq!(summary.blocked_senders, 1);
    assert_eq!(summary.blocked_by_class["chan_send"], 1);
}

#[test]
fn a_waiter_whose_creator_still_runs_stays_quiet() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(20, 1, 0x3000);
    for _ in 0..5 {
        w.scan(&[(20, RECV, Some(0xc000))], &[]);
        w.advance(11);
    }
    assert!(w.verdicts().is_empty(), "{:?}", w.verdicts());
}

#[test]
fn a_nil_channel_wait_is_a_leak_whoever_created_it() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(20, 1, 0x3000);
    w.scan(&[(20, NIL_RECV, None)], &[]);
    w.advance(11);
    w.scan(&[(20, NIL_RECV, None)], &[]);
    assert_eq!(w.verdicts()["main.worker"].0, Verdict::Leak);
}

#[test]
fn a_site_that_keeps_growing_is_a_leak_even_with_a_live_creator() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    let mut parked = Vec::new();
    for (round, goid) in (100..106).enumerate() {
        w.create(goid, 1, 0x3000);
        parked.push((goid, SEND, Some(0xc000 + goid)));
        w.scan(&parked, &[]);
        w.advance(11);
        let v = w.verdicts().get("main.worker").map(|v| v.0);
        match round {
            0 => assert_eq!(v, None),
            1 | 2 => assert_eq!(v, Some(Verdict::Suspect), "round {round}"),
            _ => assert_eq!(v, Some(Verdict::Leak), "round {round}"),
        }
    }
}

#[test]
fn a_channel_held_by_a_global_stays_quiet() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(10, 1, 0x2000);
    w.create(20, 10, 0x3000);
    w.exit(10);
    w.scan(&[(20, RECV, Some(0xbeef))], &[0xbeef]);
    w.advance(11);
    w.scan(&[(20, RECV, Some(0xbeef))], &[0xbeef]);
    assert!(w.verdicts().is_empty());
}

#[test]
fn an_idle_pool_left_by_its_launcher_is_only_a_suspect() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(10, 1, 0x2000);
    for goid in 20..24 {
        w.create(goid, 10, 0x5000);
    }
    w.exit(10);
    let parked: Vec<_> = (20..24).map(|g| (g, RECV, Some(0xd000))).collect();
    w.scan(&parked, &[]);
    w.advance(11);
    w.scan(&parked, &[]);
    assert_eq!(
        w.verdicts()["main.pool"],
        (Verdict::Suspect, 4, Creator::Exited)
    );
}

#[test]
fn waiting_on_a_descendant_still_at_work_is_not_stuck() {
    // handler(10) -> middle(11, exits) -> sleeper(12): the handler's wait
    // may still be answered by the sleeper, through a goroutine that is gone.
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(5, 1, 0x2000);
    w.create(10, 5, 0x3000);
    w.create(11, 10, 0x2000);
    w.create(12, 11, 0x6000);
    w.exit(5);
    w.exit(11);
    w.scan(&[(10, RECV, Some(0xe000)), (12, SLEEP, None)], &[]);
    w.advance(11);
    w.scan(&[(10, RECV, Some(0xe000)), (12, SLEEP, None)], &[]);
    assert!(w.verdicts().is_empty(), "{:?}", w.verdicts());
    // Once the sleeper is gone, nothing can answer.
    w.exit(12);
    w.advance(1);
    w.scan(&[(10, RECV, Some(0xe000))], &[]);
    assert_eq!(w.verdicts()["main.worker"].0, Verdict::Leak);
}

#[test]
fn sleepers_and_network_waiters_are_never_judged() {
    let mut w = World::new();
    w.create(10, 0, 0x2000);
    w.create(20, 10, 0x6000);
    w.create(21, 10, 0x6000);
    w.exit(10);
    for _ in 0..3 {
        w.scan(&[(20, SLEEP, None), (21, 5, None)], &[]);
        w.advance(100);
    }
    assert!(w.verdicts().is_empty());
    assert_eq!(
        w.t.processes()
            .find(|(pid, _)| *pid == PID)
            .unwrap()
            .1
            .summary
            .blocked_by_class
            .get("sleep"),
        Some(&1)
    );
    assert_eq!(
        w.t.processes()
            .find(|(pid, _)| *pid == PID)
            .unwrap()
            .1
            .summary
            .blocked_by_class
            .get("io_wait"),
        Some(&1)
    );
}

#[test]
fn a_scan_repairs_lost_creations_and_exits() {
    let mut w = World::new();
    w.create(10, 0, 0x2000);
    w.create(11, 0, 0x2000);
    w.advance(1);
    // The scan finds 11 and an unannounced 12 (runnable), but not 10 (its
    // exit was lost).
    let p = w.t.process_mut(PID).unwrap();
    p.live.remove(&12);
    let g = |goid| ScannedG {
        goid,
        status: 1,
        gopc: 0x2000,
        startpc: 0x2000,
        parent_goid: 0,
        waitreason: 0,
        chan: None,
        stack: Vec::new(),
    };
    w.t.observe_scan(PID, w.now, vec![g(11), g(12)]);
    let p = w.t.process_mut(PID).unwrap();
    assert_eq!(
        (p.live_count(), p.reconciled_creates, p.reconciled_exits),
        (2, 1, 1)
    );
}

/// A binary whose `go t.awaitDone()` wrapper had awaitDone inlined (Go ≥
/// 1.22), and an older-style wrapper closure that calls its function.
struct Inlined;

impl Symbols for Inlined {
    fn site(&self, pc: u64) -> Option<Site> {
        self.frames(pc).pop()
    }

    fn frames(&self, pc: u64) -> Vec<Site> {
        let names: &[&str] = match pc >> 12 {
            3 => &["main.worker"],
            7 => &["runtime.chanrecv1"],
            8 => &["main.(*Tx).awaitDone", "main.(*Tx).start.gowrap1"],
            9 => &["runtime.goexit"],
            0xa => &["main.launch.func1"],
            0xb => &["sync.(*Mutex).Lock", "main.locker"],
            0xc => &["sync.(*Mutex).Lock", "main.launch.gowrap2"],
            _ => &[],
        };
        names
            .iter()
            .map(|f| Site {
                function: (*f).into(),
                file: String::new(),
                line: 0,
            })
            .collect()
    }

    fn is_wrapper(&self, pc: u64) -> Option<bool> {
        Some(matches!(pc >> 12, 8 | 0xa | 0xc))
    }
}

/// [`Inlined`] without funcIDs.
struct ByName;

impl Symbols for ByName {
    fn site(&self, pc: u64) -> Option<Site> {
        Inlined.site(pc)
    }

    fn frames(&self, pc: u64) -> Vec<Site> {
        Inlined.frames(pc)
    }
}

fn parked_on(stack: Vec<u64>) -> super::goroutine::Goroutine {
    super::goroutine::Goroutine::scanned(
        0xa000,
        super::goroutine::Seen::new(G_WAITING, RECV, None, stack),
    )
}

#[test]
fn a_goroutine_is_named_by_its_inlined_function_past_hidden_wrappers() {
    use super::site::{stack_of, start_function};
    let g = parked_on(vec![0x7000, 0x8011, 0x9001]);
    assert_eq!(start_function(&g, &Inlined), "main.(*Tx).awaitDone");
    let names: Vec<String> = stack_of(&g, &Inlined)
        .into_iter()
        .map(|s| s.function)
        .collect();
    assert_eq!(
        names,
        [
            "runtime.chanrecv1",
            "main.(*Tx).awaitDone",
            "main.(*Tx).start.gowrap1",
            "runtime.goexit"
        ]
    );
    // A wrapper that calls its function is hidden by its funcID, not its name.
    let g = parked_on(vec![0x7000, 0x3011, 0xa011, 0x9001]);
    assert_eq!(start_function(&g, &Inlined), "main.worker");
    // Without funcIDs only `gowrapN` names are known to be wrappers.
    let g = parked_on(vec![0x7000, 0x8011, 0x9001]);
    assert_eq!(start_function(&g, &ByName), "main.(*Tx).awaitDone");
    let g = parked_on(vec![0x7000, 0x3011, 0xa011, 0x9001]);
    assert_eq!(start_function(&g, &ByName), "main.launch.func1");
    // A stack that does not reach goexit falls back to the start PC.
    let g = parked_on(vec![0x7000, 0x8011]);
    assert_eq!(start_function(&g, &Inlined), "main.launch.func1");
}

/// The blocking site is named by the innermost function at its PC, as the
/// runtime's traceback names it: never by the `go` statement's wrapper
/// its function was inlined into.
#[test]
fn the_blocking_site_is_the_inlined_function_not_the_go_wrapper() {
    use super::site::blocking_site;
    for symbols in [&Inlined as &dyn Symbols, &ByName] {
        let name = |pc| blocking_site(pc, symbols).function;
        // `go t.awaitDone()`, awaitDone inlined into the wrapper.
        assert_eq!(name(0x8011), "main.(*Tx).awaitDone");
        // Nothing inlined: the physical function.
        assert_eq!(name(0x3011), "main.worker");
        // The mutex's fast path inlined into user code: the user code.
        assert_eq!(name(0xb011), "main.locker");
        // `go mu.Lock()`: machinery and the wrapper only; the traceback's
        // top line.
        assert_eq!(name(0xc011), "sync.(*Mutex).Lock");
    }
    assert_eq!(blocking_site(0xf011, &Inlined), Site::default());

    // Through an evaluation: the group, its metric label and the report
    // all take `blocked_at`; the stack keeps the wrapper.
    let mut w = World::new();
    let parked = |goid, stack| ScannedG {
        goid,
        status: G_WAITING,
        gopc: 0xa000,
        startpc: 0xa000,
        parent_goid: 0,
        waitreason: NIL_RECV,
        chan: None,
        stack,
    };
    for _ in 0..2 {
        let scanned = vec![
            parked(20, vec![0x7000, 0x8011, 0x9001]),
            parked(21, vec![0x7000, 0x3011, 0xa011, 0x9001]),
        ];
        w.t.observe_scan(PID, w.now, scanned);
        w.t.evaluate(PID, w.now, LEAK_AFTER, &Inlined, &HashSet::new());
        w.advance(11);
    }
    let p = w.t.processes().find(|(pid, _)| *pid == PID).unwrap().1;
    let mut sites: Vec<(&str, &str, bool)> = p
        .groups
        .iter()
        .map(|g| {
            let wrapped = g.stack.iter().any(|s| s.function.ends_with(".gowrap1"));
            (
                g.blocked_at.function.as_str(),
                g.start_function.as_str(),
                wrapped,
            )
        })
        .collect();
    sites.sort_unstable();
    assert_eq!(
        sites,
        [
            ("main.(*Tx).awaitDone", "main.(*Tx).awaitDone", true),
            ("main.worker", "main.worker", false)
        ]
    );
}

/// The heap walks outrank the proxies: a goroutine whose creator lives on
/// is a leak once two walks, a gap apart, find nothing that can reach its
/// channel; one walk is not enough.
#[test]
fn two_walks_finding_it_unreachable_make_a_leak_under_a_live_creator() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(20, 1, 0x3000);
    w.scan(&[(20, SEND, Some(0xc000))], &[]);
    w.advance(11);
    w.walked(&[20], &[]);
    w.scan(&[(20, SEND, Some(0xc000))], &[]);
    assert!(w.verdicts().is_empty(), "one walk: {:?}", w.verdicts());
    w.advance(6);
    w.walked(&[20], &[]);
    w.scan(&[(20, SEND, Some(0xc000))], &[]);
    assert_eq!(
        w.verdicts()["main.worker"],
        (Verdict::Leak, 1, Creator::Alive)
    );
    let p = w.t.processes().find(|(pid, _)| *pid == PID).unwrap().1;
    assert!(
        p.groups[0].evidence[1].starts_with("nothing reachable holds what it waits on")
            && p.groups[0].evidence[1].ends_with("(2 heap walks, 6s apart)"),
        "{:?}",
        p.groups[0].evidence
    );
}

/// A channel something that can run still holds is no leak, however the
/// proxies look: `net/http`'s writeLoop outlives the dialer that started it.
#[test]
fn a_reachable_channel_silences_an_exited_creator() {
    let mut w = World::new();
    w.create(1, 0, 0x1000);
    w.create(10, 1, 0x2000);
    w.create(20, 10, 0x3000);
    w.exit(10);
    w.scan(&[(20, RECV, Some(0xc000))], &[]);
    w.advance(11);
    w.walked(&[], &[(20, "a global in .bss")]);
    w.walked(&[], &[(20, "a global in .bss")]);
    w.scan(&[(20, RECV, Some(0xc000))], &[]);
    assert!(w.verdicts().is_empty(), "{:?}", w.verdicts());
    // The report says what holds it, settled after two walks.
    let p = w.t.processes().find(|(pid, _)| *pid == PID).unwrap().1;
    assert_eq!(p.held.len(), 1, "{:?}", p.held);
    assert_eq!(p.held[0].holder, "a global in .bss");
    assert!(p.held[0].settled);
    assert_eq!(p.held[0].start_function, "main.worker");
    // Without the walk the proxies would have called it a leak.
    w.walked(&[], &[]);
    w.advance(1);
    w.scan(&[(20, RECV, Some(0xc000))], &[]);
    assert_eq!(w.verdicts()["main.worker"].0, Verdict::Leak);
}
