//! `cargo xtask image`: the container image, built offline.
//!
//! For each architecture (amd64, arm64) the agent is linked statically for
//! musl with that architecture's eBPF object embedded, stripped, and put
//! alone in a root filesystem under `target/image/<arch>/rootfs`. Debian's
//! `buildah` makes an OCI image of each `FROM scratch`, so no base image is
//! pulled and no registry is needed, and a manifest list names both, so
//! each node pulls its own. `deploy/Dockerfile` runs `cargo xtask image
//! --rootfs-only --arch $TARGETARCH` in its build stage and copies the same
//! root filesystem into `scratch`: both paths build the binary with the
//! same command, target and flags.

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context;

use crate::{
    build::{self, Arch},
    tools,
    util::{done, output, root, run_quiet, step},
};

/// The manifest list `cargo xtask image` commits: one image per
/// architecture, so a node pulls its own.
pub fn tag() -> String {
    format!("localhost/gostray:{}", env!("CARGO_PKG_VERSION"))
}

/// The image of one architecture, which the manifest list names.
pub fn arch_tag(arch: Arch) -> String {
    format!("{}-{}", tag(), arch.name())
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

/// The root filesystem of `arch`'s image.
pub fn rootfs(arch: Arch) -> PathBuf {
    root().join("target/image").join(arch.name()).join("rootfs")
}

/// `cargo xtask image`: builds the root filesystem of each of `arches`
/// and, unless `rootfs_only`, an image of each and the manifest list
/// naming them; prints their sizes.
pub fn image(arches: &[Arch], rootfs_only: bool) -> anyhow::Result<()> {
    for &arch in arches {
        let agent = build_rootfs(arch)?;
        println!(
            "static agent ({}): {} ({:.1} MB)",
            arch.name(),
            agent.display(),
            mb(fs::metadata(&agent)?.len())
        );
    }
    if rootfs_only {
        return Ok(());
    }
    ensure_engine()?;
    let revision = output(
        Command::new("git")
            .arg("-C")
            .arg(root())
            .args(["rev-parse", "HEAD"]),
    )
    .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
    for &arch in arches {
        let size = build_image(arch, &revision)?;
        println!("image {}: {:.1} MB", arch_tag(arch), mb(size));
    }
    build_manifest_list(arches)?;
    println!(
        "manifest list {}: {}",
        tag(),
        arches
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn mb(bytes: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)] // sizes far below 2^52
    let b = bytes as f64;
    b / 1e6
}

/// Builds the static agent for `arch` and lays out its root filesystem;
/// returns the agent's path in it.
pub fn build_rootfs(arch: Arch) -> anyhow::Result<PathBuf> {
    let built = build::build_static_agent(arch)?;
    let dir = rootfs(arch);
    let _ = fs::remove_dir_all(&dir);
    let agent = dir.join(AGENT_PATH);
    fs::create_dir_all(agent.parent().expect("has a parent"))?;
    fs::copy(&built, &agent)
        .with_context(|| format!("copying {} into the root filesystem", built.display()))?;
    Ok(agent)
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

/// The ID of the image tagged `tag`, if there is one.
fn image_id(tag: &str) -> Option<String> {
    output(Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", tag]))
        .map(|s| s.trim().to_string())
}

/// `buildah from scratch`, `arch`'s root filesystem, the configuration the
/// Dockerfile's runtime stage sets; returns the image's size in bytes.
fn build_image(arch: Arch, revision: &str) -> anyhow::Result<u64> {
    let tag = arch_tag(arch);
    let t = step(&format!("building the image {tag} (buildah, from scratch)"));
    let previous = image_id(&tag);
    let container = output(Command::new("buildah").args(["from", "scratch"]))
        .context("buildah from scratch failed")?
        .trim()
        .to_string();
    let result = (|| {
        run_quiet(
            Command::new("buildah")
                .args(["copy", &container])
                .arg(format!("{}/", rootfs(arch).display()))
                .arg("/"),
        )?;
        let mut config = Command::new("buildah");
        config.args(["config", "--entrypoint", &format!("[\"/{AGENT_PATH}\"]")]);
        config.args(["--cmd", "run", "--user", "0", "--port", "9981"]);
        config.args(["--os", "linux", "--arch", arch.name()]);
        for (key, value) in labels(revision) {
            config.arg("--label").arg(format!("{key}={value}"));
        }
        run_quiet(config.arg(&container))?;
        run_quiet(Command::new("buildah").args(["commit", "--quiet", "--rm", &container, &tag]))
    })();
    if result.is_err() {
        let _ = run_quiet(Command::new("buildah").args(["rm", &container]));
    }
    result?;
    // The image this build replaced under the same tag is left untagged:
    // remove it, so repeated test runs do not pile up images (refused, and
    // ignored, if a container still uses it).
    if let Some(old) = previous.filter(|id| Some(id) != image_id(&tag).as_ref()) {
        let _ = run_quiet(Command::new("podman").args(["rmi", &old]));
    }
    done(t);
    let size =
        output(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &tag]))
            .context("podman image inspect")?;
    size.trim()
        .parse()
        .with_context(|| format!("image size {size:?}"))
}

/// The manifest list [`tag`], made anew, naming each architecture's image:
/// what `podman manifest push --all` sends to a registry, so every node
/// pulls the image of its own architecture.
fn build_manifest_list(arches: &[Arch]) -> anyhow::Result<()> {
    let t = step(&format!("building the manifest list {}", tag()));
    // A list from an earlier build (or an image under its name) goes first.
    if output(Command::new("buildah").args(["manifest", "inspect", &tag()])).is_some() {
        run_quiet(Command::new("buildah").args(["manifest", "rm", &tag()]))?;
    } else if image_id(&tag()).is_some() {
        run_quiet(Command::new("podman").args(["rmi", &tag()]))?;
    }
    run_quiet(Command::new("buildah").args(["manifest", "create", &tag()]))?;
    for &arch in arches {
        run_quiet(
            Command::new("buildah")
                .args(["manifest", "add", "--os", "linux", "--arch", arch.name()])
                .arg(tag())
                .arg(format!("containers-storage:{}", arch_tag(arch))),
        )?;
    }
    done(t);
    Ok(())
}

/// The platforms (`os/arch`) the manifest list [`tag`] names.
pub fn manifest_platforms() -> anyhow::Result<Vec<String>> {
    let json = output(Command::new("buildah").args(["manifest", "inspect", &tag()]))
        .with_context(|| format!("buildah manifest inspect {}", tag()))?;
    let list: serde_json::Value = serde_json::from_str(&json)?;
    let manifests = list["manifests"]
        .as_array()
        .context("the manifest list has no manifests")?;
    Ok(manifests
        .iter()
        .map(|m| {
            let p = &m["platform"];
            format!(
                "{}/{}",
                p["os"].as_str().unwrap_or("?"),
                p["architecture"].as_str().unwrap_or("?")
            )
        })
        .collect())
}
