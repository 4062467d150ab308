//! The `debug=1` encoding: the runtime's legacy text format for count
//! profiles (`printCountProfile` and `printStackRecord` in
//! `runtime/pprof/pprof.go`), for reading without tools:
//!
//! ```text
//! goroutineleak profile: total 11
//! 10 @ 0x1 0x2 0x3 0x4
//! # labels: {"pid":"4242", "wait_reason":"chan send"}
//! #\t0x3\tmain.handle.func1\t/src/demo/main.go:21
//! ```
//!
//! (`\t` a tab: the runtime aligns its columns with tabs.)
//!
//! One difference: the runtime writes `function+0xOFFSET`, the distance of
//! the PC from the function's entry. The agent keeps no PCs with its frames
//! (addresses are frame numbers, see `Locations`), so it writes the bare
//! function name rather than an offset it does not know.

use std::fmt::Write;

use super::profile::{CountProfile, Locations};

/// Tab stops of the runtime's `tabwriter.NewWriter(w, 1, 8, 1, '\t', 0)`.
const TAB: usize = 8;

pub fn render(profile: &CountProfile) -> String {
    let total: u64 = profile.samples.iter().map(|s| s.count).sum();
    let mut out = format!("{} profile: total {total}\n", profile.name);
    let locations = Locations::of(profile);
    for (sample, stack) in profile.samples.iter().zip(&locations.stacks) {
        let _ = write!(out, "{} @", sample.count);
        for id in stack {
            let _ = write!(out, " {id:#x}");
        }
        out.push('\n');
        if !sample.labels.is_empty() {
            let mut pairs: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k:?}:{v:?}"))
                .collect();
            pairs.sort();
            let _ = writeln!(out, "# labels: {{{}}}", pairs.join(", "));
        }
        let rows: Vec<[String; 4]> = shown(stack, &locations)
            .map(|(id, i)| {
                let site = locations.frames[i];
                [
                    "#".into(),
                    format!("{id:#x}"),
                    printable(&site.function),
                    format!("{}:{}", printable(&site.file), site.line),
                ]
            })
            .collect();
        aligned(&mut out, &rows);
        out.push('\n');
    }
    out
}

/// The frames `printStackRecord` prints: never `runtime.goexit`, and not
/// the runtime's own frames at the top of the stack (`gopark` and the
/// like) unless nothing else is left. Yields (address, frame index).
fn shown<'s>(
    stack: &'s [u64],
    locations: &'s Locations,
) -> impl Iterator<Item = (u64, usize)> + 's {
    let name = |id: u64| locations.frames[id as usize - 1].function.as_str();
    let is_runtime = |f: &str| f.starts_with("runtime.") || f.starts_with("internal/runtime/");
    let first_user = stack
        .iter()
        .position(|&id| !is_runtime(name(id)))
        .unwrap_or(0);
    stack[first_user..]
        .iter()
        .filter(move |&&id| name(id) != "runtime.goexit")
        .map(|&id| (id, id as usize - 1))
}

/// Writes `rows` as the runtime's tabwriter does: every cell but the last
/// padded with tabs to a column width that is the widest cell plus one,
/// rounded up to a tab stop.
fn aligned(out: &mut String, rows: &[[String; 4]]) {
    let widths: Vec<usize> = (0..3)
        .map(|c| {
            let widest = rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0);
            (widest + 1).div_ceil(TAB) * TAB
        })
        .collect();
    for row in rows {
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(cell);
            let tabs = (width - cell.chars().count()).div_ceil(TAB);
            out.extend(std::iter::repeat_n('\t', tabs));
        }
        out.push_str(&row[3]);
        out.push('\n');
    }
}

/// Control characters from a target would break the line format.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::profile::tests::{example, site};
    use super::*;

    #[test]
    fn matches_the_runtime_layout() {
        let text = render(&example());
        let want = "goroutineleak profile: total 11\n\
            10 @ 0x1 0x2 0x3 0x4\n\
            # labels: {\"pid\":\"4242\", \"wait_reason\":\"chan send\"}\n\
            #\t0x3\tmain.handle.func1\t/src/demo/main.go:21\n\
            \n\
            1 @ 0x1 0x5 0x4\n\
            #\t0x5\tmain.worker\t/src/demo/main.go:40\n\
            \n";
        assert_eq!(text, want);
    }

    #[test]
    fn columns_align_on_tab_stops() {
        let mut p = example();
        p.samples[0].stack.insert(
            3,
            site("main.aVeryLongFunctionNameIndeed", "/src/demo/main.go", 9),
        );
        let text = render(&p);
        // As Go's tabwriter writes them (checked with it): the long name
        // (32) makes the column 40 wide, so "main.handle.func1" (17) takes
        // three tabs and the long name one.
        assert!(
            text.contains("#\t0x3\tmain.handle.func1\t\t\t/src/demo/main.go:21\n"),
            "{text}"
        );
        assert!(
            text.contains("#\t0x4\tmain.aVeryLongFunctionNameIndeed\t/src/demo/main.go:9\n"),
            "{text}"
        );
    }

    #[test]
    fn runtime_only_stacks_are_shown_whole() {
        let mut p = example();
        p.samples[1].stack = vec![
            site("runtime.gopark", "/go/src/runtime/proc.go", 460),
            site("runtime.goexit", "/go/src/runtime/asm_amd64.s", 1700),
        ];
        p.samples[1].labels = vec![("exe", "a\"b\nc".into())];
        let text = render(&p);
        assert!(text.contains("#\t0x1\truntime.gopark\t/go/src/runtime/proc.go:460\n"));
        assert!(!text.contains("runtime.goexit"));
        assert!(text.contains(r#"# labels: {"exe":"a\"b\nc"}"#), "{text}");
    }
}
