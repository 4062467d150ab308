//! Reading the runtime's goroutine table (`runtime.allgs`) from process memory.
//!
//! Used at attach, so goroutines that predate the probes are counted, and on
//! a timer, to confirm what the probes suggest and to recover from lost
//! events. Every value read may be torn: lengths are bounded, statuses
//! validated, pointer chains bounded and checked to move the right way.

use std::{collections::HashSet, io};

use crate::tracker::input::{ChanState, ScannedG};
use crate::{
    gobin::{leaklayout::LeakLayout, GoBinary},
    proc::mem,
    tracker::input::{G_DEAD, G_DEAD_EXTRA, G_IDLE, G_LEAKED, G_MAX_STATUS, G_SCAN, G_WAITING},
};

/// Refuse to believe in more goroutines than this (a torn or lying length).
pub const MAX_GOROUTINES: u64 = 10_000_000;
/// Frames kept per walked stack.
pub const MAX_FRAMES: usize = 24;
/// Stacks walked per scan; the rest are counted as not walked.
pub const MAX_STACKS: usize = 4096;
/// Pointers and g records read per batch.
const CHUNK: usize = 16 * 1024;
/// Global data read per scan when looking for channel references.
const MAX_GLOBALS_BYTES: u64 = 32 << 20;

/// Reads every live goroutine of process `pid`, whose executable is `bin`
/// loaded with `bias` added to its link-time addresses. With `leak`, parked
/// goroutines for which `walk(waitreason)` holds also get their channel and
/// stack.
pub fn scan(
    pid: u32,
    bin: &GoBinary,
    leak: Option<&LeakLayout>,
    bias: u64,
    walk: &dyn Fn(u8) -> bool,
) -> io::Result<Vec<ScannedG>> {
    let mut all = Vec::new();
    scan_into(pid, bin, leak, bias, walk, &mut |mut part| {
        all.append(&mut part);
    })?;
    Ok(all)
}

/// Like [`scan`], but hands the goroutines to `sink` in parts of at most
/// `CHUNK` (the walked ones last, with their channels and stacks), so a
/// table of a million goroutines is never held whole.
pub fn scan_into(
    pid: u32,
    bin: &GoBinary,
    leak: Option<&LeakLayout>,
    bias: u64,
    walk: &dyn Fn(u8) -> bool,
    sink: &mut dyn FnMut(Vec<ScannedG>),
) -> io::Result<()> {
    let pointers = read_allgs(pid, bin, bias)?;
    if pointers.is_empty() {
        return Ok(());
    }
    let o = bin.offsets;
    let mut fields = vec![
        o.goid,
        o.atomicstatus,
        o.gopc,
        o.startpc,
        o.parent_goid.unwrap_or(0),
    ];
    if let Some(l) = leak {
        fields.extend([l.g.waitreason, l.g.waiting, l.g.sched_pc, l.g.sched_bp]);
    }
    let record = fields.into_iter().max().unwrap_or(0) as usize + 8;
    let at = |b: &[u8], off: u32| le64(&b[off as usize..off as usize + 8]);

    let mut part = Vec::with_capacity(pointers.len().min(CHUNK));
    // Goroutines whose channel and stack are read at the end, with
    // (index in `walked`, waiting, pc, bp).
    let mut walked = Vec::new();
    let mut parked: Vec<(usize, u64, u64, u64)> = Vec::new();
    mem::read_each_near(pid, &pointers, record, |_, bytes| {
        let Some(bytes) = bytes else { return };
        let status = u32::from_le_bytes(
            bytes[o.atomicstatus as usize..o.atomicstatus as usize + 4]
                .try_into()
                .expect("4 bytes"),
        ) & !G_SCAN;
        if status == G_IDLE || status == G_DEAD || status == G_DEAD_EXTRA || status > G_MAX_STATUS {
            return;
        }
        // A goroutine the runtime itself found leaked is still parked.
        let status = if status == G_LEAKED {
            G_WAITING
        } else {
            status
        };
        let mut g = ScannedG {
            goid: at(bytes, o.goid),
            status,
            gopc: at(bytes, o.gopc),
            startpc: at(bytes, o.startpc),
            parent_goid: o.parent_goid.map_or(0, |off| at(bytes, off)),
            ..ScannedG::default()
        };
        if let Some(l) = leak {
            g.waitreason = bytes[l.g.waitreason as usize];
            if status == G_WAITING && walk(g.waitreason) && parked.len() < MAX_STACKS {
                parked.push((
                    walked.len(),
                    at(bytes, l.g.waiting),
                    at(bytes, l.g.sched_pc),
                    at(bytes, l.g.sched_bp),
                ));
                walked.push(g);
                return;
            }
        }
        part.push(g);
        if part.len() == CHUNK {
            sink(std::mem::replace(&mut part, Vec::with_capacity(CHUNK)));
        }
    });
    sink(part);
    if let Some(l) = leak {
        read_channels(pid, l, &parked, &mut walked);
        walk_stacks(pid, &parked, &mut walked);
    }
    sink(walked);
    Ok(())
}

