//! What the arm64 VM boots, each made or fetched only when missing:
//! Debian's qemu-system-aarch64, its arm64 cloud kernel and busybox, the
//! agent cross-built for aarch64 musl with the arm64 kernel object, and
//! the arm64 Go fixtures. Everything lands under `target/vm/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::{
    build::{self, BpfArch},
    tools,
    util::{done, output, root, run, run_quiet, step},
};

/// The agent's Rust target in the VM: static, so the initramfs needs no
/// C library.
pub const AGENT_TARGET: &str = "aarch64-unknown-linux-musl";

pub fn dir() -> PathBuf {
    root().join("target/vm")
}

/// Installs Debian's `qemu-system-arm` (which has qemu-system-aarch64).
pub fn ensure_qemu() -> anyhow::Result<()> {
    if output(Command::new("qemu-system-aarch64").arg("--version")).is_none() {
        let t = step("installing qemu-system-arm (one-time)");
        tools::apt_install(&["qemu-system-arm"])?;
        done(t);
    }
    Ok(())
}

/// Lets apt see Debian's arm64 packages (their files are only unpacked
/// here, never installed).
fn ensure_arm64_apt() -> anyhow::Result<()> {
    let foreign =
        output(Command::new("dpkg").arg("--print-foreign-architectures")).unwrap_or_default();
    if !foreign.lines().any(|l| l.trim() == "arm64") {
        let t = step("adding Debian's arm64 package lists (one-time)");
        run_quiet(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
        run_quiet(Command::new("apt-get").args(["update", "-q"]))?;
        done(t);
    }
    Ok(())
}

/// Downloads Debian package `name` (`pkg:arm64`) and unpacks it into a
/// fresh directory under target/vm; returns that directory.
fn unpack(name: &str, into: &str) -> anyhow::Result<PathBuf> {
    let debs = dir().join("debs");
    let out = dir().join(into);
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&debs)?;
    // The previous download of another version must not be picked up.
    for e in fs::read_dir(&debs)? {
        fs::remove_file(e?.path())?;
    }
    run_quiet(
        Command::new("apt-get")
            .args(["download", name])
            .current_dir(&debs),
    )
    .with_context(|| format!("apt-get download {name}"))?;
    let deb = fs::read_dir(&debs)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("apt-get download {name} left no .deb"))?;
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&out))?;
    Ok(out)
}

/// The versioned image package the `linux-image-cloud-arm64` metapackage
/// depends on, from `apt-cache depends` output.
pub fn kernel_package(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with(":arm64"))
        .map(str::to_string)
}

/// Debian's arm64 cloud kernel (virtio, PL011 console, BTF, uprobes);
/// returns its Image and the package it came from.
pub fn kernel() -> anyhow::Result<(PathBuf, String)> {
    let image = dir().join("vmlinuz");
    let stamp = dir().join("vmlinuz.package");
    if image.exists() {
        if let Ok(package) = fs::read_to_string(&stamp) {
            return Ok((image, package.trim().to_string()));
        }
    }
    ensure_arm64_apt()?;
    let t = step("fetching Debian's arm64 cloud kernel (one-time)");
    let depends =
        output(Command::new("apt-cache").args(["depends", "linux-image-cloud-arm64:arm64"]))
            .context("apt-cache depends linux-image-cloud-arm64:arm64")?;
    let package =
        kernel_package(&depends).with_context(|| format!("no versioned kernel in:\n{depends}"))?;
    let tree = unpack(&package, "kernel")?;
    let boot = tree.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz in {}", boot.display()))?;
    fs::copy(&vmlinuz, &image)?;
    fs::write(&stamp, &package)?;
    done(t);
    Ok((image, package))
}

/// Debian's static arm64 busybox: the VM's shell, mount, wget and poweroff.
pub fn busybox() -> anyhow::Result<PathBuf> {
    let exe = dir().join("busybox");
    if exe.exists() {
        return Ok(exe);
    }
    ensure_arm64_apt()?;
    let t = step("fetching Debian's arm64 busybox-static (one-time)");
    let tree = unpack("busybox-static:arm64", "busybox-pkg")?;
    fs::copy(tree.join("bin/busybox"), &exe)?;
    done(t);
    Ok(exe)
}

/// The Rust target and a C cross compiler for ring's C and assembly; the
/// link itself is rust-lld's, with the musl start files and libc that the
/// Rust target ships (self-contained), so no arm64 C library is needed.
fn ensure_cross() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.trim() == AGENT_TARGET));
    if !installed {
        let t = step(&format!("adding the {AGENT_TARGET} target (one-time)"));
        run_quiet(Command::new("rustup").args(["target", "add", AGENT_TARGET]))?;
        done(t);
    }
    if output(Command::new("aarch64-linux-gnu-gcc").arg("--version")).is_none() {
        let t = step("installing gcc-aarch64-linux-gnu (one-time)");
        tools::apt_install(&["gcc-aarch64-linux-gnu"])?;
        done(t);
    }
    Ok(())
}

/// Cross-builds the agent (static, unoptimised: a cold optimised
/// cross-build costs CI minutes the one short run in the VM never gives
/// back) with the arm64 kernel object.
pub fn agent() -> anyhow::Result<PathBuf> {
    ensure_cross()?;
    let object = build::build_ebpf_for(BpfArch::Aarch64)?;
    let t = step(&format!(
        "building the agent for arm64 (debug, {AGENT_TARGET})"
    ));
    run(build::host_cargo()
        .args(["build", "--quiet", "--package", "gostray"])
        .args(["--target", AGENT_TARGET])
        .env("GOSTRAY_EBPF_OBJECT", &object)
        .env("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc")
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER", "rust-lld")
        // Debug info would only make the initramfs larger.
        .env("CARGO_PROFILE_DEV_DEBUG", "0"))?;
    done(t);
    let exe = root().join(format!("target/{AGENT_TARGET}/debug/gostray"));
    check_static_arm64(&exe)?;
    Ok(exe)
}

fn check_static_arm64(binary: &Path) -> anyhow::Result<()> {
    let headers = output(Command::new("readelf").args(["-h", "-l"]).arg(binary))
        .with_context(|| format!("readelf {}", binary.display()))?;
    if !headers.contains("AArch64") || headers.contains("INTERP") {
        bail!(
            "{} is not a static arm64 executable:\n{headers}",
            binary.display()
        );
    }
    Ok(())
}

/// The arm64 Go fixtures the VM runs, built with the newest Go.
pub fn fixtures() -> anyhow::Result<[PathBuf; 2]> {
    let release = tools::GO_NEWEST;
    let go = release.ensure()?;
    let out = build::fixtures_dir();
    fs::create_dir_all(&out)?;
    let t = step(&format!(
        "building the arm64 VM fixtures with Go {}",
        release.line
    ));
    let cross = |name: &str| -> anyhow::Result<PathBuf> {
        let binary = out.join(format!("{name}-arm64-{}", release.line));
        build::go_build_for(&go, name, &binary, &[], Some("arm64"))?;
        Ok(binary)
    };
    let built = [cross("spawner")?, cross("vmleak")?];
    done(t);
    Ok(built)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_versioned_kernel_package() {
        let out =
            "linux-image-cloud-arm64:arm64\n  Depends: linux-image-6.1.0-57-cloud-arm64:arm64\n";
        assert_eq!(
            super::kernel_package(out).as_deref(),
            Some("linux-image-6.1.0-57-cloud-arm64:arm64")
        );
        assert_eq!(super::kernel_package("nothing"), None);
    }
}
