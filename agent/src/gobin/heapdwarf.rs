//! The heap walker's offsets ([`HeapOffsets`]) from the structs and
//! globals the DWARF walk of [`super::dwarf`] collected.

use super::{
    dwarf_types::{Members, Struct, Types, Variables},
    heaplayout::{
        Field, HeapArenaOffsets, HeapOffsets, MheapOffsets, ModuledataOffsets, MspanOffsets,
        SemaOffsets, SudogLinks, TimerOffsets,
    },
};

/// Structs read for the heap walker, besides the agent's own.
/// `runtime.timers` and `runtime.timerWhen` exist from Go 1.23, the
/// `maybeTraceable` wrappers of sudog pointers from Go 1.26.
pub const STRUCTS: [&str; 13] = [
    "runtime.mheap",
    "runtime.heapArena",
    "runtime.mspan",
    "runtime.mSpanStateBox",
    "runtime.semaRoot",
    "runtime.moduledata",
    "runtime.bitvector",
    "runtime.p",
    "runtime.timer",
    "runtime.timers",
    "runtime.timerWhen",
    "runtime.maybeTraceablePtr",
    "runtime.maybeTraceableChan",
];
/// Globals whose addresses and types are read for the heap walker.
pub const VARIABLES: [&str; 4] = [
    "runtime.mheap_",
    "runtime.semtable",
    "runtime.firstmoduledata",
    "runtime.allp",
];
/// Bytes of a `*timer`, the element of `p.timers` before Go 1.23.
const POINTER_SIZE: u32 = 8;

/// Reads a struct's members, naming what is missing.
struct Reader<'s, 't, 'd, 'a> {
    structs: &'s Members,
    types: &'t Types<'d, 'a>,
}

impl Reader<'_, '_, '_, '_> {
    fn get(&self, st: &str) -> Result<&Struct, String> {
        self.structs
            .get(st)
            .ok_or_else(|| format!("no DWARF type {st}"))
    }

    fn offset(&self, st: &str, f: &str) -> Result<u32, String> {
        Ok(self.member(st, f)?.offset)
    }

    fn member(&self, st: &str, f: &str) -> Result<&super::dwarf_types::Member, String> {
        self.get(st)?
            .member(f)
            .ok_or_else(|| format!("{st} has no field {f}"))
    }

    fn size(&self, st: &str) -> Result<u32, String> {
        self.get(st)?
            .size
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| format!("{st} has no size"))
    }

    /// Offset and width of `st.f`.
    fn field(&self, st: &str, f: &str) -> Result<Field, String> {
        let m = self.member(st, f)?;
        let size =
            m.ty.map(|t| self.types.size_of(t))
                .transpose()
                .map_err(|e| format!("DWARF: {e}"))?
                .flatten()
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| format!("{st}.{f} has a type of unknown size"))?;
        Ok(Field {
            offset: m.offset,
            size,
        })
    }

    /// The word of `sudog.f` that holds the pointer. Go ≥ 1.26 wraps
    /// `elem` and `c` in `maybeTraceablePtr{vp, vu}` (`maybeTraceableChan`
    /// embeds one), clearing `vp` to hide the pointer from its leak
    /// detector: `vu` is the source of truth.
    fn pointer_word(&self, f: &str) -> Result<u32, String> {
        let m = self.member("runtime.sudog", f)?;
        let is_struct =
            m.ty.and_then(|t| self.types.underlying(t).ok().flatten())
                .is_some_and(|t| t.tag == gimli::DW_TAG_structure_type);
        if !is_struct {
            return Ok(m.offset);
        }
        let ptr = "runtime.maybeTraceablePtr";
        let embedded = match f {
            "c" => self.offset("runtime.maybeTraceableChan", "maybeTraceablePtr")?,
            _ => 0,
        };
        Ok(m.offset + embedded + self.offset(ptr, "vu")?)
    }

    /// `(length, element size)` of the array type `ty` (`what` names it).
    fn array(&self, ty: Option<gimli::DebugInfoOffset>, what: &str) -> Result<(u32, u32), String> {
        let dims = ty
            .map(|t| self.types.array(t))
            .transpose()
            .map_err(|e| format!("DWARF: {e}"))?
            .flatten()
            .map(|(n, size, _)| (n, size));
        dims.and_then(|(n, s)| Some((u32::try_from(n).ok()?, u32::try_from(s).ok()?)))
            .ok_or_else(|| format!("{what} is not an array of known length"))
    }
}

