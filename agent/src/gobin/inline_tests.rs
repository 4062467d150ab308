//! Inline-aware symbolization against the runtime's own answer: the
//! `inline` fixture (every Go line, default and stripped builds) prints the
//! PCs `runtime.Callers` returned inside inlined code and the frames
//! `runtime.CallersFrames` made of them; expanding the same PCs with
//! [`GoBinary::symbolize_inline`], and hiding wrappers by
//! [`GoBinary::is_wrapper`], must give the same frames.

use std::process::Command;

use super::{tests::toolchains, GoBinary};

/// One stack the fixture printed.
#[derive(Debug, Default)]
struct Printed {
    name: String,
    pcs: Vec<u64>,
    frames: Vec<(String, String, u32)>,
}

fn parse(out: &str) -> Vec<Printed> {
    let mut stacks = Vec::new();
    let mut cur = Printed::default();
    for l in out.lines() {
        if let Some(name) = l.strip_prefix("stack ") {
            cur.name = name.to_string();
        } else if let Some(pc) = l.strip_prefix("pc 0x") {
            cur.pcs.push(u64::from_str_radix(pc, 16).unwrap());
        } else if let Some(f) = l.strip_prefix("frame ") {
            let v: Vec<&str> = f.split('\t').collect();
            assert_eq!(v.len(), 3, "{l}");
            cur.frames
                .push((v[0].to_string(), v[1].to_string(), v[2].parse().unwrap()));
        } else if l == "end" {
            stacks.push(std::mem::take(&mut cur));
        }
    }
    stacks
}

#[test]
fn symbolize_inline_agrees_with_callers_frames() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        for variant in ["", "-stripped"] {
            let path = dir.join(format!("inline-{line}{variant}"));
            let what = path.display().to_string();
            let bin = GoBinary::open(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(!bin.pie, "{what}: PCs are compared unrelocated");
            assert!(bin.gofunc.is_some(), "{what}: no moduledata.gofunc");
            let out = Command::new(&path).output().unwrap();
            assert!(out.status.success(), "{what}");
            let stacks = parse(&String::from_utf8(out.stdout).unwrap());
            assert_eq!(stacks.len(), 6, "{what}");
            let (mut deepest, mut hidden) = (0, 0);
            for s in &stacks {
                let mut ours = Vec::new();
                let mut i = 0;
                while i < s.pcs.len() {
                    // Return addresses: the call is at pc - 1.
                    let pc = s.pcs[i] - 1;
                    let mut chain = bin.symbolize_inline(pc);
                    assert!(!chain.is_empty(), "{what} {}: {pc:#x}", s.name);
                    deepest = deepest.max(chain.len());
                    // The runtime leaves a wrapper's own frame out, so its
                    // PC is not in the list either.
                    if bin.is_wrapper(pc) {
                        chain.pop();
                        hidden += 1;
                    }
                    // Each inlined frame has a PC of its own in the list
                    // (its call site): expanding it gives the rest of the chain.
                    for (k, pc) in s.pcs[i..].iter().take(chain.len()).enumerate().skip(1) {
                        let rest = bin.symbolize_inline(pc - 1);
                        assert_eq!(
                            rest[..rest.len().min(chain.len() - k)],
                            chain[k..],
                            "{what} {}: {pc:#x}",
                            s.name
                        );
                    }
                    i += chain.len().max(1);
                    ours.extend(chain.into_iter().map(|f| (f.function, f.file, f.line)));
                }
                assert_eq!(ours, s.frames, "{what}: stack {}", s.name);
            }
            // d, c and b inlined into deep; from Go 1.22 the compiler
            // inlines awaitDone into the `go t.awaitDone()` wrapper, whose
            // own frame is then hidden (before, the wrapper calls it, and
            // the runtime leaves the wrapper's PC out of the list altogether).
            assert!(deepest >= 4, "{what}: deepest chain {deepest}");
            let minor: u32 = line.split('.').nth(1).unwrap().parse().unwrap();
            assert!(hidden >= 1 || minor < 22, "{what}: no wrapper hidden");
        }
    }
}

/// `is_wrapper` reads the function's funcID, whose wrapper value moved
/// between releases; from Go 1.22 the `go` statement wrappers are also
/// named `….gowrapN`, which must agree.
#[test]
fn wrappers_by_func_id_agree_with_names() {
    let Some((dir, tools)) = toolchains() else {
        return;
    };
    for (line, _) in &tools {
        let path = dir.join(format!("inline-{line}-stripped"));
        let bin = GoBinary::open(&path).unwrap();
        let data = bin.pcln();
        let (mut gowraps, mut wrappers) = (0, 0);
        for i in 0..bin.functions {
            let Some(f) = bin.pclntab.func(data, i) else {
                continue;
            };
            let name = String::from_utf8_lossy(bin.pclntab.name(data, &f).unwrap()).into_owned();
            let wrapper = bin.is_wrapper(f.entry);
            wrappers += usize::from(wrapper);
            let gowrap = name
                .rsplit_once(".gowrap")
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if gowrap {
                gowraps += 1;
                assert!(wrapper, "{line}: {name}");
            }
        }
        let minor: u32 = line.split('.').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            gowraps > 0,
            minor >= 22,
            "{line}: {gowraps} gowrap functions"
        );
        assert!(wrappers > 0, "{line}");
        for name in ["main.main", "main.deep", "runtime.goexit"] {
            let f = bin.function(name).unwrap();
            assert!(!bin.is_wrapper(f.entry), "{line}: {name}");
        }
    }
}
