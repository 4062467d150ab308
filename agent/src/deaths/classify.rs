//! Which concurrency bug (or other cause) a death was, from the runtime's
//! own message: a small, fixed set of reasons, so the metric stays small.

use serde::{Deserialize, Serialize};

/// Why a process died. The label values of `gostray_process_deaths_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `concurrent map writes`, `concurrent map read and map write`,
    /// `concurrent map iteration and map write`, `concurrent map clone and map write`.
    ConcurrentMapAccess,
    /// `all goroutines are asleep - deadlock!` (and `main called runtime.Goexit`).
    AllAsleep,
    /// `sync: unlock of unlocked mutex`, `sync: RUnlock of unlocked RWMutex`…
    UnlockOfUnlocked,
    /// `sync: negative WaitGroup counter`.
    NegativeWaitgroup,
    /// `close of closed channel`.
    CloseOfClosed,
    /// `send on closed channel`.
    SendOnClosed,
    /// `assignment to entry in nil map`.
    NilMapWrite,
    /// `out of memory` (and its variants).
    OutOfMemory,
    /// `stack overflow`.
    StackOverflow,
    /// Any other unrecovered panic.
    Panic,
    /// Any other fatal error.
    Other,
}

impl Reason {
    /// Every reason, in label order.
    #[cfg(test)]
    pub const ALL: [Reason; 11] = [
        Reason::ConcurrentMapAccess,
        Reason::AllAsleep,
        Reason::UnlockOfUnlocked,
        Reason::NegativeWaitgroup,
        Reason::CloseOfClosed,
        Reason::SendOnClosed,
        Reason::NilMapWrite,
        Reason::OutOfMemory,
        Reason::StackOverflow,
        Reason::Panic,
        Reason::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConcurrentMapAccess => "concurrent_map_access",
            Reason::AllAsleep => "all_asleep",
            Reason::UnlockOfUnlocked => "unlock_of_unlocked",
            Reason::NegativeWaitgroup => "negative_waitgroup",
            Reason::CloseOfClosed => "close_of_closed",
            Reason::SendOnClosed => "send_on_closed",
            Reason::NilMapWrite => "nil_map_write",
            Reason::OutOfMemory => "out_of_memory",
            Reason::StackOverflow => "stack_overflow",
            Reason::Panic => "panic",
            Reason::Other => "other",
        }
    }
}

/// How the runtime was dying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `throw`/`fatal`: a fatal error, never recoverable.
    Throw,
    /// `fatalpanic`: an unrecovered panic.
    Panic,
}

/// The reason for `message`. The runtime's texts are stable across Go
/// 1.19–1.27; a panic whose value merely looks like one of them (a user's
/// `panic("close of closed channel")`) is classified the same, which is
/// what an operator reading the log would conclude too.
pub fn classify(source: Source, message: &str) -> Reason {
    let m = message.trim();
    let throw_reason = if m.starts_with("concurrent map ") {
        Some(Reason::ConcurrentMapAccess)
    } else if m.starts_with("all goroutines are asleep")
        || m.starts_with("no goroutines (main called runtime.Goexit)")
    {
        Some(Reason::AllAsleep)
    } else if m.starts_with("sync: ") && m.to_ascii_lowercase().contains("unlock of unlocked") {
        Some(Reason::UnlockOfUnlocked)
    } else if m.starts_with("out of memory") || m.starts_with("runtime: out of memory") {
        Some(Reason::OutOfMemory)
    } else if m == "stack overflow" {
        Some(Reason::StackOverflow)
    } else {
        None
    };
    if let Some(r) = throw_reason {
        return r;
    }
    let panic_reason = match m {
        "sync: negative WaitGroup counter" => Some(Reason::NegativeWaitgroup),
        "close of closed channel" => Some(Reason::CloseOfClosed),
        "send on closed channel" => Some(Reason::SendOnClosed),
        "assignment to entry in nil map" => Some(Reason::NilMapWrite),
        _ => None,
    };
    match (panic_reason, source) {
        (Some(r), _) => r,
        (None, Source::Panic) => Reason::Panic,
        (None, Source::Throw) => Reason::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_messages_are_classified() {
        use Reason::*;
        use Source::{Panic as P, Throw as T};
        for (source, msg, want) in [
            (T, "concurrent map writes", ConcurrentMapAccess),
            (T, "concurrent map read and map write", ConcurrentMapAccess),
            (
                T,
                "concurrent map iteration and map write",
                ConcurrentMapAccess,
            ),
            (T, "all goroutines are asleep - deadlock!", AllAsleep),
            (
                T,
                "no goroutines (main called runtime.Goexit) - deadlock!",
                AllAsleep,
            ),
            (T, "sync: unlock of unlocked mutex", UnlockOfUnlocked),
            (T, "sync: RUnlock of unlocked RWMutex", UnlockOfUnlocked),
            (T, "sync: Unlock of unlocked RWMutex", UnlockOfUnlocked),
            (P, "sync: negative WaitGroup counter", NegativeWaitgroup),
            (P, "close of closed channel", CloseOfClosed),
            (P, "send on closed channel", SendOnClosed),
            (P, "assignment to entry in nil map", NilMapWrite),
            (T, "out of memory", OutOfMemory),
            (
                T,
                "out of memory allocating heap arena metadata",
                OutOfMemory,
            ),
            (T, "stack overflow", StackOverflow),
            (P, "ledger out of balance", Panic),
            (P, "", Panic),
            (T, "index out of range", Other),
            (T, "unexpected signal during runtime execution", Other),
        ] {
            assert_eq!(classify(source, msg), want, "{msg:?}");
        }
    }

    #[test]
    fn labels_are_snake_case_and_distinct() {
        let labels: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        for r in Reason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