/// Everything of [`HeapOffsets`], naming the first thing missing.
pub fn offsets(structs: &Members, vars: &Variables, types: &Types) -> Result<HeapOffsets, String> {
    let r = Reader { structs, types };
    let arenas = r.member("runtime.mheap", "arenas")?;
    let (arenas_l1, _) = r.array(arenas.ty, "mheap.arenas")?;
    // Each L1 entry points to an L2 array: its length is the pointee's.
    let arenas_l2 = arenas
        .ty
        .and_then(|t| types.array(t).ok().flatten())
        .and_then(|(_, _, elem)| types.pointee_array(elem).ok().flatten())
        .and_then(|(n, _)| u32::try_from(n).ok())
        .ok_or("mheap.arenas does not hold pointers to arrays")?;
    let spans = r.member("runtime.heapArena", "spans")?;
    let (pages, _) = r.array(spans.ty, "heapArena.spans")?;
    let semtable = vars
        .get("runtime.semtable")
        .ok_or("no DWARF variable runtime.semtable")?;
    let (entries, entry_size) = r.array(semtable.1, "runtime.semtable")?;
    // Every supported release boxes the state byte (`mSpanStateBox.s`); a
    // release without the box would have the byte at `state` itself.
    let mut state = r.field("runtime.mspan", "state")?;
    if let Ok(s) = r.field("runtime.mSpanStateBox", "s") {
        state = Field {
            offset: state.offset + s.offset,
            size: s.size,
        };
    }
    let m = |f: &str| r.field("runtime.mspan", f);
    let s = |f: &str| r.offset("runtime.sudog", f);
    let traceable = |f: &str| r.pointer_word(f);
    let md = |f: &str| r.offset("runtime.moduledata", f);
    Ok(HeapOffsets {
        mheap: MheapOffsets {
            arenas: arenas.offset,
            arenas_l1,
            arenas_l2,
            // Renamed `heapArenas` in Go 1.25 (user arenas are listed apart).
            all_arenas: r
                .offset("runtime.mheap", "allArenas")
                .or_else(|_| r.offset("runtime.mheap", "heapArenas"))?,
        },
        heap_arena: HeapArenaOffsets {
            spans: spans.offset,
            pages,
            size: r.size("runtime.heapArena")?,
        },
        mspan: MspanOffsets {
            start_addr: m("startAddr")?,
            npages: m("npages")?,
            nelems: m("nelems")?,
            elemsize: m("elemsize")?,
            limit: m("limit")?,
            spanclass: m("spanclass")?,
            state,
            freeindex: m("freeindex")?,
            alloc_bits: m("allocBits")?,
            size: r.size("runtime.mspan")?,
        },
        sudog: SudogLinks {
            g: s("g")?,
            elem: traceable("elem")?,
            c: traceable("c")?,
            waitlink: s("waitlink")?,
            next: s("next")?,
            prev: s("prev")?,
            parent: s("parent")?,
            ticket: s("ticket")?,
        },
        sema: SemaOffsets {
            root_treap: r.offset("runtime.semaRoot", "treap")?,
            entry_size,
            entries,
        },
        moduledata: ModuledataOffsets {
            noptrdata: md("noptrdata")?,
            enoptrdata: md("enoptrdata")?,
            data: md("data")?,
            edata: md("edata")?,
            bss: md("bss")?,
            ebss: md("ebss")?,
            noptrbss: md("noptrbss")?,
            enoptrbss: md("enoptrbss")?,
            gcdatamask: md("gcdatamask")?,
            gcbssmask: md("gcbssmask")?,
            bitvector_n: r.offset("runtime.bitvector", "n")?,
            bitvector_bytedata: r.offset("runtime.bitvector", "bytedata")?,
        },
        timers: timers(&r)?,
    })
}

/// The P's timer heap: a `[]*timer` in `p.timers` before Go 1.23, then a
/// `[]timerWhen` in `p.timers.heap`.
fn timers(r: &Reader) -> Result<TimerOffsets, String> {
    let p_timers = r.offset("runtime.p", "timers")?;
    let timer_arg = r.offset("runtime.timer", "arg")?;
    if r.get("runtime.timers").is_err() {
        return Ok(TimerOffsets {
            p_timers,
            entry_size: POINTER_SIZE,
            timer_arg,
        });
    }
    if r.offset("runtime.timerWhen", "timer")? != 0 {
        return Err("runtime.timerWhen does not start with its timer".into());
    }
    Ok(TimerOffsets {
        p_timers: p_timers + r.offset("runtime.timers", "heap")?,
        entry_size: r.size("runtime.timerWhen")?,
        timer_arg,
    })
}
