//! `cargo xtask arm64-vm`: the agent on a real arm64 kernel, emulated.
//!
//! One boot of Debian's arm64 cloud kernel in qemu-system-aarch64 (TCG:
//! no arm64 host here), with an initramfs of busybox, the arm64 image's
//! agent (aarch64 musl, the arm64 kernel object) and two arm64 Go fixtures
//! per Go line: the newest and the oldest of the matrix by default.
//! `xtask/vm/init.sh` drives them and prints what it saw; [`judge`] holds
//! the checks. The test command runs the same boot as one bounded slice.

mod assets;
mod cpio;
mod judge;

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{
    tools,
    util::{done, step},
};

/// The VM's /init.
const INIT: &str = include_str!("../../vm/init.sh");

#[derive(clap::Args, Clone)]
pub struct VmArgs {
    /// Goroutines spawned in each timed batch (with and without the
    /// agent): the per-hit cost is their difference over 2 hits a spawn.
    #[arg(long, default_value_t = 50_000)]
    pub batch: u64,
    /// Longest the VM may run before it is stopped and the run failed.
    #[arg(long, default_value_t = 900)]
    pub timeout_secs: u64,
    /// Emulated CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// The Go lines whose fixtures run (comma-separated): the first is
    /// attached to while running and timed, the others are found at exec.
    #[arg(long = "go", value_delimiter = ',', default_values_t = default_lines())]
    pub lines: Vec<String>,
}

/// The newest Go line and the oldest: the two ends of the runtime's
/// layouts and probe sites.
fn default_lines() -> Vec<String> {
    [tools::GO_NEWEST, tools::GO_RELEASES[0]]
        .map(|r| r.line.to_string())
        .to_vec()
}

impl Default for VmArgs {
    fn default() -> Self {
        Self {
            batch: 50_000,
            timeout_secs: 900,
            cpus: 2,
            lines: default_lines(),
        }
    }
}

/// Boots the VM once and judges it; fails on any failed check.
pub fn arm64_vm(args: &VmArgs) -> anyhow::Result<()> {
    let (passed, failed) = run_and_report(args)?;
    if failed > 0 {
        bail!("arm64 VM: {failed} of {} checks failed", passed + failed);
    }
    Ok(())
}

/// The test command's slice: one default boot, counted as its checks. A
/// missing piece (qemu, kernel, cross toolchain) is a failure, never a skip:
/// every piece is installed by this command itself.
pub fn slice() -> (u64, u64) {
    match run_and_report(&VmArgs::default()) {
        Ok(totals) => totals,
        Err(e) => {
            eprintln!("arm64 VM: FAILED before judging: {e:#}");
            (0, 1)
        }
    }
}

fn run_and_report(args: &VmArgs) -> anyhow::Result<(u64, u64)> {
    if args.lines.is_empty() {
        bail!("no Go line to run");
    }
    let (initrd, kernel, package) = prepare(&args.lines)?;
    let t = step(&format!(
        "booting {package} in qemu-system-aarch64 (TCG, {} CPUs)",
        args.cpus
    ));
    let started = Instant::now();
    let console = boot(&kernel, &initrd, args)?;
    let wall = started.elapsed();
    done(t);
    fs::write(assets::dir().join("console.log"), &console)?;
    let run = judge::parse(&console);
    let checks = judge::checks(&run, args.batch, &args.lines);
    let mut totals = (0, 0);
    for (what, ok) in &checks {
        println!("arm64 VM: {}: {what}", if *ok { "ok" } else { "FAILED" });
        if *ok {
            totals.0 += 1;
        } else {
            totals.1 += 1;
        }
    }
    for line in &args.lines {
        if let Some((verdict, reason, count, at)) = judge::leak_group(&run, line) {
            println!(
                "arm64 VM: Go {line} leak line: {verdict} {} x{count} ({reason}), created at {at}",
                judge::LEAK_FUNCTION
            );
        }
    }
    if let (Some(&(n, bare)), Some(&(_, probed))) =
        (run.timing.get("bare"), run.timing.get("probed"))
    {
        println!(
            "arm64 VM: {n} spawns took {bare} ms bare, {probed} ms probed: {} per probe hit \
             (emulated arm64 under TCG: not comparable to amd64 numbers)",
            judge::per_hit_us(&run).map_or("n/a".to_string(), |us| format!("{us:.1} µs"))
        );
    }
    if !run.calibration.is_empty() {
        let ns = |k: &str| {
            run.calibration
                .get(k)
                .map_or("?".into(), |v| format!("{:.1}", *v as f64 / 1000.0))
        };
        println!(
            "arm64 VM: the agent's own price of a hit (µs, emulated): trap floor {}, create {}, exit {}, park {}, close {}",
            ns("floor_ns"),
            ns("create_ns"),
            ns("exit_ns"),
            ns("park_ns"),
            ns("close_ns")
        );
    }
    println!(
        "arm64 VM: kernel {}, wall time {:.0} s (console: target/vm/console.log)",
        run.kernel,
        wall.as_secs_f64()
    );
    if totals.1 > 0 {
        // The VM's own words about what went wrong.
        for line in console
            .lines()
            .filter(|l| l.contains("gostray-vm: "))
            .take(60)
        {
            eprintln!("  {line}");
        }
    }
    Ok(totals)
}

