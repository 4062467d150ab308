//! Bounds-checked little-endian reads from untrusted bytes.
//!
//! Every parser in `gobin` reads through these: an offset or length taken
//! from the file is never trusted, so each read returns `None` instead of
//! panicking when it falls outside the data.

/// `n` bytes at `off`, or `None` when they are not all there.
pub fn bytes(data: &[u8], off: usize, n: usize) -> Option<&[u8]> {
    data.get(off..off.checked_add(n)?)
}

pub fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    bytes(data, off, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    bytes(data, off, 8).map(|b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    })
}

/// A pointer-sized word (4 or 8 bytes).
pub fn word_at(data: &[u8], off: usize, ptr_size: u8) -> Option<u64> {
    match ptr_size {
        4 => u32_at(data, off).map(u64::from),
        8 => u64_at(data, off),
        _ => None,
    }
}

/// The NUL-terminated string at `off`, searching at most `max` bytes.
pub fn cstr(data: &[u8], off: usize, max: usize) -> Option<&[u8]> {
    let tail = data.get(off..)?;
    let tail = &tail[..tail.len().min(max)];
    let end = tail.iter().position(|&b| b == 0)?;
    Some(&tail[..end])
}

/// An unsigned LEB128 varint at the start of `data`: (value, bytes used).
/// At most 10 bytes are read, so a run of continuation bits cannot loop.
pub fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in data.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Text from the file, lossily decoded and cut to `max` characters, so a
/// hostile binary cannot hand the agent megabyte-long labels.
pub fn bounded_string(raw: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(raw);
    if s.chars().count() <= max {
        return s.into_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_refuse_out_of_range() {
        let d = [1, 0, 0, 0, 2];
        assert_eq!(u32_at(&d, 0), Some(1));
        assert_eq!(u32_at(&d, 2), None);
        assert_eq!(u32_at(&d, usize::MAX), None);
        assert_eq!(word_at(&d, 0, 3), None);
        assert_eq!(cstr(b"ab\0cd", 0, 10), Some(&b"ab"[..]));
        assert_eq!(cstr(b"abcd", 0, 10), None);
        assert_eq!(cstr(b"abcd\0", 0, 2), None);
        assert_eq!(uvarint(&[0x80; 12]), None);
        assert_eq!(uvarint(&[0x96, 0x01]), Some((150, 2)));
        assert_eq!(bounded_string(b"abcdef", 4), "abc…");
    }
}
