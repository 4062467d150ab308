//! Debian's packages of the servers, per suite: fetched once with `apt-get
//! download` and unpacked with `dpkg-deb -x` under
//! `~/.cache/gostray/debian/<suite>/`.
//!
//! The system's own release comes through the system's apt; any other
//! suite through an apt configuration of its own in the cache folder: a
//! sources.list naming the mirror the system already uses, its own lists
//! and archives. The system's sources never change.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context;

use crate::util::{done, output, run_quiet, step, tools_dir};

/// The Debian releases whose builds run: Go 1.19 in bookworm, Go 1.24 in trixie.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, clap::ValueEnum)]
pub enum Suite {
    Bookworm,
    Trixie,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }

    pub fn release(self) -> &'static str {
        match self {
            Suite::Bookworm => "Debian 12",
            Suite::Trixie => "Debian 13",
        }
    }
}

/// A suite's packages, unpacked into one tree.
pub struct Unpacked {
    pub root: PathBuf,
    /// (package, version) of each .deb in it.
    pub packages: Vec<(String, String)>,
}

/// The keyring apt ships for Debian's archives, which also signs the next
/// release before it is out.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Downloads what is missing of `packages` for `suite` and unpacks every
/// one not unpacked yet.
pub fn fetch(suite: Suite, packages: &[&str]) -> anyhow::Result<Unpacked> {
    let dir = tools_dir().join("debian").join(suite.name());
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| find_deb(&debs, p).is_none())
        .collect();
    if !missing.is_empty() {
        let t = step(&format!(
            "downloading {} from Debian {} (once, into {})",
            missing.join(" "),
            suite.name(),
            debs.display()
        ));
        download(suite, &dir, &debs, &missing)?;
        done(t);
    }
    let root = dir.join("root");
    let marks = dir.join("unpacked");
    fs::create_dir_all(&marks)?;
    let mut unpacked = Vec::new();
    for package in packages {
        let deb = find_deb(&debs, package)
            .with_context(|| format!("apt-get download gave no {package} .deb"))?;
        let name = deb.file_name().context("a .deb has a name")?;
        let mark = marks.join(name);
        if !mark.exists() {
            run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            fs::write(&mark, "")?;
        }
        let version = name
            .to_string_lossy()
            .split('_')
            .nth(1)
            .unwrap_or("?")
            .replace("%3a", ":");
        unpacked.push(((*package).to_string(), version));
    }
    Ok(Unpacked {
        root,
        packages: unpacked,
    })
}

/// `package_version_arch.deb` in `debs`.
fn find_deb(debs: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(debs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(&prefix) && Path::new(n).extension().is_some_and(|e| e == "deb")
            })
        })
}

/// `apt-get download` into `debs`; on failure (no lists yet, or stale
/// ones naming versions the mirror dropped) `apt-get update` and again.
fn download(suite: Suite, dir: &Path, debs: &Path, packages: &[&str]) -> anyhow::Result<()> {
    let options = apt_options(suite, dir)?;
    let apt = || {
        let mut cmd = Command::new("apt-get");
        // Downloading as root into root's cache: apt's `_apt` sandbox
        // user could not write there.
        cmd.args(&options)
            .args(["-q", "-o", "APT::Sandbox::User=root"]);
        cmd
    };
    let fetch = || {
        let mut cmd = apt();
        cmd.current_dir(debs).arg("download").args(packages);
        cmd
    };
    if output(&mut fetch()).is_some() {
        return Ok(());
    }
    eprintln!("    apt-get update for {} first", suite.name());
    run_quiet(apt().arg("update"))?;
    run_quiet(&mut fetch())
}

