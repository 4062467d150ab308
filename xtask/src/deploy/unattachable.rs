//! A Go program the agent must refuse, for the attach-failure alert: a copy
//! of a fixture whose `.go.buildinfo` claims Go 1.16, older than the
//! register ABI the probes read. The agent's cheap Go check (the section
//! exists) passes, so whole-host mode tries to attach and counts the refusal
//! as `reason="go_too_old"`. The program runs unchanged: the Go runtime
//! never reads that section (`runtime.Version()` comes from elsewhere).

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use anyhow::{bail, Context};

/// Executable name of the copy (the `exe` the agent sees).
pub const NAME: &str = "too-old";
/// The `reason` label its refusal is counted under.
pub const REASON: &str = "go_too_old";

const MAGIC: &[u8] = b"\xff Go buildinf:";
/// Go ≥ 1.18 stores the version inline, after 32 bytes of header.
const FLAG_INLINE: u8 = 0x2;
const VERSION_AT: usize = 32;
/// Same width as any two-digit minor, so nothing after it moves.
const CLAIMED_MINOR: &[u8; 2] = b"16";

/// Writes to `out` an executable copy of `fixture` claiming Go 1.16;
/// returns the version it really was built with.
pub fn make(fixture: &Path, out: &Path) -> anyhow::Result<String> {
    let mut bytes = fs::read(fixture).with_context(|| format!("reading {}", fixture.display()))?;
    let real = claim_go116(&mut bytes).with_context(|| format!("{}", fixture.display()))?;
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o755))?;
    Ok(real)
}

/// Rewrites the minor version in the build info (`go1.27.3` → `go1.16.3`)
/// in place; returns the original version string.
fn claim_go116(bytes: &mut [u8]) -> anyhow::Result<String> {
    let mut found = bytes
        .windows(MAGIC.len())
        .enumerate()
        .filter(|(_, w)| *w == MAGIC);
    let (Some((at, _)), None) = (found.next(), found.next()) else {
        bail!("expected exactly one Go build info header");
    };
    let header = bytes
        .get(at..at + VERSION_AT + 1)
        .context("truncated build info")?;
    if header[15] & FLAG_INLINE == 0 {
        bail!("build info in the pre-1.18 pointer format");
    }
    // A version string is far shorter than 128 bytes: a one-byte varint.
    let len = usize::from(header[VERSION_AT]);
    if len >= 0x80 {
        bail!("version length {len} is not a one-byte varint");
    }
    let start = at + VERSION_AT + 1;
    let version = bytes
        .get_mut(start..start + len)
        .context("truncated version")?;
    let real = String::from_utf8_lossy(version).into_owned();
    let minor = version
        .strip_prefix(b"go1.")
        .filter(|rest| rest.len() >= 2 && rest[..2].iter().all(u8::is_ascii_digit))
        .filter(|rest| rest.get(2).is_none_or(|c| !c.is_ascii_digit()))
        .map(|rest| version.len() - rest.len());
    let Some(minor) = minor else {
        bail!("version {real:?} has no two-digit minor to replace");
    };
    version[minor..minor + 2].copy_from_slice(CLAIMED_MINOR);
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Some code, a build info section (inline format) holding `version`
    /// and a module line, then more code.
    fn binary(version: &str) -> Vec<u8> {
        let mut b = vec![0x90; 100];
        b.extend(MAGIC);
        b.extend([8, FLAG_INLINE]);
        b.resize(100 + VERSION_AT, 0);
        b.push(u8::try_from(version.len()).unwrap());
        b.extend(version.as_bytes());
        b.push(17);
        b.extend(b"mod\tgostray/demo\n");
        b.extend([0xcc; 50]);
        b
    }

    #[test]
    fn only_the_minor_version_changes() {
        let mut b = binary("go1.27.3");
        assert_eq!(claim_go116(&mut b).unwrap(), "go1.27.3");
        assert_eq!(b, binary("go1.16.3"));
        let mut b = binary("go1.24rc1 X:nodwarf5");
        claim_go116(&mut b).unwrap();
        assert_eq!(b, binary("go1.16rc1 X:nodwarf5"));
    }

    #[test]
    fn refuses_what_it_cannot_rewrite_in_place() {
        for version in ["go1.9.7", "go1.123", "devel +abc", ""] {
            assert!(claim_go116(&mut binary(version)).is_err(), "{version}");
        }
        let mut no_header = vec![0u8; 200];
        assert!(claim_go116(&mut no_header).is_err());
        let mut twice = binary("go1.27.3");
        twice.extend(binary("go1.27.3"));
        assert!(claim_go116(&mut twice).is_err());
        let mut pointer_format = binary("go1.27.3");
        pointer_format[100 + 15] = 0;
        assert!(claim_go116(&mut pointer_format).is_err());
    }
}
