//! Frame layouts from hand-assembled stack maps: the geometry, the index
//! rules of `getStackMap`, and hostile bytes (never a panic). The same
//! code against real binaries and the runtime's own GC is checked in
//! `proc/stackscan_tests.rs`.

use super::*;

/// Link-time memory: byte strings placed at addresses.
struct Mem(Vec<(u64, Vec<u8>)>);

impl Mem {
    fn at(&self, addr: u64, len: usize) -> Option<&[u8]> {
        self.0.iter().find_map(|(base, b)| {
            let off = usize::try_from(addr.checked_sub(*base)?).ok()?;
            b.get(off..off.checked_add(len)?)
        })
    }
}

/// A `stackmap` of `nbit` bits per bitmap.
fn stackmap(nbit: i32, maps: &[&[u8]]) -> Vec<u8> {
    let mut b = i32::try_from(maps.len()).unwrap().to_le_bytes().to_vec();
    b.extend(nbit.to_le_bytes());
    for m in maps {
        b.extend(*m);
    }
    b
}

/// A stack-objects funcdata of `(off, size)` records.
fn objects(recs: &[(i32, i32)]) -> Vec<u8> {
    let mut b = (recs.len() as u64).to_le_bytes().to_vec();
    for &(off, size) in recs {
        b.extend(off.to_le_bytes());
        b.extend(size.to_le_bytes());
        b.extend([0u8; 8]);
    }
    b
}

fn facts(spdelta: i32, index: i32) -> FuncFacts {
    FuncFacts {
        spdelta,
        flag: 0,
        args: 24,
        index,
        args_maps: Some(0x100),
        locals_maps: Some(0x200),
        objects: None,
    }
}

/// Locals: 3 words, map 0 = {0}, map 1 = {1, 2}; args: 3 words, map 0 =
/// {}, map 1 = {0, 2}.
fn mem() -> Mem {
    Mem(vec![
        (0x100, stackmap(3, &[&[0b000], &[0b101]])),
        (0x200, stackmap(3, &[&[0b001], &[0b110]])),
        (0x300, objects(&[(-24, 16), (8, 8), (-200, 8)])),
    ])
}

#[test]
fn slots_follow_the_frame_geometry() {
    let m = mem();
    // A 40-byte frame: return address at 40, saved BP at 32, so varp = 32
    // and the 3 local words are 8, 16, 24; arguments start at fp = 48.
    let l = layout(Machine::Amd64, &facts(40, 1), false, |a, n| m.at(a, n)).unwrap();
    assert_eq!(l.size, 48);
    assert_eq!(l.pointers, [16, 24, 48, 64]);
    assert!(!l.top);
    let l = layout(Machine::Amd64, &facts(40, 0), false, |a, n| m.at(a, n)).unwrap();
    assert_eq!(l.pointers, [8]);
}

#[test]
fn index_minus_one_is_the_entry_map() {
    let m = mem();
    let at_minus_one = layout(Machine::Amd64, &facts(40, -1), false, |a, n| m.at(a, n)).unwrap();
    let at_zero = layout(Machine::Amd64, &facts(40, 0), false, |a, n| m.at(a, n)).unwrap();
    assert_eq!(at_minus_one, at_zero);
    assert!(layout(Machine::Amd64, &facts(40, 2), false, |a, n| m.at(a, n)).is_err());
}

#[test]
fn an_empty_frame_needs_no_locals_map() {
    let m = mem();
    let mut f = facts(0, 1);
    f.locals_maps = None;
    let l = layout(Machine::Amd64, &f, false, |a, n| m.at(a, n)).unwrap();
    assert_eq!((l.size, l.pointers.clone()), (8, vec![8, 24]));
    // Only the saved frame pointer: still no locals.
    f.spdelta = 8;
    assert_eq!(
        layout(Machine::Amd64, &f, false, |a, n| m.at(a, n))
            .unwrap()
            .size,
        16
    );
    // A real frame without its map cannot be read.
    f.spdelta = 40;
    assert!(layout(Machine::Amd64, &f, false, |a, n| m.at(a, n)).is_err());
}

#[test]
fn argument_rules() {
    let m = mem();
    let mut f = facts(40, 1);
    f.args = 0;
    assert_eq!(
        layout(Machine::Amd64, &f, false, |a, n| m.at(a, n))
            .unwrap()
            .pointers,
        [16, 24]
    );
    f.args = i32::MIN;
    assert!(layout(Machine::Amd64, &f, false, |a, n| m.at(a, n)).is_err());
    f.args = 8;
    f.args_maps = None;
    assert!(layout(Machine::Amd64, &f, false, |a, n| m.at(a, n)).is_err());
}

#[test]
fn flags_top_frame_and_sp_write() {
    let m = mem();
    let mut f = facts(40, 0);
    f.flag = FLAG_TOP_FRAME;
    assert!(
        layout(Machine::Amd64, &f, false, |a, n| m.at(a, n))
            .unwrap()
            .top
    );
    f.flag = FLAG_SP_WRITE;
    assert!(layout(Machine::Amd64, &f, true, |a, n| m.at(a, n)).is_ok());
    assert!(layout(Machine::Amd64, &f, false, |a, n| m.at(a, n)).is_err());
}

#[test]
fn stack_objects_from_varp_and_argp() {
    let m = mem();
    let mut f = facts(40, 0);
    f.objects = Some(0x300);
    let l = layout(Machine::Amd64, &f, false, |a, n| m.at(a, n)).unwrap();
    // -24 from varp 32 is 8; +8 from argp 48 is 56; -200 is below SP
    // (not allocated yet) and left out.
    assert_eq!(l.objects, [(8, 16), (56, 8)]);
}

