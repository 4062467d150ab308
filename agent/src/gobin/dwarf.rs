//! Struct layouts of the Go runtime, from the binary's own DWARF.

use std::borrow::Cow;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};
use object::{Object, ObjectSection};

/// Offsets of the `runtime.g` fields the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GOffsets {
    pub goid: u32,
    pub atomicstatus: u32,
    pub gopc: u32,
    pub startpc: u32,
    /// `g.parentGoid` exists from Go 1.21.
    pub parent_goid: Option<u32>,
}

pub(crate) type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// Loads the DWARF sections of `file` (empty when absent) and runs `f` on them.
pub(crate) fn with_dwarf<T>(
    file: &object::File,
    f: impl FnOnce(&gimli::Dwarf<Reader>) -> Result<T, String>,
) -> Result<T, String> {
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<[u8]>, String> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    })?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    f(&dwarf)
}

/// Finds `runtime.g` in the DWARF of `file` and returns its field offsets.
pub fn g_offsets(file: &object::File) -> Result<GOffsets, String> {
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<[u8]>, String> {
        Ok(file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[])))
    })?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    let fields = struct_members(&dwarf, "runtime.g")?.ok_or("no DWARF (built with -w?)")?;
    let get = |name: &str| -> Result<u32, String> {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|&(_, off)| off)
            .ok_or_else(|| format!("runtime.g has no field {name}"))
    };
    Ok(GOffsets {
        goid: get("goid")?,
        atomicstatus: get("atomicstatus")?,
        gopc: get("gopc")?,
        startpc: get("startpc")?,
        parent_goid: get("parentGoid").ok(),
    })
}

/// The (name, offset) members of the struct type named `wanted`, or `None`
/// when the DWARF has no such type.
pub(crate) fn struct_members(
    dwarf: &gimli::Dwarf<Reader>,
    wanted: &str,
) -> Result<Option<Vec<(String, u32)>>, String> {
    let err = |e: gimli::Error| format!("DWARF: {e}");
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(err)? {
        let unit = dwarf.unit(header).map_err(err)?;
        let mut cursor = unit.entries();
        while let Some((_, entry)) = cursor.next_dfs().map_err(err)? {
            if entry.tag() != gimli::DW_TAG_structure_type {
                continue;
            }
            let Some(name) = entry.attr_value(gimli::DW_AT_name).map_err(err)? else {
                continue;
            };
            if dwarf.attr_string(&unit, name).map_err(err)?.slice() != wanted.as_bytes() {
                continue;
            }
            let mut tree = unit.entries_tree(Some(entry.offset())).map_err(err)?;
            let root = tree.root().map_err(err)?;
            let mut children = root.children();
            let mut members = Vec::new();
            while let Some(child) = children.next().map_err(err)? {
                let member = child.entry();
                if member.tag() != gimli::DW_TAG_member {
                    continue;
                }
                let (Some(name), Some(loc)) = (
                    member.attr_value(gimli::DW_AT_name).map_err(err)?,
                    member
                        .attr_value(gimli::DW_AT_data_member_location)
                        .map_err(err)?,
                ) else {
                    continue;
                };
                let name = dwarf.attr_string(&unit, name).map_err(err)?;
                let offset = match loc {
                    AttributeValue::Udata(v) => v,
                    AttributeValue::Data1(v) => u64::from(v),
                    AttributeValue::Data2(v) => u64::from(v),
                    AttributeValue::Data4(v) => u64::from(v),
                    AttributeValue::Data8(v) => v,
                    AttributeValue::Sdata(v) if v >= 0 => v as u64,
                    _ => continue,
                };
                let offset = u32::try_from(offset)
                    .map_err(|_| format!("{wanted} member offset {offset} too large"))?;
                members.push((String::from_utf8_lossy(name.slice()).into_owned(), offset));
            }
            if !members.is_empty() {
                return Ok(Some(members));
            }
        }
    }
    Ok(None)
}
