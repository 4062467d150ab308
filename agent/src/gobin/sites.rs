//! Where the probes go: a declarative list of sites, each a function and a
//! rule for finding the instruction inside it. Adding a probe site is one
//! entry in [`SITES`]; the decoding lives behind [`super::arch::Arch`].

use serde::Serialize;

/// How the kernel will execute the probed instruction. Every kind here is
/// one the kernel emulates (about 1 µs a hit); anything it would have to
/// single-step (25–30 µs) is never chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    Push,
    Call,
    Jump,
    Nop,
}

/// One chosen probe location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProbeSite {
    /// Link-time virtual address of the instruction.
    pub address: u64,
    /// Offset in the file (the kernel attaches uprobes by file offset).
    pub file_offset: u64,
    pub kind: SiteKind,
}

/// The rule that picks the instruction.
#[derive(Debug, Clone, Copy)]
pub enum Find {
    /// The first call to this function: there its arguments are in the
    /// ABI registers.
    CallTo(&'static str),
    /// Every call to this function (e.g. each `gopark` in `chansend`).
    CallsTo(&'static str),
    /// The first emulated instruction near the entry reached before any
    /// of these argument registers (by ABI index) is overwritten.
    Entry { live_args: &'static [usize] },
}

/// One line of the site list.
#[derive(Debug, Clone, Copy)]
pub struct SiteSpec {
    /// The name the agent and `inspect` use for it.
    pub name: &'static str,
    /// The Go function it is in.
    pub function: &'static str,
    pub find: Find,
    /// A required site missing makes the binary unsupported; an optional
    /// one is reported as absent.
    pub required: bool,
}

/// Goroutine creation: `runtime.newproc.func1` calls `runqput(pp, newg,
/// true)` with the new g in RBX, goid/gopc/startpc/parentGoid filled.
pub const SITE_CREATE: &str = "create";
/// Goroutine exit: `runtime.goexit0(gp *g)`, before RAX (gp) is reused.
pub const SITE_EXIT: &str = "exit";
/// `gopark` calls on blocking paths whose lock is `&hchan.lock`.
pub const SITE_BLOCK_CHAN: &str = "block_chan";
/// `gopark` calls on other blocking paths (select, sync primitives).
pub const SITE_BLOCK: &str = "block";
/// `goparkunlock` calls (when the compiler did not inline it).
pub const SITE_BLOCK_UNLOCK: &str = "block_unlock";
/// `runtime.closechan`'s entry.
pub const SITE_CLOSE: &str = "close";
/// The `gopanic` calls in `runtime.chansend`: "send on closed channel".
pub const SITE_SEND_CLOSED: &str = "send_closed";

/// An optional site rule (the leak probes: a binary without them still
/// gets goroutine counts).
const fn optional(name: &'static str, function: &'static str, find: Find) -> SiteSpec {
    SiteSpec {
        name,
        function,
        find,
        required: false,
    }
}

/// The parks of `function`: its calls to `runtime.gopark`.
const fn parks(name: &'static str, function: &'static str) -> SiteSpec {
    optional(name, function, Find::CallsTo("runtime.gopark"))
}

/// Its calls to `runtime.goparkunlock`, where the compiler kept them.
const fn unlock_parks(function: &'static str) -> SiteSpec {
    optional(
        SITE_BLOCK_UNLOCK,
        function,
        Find::CallsTo("runtime.goparkunlock"),
    )
}

/// Every probe site, in attach order.
pub const SITES: &[SiteSpec] = &[
    SiteSpec {
        name: SITE_CREATE,
        function: "runtime.newproc.func1",
        find: Find::CallTo("runtime.runqput"),
        required: true,
    },
    SiteSpec {
        name: SITE_EXIT,
        function: "runtime.goexit0",
        find: Find::Entry { live_args: &[0] },
        required: true,
    },
    // Parking on the blocking paths only: these calls are never reached on
    // a channel's fast path, nor for network waits (netpoll parks elsewhere).
    parks(SITE_BLOCK_CHAN, "runtime.chansend"),
    parks(SITE_BLOCK_CHAN, "runtime.chanrecv"),
    parks(SITE_BLOCK, "runtime.selectgo"),
    parks(SITE_BLOCK, "runtime.block"),
    parks(SITE_BLOCK, "runtime.semacquire1"),
    unlock_parks("runtime.semacquire1"),
    parks(SITE_BLOCK, "runtime.notifyListWait"),
    unlock_parks("runtime.notifyListWait"),
    optional(
        SITE_CLOSE,
        "runtime.closechan",
        Find::Entry { live_args: &[0] },
    ),
    optional(
        SITE_SEND_CLOSED,
        "runtime.chansend",
        Find::CallsTo("runtime.gopanic"),
    ),
];

/// A site found in a binary.
#[derive(Debug, Clone, Serialize)]
pub struct ChosenSite {
    pub name: &'static str,
    pub function: &'static str,
    pub site: ProbeSite,
}

impl SiteSpec {
    /// Functions whose addresses or code this spec needs.
    pub fn functions(&self) -> impl Iterator<Item = &'static str> {
        let callee = match self.find {
            Find::CallTo(c) | Find::CallsTo(c) => Some(c),
            Find::Entry { .. } => None,
        };
        std::iter::once(self.function).chain(callee)
    }
}
