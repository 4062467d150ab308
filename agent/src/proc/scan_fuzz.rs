//! The memory scan against lying memory: the "target" is this test process,
//! whose memory we lay out ourselves — garbage g structs, allgs arrays that
//! repeat or point at themselves, allglen values that lie, pointers into
//! nothing, frame-pointer chains that loop — and the tracker is fed what
//! comes out. Nothing may panic, hang, or grow beyond its bounds.

use std::{
    collections::HashSet,
    panic::{catch_unwind, AssertUnwindSafe},
    time::{Duration, Instant},
};

use super::{scan, ScannedG, MAX_FRAMES, MAX_GOROUTINES};
use crate::{
    gobin::leaklayout::LeakLayout,
    gobin::GoBinary,
    testrng::Rng,
    tracker::{ProcessInfo, Site, Symbols, Tracker},
};

/// Room for any g record the scan reads (its fields sit below 512 bytes).
const G_BYTES: usize = 1024;

struct NoSymbols;

impl Symbols for NoSymbols {
    fn site(&self, _: u64) -> Option<Site> {
        None
    }
}

fn info() -> ProcessInfo {
    ProcessInfo {
        exe: "fake".into(),
        go_version: "go1.27".into(),
    }
}

/// A Go binary's analysis whose `allgs`/`allglen` we point at our own cells.
fn binary() -> Option<(GoBinary, LeakLayout)> {
    let Some(dir) = std::env::var_os("GOSTRAY_FIXTURES") else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "GOSTRAY_FIXTURES unset under CI: run `cargo xtask test`"
        );
        eprintln!("SKIPPED: fixtures not built; run `cargo xtask test`");
        return None;
    };
    let bin = GoBinary::open(&std::path::Path::new(&dir).join("spawner-1.27")).expect("fixture");
    let leak = LeakLayout::from_bin(&bin);
    Some((bin, leak))
}

/// Scans our own memory as if it were a Go process whose allgs slice is
/// `array` with length `len`.
fn scan_self(
    bin: &mut GoBinary,
    leak: &LeakLayout,
    array: u64,
    len: u64,
) -> std::io::Result<Vec<ScannedG>> {
    let cells = Box::new([array, len]);
    bin.allgs = &raw const cells[0] as u64;
    bin.allglen = &raw const cells[1] as u64;
    scan(std::process::id(), bin, Some(leak), 0, &|_| true)
}

fn put(buf: &mut [u8], off: u32, v: u64, width: usize) {
    buf[off as usize..off as usize + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

/// Fills a g: random bytes, then (usually) a plausible status and
/// pointers that lie in one of several ways.
fn fill_g(rng: &mut Rng, bin: &GoBinary, leak: &LeakLayout, g: &mut [u8], others: &[u64]) {
    for b in g.iter_mut() {
        *b = rng.next() as u8;
    }
    let lie = |rng: &mut Rng| match rng.below(5) {
        0 => 0,
        1 => others[rng.below(others.len() as u64) as usize], // another g, not what is claimed
        2 => rng.next(),                                      // anywhere
        3 => 0xffff_8000_0000_0000 | rng.next(),              // kernel space
        _ => others[0] + rng.below(G_BYTES as u64),           // inside a g, misaligned
    };
    if rng.below(4) != 0 {
        put(g, bin.offsets.atomicstatus, rng.below(12), 4);
    }
    put(g, leak.g.waiting, lie(rng), 8);
    put(g, leak.g.sched_bp, lie(rng), 8);
}

#[test]
fn scan_and_tracker_survive_lying_memory() {
    let Some((mut bin, leak)) = binary() else {
        return;
    };
    let secs: u64 = std::env::var("GOSTRAY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .min(30);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let begun = Instant::now();
    let mut cases = 0u64;
    while begun.elapsed() < Duration::from_secs(secs) {
        let count = 1 + rng.below(48) as usize;
        let mut gs = vec![vec![0u8; G_BYTES]; count];
        let addrs: Vec<u64> = gs.iter().map(|g| g.as_ptr() as u64).collect();
        for g in &mut gs {
            fill_g(&mut rng, &bin, &leak, g, &addrs);
        }
        let mut array: Vec<u64> = (0..rng.below(96))
            .map(|_| match rng.below(6) {
                0 => 0,
                1 => rng.next(),
                2 => addrs[0], // the same g again and again
                _ => addrs[rng.below(count as u64) as usize],
            })
            .collect();
        if rng.below(8) == 0 {
            let me = array.as_ptr() as u64;
            array.push(me); // a "g" that is the array itself
        }
        let len = match rng.below(6) {
            0 => 0,
            1 => array.len() as u64 + rng.below(4096), // longer than the array
            2 => MAX_GOROUTINES + 1 + rng.below(1 << 40),
            _ => array.len() as u64,
        };
        let one = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            scan_self(&mut bin, &leak, array.as_ptr() as u64, len)
        }));
        let result = result.unwrap_or_else(|_| panic!("scan panicked in case {cases}"));
        assert!(
            one.elapsed() < Duration::from_secs(2),
            "case {cases} took {:?}",
            one.elapsed()
        );
        if len > MAX_GOROUTINES {
            assert!(result.is_err(), "implausible allglen {len} accepted");
        }
        if let Ok(scanned) = result {
            assert!(scanned.len() as u64 <= len);
            assert!(scanned.iter().all(|g| g.stack.len() <= MAX_FRAMES));
            let distinct: HashSet<u64> = scanned.iter().map(|g| g.goid).collect();
            let mut tracker = Tracker::new(32);
            tracker.add_process(1, info());
            tracker.merge_scan(1, &scanned);
            tracker.observe_scan(1, 1, scanned);
            tracker.evaluate(1, 2_000_000_000, 1, &NoSymbols, &HashSet::default());
            let live = tracker.process_mut(1).map_or(0, |p| p.live_count());
            assert!(
                live <= distinct.len() as u64,
                "{live} live from {} goids",
                distinct.len()
            );
        }
        drop(gs);
        cases += 1;
    }
    eprintln!("scan fuzz: {cases} cases in {:?}", begun.elapsed());
}

