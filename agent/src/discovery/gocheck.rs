//! Is this executable a Go program? Answered from the ELF header and the
//! section header table alone, a few kilobytes, so that a busy node's
//! thousands of non-Go processes cost almost nothing to skip.

use std::{fs::File, io, os::unix::fs::FileExt};

/// Section every Go ≥ 1.18 linker writes (also in stripped binaries).
const GO_BUILDINFO: &[u8] = b".go.buildinfo";
/// Note section holding the Go build ID, which names the build exactly.
const GO_BUILDID: &[u8] = b".note.go.buildid";
/// Bounds on what is read: a Go binary has ~40 sections, its name table is
/// well under a kilobyte.
const MAX_SECTIONS: usize = 512;
const MAX_SHSTRTAB: u64 = 64 * 1024;
const MAX_NOTE: u64 = 512;
const SHDR_SIZE: usize = 64;

/// What the quick look found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 64-bit little-endian ELF with `.go.buildinfo`; the Go build ID if present.
    Go { build_id: Option<String> },
    /// Anything else: another language, a script, a 32-bit or big-endian binary.
    NotGo,
}

/// Looks at the file's headers only.
pub fn check(file: &File) -> io::Result<Verdict> {
    let mut ehdr = [0u8; 64];
    if file.read_exact_at(&mut ehdr, 0).is_err() {
        return Ok(Verdict::NotGo);
    }
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return Ok(Verdict::NotGo);
    }
    let shoff = u64::from_le_bytes(ehdr[0x28..0x30].try_into().unwrap_or_default());
    let shentsize = usize::from(u16::from_le_bytes([ehdr[0x3a], ehdr[0x3b]]));
    let shnum = usize::from(u16::from_le_bytes([ehdr[0x3c], ehdr[0x3d]]));
    let shstrndx = usize::from(u16::from_le_bytes([ehdr[0x3e], ehdr[0x3f]]));
    if shoff == 0 || shentsize != SHDR_SIZE || shnum == 0 || shnum > MAX_SECTIONS {
        return Ok(Verdict::NotGo);
    }
    if shstrndx >= shnum {
        return Ok(Verdict::NotGo);
    }
    let mut table = vec![0u8; shnum * SHDR_SIZE];
    file.read_exact_at(&mut table, shoff)?;
    let sections: Vec<Shdr> = table.chunks_exact(SHDR_SIZE).map(Shdr::parse).collect();
    let strtab = sections[shstrndx];
    if strtab.size > MAX_SHSTRTAB {
        return Ok(Verdict::NotGo);
    }
    let mut names = vec![0u8; strtab.size as usize];
    file.read_exact_at(&mut names, strtab.offset)?;
    let find = |want: &[u8]| {
        sections
            .iter()
            .find(|s| name_at(&names, s.name) == Some(want))
    };
    if find(GO_BUILDINFO).is_none() {
        return Ok(Verdict::NotGo);
    }
    let build_id = find(GO_BUILDID).and_then(|s| read_note(file, *s));
    Ok(Verdict::Go { build_id })
}

#[derive(Debug, Clone, Copy)]
struct Shdr {
    name: u32,
    offset: u64,
    size: u64,
}

impl Shdr {
    fn parse(b: &[u8]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        Self {
            name: u32::from_le_bytes(b[0..4].try_into().unwrap_or_default()),
            offset: u64_at(24),
            size: u64_at(32),
        }
    }
}

fn name_at(names: &[u8], at: u32) -> Option<&[u8]> {
    let rest = names.get(at as usize..)?;
    Some(&rest[..rest.iter().position(|&c| c == 0)?])
}

/// The descriptor of an ELF note (`namesz`, `descsz`, `type`, name, desc),
/// as printable text: the Go build ID.
fn read_note(file: &File, s: Shdr) -> Option<String> {
    if s.size < 12 || s.size > MAX_NOTE {
        return None;
    }
    let mut note = vec![0u8; s.size as usize];
    file.read_exact_at(&mut note, s.offset).ok()?;
    let word =
        |o: usize| u32::from_le_bytes(note[o..o + 4].try_into().unwrap_or_default()) as usize;
    let (namesz, descsz) = (word(0), word(4));
    let desc_at = 12 + namesz.div_ceil(4) * 4;
    let desc = note.get(desc_at..desc_at.checked_add(descsz)?)?;
    let text = std::str::from_utf8(desc).ok()?;
    text.chars()
        .all(|c| c.is_ascii_graphic())
        .then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(path: &str) -> Verdict {
        check(&File::open(path).unwrap()).unwrap()
    }

    #[test]
    fn non_go_and_non_elf_files_are_not_go() {
        assert_eq!(verdict("/bin/sh"), Verdict::NotGo);
        assert_eq!(verdict("/etc/hostname"), Verdict::NotGo);
    }

    #[test]
    fn a_go_binary_is_go_with_its_build_id() {
        // The fixtures exist only under `cargo xtask test`; the check is
        // then against a real Go build of each supported line.
        let Some(dir) = std::env::var_os("GOSTRAY_FIXTURES") else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "GOSTRAY_FIXTURES unset under CI: run `cargo xtask test`"
            );
            return;
        };
        for line in ["1.19", "1.24", "1.27"] {
            let path = std::path::Path::new(&dir).join(format!("spawner-{line}"));
            let v = check(&File::open(&path).unwrap()).unwrap();
            let Verdict::Go { build_id: Some(id) } = v else {
                panic!("{}: {v:?}", path.display());
            };
            assert!(id.len() > 20, "{id}");
        }
    }
}
