//! What the caller tells the prover, and what it answers: plain data only,
//! filled from the goroutine table, the symbol table and the stack maps.

use super::WalkStats;

/// A half-open address range `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    pub lo: u64,
    pub hi: u64,
}

impl AddrRange {
    #[allow(dead_code)] // used by the tests
    pub fn contains(&self, addr: u64) -> bool {
        self.lo <= addr && addr < self.hi
    }
}

/// Who holds a reference: the label of a root, reported as `held_by`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKind {
    /// A global variable (data/bss), by symbol name.
    Global { name: String },
    /// The stack of a goroutine that can run (or a woken candidate).
    Stack { goid: u64 },
    /// Something the runtime holds: P timer heaps, finalizers, `allp`.
    #[allow(dead_code)] // runtime-held roots (finalizers) are not gathered yet
    Runtime { what: String },
    /// A primitive address found neither in the heap, nor in a root range,
    /// nor on a known stack. Counted as reachable: we cannot prove otherwise.
    Unresolved { addr: u64 },
    /// A [`Candidate::packable`] primitive in a marked 16-byte pointer-free
    /// block: the block may be shared with unrelated small values (the tiny
    /// allocator), so whether the primitive itself is held is unknown. The
    /// candidate counts as reachable (its stack is scanned).
    Packed { addr: u64 },
}

/// Where to look for pointers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Every aligned word of the range is a possible pointer (conservative).
    Range(AddrRange),
    /// Only these word addresses hold pointers (precise: the live slots a
    /// frame's stack maps name). Each slot is one 8-byte word.
    #[allow(dead_code)] // precise stack slots (stack maps) are not gathered yet
    Slots(Vec<u64>),
}

/// A root: always reachable, scanned first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub kind: RootKind,
    pub scan: Scan,
}

/// A goroutine's stack memory, `[g.stack.lo, g.stack.hi)`. Needed for
/// primitives that live on a stack (see [`Candidate::primitives`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackBounds {
    pub goid: u64,
    pub range: AddrRange,
}

/// A parked goroutine that may be leaked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub goid: u64,
    /// Addresses of what it waits on: an `hchan` per channel (several for a
    /// select), a semaphore/mutex/WaitGroup word, a `notifyList`. It can be
    /// woken when ANY of them is reachable. How each address counts:
    /// - inside a heap object: reachable iff that object gets marked;
    /// - inside a root's `Scan::Range` (a global, static data): reachable;
    /// - inside some goroutine's [`StackBounds`]: reachable iff that
    ///   goroutine can run, i.e. it is not a candidate or has been woken
    ///   (so a mutex on its own stack never wakes its owner);
    /// - 0 (a nil channel): never reachable;
    /// - anywhere else: reachable, labelled [`RootKind::Unresolved`].
    ///
    /// An empty list (nil-channel receive, `select {}`) is never woken: the
    /// caller decides whether such a goroutine (`main` in a daemon) is a
    /// candidate at all.
    pub primitives: Vec<u64>,
    /// The primitives are a guess (every word of the frames that wait, for
    /// a `sync.Cond`): a word that is neither in the heap, nor in a root
    /// range, nor on a stack is not an address and is skipped rather than
    /// counted reachable. With none left, the candidate counts reachable.
    pub guessed: bool,
    /// Its primitive is small enough (a lone `sync.Mutex`, 8 bytes) for the
    /// tiny allocator to pack it with unrelated values: reached through
    /// such a block, it is woken with [`RootKind::Packed`].
    pub packable: bool,
    /// Its stack, scanned only once it has been woken.
    pub stack: Scan,
}

/// Everything the prover needs besides memory and the heap map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Input {
    /// Globals, runtime-held ranges and the stacks of goroutines that can run.
    pub roots: Vec<Root>,
    /// Parked goroutines to judge.
    pub candidates: Vec<Candidate>,
    /// Stack bounds of goroutines (candidates and runnable ones), for
    /// primitives that live on a stack.
    pub stacks: Vec<StackBounds>,
    /// Bases of runtime bookkeeping objects never scanned into: g structs,
    /// sudogs, the allgs backing array, semaphore-table nodes. They list the
    /// waiters of every primitive; scanning them would wake every waiter
    /// (the runtime hides the same pointers, runtime2.go `maybeTraceablePtr`).
    /// They are still marked when reached.
    pub opaque: Vec<u64>,
}

/// The verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Candidates no reachable reference can wake, by goid, in input order.
    pub unreachable: Vec<u64>,
    /// Candidates found reachable, with the root whose scan first reached
    /// one of their primitives, in the order they were woken.
    pub held_by: Vec<(u64, RootKind)>,
    /// Cost of the heap map build and the walk together.
    pub stats: WalkStats,
}
