//! The executable's bytes, mapped once and shared, with the address map
//! that turns link-time addresses into file bytes and offsets.

use std::{fmt, fmt::Write as _, fs::File, path::Path, sync::Arc};

use object::{Object, ObjectSection, ObjectSegment};

/// The file contents: a read-only mapping, or bytes already in memory.
pub type Bytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    address: u64,
    mem_size: u64,
    offset: u64,
    file_size: u64,
}

/// A shared view of an executable. Cloning is cheap (two `Arc`s), so a
/// [`super::GoBinary`] shared by many processes maps its file once.
#[derive(Clone)]
pub struct Image {
    bytes: Bytes,
    segments: Arc<[Segment]>,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("len", &self.data().len())
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

impl Image {
    /// Maps the file at `path` read-only. Only the pages the parsers touch
    /// are read from disk, which keeps a 100 MB binary cheap to inspect.
    pub fn map(path: &Path) -> std::io::Result<Bytes> {
        let file = File::open(path)?;
        // SAFETY: a private read-only mapping. An executable that is
        // running cannot be written (ETXTBSY); one that is truncated under
        // us would fault, a risk every debugger reading binaries shares.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Arc::new(map))
    }

    /// Wraps bytes already in memory.
    pub fn owned(bytes: Vec<u8>) -> Bytes {
        Arc::new(bytes)
    }

    /// Records the segments of the parsed `file` (whose data is `bytes`).
    pub fn new(bytes: Bytes, file: &object::File) -> Self {
        let segments = file
            .segments()
            .map(|s| {
                let (offset, file_size) = s.file_range();
                Segment {
                    address: s.address(),
                    mem_size: s.size(),
                    offset,
                    file_size,
                }
            })
            .collect();
        Self { bytes, segments }
    }

    pub fn data(&self) -> &[u8] {
        (*self.bytes).as_ref()
    }

    /// `len` bytes of the memory image at link-time `address`, when the
    /// file holds them (not .bss).
    pub fn at(&self, address: u64, len: usize) -> Option<&[u8]> {
        let off = self.file_offset(address)?;
        let seg = self.segment(address)?;
        let end_in_seg = address.checked_add(len as u64)?;
        if end_in_seg > seg.address.checked_add(seg.file_size)? {
            return None;
        }
        let off = usize::try_from(off).ok()?;
        self.data().get(off..off.checked_add(len)?)
    }

    fn segment(&self, address: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| address >= s.address && address - s.address < s.mem_size)
    }

    /// The file offset of `address`, as the kernel's uprobe API wants it.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        let s = self.segment(address)?;
        let delta = address - s.address;
        (delta < s.file_size).then(|| s.offset + delta)
    }

    /// The lowest loadable address, page-aligned: what the process's first
    /// mapping of the executable corresponds to (for the PIE load bias).
    pub fn base(&self) -> u64 {
        self.segments.iter().map(|s| s.address).min().unwrap_or(0) & !0xfff
    }
}

/// The file range of section `name`, if it has bytes in the file.
pub fn section_range(file: &object::File, name: &str) -> Option<(usize, usize)> {
    let s = file.section_by_name(name)?;
    let (off, len) = s.file_range()?;
    Some((usize::try_from(off).ok()?, usize::try_from(len).ok()?))
}

/// The build ID: the GNU one when present (external linking), else Go's
/// own (`.note.go.buildid`, note type 4, owner "Go").
pub fn build_id(file: &object::File) -> Option<String> {
    if let Ok(Some(id)) = file.build_id() {
        return Some(id.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }));
    }
    let note = file.section_by_name(".note.go.buildid")?.data().ok()?;
    let namesz = super::read::u32_at(note, 0)? as usize;
    let descsz = super::read::u32_at(note, 4)? as usize;
    let desc = super::read::bytes(note, 12 + namesz.next_multiple_of(4), descsz.min(256))?;
    Some(super::read::bounded_string(desc, 256))
}
