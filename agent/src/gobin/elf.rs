//! The ELF facts the agent needs: symbols, segments, address translation.

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use super::SymbolTable;

/// A symbol's virtual address and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    pub address: u64,
    pub size: u64,
}

/// Function and data symbols from `.symtab`, by name. Go emits ABI wrappers
/// under the same name as the real function; the larger body is the real one.
pub fn function_and_data_symbols<'a>(file: &'a object::File<'a>) -> SymbolTable<'a> {
    let mut table = SymbolTable::new();
    for sym in file.symbols() {
        if !matches!(
            sym.kind(),
            SymbolKind::Text | SymbolKind::Data | SymbolKind::Unknown
        ) {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let new = Symbol {
            address: sym.address(),
            size: sym.size(),
        };
        table
            .entry(name)
            .and_modify(|old: &mut Symbol| {
                if new.size > old.size {
                    *old = new;
                }
            })
            .or_insert(new);
    }
    table
}

/// The file bytes backing `size` bytes at virtual address `address`.
pub fn bytes_at<'a>(file: &object::File<'a>, address: u64, size: u64) -> Option<&'a [u8]> {
    file.segments().find_map(|seg| {
        let (start, len) = (seg.address(), seg.size());
        if address < start || address.checked_add(size)? > start.checked_add(len)? {
            return None;
        }
        let data = seg.data().ok()?;
        let from = usize::try_from(address - start).ok()?;
        data.get(from..from.checked_add(usize::try_from(size).ok()?)?)
    })
}

/// The file offset of virtual address `address`, as the kernel's uprobe API wants it.
pub fn file_offset(file: &object::File, address: u64) -> Option<u64> {
    file.segments().find_map(|seg| {
        let (start, len) = (seg.address(), seg.size());
        let (offset, file_len) = seg.file_range();
        (address >= start && address < start + len && address - start < file_len)
            .then(|| offset + (address - start))
    })
}

/// The lowest loadable virtual address, page-aligned: the link-time address
/// that the process's first mapping of the executable corresponds to.
pub fn image_base(file: &object::File) -> u64 {
    file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff
}
