//! What the leak detector needs from a Go binary beyond the goroutine
//! lifecycle probes: more runtime struct layouts, the blocking-path probe
//! sites, and a function table for naming PCs.

use std::sync::Arc;

use gostray_common::block_cookie;
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use crate::gobin::{dwarf, elf, sites, GoBinError, GoBinary};

/// Offsets of `runtime.g` fields used by the memory scan, within g.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GScanOffsets {
    pub waitreason: u32,
    /// `g.waiting`: the sudog list of a goroutine parked on channels.
    pub waiting: u32,
    pub sched_pc: u32,
    pub sched_bp: u32,
    /// `g.m` and `m.curg`: the creator of a goroutine on Go < 1.21.
    pub m: u32,
    pub m_curg: u32,
}

/// Offsets in `runtime.hchan`, `runtime.waitq` and `runtime.sudog`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChanOffsets {
    pub qcount: u32,
    pub dataqsiz: u32,
    pub closed: u32,
    pub lock: u32,
    /// `hchan.recvq.first` and `hchan.sendq.first` (waitq.first is at 0).
    pub recvq_first: u32,
    pub sendq_first: u32,
    /// `sudog.c`.
    pub sudog_c: u32,
}

/// A probe location with its attach cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieSite {
    pub file_offset: u64,
    pub cookie: u64,
}

/// Functions by address, for naming PCs: (start, end, name), sorted.
#[derive(Debug, Default)]
pub struct FunctionTable(Vec<(u64, u64, Box<str>)>);

impl FunctionTable {
    /// The function containing `pc` (a link-time address).
    pub fn name(&self, pc: u64) -> Option<&str> {
        let i = self
            .0
            .partition_point(|(start, _, _)| *start <= pc)
            .checked_sub(1)?;
        let (start, end, name) = &self.0[i];
        (pc >= *start && pc < (*end).max(start + 1)).then_some(&**name)
    }
}

/// The leak detector's view of one binary.
#[derive(Debug, Clone)]
pub struct LeakLayout {
    pub g: GScanOffsets,
    pub chan: ChanOffsets,
    pub block_sites: Vec<CookieSite>,
    pub close_site: u64,
    pub send_closed_sites: Vec<u64>,
    /// `runtime.waitReasonStrings`: address and element count.
    pub wait_reason_strings: Option<(u64, u64)>,
    /// Writable data ranges (.data, .noptrdata, .bss, .noptrbss): where
    /// package-level variables live.
    pub data_ranges: Vec<(u64, u64)>,
    pub functions: Arc<FunctionTable>,
}

/// Functions whose blocking-path `gopark` calls are probed, and whether
/// their lock argument is `&hchan.lock`.
const BLOCKING: [(&str, bool); 6] = [
    ("runtime.chansend", true),
    ("runtime.chanrecv", true),
    ("runtime.selectgo", false),
    ("runtime.block", false),
    ("runtime.semacquire1", false),
    ("runtime.notifyListWait", false),
];

impl LeakLayout {
    pub fn parse(data: &[u8], bin: &GoBinary) -> Result<Self, GoBinError> {
        let _ = bin;
        let file = object::File::parse(data).map_err(|e| GoBinError::NotElf(e.to_string()))?;
        let symbols = elf::function_and_data_symbols(&file);
        let sym = |name: &'static str| {
            symbols
                .get(name)
                .copied()
                .ok_or(GoBinError::MissingSymbol(name))
        };
        let (g, chan) = dwarf::with_dwarf(&file, layouts).map_err(GoBinError::Dwarf)?;