#[test]
fn lying_maps_are_refused() {
    let bad = |locals: Vec<u8>, spdelta: i32| {
        let m = Mem(vec![(0x100, stackmap(0, &[&[]])), (0x200, locals)]);
        layout(Machine::Amd64, &facts(spdelta, 0), false, |a, n| m.at(a, n))
    };
    // More local words than the frame holds.
    assert!(bad(stackmap(9, &[&[0, 0]]), 40).is_err());
    // No bitmaps, a negative or huge bit count, a truncated bitmap.
    assert!(bad(stackmap(3, &[]), 40).is_err());
    assert!(bad(stackmap(-3, &[&[1]]), 40).is_err());
    assert!(bad(stackmap(MAX_NBIT + 1, &[&[1]]), 40).is_err());
    assert!(bad(stackmap(16, &[&[1]]), 40).is_err());
    // Misaligned, negative or huge SP deltas.
    assert!(bad(stackmap(3, &[&[1]]), 42).is_err());
    assert!(bad(stackmap(3, &[&[1]]), -8).is_err());
    assert!(bad(stackmap(3, &[&[1]]), i32::MAX - 7).is_err());
    // nbit 0 is "nothing to scan", as the runtime reads it.
    assert_eq!(bad(stackmap(0, &[&[]]), 40).unwrap().pointers, [0u64; 0]);
    // Object counts and sizes out of bounds.
    let m = Mem(vec![
        (0x100, stackmap(0, &[&[]])),
        (0x200, stackmap(0, &[&[]])),
        (0x300, objects(&[(-8, 0)])),
        (0x400, (MAX_OBJECTS + 1).to_le_bytes().to_vec()),
    ]);
    for at in [0x300, 0x400, 0x500] {
        let mut f = facts(40, 0);
        f.objects = Some(at);
        assert!(
            layout(Machine::Amd64, &f, false, |a, n| m.at(a, n)).is_err(),
            "{at:#x}"
        );
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..20_000 {
        // Headers and records small enough to be believed now and then,
        // followed by random bitmap bytes.
        let small = |v: u64, m: u64| (v % m) as i32 - 2;
        let mut map = stackmap(small(next(), 24), &[]);
        map[..4].copy_from_slice(&small(next(), 6).to_le_bytes());
        map.extend((0..16).map(|_| next() as u8));
        let recs: Vec<(i32, i32)> = (0..next() % 4)
            .map(|_| (small(next(), 80) * 4, small(next(), 40)))
            .collect();
        let mut objs = objects(&recs);
        if next() % 8 == 0 {
            objs.truncate((next() % 40) as usize);
        }
        let m = Mem(vec![(0x100, map), (0x200, objs)]);
        let pick = |v: u64| [None, Some(0x100), Some(0x200), Some(0x104)][(v % 4) as usize];
        let f = FuncFacts {
            spdelta: (next() % 96) as i32 - 8,
            flag: next() as u8 & 3,
            args: [0, 8, 64, i32::MIN][(next() % 4) as usize],
            index: (next() % 5) as i32 - 1,
            args_maps: pick(next()),
            locals_maps: pick(next()),
            objects: pick(next()),
        };
        match layout(Machine::Amd64, &f, next() % 2 == 0, |a, n| m.at(a, n)) {
            Ok(l) => {
                ok += 1;
                assert!(l.objects.iter().all(|o| o.1 > 0));
            }
            Err(_) => refused += 1,
        }
    }
    // Both outcomes occur, or the generator tests nothing.
    assert!(ok > 100 && refused > 100, "{ok} {refused}");
}

/// A frame of `spdelta` on `machine`: locals of `locals_bits` words (the
/// lowest live), one live argument word, one stack object 16 bytes below
/// `varp`.
fn frame_on(machine: Machine, spdelta: i32, locals_bits: i32) -> FrameLayout {
    let m = Mem(vec![
        (0x100, stackmap(1, &[&[0b1]])),
        (0x200, stackmap(locals_bits, &[&[0b1]])),
        (0x300, objects(&[(-16, 8)])),
    ]);
    let f = FuncFacts {
        args: 8,
        objects: Some(0x300),
        ..facts(spdelta, 0)
    };
    layout(machine, &f, false, |a, n| m.at(a, n)).unwrap()
}

#[test]
fn amd64_keeps_the_return_address_below_the_callers_sp() {
    // fp = 0x38, return address at 0x30, varp = 0x28 (under the saved
    // BP), argp = fp.
    let f = frame_on(Machine::Amd64, 0x30, 2);
    assert_eq!((f.size, f.ret), (0x38, 0x30));
    assert_eq!(f.pointers, [0x28 - 16, 0x38]);
    assert_eq!(f.objects, [(0x28 - 16, 8)]);
}

#[test]
fn arm64_keeps_the_link_register_at_sp_and_arguments_past_the_callers_lr() {
    // fp = 0x30, LR saved at 0, varp = 0x28 (under the FP link written
    // below SP), argp = fp + 8: the caller's own saved LR sits at fp.
    let f = frame_on(Machine::Arm64, 0x30, 2);
    assert_eq!((f.size, f.ret), (0x30, 0));
    assert_eq!(f.pointers, [0x28 - 16, 0x38]);
    assert_eq!(f.objects, [(0x28 - 16, 8)]);
}

#[test]
fn arm64_reads_no_locals_where_varp_is_within_stack_alignment() {
    // varp = 0x10, not above StackAlign: getStackMap reads no locals map
    // there, while amd64 does in a frame of the same varp.
    let arm = frame_on(Machine::Arm64, 0x18, 1);
    assert_eq!(arm.pointers, [0x20]);
    let amd = frame_on(Machine::Amd64, 0x10, 1);
    assert_eq!(amd.pointers, [0x0, 0x18]);
}