/// The non-nil pointers of `runtime.allgs`.
pub(super) fn read_allgs(pid: u32, bin: &GoBinary, bias: u64) -> io::Result<Vec<u64>> {
    let len = mem::read_u64(pid, bin.allglen.wrapping_add(bias))?;
    let array = mem::read_u64(pid, bin.allgs.wrapping_add(bias))?;
    if len > MAX_GOROUTINES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("allglen {len} is implausible"),
        ));
    }
    if len == 0 || array == 0 {
        return Ok(Vec::new());
    }
    // In chunks, so that a lying or torn allglen costs bounded memory
    // (a chunk of pointers and a chunk of records) beyond the output.
    let mut pointers = Vec::new();
    let mut raw = vec![0u8; (len as usize).min(CHUNK) * 8];
    for first in (0..len).step_by(CHUNK) {
        let n = (len - first).min(CHUNK as u64) as usize;
        let raw = &mut raw[..n * 8];
        let at = array.checked_add(first * 8).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "allgs points past the address space",
            )
        })?;
        mem::read(pid, at, raw)?;
        pointers.extend(raw.chunks_exact(8).map(le64).filter(|&p| p != 0));
    }
    Ok(pointers)
}

pub(super) fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Follows `g.waiting` (a sudog) to its channel for each parked goroutine.
fn read_channels(
    pid: u32,
    l: &LeakLayout,
    parked: &[(usize, u64, u64, u64)],
    out: &mut [ScannedG],
) {
    let with_sudog: Vec<(usize, u64)> = parked
        .iter()
        .filter(|p| p.1 != 0)
        // A pointer read from the target may be anything: never overflow on it.
        .filter_map(|p| Some((p.0, p.1.checked_add(u64::from(l.chan.sudog_c))?)))
        .collect();
    let addrs: Vec<u64> = with_sudog.iter().map(|p| p.1).collect();
    let chans: Vec<(usize, u64)> = mem::read_many(pid, &addrs, 8)
        .into_iter()
        .zip(&with_sudog)
        .filter_map(|(b, &(i, _))| Some((i, le64(&b?))))
        .filter(|&(_, c)| c != 0)
        .collect();
    let c = l.chan;
    let size = [c.qcount, c.dataqsiz, c.closed, c.recvq_first, c.sendq_first]
        .into_iter()
        .max()
        .unwrap_or(0) as usize
        + 8;
    let addrs: Vec<u64> = chans.iter().map(|p| p.1).collect();
    for (bytes, &(i, address)) in mem::read_many(pid, &addrs, size).into_iter().zip(&chans) {
        let Some(b) = bytes else { continue };
        let at = |off: u32| le64(&b[off as usize..]);
        out[i].chan = Some(ChanState {
            address,
            qcount: at(c.qcount),
            dataqsiz: at(c.dataqsiz),
            closed: u32::from_le_bytes(
                b[c.closed as usize..c.closed as usize + 4]
                    .try_into()
                    .expect("4 bytes"),
            ) != 0,
            receivers_waiting: at(c.recvq_first) != 0,
            senders_waiting: at(c.sendq_first) != 0,
        });
    }
}

/// Walks the frame-pointer chains of parked goroutines, all at once, one
/// batched read per depth. A frame must lie above the previous one (stacks
/// grow down), which also ends any cycle a torn read could create.
fn walk_stacks(pid: u32, parked: &[(usize, u64, u64, u64)], out: &mut [ScannedG]) {
    let mut live: Vec<(usize, u64)> = Vec::new();
    for &(i, _, pc, bp) in parked {
        out[i].stack.push(pc);
        if bp != 0 {
            live.push((i, bp));
        }
    }
    for _ in 1..MAX_FRAMES {
        if live.is_empty() {
            break;
        }
        let addrs: Vec<u64> = live.iter().map(|p| p.1).collect();
        let frames = mem::read_many(pid, &addrs, 16);
        let mut next = Vec::with_capacity(live.len());
        for (bytes, &(i, bp)) in frames.into_iter().zip(&live) {
            let Some(b) = bytes else { continue };
            let (up, ret) = (le64(&b[..8]), le64(&b[8..]));
            if ret == 0 {
                continue;
            }
            out[i].stack.push(ret);
            if up > bp {
                next.push((i, up));
            }
        }
        live = next;
    }
}

/// Which of `wanted` (channel addresses) are stored in a package-level
/// variable: the process's data and bss, read in chunks.
pub fn referenced_from_globals(
    pid: u32,
    ranges: &[(u64, u64)],
    bias: u64,
    wanted: &HashSet<u64>,
) -> HashSet<u64> {
    const CHUNK: u64 = 64 << 10;
    let mut found = HashSet::new();
    let mut budget = MAX_GLOBALS_BYTES;
    let mut buf = vec![0u8; CHUNK as usize];
    for &(start, end) in ranges {
        let mut at = start.wrapping_add(bias) & !7;
        let end = end.wrapping_add(bias);
        while at < end && budget > 0 && found.len() < wanted.len() {
            let n = (end - at).min(CHUNK).min(budget);
            let chunk = &mut buf[..n as usize];
            if mem::read(pid, at, chunk).is_ok() {
                found.extend(
                    chunk
                        .chunks_exact(8)
                        .map(le64)
                        .filter(|v| wanted.contains(v)),
                );
            }
            at += n;
            budget -= n;
        }
    }
    found
}

#[cfg(test)]
#[path = "scan_fuzz.rs"]
mod fuzz;