        let gopark = sym("runtime.gopark")?.address;
        let goparkunlock = symbols.get("runtime.goparkunlock").map(|s| s.address);
        let mut block_sites = Vec::new();
        for (name, chan_lock) in BLOCKING {
            let Some(f) = symbols.get(name) else { continue };
            let code = elf::bytes_at(&file, f.address, f.size).unwrap_or_default();
            for site in sites::call_sites(f.address, code, gopark) {
                block_sites.push((site, block_cookie::encode(false, chan_lock)));
            }
            if let Some(unlock) = goparkunlock {
                for site in sites::call_sites(f.address, code, unlock) {
                    block_sites.push((site, block_cookie::encode(true, chan_lock)));
                }
            }
        }
        let offset = |address: u64| {
            elf::file_offset(&file, address).ok_or(GoBinError::NoSite {
                function: "leak probe",
                why: format!("address {address:#x} is in no loadable segment"),
            })
        };
        let closechan = sym("runtime.closechan")?;
        let close = sites::entry_site(
            closechan.address,
            elf::bytes_at(&file, closechan.address, closechan.size).unwrap_or_default(),
            &[0],
        )
        .map_err(|why| GoBinError::NoSite {
            function: "runtime.closechan",
            why,
        })?;
        let chansend = sym("runtime.chansend")?;
        let gopanic = sym("runtime.gopanic")?.address;
        let send_closed = sites::call_sites(
            chansend.address,
            elf::bytes_at(&file, chansend.address, chansend.size).unwrap_or_default(),
            gopanic,
        );
        Ok(Self {
            g,
            chan,
            block_sites: block_sites
                .into_iter()
                .map(|(address, cookie)| {
                    Ok(CookieSite {
                        file_offset: offset(address)?,
                        cookie,
                    })
                })
                .collect::<Result<_, GoBinError>>()?,
            close_site: offset(close.address)?,
            send_closed_sites: send_closed
                .into_iter()
                .map(offset)
                .collect::<Result<_, _>>()?,
            wait_reason_strings: symbols
                .get("runtime.waitReasonStrings")
                .map(|s| (s.address, s.size / 16)),
            data_ranges: data_ranges(&file),
            functions: Arc::new(function_table(&file)),
        })
    }
}

fn layouts(d: &gimli::Dwarf<dwarf::Reader>) -> Result<(GScanOffsets, ChanOffsets), String> {
    let members = |name: &str| -> Result<Vec<(String, u32)>, String> {
        dwarf::struct_members(d, name)?.ok_or_else(|| format!("no DWARF layout of {name}"))
    };
    let field = |fields: &[(String, u32)], owner: &str, name: &str| -> Result<u32, String> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, off)| off)
            .ok_or_else(|| format!("{owner} has no field {name}"))
    };
    let g = members("runtime.g")?;
    let gobuf = members("runtime.gobuf")?;
    let hchan = members("runtime.hchan")?;
    let sudog = members("runtime.sudog")?;
    let waitq = members("runtime.waitq")?;
    let sched = field(&g, "runtime.g", "sched")?;
    let m = members("runtime.m")?;
    let first = field(&waitq, "runtime.waitq", "first")?;
    Ok((
        GScanOffsets {
            waitreason: field(&g, "runtime.g", "waitreason")?,
            waiting: field(&g, "runtime.g", "waiting")?,
            sched_pc: sched + field(&gobuf, "runtime.gobuf", "pc")?,
            sched_bp: sched + field(&gobuf, "runtime.gobuf", "bp")?,
            m: field(&g, "runtime.g", "m")?,
            m_curg: field(&m, "runtime.m", "curg")?,
        },
        ChanOffsets {
            qcount: field(&hchan, "runtime.hchan", "qcount")?,
            dataqsiz: field(&hchan, "runtime.hchan", "dataqsiz")?,
            closed: field(&hchan, "runtime.hchan", "closed")?,
            lock: field(&hchan, "runtime.hchan", "lock")?,
            recvq_first: field(&hchan, "runtime.hchan", "recvq")? + first,
            sendq_first: field(&hchan, "runtime.hchan", "sendq")? + first,
            sudog_c: field(&sudog, "runtime.sudog", "c")?,
        },
    ))
}

fn data_ranges(file: &object::File) -> Vec<(u64, u64)> {
    [".data", ".noptrdata", ".bss", ".noptrbss"]
        .iter()
        .filter_map(|name| file.section_by_name(name))
        .map(|s| (s.address(), s.address() + s.size()))
        .collect()
}

fn function_table(file: &object::File) -> FunctionTable {
    let mut funcs: Vec<(u64, u64, Box<str>)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| {
            Some((
                s.address(),
                s.address() + s.size(),
                crate::procfs::bounded_to(s.name().ok()?, 256).into(),
            ))
        })
        .collect();
    funcs.sort_by_key(|f| (f.0, std::cmp::Reverse(f.1)));
    // ABI wrappers share an address range's start with nothing, but a
    // symbol may repeat: keep the first (largest) per start address.
    funcs.dedup_by_key(|f| f.0);
    FunctionTable(funcs)
}
