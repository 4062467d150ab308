//! gostray's kernel programs: uprobes on the Go runtime that report goroutine
//! lifecycle events through a ring buffer. See `probes/` for one file per
//! hooked runtime function.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod goabi;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never run.
    loop {}
}

/// `bpf_probe_read_user` is GPL-only; the object is dual-licensed to allow it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
