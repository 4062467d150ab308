//! Struct layouts and variable addresses from the binary's own DWARF.
//!
//! Go writes runtime types and globals as top-level entries of their units,
//! so only the children of each unit's root are visited (function bodies
//! are skipped), and the walk stops once everything wanted is found.

use std::{borrow::Cow, collections::HashMap};

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

use super::{
    dwarf_types::{self, Member, Members, Struct, Types, Variables},
    heapdwarf,
    heaplayout::HeapOffsets,
    layout::{GOffsets, HchanOffsets, Layout, SudogOffsets, WaitqOffsets},
};

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// Structs whose members are read: the agent's, then the heap walker's
/// ([`heapdwarf::STRUCTS`]).
const STRUCTS: [&str; 8] = [
    "runtime.g",
    "runtime.m",
    "runtime.mcache",
    "runtime.gobuf",
    "runtime.stack",
    "runtime.hchan",
    "runtime.waitq",
    "runtime.sudog",
];
/// Globals whose addresses are read: the agent's, then the heap walker's.
pub const VARIABLES: [&str; 4] = [
    "runtime.allgs",
    "runtime.allglen",
    "runtime.waitReasonStrings",
    "runtime.allm",
];
/// Members per struct we keep (runtime.g has about 60).
const MAX_MEMBERS: usize = 512;
/// Largest DWARF section decompressed (prometheus's `.debug_info` would be
/// about 60 MB; a lying header could claim terabytes).
const MAX_DWARF_SECTION: u64 = 1 << 30;
/// `DW_OP_addr`: the expression Go uses for a global's location.
const DW_OP_ADDR: u8 = 0x03;

/// What the DWARF says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DwarfFacts {
    pub layout: Layout,
    /// Addresses of [`VARIABLES`] and [`heapdwarf::VARIABLES`] that were
    /// found, by name.
    pub variables: HashMap<&'static str, u64>,
    /// The heap walker's offsets, or why they are not all there.
    pub heap: Result<HeapOffsets, String>,
    /// `runtime.allm` and `m.alllink`: the list of every M, runtime
    /// bookkeeping the heap walk must not scan into.
    pub ms: Option<(u64, u32)>,
    /// `p.mcache` and `mcache.tiny`: each P's current tiny-allocator block,
    /// which the runtime's GC keeps alive (`gcMarkTinyAllocs`).
    pub tiny: Option<(u32, u32)>,
    /// `mspan.specials`: where finalizers and cleanups hang.
    pub span_specials: Option<u32>,
}

/// Reads the layouts; `Ok(None)` when the binary has no DWARF (`-w`).
pub fn read(file: &object::File) -> Result<Option<DwarfFacts>, String> {
    if file.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    // Only the sections a type walk touches (units parse their line
    // program header): no frame, location or range tables.
    let load = |id: gimli::SectionId| -> Result<Cow<[u8]>, String> {
        if matches!(
            id,
            gimli::SectionId::DebugFrame
                | gimli::SectionId::EhFrame
                | gimli::SectionId::DebugLoc
                | gimli::SectionId::DebugLocLists
                | gimli::SectionId::DebugAranges
        ) {
            return Ok(Cow::Borrowed(&[]));
        }
        let Some(section) = file.section_by_name(id.name()) else {
            return Ok(Cow::Borrowed(&[]));
        };
        // A compressed section states its own size: bound it before the
        // decompressor allocates that much.
        let stated = section.compressed_data().map_or(0, |c| c.uncompressed_size);
        if stated > MAX_DWARF_SECTION {
            return Err(format!("{} claims {stated} bytes uncompressed", id.name()));
        }
        Ok(section.uncompressed_data().unwrap_or(Cow::Borrowed(&[])))
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    let (structs, vars) = walk(&dwarf).map_err(|e| format!("DWARF: {e}"))?;
    let layout = layout(&structs)?;
    let alllink = structs
        .get("runtime.m")
        .and_then(|m| m.member("alllink"))
        .map(|m| m.offset);
    let heap = Types::new(&dwarf)
        .map_err(|e| format!("DWARF: {e}"))
        .and_then(|types| heapdwarf::offsets(&structs, &vars, &types));
    let variables: HashMap<&'static str, u64> =
        vars.into_iter().map(|(k, (a, _))| (k, a)).collect();
    let ms = variables.get("runtime.allm").copied().zip(alllink);
    let offset = |s: &str, m: &str| structs.get(s).and_then(|st| st.member(m)).map(|m| m.offset);
    let tiny = offset("runtime.p", "mcache").zip(offset("runtime.mcache", "tiny"));
    Ok(Some(DwarfFacts {
        layout,
        variables,
        heap,
        ms,
        tiny,
        span_specials: offset("runtime.mspan", "specials"),
    }))
}

fn walk(dwarf: &gimli::Dwarf<Reader>) -> gimli::Result<(Members, Variables)> {
    let all_structs = || STRUCTS.iter().chain(&heapdwarf::STRUCTS);
    let all_vars = || VARIABLES.iter().chain(&heapdwarf::VARIABLES);
    let wanted = all_structs().count() + all_vars().count();
    let mut structs: Members = HashMap::new();
    let mut vars = HashMap::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let mut children = tree.root()?.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            let tag = entry.tag();
            if tag != gimli::DW_TAG_structure_type && tag != gimli::DW_TAG_variable {
                continue;
            }
            let Some(name) = entry.attr_value(gimli::DW_AT_name)? else {
                continue;
            };
            let name = dwarf.attr_string(&unit, name)?;
            let name = name.slice();
            if tag == gimli::DW_TAG_variable {
                let Some(&wanted) = all_vars().find(|v| v.as_bytes() == name) else {
                    continue;
                };
                if let Some(AttributeValue::Exprloc(expr)) =
                    entry.attr_value(gimli::DW_AT_location)?
                {
                    let b = expr.0.slice();
                    if b.len() == 9 && b[0] == DW_OP_ADDR {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&b[1..]);
                        let ty = match entry.attr_value(gimli::DW_AT_type)? {
                            Some(v) => dwarf_types::reference(&unit, v),
                            None => None,
                        };
                        vars.insert(wanted, (u64::from_le_bytes(a), ty));
                    }
                }
            } else if let Some(&wanted) = all_structs().find(|s| s.as_bytes() == name) {
                if structs.contains_key(wanted) {
                    continue;
                }
                let size = match entry.attr_value(gimli::DW_AT_byte_size)? {
                    Some(v) => v.udata_value(),
                    None => None,
                };
                let members = members(dwarf, &unit, child)?;
                if !members.is_empty() {
                    structs.insert(wanted, Struct { size, members });
                }
            }
            // Structs a release lacks (`runtime.timers` before 1.23) make
            // the walk read every unit: the cost of one full pass.
            if structs.len() + vars.len() == wanted {
                return Ok((structs, vars));
            }
        }
    }
    Ok((structs, vars))
}

