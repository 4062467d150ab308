//! Go's PC-line table (`.gopclntab`): every function's name, entry and end,
//! and per-PC tables (file, line). It survives `-ldflags=-s -w`, which is
//! why the agent can read stripped binaries at all.
//!
//! Layout (Go 1.18+, `runtime/symtab.go` `pcHeader` and `runtime2.go`
//! `_func`): an 8-byte header (magic, two zero bytes, PC quantum, pointer
//! size), then eight pointer-sized words: nfunc, nfiles, textStart,
//! and the offsets of funcnametab, cutab, filetab, pctab and pclntab. The
//! function table at the pclntab offset is `nfunc + 1` pairs of u32
//! (entry offset from textStart, offset of the `_func` record); the last
//! entry offset is the end of the last function.

use super::read;

/// Header magics. Go 1.16–1.17 used 0xfffffffa (different `_func` layout).
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
const MAGIC_GO116: u32 = 0xffff_fffa;
/// Longest function or file name read from the table.
const MAX_NAME: usize = 64 * 1024;
/// Offsets of `_func` fields used here (unchanged from 1.18 to 1.27).
const FUNC_NAME_OFF: usize = 4;
const FUNC_ARGS: usize = 8;
const FUNC_PCSP: usize = 16;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_NPCDATA: usize = 28;
const FUNC_CU_OFFSET: usize = 32;
/// `funcID` and `nfuncdata`, then the `pcdata` array: Go 1.20 put a 4-byte
/// `startLine` before `funcID`, which moved everything after it.
const FUNC_ID_GO118: usize = 36;
const FUNC_ID_GO120: usize = 40;
const FUNC_NFUNCDATA_FROM_ID: usize = 3;
/// Longest pcdata or funcdata array believed (the compiler emits a handful).
const MAX_TABLES: u32 = 64;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    #[error("no .gopclntab section")]
    Missing,
    #[error("pclntab of Go 1.16/1.17 (magic 0xfffffffa): only Go 1.18 and later are read")]
    TooOld,
    #[error("unknown pclntab magic {0:#x}")]
    Magic(u32),
    #[error("malformed pclntab: {0}")]
    Malformed(&'static str),
}

/// The parsed header: where each sub-table lives. Holds no bytes; every
/// lookup takes the section data, so a [`super::GoBinary`] can keep the file
/// in one shared mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pclntab {
    /// True for the Go ≥ 1.20 magic (0xfffffff1).
    pub go120: bool,
    quantum: u8,
    nfunc: usize,
    /// Link-time address the function entry offsets are relative to.
    pub text_start: u64,
    /// `textStart` as the header stores it (0 in Go ≥ 1.26).
    pub header_text_start: u64,
    funcnames: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    ftab: usize,
}

/// One function's place in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Func {
    pub entry: u64,
    pub end: u64,
    /// Offset of its `_func` record in the section.
    record: usize,
}

