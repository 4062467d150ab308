//! A `newc` cpio archive, the format the kernel unpacks an initramfs from
//! (Documentation/driver-api/early-userspace/buffer-format.rst): per entry
//! a 110-byte ASCII header of 13 hex fields, the NUL-terminated name padded
//! to 4 bytes, then the data padded to 4 bytes; a `TRAILER!!!` entry ends it.

/// File types and permissions, as `st_mode` has them.
pub const DIR: u32 = 0o040_755;
pub const EXEC: u32 = 0o100_755;
pub const CHAR_DEV: u32 = 0o020_600;

/// One entry: a directory, a file with its bytes, or a device node.
pub struct Entry<'a> {
    pub name: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
    /// (major, minor) of a device node.
    pub rdev: (u32, u32),
}

impl<'a> Entry<'a> {
    pub fn dir(name: &'a str) -> Self {
        Self {
            name,
            mode: DIR,
            data: &[],
            rdev: (0, 0),
        }
    }

    pub fn exec(name: &'a str, data: &'a [u8]) -> Self {
        Self {
            name,
            mode: EXEC,
            data,
            rdev: (0, 0),
        }
    }

    pub fn char_dev(name: &'a str, major: u32, minor: u32) -> Self {
        Self {
            name,
            mode: CHAR_DEV,
            data: &[],
            rdev: (major, minor),
        }
    }
}

/// The archive of `entries`, in order (parents before children), with a
/// fresh inode number each and every file owned by root.
pub fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, e) in entries.iter().enumerate() {
        let nlink = if e.mode & 0o170_000 == DIR & 0o170_000 {
            2
        } else {
            1
        };
        push(
            &mut out,
            ino as u32 + 1,
            e.mode,
            nlink,
            e.rdev,
            e.name,
            e.data,
        );
    }
    push(&mut out, 0, 0, 1, (0, 0), "TRAILER!!!", &[]);
    out
}

fn push(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    name: &str,
    data: &[u8],
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime: a reproducible archive
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check: only for the crc format
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad(out);
    out.extend_from_slice(data);
    pad(out);
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_name_and_data_are_aligned() {
        let a = archive(&[Entry::exec("init", b"#!/x\n")]);
        assert_eq!(&a[..6], b"070701");
        // ino 1, mode 100755, filesize 5, namesize 5.
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"000081ed");
        assert_eq!(&a[54..62], b"00000005");
        assert_eq!(&a[94..102], b"00000005");
        // 110 + "init\0" = 115, padded to 116; then the data.
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..121], b"#!/x\n");
        assert_eq!(a.len() % 4, 0);
        let trailer = &a[124..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
    }

    #[test]
    fn device_nodes_carry_their_numbers() {
        let a = archive(&[Entry::char_dev("dev/console", 5, 1)]);
        assert_eq!(&a[14..22], b"00002180");
        assert_eq!(&a[78..86], b"00000005");
        assert_eq!(&a[86..94], b"00000001");
    }
}
