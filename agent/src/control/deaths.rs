//! Resolving the kernel's death records: naming the process (its series
//! labels, its binary's symbols) even when its exit was handled first, as
//! it usually is (the exit notice wakes the control loop at once; the death
//! waits in the ring buffer for the next drain).

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use gostray_common::{death_source, DeathEvent};

use crate::{
    control::{
        tables::monotonic_ns,
        target::{ProcSymbols, Target},
        Agent,
    },
    deaths::{classify, Death, Reason, Source},
    lock::lock,
    metrics::series::SeriesKey,
    proc::procfs::bounded_to,
    tracker::{is_mechanism, Site, Symbols},
};

/// What is kept of a process after it is forgotten, for a death still in
/// the ring buffer.
pub(crate) struct Departed {
    pid: u32,
    key: SeriesKey,
    target: Arc<Target>,
    bias: u64,
    at: Instant,
}

/// Departed processes remembered, and for how long: a death is drained
/// within a few `--drain-interval`s of the exit.
const MAX_DEPARTED: usize = 256;
const DEPARTED_FOR: Duration = Duration::from_secs(30);
/// How long a death for a process not (yet) known is held before it is
/// counted as unattributed.
const UNKNOWN_FOR: Duration = Duration::from_secs(5);
/// Longest message kept (the kernel sends at most 256 bytes).
const MAX_MESSAGE: usize = 512;

impl Agent {
    /// Remembers what naming a death of `pid` needs; called as it is forgotten.
    pub(crate) fn remember_departed(&mut self, pid: u32, key: Option<SeriesKey>) {
        let (Some(w), Some(key)) = (self.watched.get(&pid), key) else {
            return;
        };
        let now = Instant::now();
        self.departed
            .retain(|d| d.pid != pid && now.duration_since(d.at) < DEPARTED_FOR);
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.pop_front();
        }
        self.departed.push_back(Departed {
            pid,
            key,
            target: Arc::clone(&w.target),
            bias: w.bias,
            at: now,
        });
    }

    /// Names and records the deaths the drain thread received.
    pub(crate) fn resolve_deaths(&mut self) {
        let fresh = lock(&self.shared.tracker).take_deaths();
        let now = Instant::now();
        self.deaths_waiting
            .extend(fresh.into_iter().map(|e| (e, now)));
        if self.deaths_waiting.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.deaths_waiting);
        for (event, since) in waiting {
            match self.identify(event.pid) {
                Some((key, target, bias)) => {
                    let death = describe(&event, &target, bias);
                    tracing::warn!(
                        pid = event.pid,
                        exe = %key.exe,
                        reason = death.reason.as_str(),
                        message = %death.message,
                        function = %death.top.function,
                        "process died"
                    );
                    lock(&self.shared.deaths).record(&key, death);
                }
                None if now.duration_since(since) < UNKNOWN_FOR => {
                    self.deaths_waiting.push((event, since));
                }
                None => lock(&self.shared.deaths).unattributed += 1,
            }
        }
    }

    fn identify(&self, pid: u32) -> Option<(SeriesKey, Arc<Target>, u64)> {
        if let Some(w) = self.watched.get(&pid) {
            let key = lock(&self.shared.series).key(pid).cloned()?;
            return Some((key, Arc::clone(&w.target), w.bias));
        }
        self.departed
            .iter()
            .rev()
            .find(|d| d.pid == pid)
            .map(|d| (d.key.clone(), Arc::clone(&d.target), d.bias))
    }
}

/// The report's record of one death.
fn describe(event: &DeathEvent, target: &Target, bias: u64) -> Death {
    let symbols = ProcSymbols {
        bin: Arc::clone(&target.bin),
        bias,
    };
    let source = if event.source == death_source::PANIC {
        Source::Panic
    } else {
        Source::Throw
    };
    let message = message(event);
    let reason = classify(source, &message);
    let stack = stack(event, &symbols);
    Death {
        time: wall_time(event.ktime_ns),
        pid: event.pid,
        reason,
        message,
        kind: match source {
            Source::Panic => "panic",
            Source::Throw => "fatal_error",
        }
        .into(),
        goroutine: event.goid,
        go_version: target.bin.version.to_string(),
        top: top_frame(&stack, reason),
        stack,
    }
}

