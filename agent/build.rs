//! Embeds the kernel object built by `cargo xtask build-ebpf`.
//!
//! The eBPF crate needs the nightly toolchain and bpf-linker, so it is built
//! by xtask, not here: a plain `cargo build`/`cargo test` of the agent works
//! without them and yields a binary that says how to get the probes.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=GOSTRAY_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("GOSTRAY_EBPF_OBJECT").map_or_else(
        || manifest.join("../target/bpfel-unknown-none/release/gostray"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("gostray.bpf.o");
    let bytes = fs::read(&object).unwrap_or_default();
    fs::write(&out, bytes).expect("write OUT_DIR/gostray.bpf.o");
}
