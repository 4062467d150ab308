//! `cargo xtask image`: the container image, built offline.
//!
//! The agent is linked statically for musl with its eBPF object embedded,
//! stripped, and put alone in a root filesystem under `target/image/rootfs`.
//! Debian's `buildah` makes an OCI image of it `FROM scratch`, so no base
//! image is pulled and no registry is needed. `deploy/Dockerfile` runs
//! `cargo xtask image --rootfs-only` in its build stage and copies the same
//! root filesystem into `scratch`: both paths build the binary with the
//! same command, target and flags.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::{
    build, tools,
    util::{done, output, root, run, run_quiet, step},
};

/// musl: a static binary with no C library to ship, and no NSS lookups
/// that a static glibc would try to `dlopen` at run time.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// The image name `cargo xtask image` commits, and the run check uses.
pub fn tag() -> String {
    format!("localhost/gostray:{}", env!("CARGO_PKG_VERSION"))
}

/// Where the agent sits in the image (and in the root filesystem).
pub const AGENT_PATH: &str = "usr/local/bin/gostray";

/// The OCI annotations set on the image; `deploy/Dockerfile` carries the
/// same (checked by the deploy tests), the revision as a build argument.
pub fn labels(revision: &str) -> Vec<(&'static str, String)> {
    vec![
        ("org.opencontainers.image.title", "gostray".into()),
        (
            "org.opencontainers.image.description",
            "Finds stray goroutines in unmodified Go programs with eBPF uprobes".into(),
        ),
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION").into(),
        ),
        ("org.opencontainers.image.revision", revision.into()),
        // The agent's licence, then the kernel object's (GPL-compatible,
        // as the kernel requires of programs using GPL-only helpers).
        (
            "org.opencontainers.image.licenses",
            "(Apache-2.0 OR MIT) AND (GPL-2.0-only OR MIT)".into(),
        ),
        ("org.opencontainers.image.base.name", "scratch".into()),
    ]
}

/// The root filesystem of the image.
pub fn rootfs() -> PathBuf {
    root().join("target/image/rootfs")
}

/// `cargo xtask image`: builds the root filesystem and, unless
/// `rootfs_only`, the image; prints its size.
pub fn image(rootfs_only: bool) -> anyhow::Result<()> {
    let agent = build_rootfs()?;
    println!(
        "static agent: {} ({:.1} MB)",
        agent.display(),
        mb(fs::metadata(&agent)?.len())
    );
    if rootfs_only {
        return Ok(());
    }
    let size = build_image()?;
    println!("image {}: {:.1} MB", tag(), mb(size));
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // sizes far below 2^52
    let b = bytes as f64;
    b / 1e6
}

/// Builds the static agent with its eBPF object and lays out the root
/// filesystem; returns the agent's path in it.
pub fn build_rootfs() -> anyhow::Result<PathBuf> {
    ensure_musl()?;
    build::build_ebpf()?;
    let t = step(&format!("building the static agent (release, {TARGET})"));
    // Paths of this checkout and of the cargo home are remapped, so a build
    // here and one in the Dockerfile's stage embed the same strings.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let rustflags = format!(
        "--remap-path-prefix={}=/gostray --remap-path-prefix={}=/cargo",
        root().display(),
        cargo_home.display()
    );
    run(build::host_cargo()
        .args(["build", "--quiet", "--release", "--package", "gostray"])
        .args(["--target", TARGET])
        .env("RUSTFLAGS", rustflags))?;
    done(t);
    let built = root().join(format!("target/{TARGET}/release/gostray"));
    check_static(&built)?;
    let dir = rootfs();
    let _ = fs::remove_dir_all(&dir);
    let agent = dir.join(AGENT_PATH);
    fs::create_dir_all(agent.parent().expect("has a parent"))?;
    // Symbols stay (panics and `perf` name functions), debug info goes.
    run(Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&built)
        .arg(&agent))?;
    Ok(agent)
}

/// The musl target for the stable toolchain and `musl-gcc` (ring's C and
/// assembly are compiled for musl).
fn ensure_musl() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.trim() == TARGET));
    if !installed {
        let t = step(&format!("adding the {TARGET} target (one-time)"));
        run_quiet(Command::new("rustup").args(["target", "add", TARGET]))?;
        done(t);
    }
    if output(Command::new("musl-gcc").arg("--version")).is_none() {
        let t = step("installing musl-tools (one-time)");
        tools::apt_install(&["musl-tools"])?;
        done(t);
    }
    Ok(())
}

/// Fails unless `binary` is static: no program interpreter, no needed
/// libraries (what `ldd` reports as "not a dynamic executable").
fn check_static(binary: &Path) -> anyhow::Result<()> {
    let headers = output(
        Command::new("readelf")
            .args(["--program-headers", "--dynamic"])
            .arg(binary),
    )
    .with_context(|| format!("readelf {}", binary.display()))?;
    if headers.contains("INTERP") || headers.contains("(NEEDED)") {
        bail!("{} is not static:\n{headers}", binary.display());
    }
    Ok(())
}

/// Installs `buildah`, `podman` and `runc` (Debian) if missing.
pub fn ensure_engine() -> anyhow::Result<()> {
    let missing = ["buildah", "podman", "runc"]
        .iter()
        .any(|p| output(Command::new(p).arg("--version")).is_none());
    if missing {
        let t = step("installing buildah, podman and runc (one-time)");
        tools::apt_install(&["buildah", "podman", "runc"])?;
        done(t);
    }
    Ok(())
}

/// The ID of the image tagged [`tag`], if there is one.
fn image_id() -> Option<String> {
    output(Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", &tag()]))
        .map(|s| s.trim().to_string())
}

/// `buildah from scratch`, the root filesystem, the configuration the
/// Dockerfile's runtime stage sets; returns the image's size in bytes.
fn build_image() -> anyhow::Result<u64> {
    ensure_engine()?;
    let t = step(&format!(
        "building the image {} (buildah, from scratch)",
        tag()
    ));
    let revision = output(
        Command::new("git")
            .arg("-C")
            .arg(root())
            .args(["rev-parse", "HEAD"]),
    )
    .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
    let previous = image_id();
    let container = output(Command::new("buildah").args(["from", "scratch"]))
        .context("buildah from scratch failed")?
        .trim()
        .to_string();
    let result = (|| {
        run_quiet(
            Command::new("buildah")
                .args(["copy", &container])
                .arg(format!("{}/", rootfs().display()))
                .arg("/"),
        )?;
        let mut config = Command::new("buildah");
        config.args(["config", "--entrypoint", &format!("[\"/{AGENT_PATH}\"]")]);
        config.args(["--cmd", "run", "--user", "0", "--port", "9981"]);
        config.args(["--os", "linux", "--arch", "amd64"]);
        for (key, value) in labels(&revision) {
            config.arg("--label").arg(format!("{key}={value}"));
        }
        run_quiet(config.arg(&container))?;
        run_quiet(Command::new("buildah").args(["commit", "--quiet", "--rm", &container, &tag()]))
    })();
    if result.is_err() {
        let _ = run_quiet(Command::new("buildah").args(["rm", &container]));
    }
    result?;
    // The image this build replaced under the same tag is left untagged:
    // remove it, so repeated test runs do not pile up images (refused, and
    // ignored, if a container still uses it).
    if let Some(old) = previous.filter(|id| Some(id) != image_id().as_ref()) {
        let _ = run_quiet(Command::new("podman").args(["rmi", &old]));
    }
    done(t);
    let size =
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &tag()]))
            .context("podman image inspect")?;
    size.trim()
        .parse()
        .with_context(|| format!("image size {size:?}"))
}
