//! `gostray inspect`: what the agent reads from one Go binary, and whether
//! it can watch it. Needs no privileges for a file path.

use std::{fmt::Write as _, io::Write as _, path::PathBuf, time::Instant};

use anyhow::Context;
use serde::Serialize;

use crate::{
    cli::config::InspectArgs,
    gobin::{
        AddressSource, BuildInfo, ChosenSite, Frame, FuncRange, GOffsets, GoBinary, HchanOffsets,
        LayoutSource, Machine, RegisterAbi, SudogOffsets, WaitReason, WaitqOffsets,
    },
};

/// The report, as printed with `--json`.
#[derive(Serialize)]
#[allow(clippy::struct_excessive_bools)] // a flat report of yes/no facts
struct Report<'a> {
    path: String,
    supported: bool,
    /// The machine the binary was built for (`GOARCH`).
    arch: Machine,
    /// Whether this agent, built for its own machine, can attach to it.
    attachable_here: bool,
    /// Where Go's register ABI puts what the kernel programs read.
    registers: &'a RegisterAbi,
    go_version: String,
    build: &'a BuildInfo,
    build_id: Option<&'a str>,
    pie: bool,
    stripped: bool,
    dwarf: bool,
    functions: usize,
    layout: &'a LayoutSource,
    g: GOffsets,
    hchan: HchanOffsets,
    waitq: WaitqOffsets,
    sudog: SudogOffsets,
    allgs: String,
    allglen: String,
    allgs_source: AddressSource,
    sites: Vec<SiteReport<'a>>,
    wait_reasons: Vec<WaitReasonEntry<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timing: Option<Timing>,
}

#[derive(Serialize)]
struct SiteReport<'a> {
    #[serde(flatten)]
    chosen: &'a ChosenSite,
    /// `[entry, end)` of the function the site is in.
    function_range: Option<FuncRange>,
    /// Where the instruction is in the source, from the function table.
    source: Option<Frame>,
    /// The instruction class and how the kernel runs a uprobe there
    /// (arm64, where only some branches and `adrp` are simulated).
    #[serde(skip_serializing_if = "Option::is_none")]
    instruction: Option<String>,
}

#[derive(Serialize)]
struct WaitReasonEntry<'a> {
    value: usize,
    name: &'a str,
    kind: &'static str,
}

/// `--timing`: what one analysis cost.
#[derive(Serialize)]
struct Timing {
    parse_ms: f64,
    /// Peak resident set (`VmHWM`), including touched pages of the mapped file.
    peak_rss_kib: u64,
    /// Anonymous (heap) memory resident after the parse: the cost beyond the mapping.
    rss_anon_kib: u64,
    rss_file_kib: u64,
}

/// Runs `inspect`; an unsupported binary is an error (non-zero exit, one line).
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let path = target_path(&args.target);
    let started = Instant::now();
    let bin =
        GoBinary::open(&path).with_context(|| format!("{}: not supported", path.display()))?;
    let elapsed = started.elapsed();
    let timing = args.timing.then(|| Timing {
        parse_ms: elapsed.as_secs_f64() * 1e3,
        peak_rss_kib: status_kib("VmHWM"),
        rss_anon_kib: status_kib("RssAnon"),
        rss_file_kib: status_kib("RssFile"),
    });
    let report = Report {
        path: path.display().to_string(),
        supported: true,
        arch: bin.machine,
        attachable_here: Machine::host() == Some(bin.machine),
        registers: bin.abi(),
        go_version: bin.build.raw_version.clone(),
        build: &bin.build,
        build_id: bin.build_id.as_deref(),
        pie: bin.pie,
        stripped: bin.stripped,
        dwarf: bin.has_dwarf,
        functions: bin.functions,
        layout: &bin.layout_source,
        g: bin.offsets,
        hchan: bin.hchan,
        waitq: bin.waitq,
        sudog: bin.sudog,
        allgs: format!("{:#x}", bin.allgs),
        allglen: format!("{:#x}", bin.allglen),
        allgs_source: bin.allgs_source,
        sites: bin
            .sites
            .iter()
            .map(|chosen| SiteReport {
                chosen,
                function_range: bin.function(chosen.function),
                source: bin.symbolize(chosen.site.address),
                instruction: bin.describe_site(&chosen.site),
            })
            .collect(),
        wait_reasons: bin
            .wait_reasons
            .iter()
            .enumerate()
            .map(|(value, name)| WaitReasonEntry {
                value,
                name,
                kind: WaitReason::from_name(name).as_str(),
            })
            .collect(),
        timing,
    };
    let text = if args.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        print_text(&report)
    };
    // A closed pipe (`gostray inspect … | head`) is not an error.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("writing the report");
        }
    }
    if bin.layout_source.is_guess() {
        eprintln!(
            "gostray: warning: struct offsets guessed from another Go release ({:?})",
            bin.layout_source
        );
    }
    Ok(())
}

