//! Process lifecycle for discovery: BTF tracepoints (`tp_btf`), which need
//! kernel BTF but not tracefs, so they work where classic tracepoints cannot.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use gostray_common::{ProcEvent, ProcEventKind};

use crate::maps::{PROC_EVENTS, PROC_LOST, TARGETS};

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`:
/// every successful execve on the host. After `de_thread` the current task
/// is the thread group leader, so its tgid is the process. No filter here:
/// which processes to watch is decided in user space, once per executable.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: BtfTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    notify(ProcEventKind::Exec, tgid);
    0
}

/// `sched_process_exit(struct task_struct *p, …)`: fires for every exiting
/// thread; only the main thread of a watched process is reported, so a busy
/// host costs one hash lookup per thread exit and nothing more.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn process_exit(_ctx: BtfTracePointContext) -> i32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: a read-only lookup whose result is only tested for presence.
    if tgid == tid && unsafe { TARGETS.get(&tgid) }.is_some() {
        notify(ProcEventKind::Exit, tgid);
    }
    0
}

/// Submits with a wakeup: the agent sleeps on this buffer, and a new
/// process must be attached before it gets far. Execs are rare enough that
/// the wakeup is cheap, unlike goroutine events (see `EVENTS`).
#[inline(always)]
fn notify(kind: ProcEventKind, pid: u32) {
    let event = ProcEvent {
        kind: kind as u32,
        pid,
    };
    if PROC_EVENTS.output::<ProcEvent>(&event, 0).is_err() {
        if let Some(slot) = PROC_LOST.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot is only touched by this CPU.
            unsafe { *slot += 1 };
        }
    }
}