fn members(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    node: gimli::EntriesTreeNode<Reader>,
) -> gimli::Result<Vec<Member>> {
    let mut out = Vec::new();
    let mut children = node.children();
    while let Some(child) = children.next()? {
        let m = child.entry();
        if m.tag() != gimli::DW_TAG_member || out.len() >= MAX_MEMBERS {
            continue;
        }
        let (Some(name), Some(loc)) = (
            m.attr_value(gimli::DW_AT_name)?,
            m.attr_value(gimli::DW_AT_data_member_location)?,
        ) else {
            continue;
        };
        let offset = match loc {
            AttributeValue::Udata(v) | AttributeValue::Data8(v) => v,
            AttributeValue::Data1(v) => u64::from(v),
            AttributeValue::Data2(v) => u64::from(v),
            AttributeValue::Data4(v) => u64::from(v),
            AttributeValue::Sdata(v) if v >= 0 => v as u64,
            _ => continue,
        };
        let Ok(offset) = u32::try_from(offset) else {
            continue;
        };
        let ty = match m.attr_value(gimli::DW_AT_type)? {
            Some(v) => dwarf_types::reference(unit, v),
            None => None,
        };
        let name = dwarf.attr_string(unit, name)?;
        out.push(Member {
            name: String::from_utf8_lossy(name.slice()).into_owned(),
            offset,
            ty,
        });
    }
    Ok(out)
}

/// Assembles the [`Layout`], naming the first missing struct or field.
fn layout(s: &Members) -> Result<Layout, String> {
    let field = |st: &str, f: &str| -> Result<u32, String> {
        let members = s
            .get(st)
            .ok_or_else(|| format!("no DWARF type {st} (built with -w?)"))?;
        members
            .member(f)
            .map(|m| m.offset)
            .ok_or_else(|| format!("{st} has no field {f}"))
    };
    let g = |f: &str| field("runtime.g", f);
    let (sched, stack) = (g("sched")?, g("stack")?);
    Ok(Layout {
        g: GOffsets {
            goid: g("goid")?,
            atomicstatus: g("atomicstatus")?,
            gopc: g("gopc")?,
            startpc: g("startpc")?,
            parent_goid: g("parentGoid").ok(),
            waitreason: g("waitreason")?,
            waitsince: g("waitsince")?,
            sched_pc: sched + field("runtime.gobuf", "pc")?,
            sched_sp: sched + field("runtime.gobuf", "sp")?,
            sched_bp: sched + field("runtime.gobuf", "bp")?,
            stack_lo: stack + field("runtime.stack", "lo")?,
            stack_hi: stack + field("runtime.stack", "hi")?,
            waiting: g("waiting")?,
            m: g("m")?,
            m_curg: field("runtime.m", "curg")?,
        },
        hchan: {
            let h = |f: &str| field("runtime.hchan", f);
            HchanOffsets {
                qcount: h("qcount")?,
                dataqsiz: h("dataqsiz")?,
                buf: h("buf")?,
                elemsize: h("elemsize")?,
                closed: h("closed")?,
                recvq: h("recvq")?,
                sendq: h("sendq")?,
                lock: h("lock")?,
            }
        },
        waitq: WaitqOffsets {
            first: field("runtime.waitq", "first")?,
            last: field("runtime.waitq", "last")?,
        },
        sudog: {
            let f = |n: &str| field("runtime.sudog", n);
            SudogOffsets {
                g: f("g")?,
                next: f("next")?,
                elem: f("elem")?,
                c: f("c")?,
            }
        },
    })
}
