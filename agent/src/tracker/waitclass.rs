//! The runtime's wait reasons, folded into the classes verdicts reason about.
//! Names come from the binary's own `runtime.waitReasonStrings`, because the
//! numbers move between releases ("chan send" is 15 in 1.24, 20 in 1.27).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitClass {
    ChanSend,
    ChanReceive,
    Select,
    NilChan,
    SelectNoCases,
    SyncMutex,
    SyncRwMutex,
    SyncWaitGroup,
    SyncCond,
    Semacquire,
    IoWait,
    Sleep,
    Runtime,
    Other,
}

impl WaitClass {
    pub fn from_name(name: &str) -> Self {
        match name {
            "chan send" => Self::ChanSend,
            "chan receive" => Self::ChanReceive,
            "select" => Self::Select,
            "chan send (nil chan)" | "chan receive (nil chan)" => Self::NilChan,
            "select (no cases)" => Self::SelectNoCases,
            "semacquire" => Self::Semacquire,
            "IO wait" => Self::IoWait,
            "sleep" => Self::Sleep,
            n if n.starts_with("sync.Mutex") => Self::SyncMutex,
            n if n.starts_with("sync.RWMutex") => Self::SyncRwMutex,
            n if n.starts_with("sync.WaitGroup") => Self::SyncWaitGroup,
            n if n.starts_with("sync.Cond") => Self::SyncCond,
            n if n.starts_with("GC")
                || n.starts_with("garbage")
                || n.contains("finalizer")
                || n.starts_with("force gc")
                || n.contains("trace")
                || n.starts_with("debug call")
                || n.contains("scavenge")
                || n.starts_with("preempted")
                || n.contains("sweep") =>
            {
                Self::Runtime
            }
            _ => Self::Other,
        }
    }

    /// The label used in metrics and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChanSend => "chan_send",
            Self::ChanReceive => "chan_receive",
            Self::Select => "select",
            Self::NilChan => "nil_chan",
            Self::SelectNoCases => "select_no_cases",
            Self::SyncMutex => "sync_mutex",
            Self::SyncRwMutex => "sync_rwmutex",
            Self::SyncWaitGroup => "sync_waitgroup",
            Self::SyncCond => "sync_cond",
            Self::Semacquire => "semacquire",
            Self::IoWait => "io_wait",
            Self::Sleep => "sleep",
            Self::Runtime => "runtime",
            Self::Other => "other",
        }
    }

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
                | Self::SyncRwMutex
                | Self::SyncWaitGroup
                | Self::SyncCond
                | Self::Semacquire
        )
    }

    /// Waits nothing can end: a nil channel, an empty select.
    pub fn never_wakes(self) -> bool {
        matches!(self, Self::NilChan | Self::SelectNoCases)
    }
}