/// An allgs array that ends where readable memory ends: a length that runs
/// past it is an error, not a crash or a partial table.
#[test]
fn truncated_allgs_is_an_error() {
    let Some((mut bin, leak)) = binary() else {
        return;
    };
    // SAFETY: a private anonymous mapping of two pages, the second made
    // inaccessible; unmapped at the end of the test.
    let page = 4096;
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    // SAFETY: the second page of our own mapping.
    assert_eq!(
        unsafe { libc::mprotect(base.cast::<u8>().add(page).cast(), page, libc::PROT_NONE) },
        0
    );
    let array = base as u64 + page as u64 - 64; // 8 entries before the guard page
    assert!(scan_self(&mut bin, &leak, array, 8).is_ok());
    assert!(scan_self(&mut bin, &leak, array, 9).is_err());
    assert!(scan_self(&mut bin, &leak, array, MAX_GOROUTINES).is_err());
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base, 2 * page) };
}

/// One g listed a thousand times and a frame-pointer chain that loops onto
/// itself: the walk ends, and the tracker counts the goroutine once.
#[test]
fn repeated_goroutines_and_looping_frames_are_bounded() {
    let Some((mut bin, leak)) = binary() else {
        return;
    };
    let mut g = vec![0u8; G_BYTES];
    let frame = Box::new([0u64; 2]);
    let frame_at = &raw const frame[0] as u64;
    // SAFETY: writing our own box through a raw pointer to make it self-referential.
    unsafe { (frame_at as *mut u64).write(frame_at) };
    unsafe { (frame_at as *mut u64).add(1).write(0x0040_1000) };
    put(
        &mut g,
        bin.offsets.atomicstatus,
        u64::from(super::G_WAITING),
        4,
    );
    put(&mut g, bin.offsets.goid, 77, 8);
    put(&mut g, leak.g.sched_pc, 0x0040_2000, 8);
    put(&mut g, leak.g.sched_bp, frame_at, 8);
    let array = vec![g.as_ptr() as u64; 1000];
    let scanned = scan_self(&mut bin, &leak, array.as_ptr() as u64, 1000).unwrap();
    assert_eq!(scanned.len(), 1000);
    assert!(scanned
        .iter()
        .all(|s| s.goid == 77 && s.stack == [0x0040_2000, 0x0040_1000]));
    let mut tracker = Tracker::new(10);
    tracker.add_process(1, info());
    tracker.merge_scan(1, &scanned);
    tracker.observe_scan(1, 1, scanned);
    assert_eq!(tracker.process_mut(1).unwrap().live_count(), 1);
    drop(frame);
}
