//! A bounded fuzz run of the binary readers, runnable in CI without
//! nightly or libFuzzer: a deterministic PRNG mutates real Go binaries
//! (truncation, byte flips, lying lengths and offsets in the ELF and
//! pclntab headers) and every parser must return an error or a result,
//! never panic, hang or allocate without bound. `GOSTRAY_FUZZ_SECONDS`
//! sets the budget (`cargo xtask fuzz --seconds N` for long runs).

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    time::{Duration, Instant},
};

use super::{buildinfo, pclntab::Pclntab, read, GoBinary};

/// xorshift64*: deterministic, so a failure is reproduced from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values a lying length or offset likes to take.
const LIES: [u64; 8] = [
    0,
    1,
    0x7f,
    0xffff,
    0xffff_ffff,
    1 << 40,
    u64::MAX,
    u64::MAX / 2,
];

/// Writes a lie at a position chosen among the fields parsers trust most.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, hot: &[usize]) {
    match rng.below(5) {
        0 => {
            let cut = rng.below(data.len());
            data.truncate(cut);
        }
        1 => {
            for _ in 0..=rng.below(16) {
                let i = rng.below(data.len());
                if let Some(b) = data.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
        _ => {
            // A lying word near a header: the ELF header and section
            // table, or the start of .gopclntab / .go.buildinfo.
            let base = hot[rng.below(hot.len())];
            let at = base + rng.below(96) / 4 * 4;
            let lie = LIES[rng.below(LIES.len())].wrapping_add(rng.next() % 3);
            let width = if rng.below(2) == 0 { 4 } else { 8 };
            if let Some(slot) = data.get_mut(at..at + width) {
                slot.copy_from_slice(&lie.to_le_bytes()[..width]);
            }
        }
    }
}

/// One parse of everything reachable from mutated bytes.
fn exercise(data: &[u8], pcln_at: usize, info_at: usize) {
    if let Ok(bin) = GoBinary::parse(data) {
        for pc in [bin.create_site.address, bin.exit_site.address, 0, u64::MAX] {
            let _ = bin.symbolize(pc);
            let _ = bin.symbolize_inline(pc);
            let _ = bin.is_wrapper(pc);
        }
        let _ = bin.function("runtime.main");
    }
    if let Some(tab) = data.get(pcln_at..) {
        if let Ok(t) = Pclntab::parse(tab) {
            for i in (0..t.len()).step_by(97) {
                if let Some(f) = t.func(tab, i) {
                    let _ = t.name(tab, &f);
                    let _ = t.line(tab, &f, f.entry + 3);
                    let _ = t.pcdata(tab, &f, 2, f.entry + 3);
                    let _ = t.funcdata(tab, &f, 3);
                    let _ = t.func_id(tab, &f);
                }
            }
        }
    }
    if let Some(info) = data.get(info_at..) {
        let _ = buildinfo::parse(info, |a, n| read::bytes(data, a as usize, n));
    }
}

#[test]
fn fuzz_parsers() {
    let dir = std::env::var_os("GOSTRAY_FIXTURES");
    let Some(dir) = dir.map(std::path::PathBuf::from) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "GOSTRAY_FIXTURES unset under CI: run `cargo xtask test`"
        );
        eprintln!("SKIPPED: fixtures not built; run `cargo xtask test`");
        return;
    };
    let secs: u64 = std::env::var("GOSTRAY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // arm64 builds too: their code goes through the arm64 decoders.
    let seeds: Vec<Vec<u8>> = [
        "spawner-1.19",
        "spawner-1.24-stripped",
        "spawner-1.27-pie",
        "spawner-arm64-1.24-stripped",
        "spawner-arm64-1.27-pie",
    ]
    .iter()
    .map(|n| std::fs::read(dir.join(n)).expect("fixture"))
    .collect();
    let budget = Duration::from_secs(secs);
    let started = Instant::now();
    let (mut iterations, mut accepted) = (0u64, 0u64);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    while started.elapsed() < budget {
        let seed = rng.next();
        let original = &seeds[iterations as usize % seeds.len()];
        let file = object::File::parse(&**original).expect("fixture parses");
        let section = |name| super::image::section_range(&file, name).map_or(0, |(o, _)| o);
        let pcln_at = section(".gopclntab").max(section(".data.rel.ro.gopclntab"));
        let info_at = section(".go.buildinfo");
        let hot = [0, 64, pcln_at, info_at, original.len().saturating_sub(4096)];
        let mut case_rng = Rng(seed | 1);
        let mut data = original.clone();
        for _ in 0..=case_rng.below(3) {
            mutate(&mut case_rng, &mut data, &hot);
        }
        let one = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&data, pcln_at, info_at)));
        assert!(
            outcome.is_ok(),
            "parser panicked on case seed {seed:#x} (iteration {iterations})"
        );
        assert!(
            one.elapsed() < Duration::from_secs(5),
            "case seed {seed:#x} took {:?}",
            one.elapsed()
        );
        accepted += u64::from(GoBinary::parse(&data).is_ok() && iterations % 64 == 0);
        iterations += 1;
    }
    eprintln!(
        "fuzz: {iterations} cases in {:?} ({accepted} sampled still parsed)",
        started.elapsed()
    );
    assert!(iterations > 0);
}
