//! Where the runtime's fields sit: the struct offsets the probes and the
//! memory scan read. Filled from DWARF when the binary has it, otherwise
//! from the generated table in `offsets.json` (see [`super::offsets`]).

use serde::{Deserialize, Serialize};

/// Offsets within `runtime.g` (absolute: nested `sched.pc` and `stack.lo`
/// are already added up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GOffsets {
    pub goid: u32,
    pub atomicstatus: u32,
    pub gopc: u32,
    pub startpc: u32,
    /// `g.parentGoid` exists from Go 1.21.
    pub parent_goid: Option<u32>,
    pub waitreason: u32,
    pub waitsince: u32,
    /// `g.sched.pc`, `.sp`, `.bp`: where a parked goroutine resumes, for a
    /// frame-pointer stack walk.
    pub sched_pc: u32,
    pub sched_sp: u32,
    pub sched_bp: u32,
    /// `g.stack.lo` and `.hi`: bounds for that walk.
    pub stack_lo: u32,
    pub stack_hi: u32,
    /// `g.waiting`: the sudogs of a goroutine parked on channels.
    pub waiting: u32,
    /// `g.m`, and `m.curg` within `runtime.m`: while `newproc` runs on g0,
    /// the creating goroutine is `g0.m.curg` (Go < 1.21 has no parentGoid).
    pub m: u32,
    pub m_curg: u32,
}

/// Offsets within `runtime.hchan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HchanOffsets {
    pub qcount: u32,
    pub dataqsiz: u32,
    pub buf: u32,
    pub elemsize: u32,
    pub closed: u32,
    pub recvq: u32,
    pub sendq: u32,
    pub lock: u32,
}

/// Offsets within `runtime.waitq` (a channel's queue of parked sudogs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitqOffsets {
    pub first: u32,
    pub last: u32,
}

/// Offsets within `runtime.sudog` (one goroutine waiting on a channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudogOffsets {
    pub g: u32,
    pub next: u32,
    pub elem: u32,
    pub c: u32,
}

/// Every layout the agent reads, for one Go release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub g: GOffsets,
    pub hchan: HchanOffsets,
    pub waitq: WaitqOffsets,
    pub sudog: SudogOffsets,
}

/// Where a binary's [`Layout`] came from, as `inspect` and the metrics say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum LayoutSource {
    /// The binary's own DWARF.
    Dwarf,
    /// The generated table, for exactly this Go version.
    Table { version: String },
    /// The table's entry for another release: the same minor line, or the
    /// newest known one for a release newer than the table. A guess, so the
    /// agent warns and exports it.
    Guessed { version: String },
}

impl LayoutSource {
    pub fn is_guess(&self) -> bool {
        matches!(self, Self::Guessed { .. })
    }
}