/// Builds or fetches every piece and packs the initramfs; returns it, the
/// kernel image and the kernel's package name.
fn prepare(lines: &[String]) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    assets::ensure_qemu()?;
    let (kernel, package) = assets::kernel()?;
    let busybox = fs::read(assets::busybox()?)?;
    let agent = fs::read(assets::agent()?)?;
    let fixtures = assets::fixtures(lines)?
        .into_iter()
        .map(|(name, path)| Ok((name, fs::read(path)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t = step("packing the initramfs (cpio newc, gzip)");
    let mut entries = vec![
        cpio::Entry::dir("bin"),
        cpio::Entry::dir("dev"),
        cpio::Entry::char_dev("dev/console", 5, 1),
        cpio::Entry::dir("proc"),
        cpio::Entry::dir("sys"),
        cpio::Entry::dir("tmp"),
        cpio::Entry::exec("bin/busybox", &busybox),
        cpio::Entry::exec("init", INIT.as_bytes()),
        cpio::Entry::exec("gostray", &agent),
    ];
    entries.extend(
        fixtures
            .iter()
            .map(|(name, binary)| cpio::Entry::exec(name, binary)),
    );
    let archive = cpio::archive(&entries);
    let raw = assets::dir().join("initramfs.cpio");
    fs::write(&raw, archive)?;
    let status = Command::new("gzip")
        .args(["-f", "-1"])
        .arg(&raw)
        .status()
        .context("gzip")?;
    if !status.success() {
        bail!("gzip {} failed", raw.display());
    }
    done(t);
    Ok((assets::dir().join("initramfs.cpio.gz"), kernel, package))
}

/// Runs qemu until the guest powers off or `timeout_secs` pass; returns
/// the console text (also echoed, the VM's lines as they come).
fn boot(
    kernel: &std::path::Path,
    initrd: &std::path::Path,
    args: &VmArgs,
) -> anyhow::Result<String> {
    let mut child = Command::new("qemu-system-aarch64")
        .args(["-M", "virt", "-m", "2G", "-nographic", "-no-reboot"])
        // pauth-impdef: QEMU's own pointer-authentication hash, much faster
        // to emulate than the architected QARMA one the kernel would use.
        .args(["-cpu", "max,pauth-impdef=on"])
        .args(["-smp", &args.cpus.to_string()])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        // The kernel hands `name=value` words it does not know to init as
        // environment variables: the batch size reaches init.sh that way.
        .args([
            "-append",
            &format!(
                "console=ttyAMA0 rdinit=/init panic=-1 quiet gostray_batch={} gostray_lines={}",
                args.batch,
                args.lines.join(",")
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-aarch64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line).into_owned();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut console = String::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                if line.contains("gostray-vm: ") && !line.contains("gostray-vm: report ") {
                    println!("  {}", line.trim_end());
                }
                console.push_str(&line);
                console.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    if timed_out {
        let _ = writeln!(
            console,
            "gostray-vm: error: the VM was stopped after {} s",
            args.timeout_secs
        );
    }
    Ok(console)
}
