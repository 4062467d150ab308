//! The probe registry: every probe site, each a function, a rule for
//! finding the instruction inside it, the kernel program it runs and the
//! `--probes` group it belongs to. Adding a probe site is one entry in
//! [`SITES`] (plus its kernel program); the decoding lives behind
//! [`super::arch::Arch`], and attaching only filters this list.

use gostray_common::{
    block_cookie, death_cookie, PROG_CHAN_CLOSE, PROG_FATAL, PROG_GOROUTINE_BLOCK,
    PROG_GOROUTINE_CREATE, PROG_GOROUTINE_EXIT, PROG_SEND_CLOSED,
};
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
    /// arm64 `adr`/`adrp`: the kernel computes the address itself.
    PcRelative,
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
    /// [`Find::Entry`], else the first call to `callee` (with
    /// `fallback_cookie` added to the site's cookie, so the program knows
    /// its arguments have moved).
    EntryElseCallTo {
        live_args: &'static [usize],
        callee: &'static str,
        fallback_cookie: u64,
    },
}

/// Which `--probes` group a site belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeGroup {
    /// Goroutine creation and exit.
    Lifecycle,
    /// Parks on blocking paths.
    Park,
    /// Channel misuse.
    Misuse,
    /// The runtime's fatal paths: fatal errors and unrecovered panics.
    Fatal,
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
    /// The kernel program attached there (a `PROG_*` name of `common`).
    pub program: &'static str,
    pub group: ProbeGroup,
    /// The attach cookie the program reads (`bpf_get_attach_cookie`).
    pub cookie: Option<u64>,
    /// For a call to `gopanic`: attach only where the panic's message is
    /// this one (a call whose message cannot be read is kept).
    pub panic_message: Option<&'static [u8]>,
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

/// `runtime.throw`, `runtime.fatal`: a fatal error with its message.
pub const SITE_THROW: &str = "throw";
/// `runtime.fatalpanic`: an unrecovered panic.
pub const SITE_FATAL_PANIC: &str = "fatal_panic";

/// The message of the panics the send-on-closed probe is for; chansend
/// has others (Go 1.24+: "send on synctest channel from outside bubble").
const SEND_ON_CLOSED: &[u8] = b"send on closed channel";

/// A required lifecycle site.
const fn lifecycle(
    name: &'static str,
    function: &'static str,
    find: Find,
    program: &'static str,
) -> SiteSpec {
    SiteSpec {
        name,
        function,
        find,
        required: true,
        program,
        group: ProbeGroup::Lifecycle,
        cookie: None,
        panic_message: None,
    }
}

/// An optional site (the leak probes: a binary without them still gets
/// goroutine counts).
const fn optional(
    name: &'static str,
    function: &'static str,
    find: Find,
    program: &'static str,
    group: ProbeGroup,
) -> SiteSpec {
    SiteSpec {
        name,
        function,
        find,
        required: false,
        program,
        group,
        cookie: None,
        panic_message: None,
    }
}

/// The parks of `function`: its calls to `runtime.gopark`, whose lock is
/// `&hchan.lock` when `chan_lock`.
const fn parks(name: &'static str, function: &'static str, chan_lock: bool) -> SiteSpec {
    SiteSpec {
        cookie: Some(block_cookie::encode(false, chan_lock)),
        ..optional(
            name,
            function,
            Find::CallsTo("runtime.gopark"),
            PROG_GOROUTINE_BLOCK,
            ProbeGroup::Park,
        )
    }
}

/// Its calls to `runtime.goparkunlock`, where the compiler kept them.
const fn unlock_parks(function: &'static str) -> SiteSpec {
    SiteSpec {
        cookie: Some(block_cookie::encode(true, false)),
        ..optional(
            SITE_BLOCK_UNLOCK,
            function,
            Find::CallsTo("runtime.goparkunlock"),
            PROG_GOROUTINE_BLOCK,
            ProbeGroup::Park,
        )
    }
}

/// A site on a fatal path: the prologue's `push rbp`, else (Go 1.19) the
/// call to `runtime.systemstack`, whose closure holds the arguments.
const fn fatal(name: &'static str, function: &'static str, cookie: u64) -> SiteSpec {
    SiteSpec {
        cookie: Some(cookie),
        ..optional(
            name,
            function,
            Find::EntryElseCallTo {
                live_args: &[0, 1],
                callee: "runtime.systemstack",
                fallback_cookie: death_cookie::CLOSURE,
            },
            PROG_FATAL,
            ProbeGroup::Fatal,
        )
    }
}

/// Every probe site, in attach order.
pub const SITES: &[SiteSpec] = &[
    lifecycle(
        SITE_CREATE,
        "runtime.newproc.func1",
        Find::CallTo("runtime.runqput"),
        PROG_GOROUTINE_CREATE,
    ),
    lifecycle(
        SITE_EXIT,
        "runtime.goexit0",
        Find::Entry { live_args: &[0] },
        PROG_GOROUTINE_EXIT,
    ),
    // Parking on the blocking paths only: these calls are never reached on
    // a channel's fast path, nor for network waits (netpoll parks elsewhere).
    parks(SITE_BLOCK_CHAN, "runtime.chansend", true),
    parks(SITE_BLOCK_CHAN, "runtime.chanrecv", true),
    parks(SITE_BLOCK, "runtime.selectgo", false),
    parks(SITE_BLOCK, "runtime.block", false),
    parks(SITE_BLOCK, "runtime.semacquire1", false),
    unlock_parks("runtime.semacquire1"),
    parks(SITE_BLOCK, "runtime.notifyListWait", false),
    unlock_parks("runtime.notifyListWait"),
    optional(
        SITE_CLOSE,
        "runtime.closechan",
        Find::Entry { live_args: &[0] },
        PROG_CHAN_CLOSE,
        ProbeGroup::Misuse,
    ),
    SiteSpec {
        panic_message: Some(SEND_ON_CLOSED),
        ..optional(
            SITE_SEND_CLOSED,
            "runtime.chansend",
            Find::CallsTo("runtime.gopanic"),
            PROG_SEND_CLOSED,
            ProbeGroup::Misuse,
        )
    },
    // Cold paths only: none of these is reached by a program that lives.
    fatal(SITE_THROW, "runtime.throw", 0),
    fatal(SITE_THROW, "runtime.fatal", 0),
    fatal(SITE_FATAL_PANIC, "runtime.fatalpanic", death_cookie::PANIC),
];

/// The kernel programs the registry names, each once, in list order.
pub fn programs() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for spec in SITES {
        if !out.contains(&spec.program) {
            out.push(spec.program);
        }
    }
    out
}

/// A site found in a binary.
#[derive(Debug, Clone, Serialize)]
pub struct ChosenSite {
    pub name: &'static str,
    pub function: &'static str,
    pub site: ProbeSite,
    /// Its line of [`SITES`].
    #[serde(skip)]
    pub spec: &'static SiteSpec,
    /// The attach cookie: the spec's, plus its fallback's when the
    /// fallback rule chose the site.
    #[serde(skip)]
    pub cookie: Option<u64>,
    /// Whether the probe goes there: false for a `gopanic` call whose
    /// message is not the spec's.
    #[serde(skip)]
    pub attach: bool,
}

impl SiteSpec {
    /// Functions whose addresses or code this spec needs.
    pub fn functions(&self) -> impl Iterator<Item = &'static str> {
        let callee = match self.find {
            Find::CallTo(c) | Find::CallsTo(c) | Find::EntryElseCallTo { callee: c, .. } => Some(c),
            Find::Entry { .. } => None,
        };
        std::iter::once(self.function).chain(callee)
    }
}
