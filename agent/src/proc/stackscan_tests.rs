//! The stack walk over synthetic stacks, then against live Go processes of
//! every toolchain in `GOSTRAY_GO_TOOLS`, judged by the runtime's own GC:
//! a heap object its finalizer says the GC freed must not be behind any
//! live slot, and the objects the GC kept must be.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
};

use super::*;
use crate::proc::scan::read_allgs;

const SP: u64 = 0x1000;

/// An amd64 frame: the return address just below the caller's SP.
fn frame(size: u64, pointers: &[u64], objects: &[(u64, u64)], top: bool) -> FrameLayout {
    FrameLayout {
        size,
        ret: size - 8,
        pointers: pointers.to_vec(),
        objects: objects.to_vec(),
        top,
    }
}

/// A stack of `words` 8-byte values from `SP`.
fn stack(words: &[(u64, u64)], len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    for &(at, v) in words {
        let o = (at - SP) as usize;
        b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    b
}

fn parked(len: u64) -> Parked {
    Parked {
        pc: 0xa,
        sp: SP,
        lo: SP - 0x100,
        hi: SP + len,
    }
}

/// Three frames (PCs 0xa, 0xb, 0xc): a live slot points into an object of
/// the middle frame, which points into an object of the innermost one;
/// an object of the outer frame is reached by nothing.
fn three_frames(pc: u64, _: bool) -> Result<FrameLayout, NoFrame> {
    match pc {
        0xa => Ok(frame(0x20, &[0], &[(0x8, 0x10)], false)),
        0xb => Ok(frame(0x30, &[0x8], &[(0x10, 0x10)], false)),
        0xc => Ok(frame(0x8, &[], &[(0x10, 0x8)], true)),
        _ => Err(NoFrame("unknown PC")),
    }
}

#[test]
fn frames_and_reached_stack_objects() {
    let words = [
        (0x1000, 0x1034), // live: into the middle frame's object
        (0x1018, 0xb),    // return address
        (0x1028, 0xc000), // live: a heap pointer
        (0x1038, 0x1008), // object word: into the innermost object
        (0x1048, 0xc),    // return address
        (0x1060, 0xc008), // unreached object
    ];
    let s = stack(&words, 0x70);
    let slots = slots(&s, &parked(0x70), three_frames).unwrap();
    assert_eq!(slots, [0x1000, 0x1008, 0x1010, 0x1028, 0x1030, 0x1038]);
}

#[test]
fn unresolved_stacks_are_refused() {
    let len = 0x70;
    let good = [(0x1018, 0xb), (0x1048, 0xc)];
    assert!(slots(&stack(&good, len), &parked(len), three_frames).is_ok());
    // A zero or unknown return address, a stack cut short, an unknown
    // function, a slot or object past the stack.
    for words in [[(0x1018, 0), (0x1048, 0xc)], [(0x1018, 0xb), (0x1048, 0xd)]] {
        assert!(slots(&stack(&words, len), &parked(len), three_frames).is_err());
    }
    assert!(slots(&stack(&good[..1], 0x48), &parked(0x48), three_frames).is_err());
    let outside = |pc: u64, _: bool| Ok(frame(8, &[(pc - 0xa) * 0x100], &[], true));
    assert!(slots(&stack(&[], 0x100), &parked(0x100), outside).is_ok());
    let mut g = parked(0x100);
    g.pc = 0x10;
    assert!(slots(&stack(&[], 0x100), &g, outside).is_err());
    let big_object = |_: u64, _: bool| Ok(frame(8, &[], &[(0, 0x101)], true));
    assert!(slots(&stack(&[], 0x100), &parked(0x100), big_object).is_err());
    // Frames that never reach the top frame end after MAX_FRAMES.
    let len = (MAX_FRAMES as u64 + 8) * 8;
    let all = (0..len / 8).map(|i| (SP + i * 8, 0xa)).collect::<Vec<_>>();
    let endless = |_: u64, _: bool| Ok(frame(8, &[], &[], false));
    let e = slots(&stack(&all, len), &parked(len), endless).unwrap_err();
    assert_eq!(e, NoFrame("too many frames"));
}

/// Three goroutines park on a channel: `live` reads its object after the
/// park, `dead` never again, `object` through a pointer to an
/// address-taken local. `main` runs the GC until `dead`'s object is freed
/// and prints each object's address and whether its finalizer ran.
const PROGRAM: &str = r#"package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
)

type T struct {
	p   *int
	pad [6]int
}

var (
	done      = make(chan struct{})
	collected [3]int32
	sink      *T
)

func watch(t *T, i int) {
	runtime.SetFinalizer(t, func(*T) { atomic.StoreInt32(&collected[i], 1) })
}

//go:noinline
func use(t **T) {
	if *t == nil {
		panic("nil")
	}
}

//go:noinline
func live(ready chan<- uintptr) {
	t := new(T)
	watch(t, 0)
	ready <- uintptr(unsafe.Pointer(t))
	<-done
	sink = t
}

