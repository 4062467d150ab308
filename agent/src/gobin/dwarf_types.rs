//! Following DWARF type references: the sizes of fields whose width moved
//! between releases (`mspan.nelems` was a `uintptr` before Go 1.22, a
//! `uint16` since) and the lengths of the runtime's fixed arrays
//! (`semtable`, `mheap.arenas`, `heapArena.spans`).
//!
//! Go's linker writes every type once, in one unit, and refers to it from
//! the others by section offset, so a reference is resolved by finding the
//! unit that holds it.

use std::collections::HashMap;

use gimli::{AttributeValue, DebugInfoOffset, EndianSlice, RunTimeEndian, UnitHeader};

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

/// One struct member: name, offset, and its type (for widths and lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub offset: u32,
    pub ty: Option<gimli::DebugInfoOffset>,
}

/// A struct's size and members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Struct {
    pub size: Option<u64>,
    pub members: Vec<Member>,
}

impl Struct {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
}

/// A global's address and type.
pub type Variable = (u64, Option<gimli::DebugInfoOffset>);

/// The structs and globals the DWARF walk collected, by name.
pub type Members = HashMap<&'static str, Struct>;
pub type Variables = HashMap<&'static str, Variable>;

/// Typedef chains followed before giving up (Go writes one level).
const MAX_TYPEDEFS: usize = 8;
/// Pointer size on the 64-bit targets gobin reads: Go writes no
/// `DW_AT_byte_size` on its pointer types.
const POINTER_SIZE: u64 = 8;

/// What one type entry says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeInfo {
    pub tag: gimli::DwTag,
    pub size: Option<u64>,
    /// `DW_AT_type`: the element, pointee or aliased type.
    pub target: Option<DebugInfoOffset>,
    /// An array's length (`DW_AT_count` of its subrange).
    pub count: Option<u64>,
}

/// Resolves type references of one binary's DWARF.
pub struct Types<'d, 'a> {
    dwarf: &'d gimli::Dwarf<Reader<'a>>,
    headers: Vec<UnitHeader<Reader<'a>>>,
}

/// A reference attribute as a section offset, whatever its form.
pub fn reference(
    unit: &gimli::Unit<Reader>,
    value: AttributeValue<Reader>,
) -> Option<DebugInfoOffset> {
    match value {
        AttributeValue::UnitRef(off) => off.to_debug_info_offset(&unit.header),
        AttributeValue::DebugInfoRef(off) => Some(off),
        _ => None,
    }
}

impl<'d, 'a> Types<'d, 'a> {
    pub fn new(dwarf: &'d gimli::Dwarf<Reader<'a>>) -> gimli::Result<Self> {
        let mut headers = Vec::new();
        let mut units = dwarf.units();
        while let Some(h) = units.next()? {
            headers.push(h);
        }
        Ok(Self { dwarf, headers })
    }

    /// The entry at `off`, when it is in some unit.
    pub fn get(&self, off: DebugInfoOffset) -> gimli::Result<Option<TypeInfo>> {
        let Some((header, at)) = self
            .headers
            .iter()
            .find_map(|h| Some((h, off.to_unit_offset(h)?)))
        else {
            return Ok(None);
        };
        let unit = self.dwarf.unit(*header)?;
        let mut tree = unit.entries_tree(Some(at))?;
        let root = tree.root()?;
        let entry = root.entry();
        let size = match entry.attr_value(gimli::DW_AT_byte_size)? {
            Some(v) => v.udata_value(),
            None => None,
        };
        let target = match entry.attr_value(gimli::DW_AT_type)? {
            Some(v) => reference(&unit, v),
            None => None,
        };
        let tag = entry.tag();
        let mut count = None;
        if tag == gimli::DW_TAG_array_type {
            let mut children = root.children();
            while let Some(child) = children.next()? {
                if child.entry().tag() == gimli::DW_TAG_subrange_type {
                    count = match child.entry().attr_value(gimli::DW_AT_count)? {
                        Some(v) => v.udata_value(),
                        None => None,
                    };
                }
            }
        }
        Ok(Some(TypeInfo {
            tag,
            size,
            target,
            count,
        }))
    }

    /// The type at `off` with typedefs peeled off.
    pub fn underlying(&self, mut off: DebugInfoOffset) -> gimli::Result<Option<TypeInfo>> {
        for _ in 0..MAX_TYPEDEFS {
            let Some(info) = self.get(off)? else {
                return Ok(None);
            };
            match (info.tag, info.target) {
                (gimli::DW_TAG_typedef, Some(next)) => off = next,
                _ => return Ok(Some(info)),
            }
        }
        Ok(None)
    }

    /// The size in bytes of the type at `off`.
    pub fn size_of(&self, off: DebugInfoOffset) -> gimli::Result<Option<u64>> {
        Ok(self.underlying(off)?.and_then(|t| match t.tag {
            gimli::DW_TAG_pointer_type => Some(t.size.unwrap_or(POINTER_SIZE)),
            _ => t.size,
        }))
    }

    /// `(length, element size, element type)` of the array type at `off`.
    pub fn array(
        &self,
        off: DebugInfoOffset,
    ) -> gimli::Result<Option<(u64, u64, DebugInfoOffset)>> {
        let Some(t) = self.underlying(off)? else {
            return Ok(None);
        };
        let (Some(count), Some(size), Some(elem)) = (t.count, t.size, t.target) else {
            return Ok(None);
        };
        if t.tag != gimli::DW_TAG_array_type || count == 0 {
            return Ok(None);
        }
        Ok(Some((count, size / count, elem)))
    }

    /// The array that the pointer type at `off` points to:
    /// `(length, element size)` (`mheap.arenas` holds `*[1<<22]*heapArena`).
    pub fn pointee_array(&self, off: DebugInfoOffset) -> gimli::Result<Option<(u64, u64)>> {
        let Some(p) = self.underlying(off)? else {
            return Ok(None);
        };
        match (p.tag, p.target) {
            (gimli::DW_TAG_pointer_type, Some(to)) => {
                Ok(self.array(to)?.map(|(n, size, _)| (n, size)))
            }
            _ => Ok(None),
        }
    }
}
