//! Reading the runtime's goroutine table (`runtime.allgs`) from process memory.
//!
//! Used at attach, so goroutines that predate the probes are counted. Every
//! value read may be torn: lengths are bounded, statuses validated.

use std::io;

use crate::{gobin::GoBinary, procmem};

/// `runtime._Gidle`, `_Gdead` and the `_Gscan` bit (runtime2.go; stable since Go 1.0).
const G_IDLE: u32 = 0;
const G_DEAD: u32 = 6;
const G_SCAN: u32 = 0x1000;
/// Highest plain status value we accept (`_Gpreempted` = 9; 1.26 adds `_Gdeadextra`=10… be lenient).
const G_MAX_STATUS: u32 = 16;
/// Refuse to believe in more goroutines than this (a torn or lying length).
pub const MAX_GOROUTINES: u64 = 10_000_000;

/// One live goroutine as seen in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedG {
    pub goid: u64,
    pub status: u32,
    pub gopc: u64,
    pub startpc: u64,
    pub parent_goid: u64,
}

/// Reads every live goroutine of process `pid`, whose executable is `bin`
/// loaded with `bias` added to its link-time addresses.
pub fn scan(pid: u32, bin: &GoBinary, bias: u64) -> io::Result<Vec<ScannedG>> {
    let len = procmem::read_u64(pid, bin.allglen + bias)?;
    let array = procmem::read_u64(pid, bin.allgs + bias)?;
    if len > MAX_GOROUTINES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("allglen {len} is implausible"),
        ));
    }
    if len == 0 || array == 0 {
        return Ok(Vec::new());
    }
    let mut raw = vec![0u8; len as usize * 8];
    procmem::read(pid, array, &mut raw)?;
    let pointers: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8-byte chunk")))
        .filter(|&p| p != 0)
        .collect();
    let o = bin.offsets;
    let record = [
        o.goid,
        o.atomicstatus,
        o.gopc,
        o.startpc,
        o.parent_goid.unwrap_or(0),
    ]
    .into_iter()
    .max()
    .unwrap_or(0) as usize
        + 8;
    let field = |b: &[u8], off: u32| {
        u64::from_le_bytes(
            b[off as usize..off as usize + 8]
                .try_into()
                .expect("8 bytes"),
        )
    };
    let mut out = Vec::with_capacity(pointers.len());
    for bytes in procmem::read_many(pid, &pointers, record)
        .into_iter()
        .flatten()
    {
        let status = u32::from_le_bytes(
            bytes[o.atomicstatus as usize..o.atomicstatus as usize + 4]
                .try_into()
                .expect("4 bytes"),
        ) & !G_SCAN;
        if status == G_IDLE || status == G_DEAD || status > G_MAX_STATUS {
            continue;
        }
        out.push(ScannedG {
            goid: field(&bytes, o.goid),
            status,
            gopc: field(&bytes, o.gopc),
            startpc: field(&bytes, o.startpc),
            parent_goid: o.parent_goid.map_or(0, |off| field(&bytes, off)),
        });
    }
    Ok(out)
}