impl Pclntab {
    /// Reads the header of the section bytes `data`.
    pub fn parse(data: &[u8]) -> Result<Self, PclntabError> {
        let bad = PclntabError::Malformed;
        let magic = read::u32_at(data, 0).ok_or(bad("shorter than its header"))?;
        match magic {
            MAGIC_GO118 | MAGIC_GO120 => {}
            MAGIC_GO116 => return Err(PclntabError::TooOld),
            m => return Err(PclntabError::Magic(m)),
        }
        let (quantum, ptr_size) = (data.get(6).copied(), data.get(7).copied());
        let (Some(quantum @ (1 | 2 | 4)), Some(ptr_size @ (4 | 8))) = (quantum, ptr_size) else {
            return Err(bad("bad PC quantum or pointer size"));
        };
        let word = |i: usize| {
            read::word_at(data, 8 + i * usize::from(ptr_size), ptr_size)
                .ok_or(bad("truncated header"))
        };
        let offset = |i: usize| -> Result<usize, PclntabError> {
            usize::try_from(word(i)?)
                .ok()
                .filter(|&o| o < data.len())
                .ok_or(bad("table offset outside the section"))
        };
        let nfunc = usize::try_from(word(0)?).map_err(|_| bad("function count"))?;
        let ftab = offset(7)?;
        // Each function needs an 8-byte table entry: a count the section
        // cannot hold is a lie, caught before anything is sized from it.
        let table_end = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(ftab))
            .ok_or(bad("function count"))?;
        if table_end > data.len() {
            return Err(bad("function table runs past the section"));
        }
        let header_text_start = word(2)?;
        Ok(Self {
            go120: magic == MAGIC_GO120,
            quantum,
            nfunc,
            text_start: header_text_start,
            header_text_start,
            funcnames: offset(3)?,
            cutab: offset(4)?,
            filetab: offset(5)?,
            pctab: offset(6)?,
            ftab,
        })
    }

    /// Offset of the function name table from the header.
    pub fn funcnames_offset(&self) -> u64 {
        self.funcnames as u64
    }

    pub fn len(&self) -> usize {
        self.nfunc
    }

    fn entry_off(&self, data: &[u8], i: usize) -> Option<u64> {
        read::u32_at(data, self.ftab + i * 8).map(u64::from)
    }

    /// The `i`th function in address order.
    pub fn func(&self, data: &[u8], i: usize) -> Option<Func> {
        if i >= self.nfunc {
            return None;
        }
        let entry = self.entry_off(data, i)?;
        let end = self.entry_off(data, i + 1)?;
        let funcoff = read::u32_at(data, self.ftab + i * 8 + 4)? as usize;
        let record = self.ftab.checked_add(funcoff)?;
        // The record repeats the entry offset: a cheap consistency check.
        if read::u32_at(data, record).map(u64::from) != Some(entry) || end < entry {
            return None;
        }
        Some(Func {
            entry: self.text_start.checked_add(entry)?,
            end: self.text_start.checked_add(end)?,
            record,
        })
    }

    /// The function containing link-time address `pc`.
    pub fn find(&self, data: &[u8], pc: u64) -> Option<Func> {
        let off = pc.checked_sub(self.text_start)?;
        // Binary search on entry offsets: the table is sorted by address.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry_off(data, mid)? <= off {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let f = self.func(data, lo.checked_sub(1)?)?;
        (pc < f.end).then_some(f)
    }

    /// The function's name, raw.
    pub fn name<'a>(&self, data: &'a [u8], f: &Func) -> Option<&'a [u8]> {
        let off = read::u32_at(data, f.record + FUNC_NAME_OFF)? as usize;
        read::cstr(data, self.funcnames.checked_add(off)?, MAX_NAME)
    }

    /// Source file and line of `pc` inside `f`.
    pub fn line<'a>(&self, data: &'a [u8], f: &Func, pc: u64) -> Option<(&'a [u8], u32)> {
        let pcfile = read::u32_at(data, f.record + FUNC_PCFILE)?;
        let pcln = read::u32_at(data, f.record + FUNC_PCLN)?;
        let cu = read::u32_at(data, f.record + FUNC_CU_OFFSET)? as usize;
        let fileno = usize::try_from(self.pcvalue(data, f, pcfile, pc)?).ok()?;
        let line = u32::try_from(self.pcvalue(data, f, pcln, pc)?).ok()?;
        let slot = self
            .cutab
            .checked_add(cu.checked_add(fileno)?.checked_mul(4)?)?;
        let name_off = read::u32_at(data, slot)?;
        if name_off == u32::MAX {
            return None;
        }
        let file = read::cstr(data, self.filetab.checked_add(name_off as usize)?, MAX_NAME)?;
        Some((file, line))
    }

    /// The function's `funcID` (which special runtime function it is, or a
    /// compiler wrapper).
    pub fn func_id(&self, data: &[u8], f: &Func) -> Option<u8> {
        data.get(f.record.checked_add(self.func_id_off())?).copied()
    }

    /// The function's `flag` byte (`abi.FuncFlag`: top frame, SP write, asm),
    /// right after `funcID`.
    pub fn func_flag(&self, data: &[u8], f: &Func) -> Option<u8> {
        data.get(f.record.checked_add(self.func_id_off() + 1)?)
            .copied()
    }

    /// `_func.args`: bytes of stack arguments and results, or
    /// `abi.ArgsSizeUnknown` (`i32::MIN`).
    pub fn args_size(data: &[u8], f: &Func) -> Option<i32> {
        read::u32_at(data, f.record + FUNC_ARGS).map(|v| i32::from_le_bytes(v.to_le_bytes()))
    }

    /// The SP delta at `pc` (`runtime.funcspdelta`): bytes the function has
    /// pushed below its return address at that instruction.
    pub fn spdelta(&self, data: &[u8], f: &Func, pc: u64) -> Option<i32> {
        let pcsp = read::u32_at(data, f.record + FUNC_PCSP)?;
        self.pcvalue(data, f, pcsp, pc)
    }

    fn func_id_off(&self) -> usize {
        if self.go120 {
            FUNC_ID_GO120
        } else {
            FUNC_ID_GO118
        }
    }

    /// Value of the function's pcdata table `table` at `pc`, or -1 when it
    /// has none, as `runtime.pcdatavalue` answers.
    pub fn pcdata(&self, data: &[u8], f: &Func, table: u32, pc: u64) -> i32 {
        let npcdata = read::u32_at(data, f.record + FUNC_NPCDATA).unwrap_or(0);
        if table >= npcdata.min(MAX_TABLES) {
            return -1;
        }
        let slot = f.record + self.func_id_off() + 4 + table as usize * 4;
        read::u32_at(data, slot)
            .and_then(|off| self.pcvalue(data, f, off, pc))
            .unwrap_or(-1)
    }

    /// Offset of the function's funcdata `i` from `moduledata.gofunc`, or
    /// `None` when it has none.
    pub fn funcdata(&self, data: &[u8], f: &Func, i: u8) -> Option<u32> {
        let at_id = f.record + self.func_id_off();
        let nfuncdata = *data.get(at_id + FUNC_NFUNCDATA_FROM_ID)?;
        let npcdata = read::u32_at(data, f.record + FUNC_NPCDATA)?;
        if i >= nfuncdata || npcdata > MAX_TABLES {
            return None;
        }
        let slot = at_id + 4 + (npcdata as usize + usize::from(i)) * 4;
        read::u32_at(data, slot).filter(|&off| off != u32::MAX)
    }

    /// A name in the function name table by its offset (inline tree entries
    /// name their callee this way).
    pub fn name_at<'a>(&self, data: &'a [u8], off: u32) -> Option<&'a [u8]> {
        read::cstr(data, self.funcnames.checked_add(off as usize)?, MAX_NAME)
    }

    /// Decodes the value table at `table` (an offset into pctab) for `pc`,
    /// as `runtime.pcvalue` does: pairs of (zig-zag value delta, PC delta in
    /// quanta), starting from -1 at the entry. Each step consumes at least
    /// two bytes, so a hostile table ends when the section does.
    fn pcvalue(&self, data: &[u8], f: &Func, table: u32, pc: u64) -> Option<i32> {
        if table == 0 || pc < f.entry || pc >= f.end {
            return None;
        }
        let mut p = self.pctab.checked_add(table as usize)?;
        let (mut at, mut val) = (f.entry, -1i32);
        loop {
            let (uv, n) = read::uvarint(data.get(p..)?)?;
            if uv == 0 && at != f.entry {
                return None;
            }
            p += n;
            let uv = uv as u32;
            val = val.wrapping_add(((uv >> 1) ^ (uv & 1).wrapping_neg()) as i32);
            let (delta, n) = read::uvarint(data.get(p..)?)?;
            p += n;
            at = at.checked_add(delta.checked_mul(u64::from(self.quantum))?)?;
            if pc < at {
                return Some(val);
            }
        }
    }

    /// Functions named in `wanted`, in one pass over the table. Go emits ABI
    /// wrappers under the real function's name; the larger body is the real one.
    pub fn lookup(&self, data: &[u8], wanted: &[&str]) -> Vec<Option<Func>> {
        let mut found: Vec<Option<Func>> = vec![None; wanted.len()];
        for i in 0..self.nfunc {
            let Some(f) = self.func(data, i) else {
                continue;
            };
            let Some(name) = self.name(data, &f) else {
                continue;
            };
            for (slot, w) in found.iter_mut().zip(wanted) {
                if name == w.as_bytes()
                    && slot.is_none_or(|old| f.end - f.entry > old.end - old.entry)
                {
                    *slot = Some(f);
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-assembled two-function table (Go 1.20 layout).
    fn table() -> Vec<u8> {
        let mut d = vec![0u8; 8 + 8 * 8];
        d[..4].copy_from_slice(&MAGIC_GO120.to_le_bytes());
        d[6] = 1;
        d[7] = 8;
        let words: [u64; 8] = [2, 1, 0x1000, 72, 80, 84, 90, 100];
        for (i, w) in words.iter().enumerate() {
            d[8 + i * 8..16 + i * 8].copy_from_slice(&w.to_le_bytes());
        }
        d.extend(b"main.a\0m\0"); // funcnametab at 72: "main.a", "m"
        d.resize(80, 0);
        d.extend(0u32.to_le_bytes()); // cutab[0] = file 0
        d.extend(b"a.go\0\0"); // filetab at 84
        d.extend([0u8; 10]); // pctab at 90 (unused here)
                             // ftab at 100: (0, 24) (16, 24+40) (32, -)
        for (e, f) in [(0u32, 24u32), (16, 64), (32, 0)] {
            d.extend(e.to_le_bytes());
            d.extend(f.to_le_bytes());
        }
        for (entry, name) in [(0u32, 0u32), (16, 7)] {
            let mut rec = [0u8; 40];
            rec[..4].copy_from_slice(&entry.to_le_bytes());
            rec[4..8].copy_from_slice(&name.to_le_bytes());
            d.extend(rec);
        }
        d
    }

    #[test]
    fn finds_functions_names_and_lines() {
        let d = table();
        let t = Pclntab::parse(&d).unwrap();
        assert_eq!(t.len(), 2);
        let f = t.find(&d, 0x1012).unwrap();
        assert_eq!((f.entry, f.end), (0x1010, 0x1020));
        assert_eq!(t.name(&d, &f), Some(&b"m"[..]));
        assert!(t.find(&d, 0x1020).is_none());
        assert!(t.find(&d, 0xfff).is_none());
        let found = t.lookup(&d, &["main.a", "nope"]);
        assert_eq!(found[0].map(|f| f.entry), Some(0x1000));
        assert!(found[1].is_none());
    }

    #[test]
    fn refuses_lying_headers() {
        let mut d = table();
        d[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Pclntab::parse(&d).is_err());
        let mut d = table();
        d[..4].copy_from_slice(&MAGIC_GO116.to_le_bytes());
        assert_eq!(Pclntab::parse(&d), Err(PclntabError::TooOld));
        let d = table();
        for cut in 0..72 {
            assert!(Pclntab::parse(&d[..cut]).is_err(), "{cut}");
        }
    }
}
