//! The Go version and build settings, from the `.go.buildinfo` section.
//!
//! Layout (`debug/buildinfo`): a 14-byte magic `\xff Go buildinf:`, pointer
//! size, flags, then either (Go ≥ 1.18, flag bit 1 set) padding to 32 bytes
//! and the version and module info as varint-length-prefixed strings, or
//! (older, "pointer" format) two pointers to Go strings holding them. The
//! old format is still decoded so that an old binary is refused with its
//! version named rather than as "malformed".

use std::fmt;

use serde::Serialize;

use super::{read, GoBinError};

const MAGIC: &[u8] = b"\xff Go buildinf:";
const FLAG_INLINE: u8 = 0x2;
/// Longest version string we accept ("go1.27.3 X:nocoverageredesign" fits).
const MAX_VERSION_LEN: u64 = 128;
/// Longest module info we read (prometheus's is about 12 KiB).
const MAX_MODINFO_LEN: u64 = 1 << 20;
/// Settings kept from the module info (a hostile one could list millions).
const MAX_SETTINGS: usize = 64;
/// `cmd/go/internal/modload` frames the module info with 16-byte sentinels.
const MODINFO_FRAME: usize = 16;

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

/// What `.go.buildinfo` says about how the binary was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// The raw version string (`go1.24.11`, `go1.27.3 X:nodwarf5`).
    pub raw_version: String,
    #[serde(skip)]
    pub version: GoVersion,
    /// The main package path (`path` line), if recorded.
    pub path: Option<String>,
    /// The main module path (`mod` line), if recorded.
    pub module: Option<String>,
    /// `build` settings as (key, value): `-race`, `CGO_ENABLED`,
    /// `GOEXPERIMENT`, `-ldflags`, `GOARCH`…
    pub settings: Vec<(String, String)>,
}

impl BuildInfo {
    /// One build setting's value.
    #[allow(dead_code)] // for the leak detector's reports; used by tests
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `.go.buildinfo` bytes. `at(address, len)` reads the binary's
/// memory image, needed only by the pre-1.18 pointer format.
pub fn parse<'a>(
    data: &[u8],
    at: impl Fn(u64, usize) -> Option<&'a [u8]>,
) -> Result<BuildInfo, GoBinError> {
    let bad = |why: &str| GoBinError::BuildInfo(why.to_string());
    if data.len() < 32 || !data.starts_with(MAGIC) {
        return Err(bad("missing magic"));
    }
    let (raw, modinfo) = if data[15] & FLAG_INLINE == 0 {
        pointer_format(data, at)?
    } else {
        let (raw, used) =
            varstring(&data[32..], MAX_VERSION_LEN).ok_or_else(|| bad("truncated version"))?;
        let modinfo = varstring(&data[32 + used..], MAX_MODINFO_LEN).map(|(m, _)| m);
        (raw, modinfo.unwrap_or_default())
    };
    if raw.is_empty() {
        return Err(bad("empty version"));
    }
    let raw_version = String::from_utf8(raw.to_vec()).map_err(|_| bad("version is not UTF-8"))?;
    let version = GoVersion::parse(&raw_version)
        .ok_or_else(|| GoBinError::BuildInfo(format!("unparsable version {raw_version:?}")))?;
    let mut info = BuildInfo {
        raw_version,
        version,
        path: None,
        module: None,
        settings: Vec::new(),
    };
    read_modinfo(&mut info, modinfo);
    Ok(info)
}

/// The version string (raw), for callers that need nothing else.
#[cfg(test)]
pub fn version_string(data: &[u8]) -> Result<String, GoBinError> {
    parse(data, |_, _| None).map(|b| b.raw_version)
}

