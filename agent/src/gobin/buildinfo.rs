//! The Go version, from the `.go.buildinfo` section.
//!
//! Layout (Go ≥ 1.18, "inline" format): a 16-byte magic `\xff Go buildinf:`,
//! pointer size, flags (bit 1: inline strings), padding to 32 bytes, then the
//! version and module info as varint-length-prefixed strings.

use std::fmt;

use object::{Object, ObjectSection};

use super::GoBinError;

const MAGIC: &[u8] = b"\xff Go buildinf:";
const FLAG_INLINE: u8 = 0x2;
/// Longest version string we accept ("go1.27.3 X:nocoverageredesign" fits).
const MAX_VERSION_LEN: u64 = 128;

/// A Go release, compared by (major, minor, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// The oldest release with the amd64 register ABI the probes read (Go 1.17).
pub const MIN_SUPPORTED: GoVersion = GoVersion {
    major: 1,
    minor: 17,
    patch: 0,
};

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "go{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl GoVersion {
    /// Parses `go1.24.3`, `go1.21rc2`, `go1.27.0 X:foo` (experiments ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("go")?;
        let rest = rest.split([' ', '-']).next()?;
        let mut nums = rest.split('.').map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        });
        let major = nums.next()??;
        let minor = nums.next()??;
        let patch = nums.next().flatten().unwrap_or(0);
        Some(Self {
            major,
            minor,
            patch,
        })
    }
}

/// Reads the Go version from a parsed ELF file.
pub fn read_version(file: &object::File) -> Result<GoVersion, GoBinError> {
    let section = file
        .section_by_name(".go.buildinfo")
        .ok_or(GoBinError::NotGo)?;
    let data = section
        .data()
        .map_err(|e| GoBinError::BuildInfo(e.to_string()))?;
    let raw = version_string(data)?;
    GoVersion::parse(&raw)
        .ok_or_else(|| GoBinError::BuildInfo(format!("unparsable version {raw:?}")))
}

/// The raw version string from `.go.buildinfo` bytes.
pub fn version_string(data: &[u8]) -> Result<String, GoBinError> {
    let bad = |why: &str| GoBinError::BuildInfo(why.to_string());
    if data.len() < 32 || !data.starts_with(MAGIC) {
        return Err(bad("missing magic"));
    }
    if data[15] & FLAG_INLINE == 0 {
        return Err(bad(
            "pre-Go 1.18 pointer format (Go older than 1.18 is not supported)",
        ));
    }
    let (len, used) = uvarint(&data[32..]).ok_or_else(|| bad("truncated version length"))?;
    if len == 0 || len > MAX_VERSION_LEN {
        return Err(bad("version length out of range"));
    }
    let start = 32 + used;
    let bytes = data
        .get(start..start + len as usize)
        .ok_or_else(|| bad("truncated version"))?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| bad("version is not UTF-8"))
}

/// Decodes an unsigned LEB128 varint: (value, bytes used).
fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in data.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_rc_versions() {
        assert_eq!(
            GoVersion::parse("go1.24.3"),
            Some(GoVersion {
                major: 1,
                minor: 24,
                patch: 3
            })
        );
        assert_eq!(
            GoVersion::parse("go1.21rc2"),
            Some(GoVersion {
                major: 1,
                minor: 21,
                patch: 0
            })
        );
        assert_eq!(
            GoVersion::parse("go1.27.1 X:nodwarf5"),
            Some(GoVersion {
                major: 1,
                minor: 27,
                patch: 1
            })
        );
        assert_eq!(GoVersion::parse("devel"), None);
        assert!(GoVersion::parse("go1.16.9").unwrap() < MIN_SUPPORTED);
    }

    fn section(version: &str) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        data.extend([8, FLAG_INLINE]);
        data.resize(32, 0);
        data.push(version.len() as u8);
        data.extend(version.as_bytes());
        data
    }

    #[test]
    fn reads_inline_version_string() {
        assert_eq!(version_string(&section("go1.19.8")).unwrap(), "go1.19.8");
    }

    #[test]
    fn rejects_truncated_and_lying_sections() {
        let full = section("go1.19.8");
        for cut in 0..full.len() {
            assert!(
                version_string(&full[..cut]).is_err(),
                "accepted {cut} bytes"
            );
        }
        let mut lying = full.clone();
        lying[32] = 0x7f; // claims 127 bytes that are not there
        assert!(version_string(&lying).is_err());
        let mut old = full;
        old[15] = 0;
        assert!(version_string(&old)
            .unwrap_err()
            .to_string()
            .contains("1.18"));
    }
}