//go:noinline
func dead(ready chan<- uintptr) {
	var keep [1]*T
	keep[0] = new(T)
	use(&keep[0])
	watch(keep[0], 1)
	ready <- uintptr(unsafe.Pointer(keep[0]))
	<-done
}

//go:noinline
func object(ready chan<- uintptr) {
	var keep [1]*T
	keep[0] = new(T)
	watch(keep[0], 2)
	ready <- uintptr(unsafe.Pointer(keep[0]))
	q := &keep
	<-done
	use(&q[0])
}

func main() {
	ready := make(chan uintptr)
	go live(ready)
	l := <-ready
	go dead(ready)
	d := <-ready
	go object(ready)
	o := <-ready
	for i := 0; i < 200 && atomic.LoadInt32(&collected[1]) == 0; i++ {
		runtime.GC()
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("live %d %d\n", l, atomic.LoadInt32(&collected[0]))
	fmt.Printf("dead %d %d\n", d, atomic.LoadInt32(&collected[1]))
	fmt.Printf("object %d %d\n", o, atomic.LoadInt32(&collected[2]))
	bufio.NewReader(os.Stdin).ReadString('\n')
	close(done)
}
"#;

/// `(line, go)` pairs from `GOSTRAY_GO_TOOLS`; `None` skips (never under CI).
fn toolchains() -> Option<Vec<(String, PathBuf)>> {
    let Ok(tools) = std::env::var("GOSTRAY_GO_TOOLS") else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "GOSTRAY_GO_TOOLS unset under CI: run `cargo xtask test`"
        );
        eprintln!("SKIPPED: no Go toolchains; run `cargo xtask test`");
        return None;
    };
    Some(
        tools
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(l, g)| (l.to_string(), PathBuf::from(g)))
            .collect(),
    )
}

fn build(line: &str, go: &PathBuf) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gostray-stackscan-{}-{line}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.go"), PROGRAM).unwrap();
    std::fs::write(dir.join("go.mod"), "module stackscan\n\ngo 1.19\n").unwrap();
    let out = Command::new(go)
        .args(["build", "-o", "stackscan", "."])
        .current_dir(&dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go {line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("stackscan")
}

/// Values in the live slots of every parked goroutine, and in every word
/// from each one's SP up (what a conservative scan reads).
fn stack_values(pid: u32, bin: &GoBinary) -> (HashSet<u64>, HashSet<u64>) {
    let o = bin.offsets;
    let (mut precise, mut conservative) = (HashSet::new(), HashSet::new());
    let mut parked = 0;
    for g in read_allgs(pid, bin, 0).unwrap() {
        let word = |off: u32| mem::read_u64(pid, g + u64::from(off)).unwrap();
        if word(o.atomicstatus) as u32 & !0x1000 != 4 {
            continue;
        }
        let p = Parked {
            pc: word(o.sched_pc),
            sp: word(o.sched_sp),
            lo: word(o.stack_lo),
            hi: word(o.stack_hi),
        };
        let slots = live_slots(pid, bin, 0, &p).unwrap_or_else(|e| {
            let f = bin.symbolize(p.pc).map(|f| f.function);
            panic!("goroutine at {f:?}: {e}")
        });
        precise.extend(slots.iter().map(|&a| mem::read_u64(pid, a).unwrap()));
        conservative.extend(
            (p.sp..p.hi)
                .step_by(8)
                .map(|a| mem::read_u64(pid, a).unwrap()),
        );
        parked += 1;
    }
    assert!(parked >= 3, "{parked} parked goroutines");
    (precise, conservative)
}

#[test]
fn live_slots_agree_with_the_runtimes_gc() {
    let Some(tools) = toolchains() else { return };
    for (line, go) in &tools {
        let path = build(line, go);
        let bin = GoBinary::open(&path).unwrap();
        assert!(!bin.pie, "go {line}: addresses are read unrelocated");
        let mut child = Command::new(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut objects = Vec::new();
        for _ in 0..3 {
            let mut l = String::new();
            out.read_line(&mut l).unwrap();
            let v: Vec<&str> = l.split_whitespace().collect();
            objects.push((v[0].to_string(), v[1].parse::<u64>().unwrap(), v[2] == "1"));
        }
        let (precise, conservative) = stack_values(child.id(), &bin);
        child.stdin.take().unwrap().write_all(b"\n").unwrap();
        assert!(child.wait().unwrap().success());
        for (name, addr, freed) in objects {
            // The runtime's verdict first: the program must do what it says.
            assert_eq!(freed, name == "dead", "go {line}: {name} freed={freed}");
            assert_eq!(precise.contains(&addr), !freed, "go {line}: {name}");
            if freed {
                // A conservative scan still sees it: the case tests something.
                assert!(conservative.contains(&addr), "go {line}: {name}");
            }
        }
        std::fs::remove_dir_all(path.parent().unwrap()).ok();
    }
}