/// The `-o` options that point apt at `suite`: none for the system's own
/// release, else a configuration of its own under `dir/apt`.
fn apt_options(suite: Suite, dir: &Path) -> anyhow::Result<Vec<String>> {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let system = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    if system == suite.name() {
        return Ok(Vec::new());
    }
    let mirror = system_mirror(&system)?;
    let apt = dir.join("apt");
    for sub in ["state/lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub))?;
    }
    let list = apt.join("sources.list");
    let keyring = mirror.keyring.as_deref().unwrap_or(DEBIAN_KEYRING);
    fs::write(
        &list,
        format!(
            "deb [signed-by={keyring}] {} {} main\n",
            mirror.url,
            suite.name()
        ),
    )?;
    let at = |p: &str| apt.join(p).display().to_string();
    Ok([
        format!("Dir::Etc::SourceList={}", list.display()),
        "Dir::Etc::SourceParts=/dev/null".into(),
        // The system's pins are about its own release.
        "Dir::Etc::Preferences=/dev/null".into(),
        "Dir::Etc::PreferencesParts=/dev/null".into(),
        format!("Dir::State={}", at("state")),
        format!("Dir::Cache={}", at("cache")),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect())
}

/// A Debian archive as the system's apt names it.
#[derive(Debug, PartialEq)]
struct Mirror {
    url: String,
    keyring: Option<String>,
}

/// The archive serving the system's own release (`codename`), from
/// /etc/apt/sources.list and /etc/apt/sources.list.d/ (`.list` lines and
/// deb822 `.sources` stanzas).
fn system_mirror(codename: &str) -> anyhow::Result<Mirror> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .find_map(|f| {
            let text = fs::read_to_string(f).ok()?;
            match f.extension()?.to_str()? {
                "list" => mirror_in_lines(&text, codename),
                "sources" => mirror_in_stanzas(&text, codename),
                _ => None,
            }
        })
        .with_context(|| {
            format!("no Debian archive for {codename} in /etc/apt/sources.list{{,.d/*}}")
        })
}

/// `deb [signed-by=K] URL codename main` in the one-line format.
fn mirror_in_lines(text: &str, codename: &str) -> Option<Mirror> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut keyring = None;
        let mut url = words.next()?;
        if url.starts_with('[') {
            let mut option = url;
            loop {
                if let Some(k) = option.trim_matches(['[', ']']).strip_prefix("signed-by=") {
                    keyring = Some(k.to_string());
                }
                if option.ends_with(']') {
                    break;
                }
                option = words.next()?;
            }
            url = words.next()?;
        }
        (words.next()? == codename).then(|| Mirror {
            url: url.to_string(),
            keyring,
        })
    })
}

/// A deb822 stanza of `Types: deb` whose `Suites` hold `codename`.
fn mirror_in_stanzas(text: &str, codename: &str) -> Option<Mirror> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let has = |name: &str, word: &str| {
            field(name).is_some_and(|v| v.split_whitespace().any(|w| w == word))
        };
        (has("Types", "deb") && has("Suites", codename) && field("Enabled") != Some("no")).then(
            || Mirror {
                url: field("URIs")
                    .unwrap_or_default()
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                keyring: field("Signed-By").map(str::to_string),
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::{mirror_in_lines, mirror_in_stanzas, Mirror};

    #[test]
    fn finds_the_release_archive_not_security() {
        let text = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n\n\
                    Types: deb\nURIs: http://ftp.example.org/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n";
        let m = mirror_in_stanzas(text, "bookworm").unwrap();
        assert_eq!(
            m,
            Mirror {
                url: "http://ftp.example.org/debian".into(),
                keyring: Some("/usr/share/keyrings/k.gpg".into())
            }
        );
        assert!(mirror_in_stanzas(text, "trixie").is_none());
    }

    #[test]
    fn reads_one_line_sources() {
        let text = "# deb http://old bookworm main\ndeb-src http://src bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        let m = mirror_in_lines(text, "bookworm").unwrap();
        assert_eq!(m.url, "http://m.example/debian");
        assert_eq!(m.keyring.as_deref(), Some("/k.gpg"));
        let plain = mirror_in_lines("deb http://m/debian bookworm main", "bookworm").unwrap();
        assert_eq!(plain.keyring, None);
    }
}
