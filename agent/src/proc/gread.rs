//! The goroutines as the heap walk needs them: status, wait, saved
//! registers and stack bounds, read from every g of `runtime.allgs`.

use super::{
    mem,
    scan::le64,
    stackscan::{panic_defer, Parked},
};
use crate::{
    gobin::GoBinary,
    reach::AddrRange,
    tracker::input::{G_RUNNING, G_SCAN},
};

/// One goroutine, as the walk needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct G {
    pub(super) addr: u64,
    pub(super) goid: u64,
    pub(super) status: u32,
    pub(super) reason: u8,
    pub(super) waiting: u64,
    pub(super) startpc: u64,
    pub(super) pc: u64,
    pub(super) sp: u64,
    pub(super) bp: u64,
    pub(super) lo: u64,
    pub(super) hi: u64,
    /// `g._defer` or `g._panic` is set: records the stack maps do not
    /// describe (`scanstack` scans them apart), so the stack is scanned
    /// conservatively. Unknown counts as set.
    pub(super) defers: bool,
}

impl G {
    /// Where it resumes and its stack bounds, for a walk of its frames.
    pub(super) fn parked(&self) -> Parked {
        Parked {
            pc: self.pc,
            sp: self.sp,
            lo: self.lo,
            hi: self.hi,
        }
    }

    /// The part of its stack that can hold live values.
    pub(super) fn live_stack(&self) -> AddrRange {
        // A goroutine in a system call saved its sp on the way in.
        let parked = self.status != G_RUNNING;
        let lo = if parked && (self.lo..self.hi).contains(&self.sp) {
            self.sp
        } else {
            self.lo
        };
        AddrRange { lo, hi: self.hi }
    }

    /// Whether its saved registers and stack are those of a parked
    /// goroutine that has not moved since they were read.
    pub(super) fn same_park(&self, again: &G) -> bool {
        (self.status, self.pc, self.sp, self.lo, self.hi)
            == (again.status, again.pc, again.sp, again.lo, again.hi)
    }
}

/// Reads the fields of every g the walk needs; dead and idle ones are left out.
pub(super) fn read_gs(pid: u32, bin: &GoBinary, pointers: &[u64]) -> Vec<G> {
    let o = bin.offsets;
    let pd = panic_defer(&o);
    let fields = [
        o.goid,
        o.atomicstatus,
        o.waitreason,
        o.waiting,
        o.startpc,
        o.sched_pc,
        o.sched_sp,
        o.sched_bp,
        o.stack_lo,
        o.stack_hi,
        pd.map_or(0, |(_, d)| d),
    ];
    let record = fields.into_iter().max().unwrap_or(0) as usize + 8;
    let mut out = Vec::with_capacity(pointers.len());
    mem::read_each_near(pid, pointers, record, |i, bytes| {
        let Some(b) = bytes else { return };
        let at = |off: u32| le64(&b[off as usize..]);
        let status = (at(o.atomicstatus) as u32) & !G_SCAN;
        if !matches!(status, 1..=4 | 8..=10) {
            return;
        }
        let g = G {
            addr: pointers[i],
            goid: at(o.goid),
            status,
            reason: b[o.waitreason as usize],
            waiting: at(o.waiting),
            startpc: at(o.startpc),
            pc: at(o.sched_pc),
            sp: at(o.sched_sp),
            bp: at(o.sched_bp),
            lo: at(o.stack_lo),
            hi: at(o.stack_hi),
            defers: pd.is_none_or(|(p, d)| at(p) != 0 || at(d) != 0),
        };
        // A torn record: bounds that cannot be a stack.
        if g.lo < g.hi && g.hi - g.lo <= 1 << 30 {
            out.push(g);
        }
    });
    out
}
