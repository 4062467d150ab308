//! Why a goroutine is parked. The runtime's `waitReason` numbers move
//! between releases ("chan send" is 15 in 1.24, 20 in 1.27), so the agent
//! reads the names from the binary's own `runtime.waitReasonStrings` and
//! maps each name to a [`WaitReason`] it can reason about.

use serde::Serialize;

use super::read;

/// Most wait reasons a binary may list (Go 1.27 has 47).
pub const MAX_WAIT_REASONS: u64 = 256;
/// Longest wait reason name read ("sync.WaitGroup.Wait (durable)" is 29).
const MAX_NAME: u64 = 64;

/// A wait reason, normalised across Go releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    ChanSend,
    ChanReceive,
    Select,
    /// Blocked forever on a nil channel (send or receive).
    NilChan,
    /// `select {}`: blocked forever.
    SelectNoCases,
    SyncMutex,
    SyncRwmutex,
    SyncWaitgroup,
    SyncCond,
    Semacquire,
    IoWait,
    Sleep,
    /// The GC, the scheduler, tracing and other runtime-internal waits.
    Runtime,
    Other,
}

impl WaitReason {
    /// Maps a runtime wait reason name (`chan send`, `sync.Mutex.Lock`…).
    /// Variants such as `chan send (durable)` (synctest bubbles) keep the
    /// operation they wait on.
    pub fn from_name(name: &str) -> Self {
        let base = name.split(" (").next().unwrap_or(name);
        match name {
            "chan send (nil chan)" | "chan receive (nil chan)" => return Self::NilChan,
            "select (no cases)" => return Self::SelectNoCases,
            _ => {}
        }
        match base {
            "chan send" => Self::ChanSend,
            "chan receive" => Self::ChanReceive,
            "select" => Self::Select,
            "sync.Mutex.Lock" => Self::SyncMutex,
            "sync.RWMutex.RLock" | "sync.RWMutex.Lock" => Self::SyncRwmutex,
            "sync.WaitGroup.Wait" => Self::SyncWaitgroup,
            "sync.Cond.Wait" => Self::SyncCond,
            "semacquire" => Self::Semacquire,
            "IO wait" => Self::IoWait,
            "sleep" => Self::Sleep,
            _ if is_runtime(base) => Self::Runtime,
            _ => Self::Other,
        }
    }

    /// The metric label.
    #[allow(clippy::trivially_copy_pass_by_ref)] // the interface the leak detector codes against
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ChanSend => "chan_send",
            Self::ChanReceive => "chan_receive",
            Self::Select => "select",
            Self::NilChan => "nil_chan",
            Self::SelectNoCases => "select_no_cases",
            Self::SyncMutex => "sync_mutex",
            Self::SyncRwmutex => "sync_rwmutex",
            Self::SyncWaitgroup => "sync_waitgroup",
            Self::SyncCond => "sync_cond",
            Self::Semacquire => "semacquire",
            Self::IoWait => "io_wait",
            Self::Sleep => "sleep",
            Self::Runtime => "runtime",
            Self::Other => "other",
        }
    }
}

/// Names of waits inside the runtime itself (GC, scheduler, tracer…).
impl WaitReason {
    /// Waits that only another goroutine's action ends: the kinds of wait a
    /// leak is made of. Network waits, sleeps and timers are not.
    pub fn is_blocking(self) -> bool {
        matches!(
            self,
            Self::ChanSend
                | Self::ChanReceive
                | Self::Select
                | Self::NilChan
                | Self::SelectNoCases
                | Self::SyncMutex
                | Self::SyncRwmutex
                | Self::SyncWaitgroup
                | Self::SyncCond
                | Self::Semacquire
        )
    }

    /// Waits nothing can end: a nil channel, an empty select.
    pub fn never_wakes(self) -> bool {
        matches!(self, Self::NilChan | Self::SelectNoCases)
    }
}

fn is_runtime(name: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "GC ",
        "garbage collection",
        "trace ",
        "force gc",
        "GOMAXPROCS",
        "synctest",
    ];
    const NAMES: [&str; 12] = [
        "finalizer wait",
        "wait for GC cycle",
        "preempted",
        "debug call",
        "stopping the world",
        "flushing proc caches",
        "page trace flush",
        "coroutine",
        "panicwait",
        "dumping heap",
        "cleanup wait",
        "timer goroutine (idle)",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// Reads `count` Go strings (pointer, length) at link-time address `table`
/// through `at(address, len)`, the binary's memory image.
pub fn read_names<'a>(
    table: u64,
    count: u64,
    at: impl Fn(u64, usize) -> Option<&'a [u8]>,
) -> Option<Vec<String>> {
    if count == 0 || count > MAX_WAIT_REASONS {
        return None;
    }
    let raw = at(table, usize::try_from(count * 16).ok()?)?;
    let mut names = Vec::with_capacity(count as usize);
    for entry in raw.chunks_exact(16) {
        let ptr = read::u64_at(entry, 0)?;
        let len = read::u64_at(entry, 8)?;
        if len > MAX_NAME {
            return None;
        }
        let bytes = if len == 0 {
            &[][..]
        } else {
            at(ptr, len as usize)?
        };
        names.push(read::bounded_string(bytes, MAX_NAME as usize));
    }
    // Index 0 is waitReasonZero, "", in every release: a cheap check that
    // the table is what we think it is.
    names.first().is_some_and(String::is_empty).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_names_of_every_release() {
        let cases = [
            ("chan send", "chan_send"),
            ("chan receive", "chan_receive"),
            ("chan send (nil chan)", "nil_chan"),
            ("chan receive (durable)", "chan_receive"),
            ("select", "select"),
            ("select (no cases)", "select_no_cases"),
            ("sync.Mutex.Lock", "sync_mutex"),
            ("sync.RWMutex.RLock", "sync_rwmutex"),
            ("sync.WaitGroup.Wait", "sync_waitgroup"),
            ("sync.Cond.Wait", "sync_cond"),
            ("semacquire", "semacquire"),
            ("IO wait", "io_wait"),
            ("sleep", "sleep"),
            ("GC worker (idle)", "runtime"),
            ("finalizer wait", "runtime"),
            ("something new", "other"),
        ];
        for (name, label) in cases {
            assert_eq!(WaitReason::from_name(name).as_str(), label, "{name}");
        }
    }

    #[test]
    fn reads_a_table_and_refuses_a_lying_one() {
        let mut mem = vec![0u8; 0x100];
        // entry 0: "" ; entry 1: ptr 0x80 len 5 → "sleep"
        mem[16..24].copy_from_slice(&0x80u64.to_le_bytes());
        mem[24..32].copy_from_slice(&5u64.to_le_bytes());
        mem[0x80..0x85].copy_from_slice(b"sleep");
        let at = |a: u64, n: usize| read::bytes(&mem, a as usize, n);
        assert_eq!(
            read_names(0, 2, at).unwrap(),
            vec![String::new(), "sleep".into()]
        );
        assert!(read_names(0, 100_000, at).is_none());
        let mut lying = mem.clone();
        lying[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_names(0, 2, |a, n| read::bytes(&lying, a as usize, n)).is_none());
    }
}