/// The message the kernel read, or for a panic whose value is not a
/// string, the value's kind.
fn message(event: &DeathEvent) -> String {
    let n = (event.msg_len as usize).min(event.msg.len());
    let mut text = bounded_to(&String::from_utf8_lossy(&event.msg[..n]), MAX_MESSAGE);
    if u64::from(event.msg_len) < event.full_len {
        text.push('…');
    }
    if text.is_empty() && event.source == death_source::PANIC && event.value_kind != 0 {
        text = format!("panic value of kind {}", kind_name(event.value_kind));
    }
    text
}

/// `abi.Kind` names (reflect's), Go 1.19–1.27.
fn kind_name(kind: u32) -> &'static str {
    const NAMES: [&str; 27] = [
        "invalid",
        "bool",
        "int",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "uintptr",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "array",
        "chan",
        "func",
        "interface",
        "map",
        "ptr",
        "slice",
        "string",
        "struct",
        "unsafe.Pointer",
    ];
    NAMES.get(kind as usize).copied().unwrap_or("unknown")
}

/// Every frame of the stack, inlined calls expanded, innermost first.
fn stack(event: &DeathEvent, symbols: &dyn Symbols) -> Vec<Site> {
    let n = (event.npcs as usize).min(event.pcs.len());
    event.pcs[..n]
        .iter()
        .filter(|&&pc| pc != 0)
        .flat_map(|&pc| symbols.frames(pc.saturating_sub(1)))
        .collect()
}

/// Where the program did it: the first frame outside the runtime's and
/// `sync`'s machinery, else (a deadlock found by the scheduler) the
/// innermost frame.
fn top_frame(stack: &[Site], _reason: Reason) -> Site {
    stack
        .iter()
        .find(|s| !is_mechanism(&s.function))
        .or(stack.first())
        .cloned()
        .unwrap_or_default()
}

/// The wall-clock second of a `bpf_ktime_get_ns` time.
fn wall_time(ktime_ns: u64) -> u64 {
    let ago = Duration::from_nanos(monotonic_ns().saturating_sub(ktime_ns));
    SystemTime::now()
        .checked_sub(ago)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_cleaned_and_named_when_not_strings() {
        let mut e = DeathEvent {
            kind: 7,
            pid: 1,
            goid: 1,
            source: death_source::THROW,
            msg_len: 0,
            full_len: 0,
            value_type: 0,
            value_kind: 0,
            npcs: 0,
            pcs: [0; gostray_common::DEATH_PCS],
            ktime_ns: 0,
            msg: [0; gostray_common::DEATH_MSG],
        };
        let text = b"concurrent map writes\n";
        e.msg[..text.len()].copy_from_slice(text);
        e.msg_len = text.len() as u32;
        e.full_len = text.len() as u64;
        assert_eq!(message(&e), "concurrent map writes");
        e.full_len = 1000;
        assert_eq!(message(&e), "concurrent map writes…");
        e.source = death_source::PANIC;
        e.msg_len = 0;
        e.full_len = 0;
        e.value_kind = 2;
        assert_eq!(message(&e), "panic value of kind int");
    }

    #[test]
    fn the_top_frame_is_the_programs_own() {
        let site = |f: &str| Site {
            function: f.into(),
            ..Site::default()
        };
        let stack = [
            site("runtime.fatal"),
            site("internal/runtime/maps.fatal"),
            site("runtime.mapassign_fast64"),
            site("main.mapWriter"),
            site("runtime.goexit"),
        ];
        assert_eq!(top_frame(&stack, Reason::Other).function, "main.mapWriter");
        assert_eq!(
            top_frame(&stack[..3], Reason::AllAsleep).function,
            "runtime.fatal"
        );
    }
}