/// A PID names its process's executable; anything else is a path.
fn target_path(target: &str) -> PathBuf {
    if !target.is_empty() && target.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{target}/exe"))
    } else {
        PathBuf::from(target)
    }
}

#[allow(clippy::many_single_char_names)] // one letter per struct printed
fn print_text(r: &Report) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    macro_rules! line {
        ($($t:tt)*) => {
            let _ = writeln!(out, $($t)*);
        };
    }
    if r.attachable_here {
        line!("{}: supported", r.path);
    } else {
        line!(
            "{}: supported on {} (not by this agent, built for {}: run gostray for {} there)",
            r.path,
            r.arch,
            std::env::consts::ARCH,
            r.arch
        );
    }
    line!("  architecture   {}", r.arch);
    line!("  go version     {}", r.go_version);
    if let Some(m) = &r.build.module {
        line!("  module         {m}");
    }
    for (k, v) in &r.build.settings {
        if matches!(
            k.as_str(),
            "-race" | "CGO_ENABLED" | "GOEXPERIMENT" | "-ldflags" | "-buildmode" | "GOAMD64"
        ) {
            line!("  build          {k}={v}");
        }
    }
    line!("  build id       {}", r.build_id.unwrap_or("-"));
    line!(
        "  binary         {}{}, {} functions",
        if r.pie { "PIE" } else { "fixed address" },
        match (r.stripped, r.dwarf) {
            (false, true) => ", symbols and DWARF",
            (false, false) => ", symbols, no DWARF",
            (true, true) => ", stripped symbols, DWARF",
            (true, false) => ", stripped (no .symtab, no DWARF)",
        },
        r.functions
    );
    let source = match r.layout {
        LayoutSource::Dwarf => "DWARF".to_string(),
        LayoutSource::Table { version } => format!("offsets table ({version})"),
        LayoutSource::Guessed { version } => format!("GUESSED from the table's {version}"),
    };
    line!("  offsets from   {source}");
    out.push_str(&layouts(r));
    line!(
        "  allgs          {} allglen {} (from {:?})",
        r.allgs,
        r.allglen,
        r.allgs_source
    );
    line!("  probe sites");
    for s in &r.sites {
        let c = s.chosen;
        let at = s
            .source
            .as_ref()
            .map_or(String::new(), |f| format!(" at {}:{}", f.file, f.line));
        let class = s
            .instruction
            .as_ref()
            .map_or(String::new(), |i| format!(" {i}"));
        line!(
            "    {:<8} {:<28} {:#x} (file offset {:#x}) {:?}{class}{at}",
            c.name,
            c.function,
            c.site.address,
            c.site.file_offset,
            c.site.kind
        );
    }
    if r.wait_reasons.is_empty() {
        line!("  wait reasons   not found (parked goroutines will be labelled `other`)");
    } else {
        line!("  wait reasons   {}", r.wait_reasons.len());
        for w in &r.wait_reasons {
            line!("    {:>3} {:<32} {}", w.value, w.name, w.kind);
        }
    }
    if let Some(t) = &r.timing {
        line!(
            "  timing         parse {:.1} ms, peak RSS {} KiB (anon {} KiB, file {} KiB)",
            t.parse_ms,
            t.peak_rss_kib,
            t.rss_anon_kib,
            t.rss_file_kib
        );
    }
    out
}

/// The struct offsets section of the text report.
#[allow(clippy::many_single_char_names)] // one letter per struct printed
fn layouts(r: &Report) -> String {
    let mut out = String::new();
    macro_rules! line {
        ($($t:tt)*) => {
            let _ = writeln!(out, $($t)*);
        };
    }
    let g = &r.g;
    line!(
        "  runtime.g      goid={} atomicstatus={} gopc={} startpc={} parentGoid={} waitreason={} waitsince={} sched.pc/sp/bp={}/{}/{} stack.lo/hi={}/{}",
        g.goid, g.atomicstatus, g.gopc, g.startpc,
        g.parent_goid.map_or("-".into(), |o| o.to_string()),
        g.waitreason, g.waitsince, g.sched_pc, g.sched_sp, g.sched_bp, g.stack_lo, g.stack_hi
    );
    let h = &r.hchan;
    line!(
        "  runtime.hchan  qcount={} dataqsiz={} buf={} elemsize={} closed={} recvq={} sendq={} lock={}",
        h.qcount, h.dataqsiz, h.buf, h.elemsize, h.closed, h.recvq, h.sendq, h.lock
    );
    line!(
        "  runtime.waitq  first={} last={}",
        r.waitq.first,
        r.waitq.last
    );
    let s = &r.sudog;
    line!(
        "  runtime.sudog  g={} next={} elem={} c={}",
        s.g,
        s.next,
        s.elem,
        s.c
    );
    out
}

/// A `kB` line of /proc/self/status.
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
