//! What one probe hit costs on this kernel, measured at start.
//!
//! The overhead budget turns probe hits into CPU time. A hit is the uprobe
//! trap plus the program, and both depend on the kernel, the CPU and its
//! mitigations, so the price is measured here rather than written down:
//! the agent calls a few call instructions of its own (the same kind of
//! instruction the Go sites are) with and without each program attached,
//! with its own PID in the watch map and a fake `runtime.g` in its memory,
//! so that each program takes the path a hot Go service makes it take.

use std::{path::Path, time::Instant};

use anyhow::{bail, Context};
use aya::{
    maps::{MapData, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
        UProbe,
    },
};
use gostray_common::{
    hit, ProcConfig, OFFSET_ABSENT, PROG_CHAN_CLOSE, PROG_GOROUTINE_BLOCK, PROG_GOROUTINE_CREATE,
    PROG_GOROUTINE_EXIT,
};

use super::{drop_in_parallel, Kernel};

/// The measured price of a probe hit, in nanoseconds of the watched
/// process's CPU time.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Calibration {
    /// The trap with a program that finds the process unwatched: the least
    /// any hit costs.
    pub floor_ns: f64,
    /// Each program's hit in a watched process, by `hit::*` column.
    pub cost_ns: [f64; hit::COLUMNS],
}

impl Calibration {
    /// The CPU time `hits` cost, in seconds.
    pub fn seconds(&self, hits: &[u64; hit::COLUMNS]) -> f64 {
        hits.iter()
            .zip(self.cost_ns)
            .map(|(&n, ns)| n as f64 * ns)
            .sum::<f64>()
            / 1e9
    }

    /// The program names and prices, for the status endpoint.
    pub fn programs(&self) -> [(&'static str, f64); 4] {
        [
            (PROG_GOROUTINE_CREATE, self.cost_ns[hit::CREATE as usize]),
            (PROG_GOROUTINE_EXIT, self.cost_ns[hit::EXIT as usize]),
            (PROG_GOROUTINE_BLOCK, self.cost_ns[hit::BLOCK as usize]),
            (PROG_CHAN_CLOSE, self.cost_ns[hit::CLOSE as usize]),
        ]
    }
}

/// Calls per timed batch, and batches per figure. The fastest batch is
/// kept: other work on the CPU only ever adds to a batch's time, and the
/// agent starts on busy nodes.
const CALLS: usize = 200;
const BATCHES: usize = 15;

/// Where the fake goroutine's fields are (`ProcConfig` offsets).
const FAKE_GOID: u32 = 16;

/// The calibration sites: only their instructions, the bytes between two
/// and where the probe sits in one, and how they are called differ by
/// architecture.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod sites {
    // Five call sites, one per program priced and one never probed, each
    // `call` (5 bytes) then `ret` (1 byte): a call is emulated by the
    // kernel's uprobe code, as at the Go sites, so no hit single-steps.
    #[cfg(target_arch = "x86_64")]
    core::arch::global_asm!(
        ".pushsection .text.gostray_calibration,\"ax\",@progbits",
        ".globl gostray_calibration_sites",
        ".p2align 4",
        "gostray_calibration_sites:",
        "call 2f",
        "ret",
        "call 2f",
        "ret",
        "call 2f",
        "ret",
        "call 2f",
        "ret",
        "call 2f",
        "ret",
        "2:",
        "ret",
        ".popsection",
    );

    // Five sites as on x86-64, each `mov x17, x30; bl 2f; ret x17`: the
    // probe sits on the `bl`, which the arm64 kernel simulates for a
    // uprobe as it does at the Go call sites. LR is kept in x17 (IP1, a
    // scratch register) because the `bl` overwrites it.
    #[cfg(target_arch = "aarch64")]
    core::arch::global_asm!(
        ".pushsection .text.gostray_calibration,\"ax\",@progbits",
        ".globl gostray_calibration_sites",
        ".p2align 4",
        "gostray_calibration_sites:",
        "mov x17, x30",
        "bl 2f",
        "ret x17",
        "mov x17, x30",
        "bl 2f",
        "ret x17",
        "mov x17, x30",
        "bl 2f",
        "ret x17",
        "mov x17, x30",
        "bl 2f",
        "ret x17",
        "mov x17, x30",
        "bl 2f",
        "ret x17",
        "2:",
        "ret",
        ".popsection",
    );

    extern "C" {
        fn gostray_calibration_sites();
    }

    /// Bytes between two sites.
    #[cfg(target_arch = "x86_64")]
    pub const STRIDE: usize = 6;
    #[cfg(target_arch = "aarch64")]
    pub const STRIDE: usize = 12;
    /// The probed instruction's place in a site: its `call` (x86-64) or
    /// its `bl` (arm64).
    #[cfg(target_arch = "x86_64")]
    pub const PROBE_AT: usize = 0;
    #[cfg(target_arch = "aarch64")]
    pub const PROBE_AT: usize = 4;
    /// The site no program is attached to: the cost of the call itself.
    pub const BARE: usize = 4;

    /// The first site's address in the agent's memory.
    pub fn base() -> usize {
        gostray_calibration_sites as *const () as usize
    }

    /// Calls site `site` with Go's ABI registers as a Go call would have
    /// them: `a` in RAX (first argument), `b` in RBX (second), 0 in RCX,
    /// and `g` in R14 (the current goroutine).
    ///
    /// # Safety
    /// `site` must be one of the sites above.
    #[cfg(target_arch = "x86_64")]
    #[inline(never)]
    pub unsafe fn call(site: usize, a: u64, b: u64, g: u64) {
        // SAFETY: the site is `call; ret` into a bare `ret`: it touches no
        // register but RSP, which it restores. RBX and R14 are saved here.
        unsafe {
            core::arch::asm!(
                "push rbx",
                "push r14",
                "mov rbx, {b}",
                "mov r14, {g}",
                "call {site}",
                "pop r14",
                "pop rbx",
                site = in(reg) site,
                b = in(reg) b,
                g = in(reg) g,
                in("rax") a,
                in("rcx") 0u64,
                clobber_abi("C"),
            );
        }
    }