/// Pre-1.18: two pointers (at 16 and 16 + pointer size) to Go strings.
fn pointer_format<'a>(
    data: &[u8],
    at: impl Fn(u64, usize) -> Option<&'a [u8]>,
) -> Result<(&'a [u8], &'a [u8]), GoBinError> {
    let bad = |why: &str| GoBinError::BuildInfo(why.to_string());
    let ptr_size = data[14];
    if data[15] & 1 != 0 {
        return Err(bad("big-endian binary"));
    }
    let go_string = |header: u64, max: u64| -> Option<&'a [u8]> {
        let h = at(header, 2 * usize::from(ptr_size))?;
        let ptr = read::word_at(h, 0, ptr_size)?;
        let len = read::word_at(h, usize::from(ptr_size), ptr_size)?;
        if len > max {
            return None;
        }
        at(ptr, usize::try_from(len).ok()?)
    };
    let vers_ptr = read::word_at(data, 16, ptr_size).ok_or_else(|| bad("pointer size"))?;
    let mod_ptr = read::word_at(data, 16 + usize::from(ptr_size), ptr_size)
        .ok_or_else(|| bad("pointer size"))?;
    let raw =
        go_string(vers_ptr, MAX_VERSION_LEN).ok_or_else(|| bad("unreadable version pointer"))?;
    Ok((raw, go_string(mod_ptr, MAX_MODINFO_LEN).unwrap_or_default()))
}

/// A varint-length-prefixed string: (bytes, total bytes used).
fn varstring(data: &[u8], max: u64) -> Option<(&[u8], usize)> {
    let (len, used) = read::uvarint(data)?;
    if len > max {
        return None;
    }
    let bytes = read::bytes(data, used, usize::try_from(len).ok()?)?;
    Some((bytes, used + bytes.len()))
}

/// Fills path, module and settings from the tab-separated module info.
fn read_modinfo(info: &mut BuildInfo, modinfo: &[u8]) {
    // Framed by 16-byte sentinels, the last line ending just before the
    // closing one (as `debug/buildinfo` checks).
    if modinfo.len() < 2 * MODINFO_FRAME + 1 || modinfo[modinfo.len() - MODINFO_FRAME - 1] != b'\n'
    {
        return;
    }
    let text = String::from_utf8_lossy(&modinfo[MODINFO_FRAME..modinfo.len() - MODINFO_FRAME]);
    for line in text.lines() {
        let mut fields = line.split('\t');
        match (fields.next(), fields.next()) {
            (Some("path"), Some(p)) => info.path = Some(read::bounded_string(p.as_bytes(), 256)),
            (Some("mod"), Some(m)) => info.module = Some(read::bounded_string(m.as_bytes(), 256)),
            (Some("build"), Some(kv)) if info.settings.len() < MAX_SETTINGS => {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                info.settings.push((
                    read::bounded_string(k.as_bytes(), 64),
                    read::bounded_string(v.as_bytes(), 256),
                ));
            }
            _ => {}
        }
    }
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
    fn reads_module_info_and_settings() {
        let mut data = section("go1.24.11");
        let mut modinfo = vec![b'x'; MODINFO_FRAME];
        modinfo
            .extend(b"path\tex/cmd\nmod\tex\t(devel)\t\nbuild\t-race=true\nbuild\tCGO_ENABLED=0\n");
        modinfo.extend([b'y'; MODINFO_FRAME]);
        data.push(modinfo.len() as u8);
        data.extend(&modinfo);
        let info = parse(&data, |_, _| None).unwrap();
        assert_eq!(info.path.as_deref(), Some("ex/cmd"));
        assert_eq!(info.module.as_deref(), Some("ex"));
        assert_eq!(info.setting("-race"), Some("true"));
        assert_eq!(info.setting("CGO_ENABLED"), Some("0"));
    }

    #[test]
    fn reads_pre_118_pointer_format() {
        // Header with pointers 0x100 (version) and 0x200 (no module info).
        let mut data = MAGIC.to_vec();
        data.extend([8, 0]);
        data.extend(0x100u64.to_le_bytes());
        data.extend(0x200u64.to_le_bytes());
        let mut mem = vec![0u8; 0x400];
        mem[0x100..0x108].copy_from_slice(&0x300u64.to_le_bytes());
        mem[0x108..0x110].copy_from_slice(&8u64.to_le_bytes());
        mem[0x300..0x308].copy_from_slice(b"go1.16.9");
        let info = parse(&data, |a, n| read::bytes(&mem, a as usize, n)).unwrap();
        assert_eq!(info.version, GoVersion::parse("go1.16.9").unwrap());
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
        assert!(version_string(&old).is_err());
    }
}
