//! What the arm64 VM boots, each made or fetched only when missing:
//! Debian's qemu-system-aarch64, its arm64 cloud kernel and busybox, the
//! arm64 image's agent (static, cross-built for aarch64 musl with the arm64
//! kernel object), and the arm64 Go fixtures. Everything lands under `target/vm/`.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context;

use crate::{
    build::{self, Arch},
    image, tools,
    util::{done, output, root, run_quiet, step},
};

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

/// The agent the arm64 image ships: static, optimised, with the arm64
/// kernel object (the image's root filesystem is laid out too).
pub fn agent() -> anyhow::Result<PathBuf> {
    image::build_rootfs(Arch::Arm64)
}

/// The arm64 Go fixtures the VM runs, `spawner-<line>` and
/// `vmleak-<line>` for each Go line of `lines`: (name in the VM, binary).
pub fn fixtures(lines: &[String]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = build::fixtures_dir();
    fs::create_dir_all(&out)?;
    let mut built = Vec::new();
    for line in lines {
        let release = tools::GO_RELEASES
            .into_iter()
            .find(|r| r.line == line)
            .with_context(|| format!("Go {line} is not in the matrix"))?;
        let go = release.ensure()?;
        let t = step(&format!("building the arm64 VM fixtures with Go {line}"));
        for name in ["spawner", "vmleak"] {
            let binary = out.join(format!("{name}-arm64-{line}"));
            build::go_build_for(&go, name, &binary, &[], Some("arm64"))?;
            built.push((format!("{name}-{line}"), binary));
        }
        done(t);
    }
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