    /// Calls site `site` with Go's arm64 ABI registers as a Go call would
    /// have them: `a` in R0, `b` in R1, 0 in R2, and `g` in R28.
    ///
    /// # Safety
    /// `site` must be one of the sites above.
    #[cfg(target_arch = "aarch64")]
    #[inline(never)]
    pub unsafe fn call(site: usize, a: u64, b: u64, g: u64) {
        // SAFETY: a site touches x17 and LR only, both declared clobbered
        // (the C ABI's caller-saved set); x28 is declared, so the compiler
        // restores it.
        unsafe {
            core::arch::asm!(
                "blr {site}",
                site = in(reg) site,
                in("x0") a,
                in("x1") b,
                in("x2") 0u64,
                inout("x28") g => _,
                clobber_abi("C"),
            );
        }
    }
}

impl Kernel {
    /// Prices a hit of each program on this kernel (see the module docs).
    /// Events the programs send are drained from `ring` here, before any
    /// process is watched.
    pub fn calibrate(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<Calibration> {
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            let _ = ring;
            bail!("probe-cost calibration is implemented for x86_64 and aarch64 only");
        }
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        self.calibrate_sites(ring)
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn calibrate_sites(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<Calibration> {
        let base = sites::base();
        let file_offset = file_offset_of(base)?;
        let programs = [
            (PROG_GOROUTINE_CREATE, hit::CREATE),
            (PROG_GOROUTINE_EXIT, hit::EXIT),
            (PROG_GOROUTINE_BLOCK, hit::BLOCK),
            (PROG_CHAN_CLOSE, hit::CLOSE),
        ];
        // A fake goroutine and, for the close program, fake channels (each
        // close is a first close, as nearly all closes are).
        let g = vec![7u64; 64].into_boxed_slice();
        let g_addr = g.as_ptr() as u64;
        let chans = vec![0u64; CALLS].into_boxed_slice();
        // Each site's fastest batch less the unprobed site's, the batches
        // of all sites interleaved so that a slow spell hits them alike.
        let mut time = |sites: &[usize]| -> Vec<f64> {
            let mut best = vec![f64::INFINITY; sites.len() + 1];
            for _ in 0..BATCHES {
                for (j, &site) in sites.iter().chain([&sites::BARE]).enumerate() {
                    let start = Instant::now();
                    for i in 0..CALLS {
                        let a = if site == 3 {
                            chans.as_ptr() as u64 + i as u64
                        } else {
                            g_addr
                        };
                        // SAFETY: `site` is one of the calibration sites.
                        unsafe { sites::call(base + site * sites::STRIDE, a, g_addr, g_addr) };
                    }
                    best[j] = best[j].min(start.elapsed().as_nanos() as f64 / CALLS as f64);
                    while ring.next().is_some() {}
                }
            }
            let unprobed = best.pop().unwrap_or_default();
            best.into_iter().map(|t| t - unprobed).collect()
        };
        let mut links = Vec::new();
        for (site, (name, _)) in programs.iter().enumerate() {
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(
                    file_offset + (site * sites::STRIDE + sites::PROBE_AT) as u64,
                ),
                cookie: None,
            };
            let id = prog
                .attach(
                    point,
                    Path::new("/proc/self/exe"),
                    UProbeScope::AllProcesses,
                )
                .with_context(|| format!("attaching {name} to the agent's own calibration site"))?;
            links.push(prog.take_link(id)?);
        }
        let floor = time(&[0])[0];
        let pid = std::process::id();
        let cfg = ProcConfig {
            g_goid: FAKE_GOID,
            g_parent_goid: FAKE_GOID + 8,
            g_gopc: FAKE_GOID + 16,
            g_startpc: FAKE_GOID + 24,
            g_m: OFFSET_ABSENT,
            m_curg: OFFSET_ABSENT,
            g_sched_pc: OFFSET_ABSENT,
            g_sched_bp: OFFSET_ABSENT,
            slot: self.slot_for(pid)?,
            ..ProcConfig::default()
        };
        let watched = self.targets.insert(pid, cfg, 0);
        let mut cost_ns = [0f64; hit::COLUMNS];
        if watched.is_ok() {
            let costs = time(&[0, 1, 2, 3]);
            for ((_, column), cost) in programs.iter().zip(costs) {
                cost_ns[*column as usize] = cost.max(floor).max(1.0);
            }
        }
        self.unwatch(pid);
        drop_in_parallel(links);
        // A small ring buffer fills during calibration: those failures are
        // the agent's own, not a watched process's.
        self.clear_probe_errors()?;
        watched.context("adding the agent to the watch map for calibration")?;
        // Sends on a closed channel are priced like closes (both read the
        // goroutine and the caller); fatal hits are never budgeted.
        cost_ns[hit::SEND_CLOSED as usize] = cost_ns[hit::CLOSE as usize];
        if floor <= 0.0 {
            bail!("calibration measured no trap cost ({floor:.0} ns): timer too coarse?");
        }
        Ok(Calibration {
            floor_ns: floor,
            cost_ns,
        })
    }
}

/// The offset in the agent's own executable file of the code at `addr`,
/// from the mapping that holds it.
fn file_offset_of(addr: usize) -> anyhow::Result<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        if (start..end).contains(&addr) {
            return Ok(offset + (addr - start) as u64);
        }
    }
    bail!("the calibration code at {addr:#x} is in no mapping of the agent")
}
