//! Naming where goroutines are: source sites from PCs, the blocking frame,
//! the start function, as the runtime's own tracebacks show them.

use serde::{Deserialize, Serialize};

use super::goroutine::Goroutine;

/// A source location, as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Site {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Names PCs of one process (runtime addresses; the implementation removes
/// the load bias).
pub trait Symbols {
    /// The physical function at `pc` (the PC of an instruction).
    fn site(&self, pc: u64) -> Option<Site>;

    /// The frames at `pc`, innermost first: the calls the compiler inlined
    /// there, then the physical function, as the runtime's tracebacks show
    /// them.
    fn frames(&self, pc: u64) -> Vec<Site> {
        self.site(pc).into_iter().collect()
    }

    /// Whether the physical function at `pc` is a compiler wrapper, which
    /// the runtime leaves out of tracebacks; `None` when unknown (then the
    /// wrapper is recognised by name).
    fn is_wrapper(&self, _pc: u64) -> Option<bool> {
        None
    }
}

/// The first of `pcs` (return addresses) outside the runtime's machinery.
pub fn user_site(pcs: &[u64], symbols: &dyn Symbols) -> Site {
    let sites: Vec<Site> = pcs
        .iter()
        .filter(|&&p| p != 0)
        .filter_map(|&p| symbols.site(p.saturating_sub(1)))
        .collect();
    sites
        .iter()
        .find(|s| !is_mechanism(&s.function))
        .or(sites.first())
        .cloned()
        .unwrap_or_default()
}

/// Package prefixes whose frames are the mechanism of a wait, not its site.
pub(super) const MECHANISM: [&str; 5] = [
    "runtime.",
    "sync.",
    "internal/sync.",
    "sync/atomic.",
    "internal/",
];

/// Whether `function` is the runtime's or `sync`'s machinery rather than
/// the program's own code.
pub fn is_mechanism(function: &str) -> bool {
    MECHANISM.iter().any(|m| function.starts_with(m))
}

/// Names the blocking site at return address `pc` (from [`blocking_pc`])
/// as the runtime's traceback does: by the innermost function there, which
/// may have been inlined. A function inlined into a `go` statement's
/// wrapper is named, not the wrapper (the wrapper exists only in the
/// stack); machinery inlined into user code (`sync.(*Mutex).Lock`) is
/// passed over for the user function that called it, as in [`blocking_pc`].
pub(super) fn blocking_site(pc: u64, symbols: &dyn Symbols) -> Site {
    let pc = pc.saturating_sub(1);
    let frames = symbols.frames(pc);
    let wrapper = |i: usize, s: &Site| {
        is_go_wrapper_name(&s.function)
            || (i + 1 == frames.len() && symbols.is_wrapper(pc).unwrap_or(false))
    };
    frames
        .iter()
        .enumerate()
        .find(|&(i, s)| !is_mechanism(&s.function) && !wrapper(i, s))
        .map(|(_, s)| s)
        // Nothing but machinery and wrappers (`go mu.Lock()`): the
        // innermost frame, as the traceback's top line.
        .or(frames.first())
        .cloned()
        .or_else(|| symbols.site(pc))
        .unwrap_or_default()
}

/// The first frame that is not the waiting machinery: where user code waits.
pub(super) fn blocking_pc(
    g: &Goroutine,
    park: Option<&[u64]>,
    symbols: &dyn Symbols,
) -> Option<u64> {
    let is_user = |pc: u64| {
        symbols
            .site(pc.saturating_sub(1))
            .is_some_and(|s| !is_mechanism(&s.function))
    };
    // Walked by a scan (the parked PC first, then return addresses), else
    // the return addresses the park probe saw.
    match (g.seen(), park) {
        (Some(s), _) if !s.stack().is_empty() => {
            let frames = &s.stack()[1..];
            frames
                .iter()
                .copied()
                .find(|&pc| is_user(pc))
                .or(frames.last().copied())
        }
        (_, Some(pcs)) => {
            let mut frames = pcs.iter().copied().filter(|&p| p != 0);
            frames
                .clone()
                .find(|&pc| is_user(pc))
                .or_else(|| frames.next_back())
        }
        _ => None,
    }
}

/// The goroutine's own function: the bottom of its stack, past the
/// compiler's wrappers (`go f(x)` wrappers, into which `f` may be inlined)
/// and `goexit`, as the runtime's tracebacks show it; else its start PC's
/// function.
pub(super) fn start_function(g: &Goroutine, symbols: &dyn Symbols) -> String {
    let pcs = stack_pcs(g);
    // Only a walk that reached the goroutine's bottom frame says where it began.
    let complete = pcs
        .last()
        .and_then(|&pc| symbols.site(pc))
        .is_some_and(|s| is_goexit(&s.function));
    let from_stack = complete
        .then(|| {
            pcs.iter().rev().find_map(|&pc| {
                let frames = symbols.frames(pc);
                let (physical, inlined) = frames.split_last()?;
                let hidden = is_goexit(&physical.function)
                    || symbols
                        .is_wrapper(pc)
                        .unwrap_or_else(|| is_go_wrapper_name(&physical.function));
                // Outermost first: the physical function, then what it inlined.
                (!hidden)
                    .then_some(physical)
                    .into_iter()
                    .chain(inlined.iter().rev())
                    .map(|s| &s.function)
                    .find(|f| !is_go_wrapper_name(f))
                    .cloned()
            })
        })
        .flatten();
    from_stack
        .or_else(|| symbols.site(g.startpc).map(|s| s.function))
        .unwrap_or_default()
}

/// What a goroutine's start function makes it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    Main,
    Runtime,
    User,
}

fn is_goexit(f: &str) -> bool {
    f.starts_with("runtime.goexit")
}

/// The compiler's name for a `go f(x)` wrapper (Go ≥ 1.22): `….gowrapN`.
fn is_go_wrapper_name(f: &str) -> bool {
    f.rsplit('.')
        .next()
        .is_some_and(|last| last.starts_with("gowrap"))
}

/// The goroutine's PCs as instruction addresses: the first is where it
/// stopped, the others are return addresses, whose call is a byte before.
fn stack_pcs(g: &Goroutine) -> Vec<u64> {
    let Some(seen) = g.seen() else {
        return Vec::new();
    };
    seen.stack()
        .iter()
        .enumerate()
        .map(|(i, &pc)| if i == 0 { pc } else { pc.saturating_sub(1) })
        .collect()
}

/// The goroutine's stack, innermost first, with inlined calls expanded.
pub(super) fn stack_of(g: &Goroutine, symbols: &dyn Symbols) -> Vec<Site> {
    stack_pcs(g)
        .into_iter()
        .flat_map(|pc| symbols.frames(pc))
        .collect()
}
