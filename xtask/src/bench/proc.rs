//! Processes the bench drives: workloads speaking the ready/go protocol,
//! the agent, and what /proc and /metrics say about them.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::util::{free_port, Guard};

/// A `bench-micro` process waiting for its go line.
pub struct Workload {
    pub guard: Guard,
    /// Its first line (`ready`, with the address for the HTTP service).
    pub first: String,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    /// Starts `binary` with `args` and waits for its first line (`ready`).
    pub fn start(binary: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut w = Self {
            guard: Guard(child),
            first: String::new(),
            stdin,
            stdout,
        };
        w.first = w.line()?;
        Ok(w)
    }

    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    /// The next line it prints (without the newline).
    pub fn line(&mut self) -> anyhow::Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("workload {} exited early", self.pid());
        }
        Ok(l.trim_end().to_string())
    }

    /// Sends the go line.
    pub fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Sends the go line and returns the `ns_per_op` it reports.
    pub fn measure(&mut self) -> anyhow::Result<f64> {
        self.go()?;
        let l = self.line()?;
        l.strip_prefix("ns_per_op ")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("unexpected workload output {l:?}"))
    }
}

/// The agent, serving /metrics on its own port.
pub struct Agent {
    pub guard: Guard,
    pub port: u16,
}

impl Agent {
    /// Starts `gostray run <args> --overhead-budget off` and waits for
    /// /readyz: every probe group stays attached, so the rows that measure
    /// what the probes cost measure all of them, whatever the load.
    pub fn start(agent: &Path, args: &[String]) -> anyhow::Result<Self> {
        let mut all = args.to_vec();
        all.extend(["--overhead-budget".into(), "off".into()]);
        Self::start_budgeted(agent, &all)
    }

    /// Starts `gostray run <args>` with the agent's own overhead budget
    /// (unless `args` sets one) and waits for /readyz.
    pub fn start_budgeted(agent: &Path, args: &[String]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(agent)
            .arg("run")
            .args(args)
            .env_remove("GOSTRAY_OVERHEAD_BUDGET")
            // The bench reads one process's series by its pid label.
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log",
                "warn",
                "--pid-label",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting the agent")?;
        let mut a = Self {
            guard: Guard(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return Ok(a);
            }
            if let Ok(Some(status)) = a.guard.0.try_wait() {
                bail!("the agent exited ({status})");
            }
            thread::sleep(Duration::from_millis(10));
        }
        bail!("the agent was not ready within 30 s")
    }

    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics").unwrap_or_default()
    }
}

/// The sum of every sample of `name` (all label sets) in a scrape.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET `path` on loopback `port`.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is field 3.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15: indices 11 and 12 after ')'.
    // USER_HZ is 100 on every Linux architecture the agent supports.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// Peak resident memory of `pid` in bytes (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Fails when the agent's fatal-path probes (`runtime.throw`, `fatal`,
/// `fatalpanic`) ran during `workload`: they must cost a healthy program
/// nothing, which means they must never fire. The counter is the
/// kernel's own (per-CPU, bumped before the PID filter, so it counts hits
/// in every process of the executable).
pub fn no_fatal_hits(metrics: &str, workload: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        metrics.contains("\ngostray_fatal_probe_hits_total "),
        "the agent exports no gostray_fatal_probe_hits_total: the fatal-path check cannot run"
    );
    let hits = sample(metrics, "gostray_fatal_probe_hits_total");
    anyhow::ensure!(
        hits == 0.0,
        "the fatal-path probes fired {hits} times during the {workload} workload"
    );
    Ok(())
}

/// How many times the kernel ran `pid`'s BPF programs and for how long in
/// all (ns), from their fdinfo (`run_cnt`, `run_time_ns`: counted only
/// while `kernel.bpf_stats_enabled` is 1).
pub fn bpf_runs(pid: u32) -> (u64, u64) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return (0, 0);
    };
    let field = |t: &str, name: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|t| t.contains("prog_type:"))
        .fold((0, 0), |(n, ns), t| {
            (n + field(&t, "run_cnt:"), ns + field(&t, "run_time_ns:"))
        })
}

/// Turns the kernel's BPF run statistics on for as long as it lives.
pub struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub fn enable() -> anyhow::Result<Self> {
        let before = std::fs::read_to_string(Self::PATH)?.trim().to_string();
        std::fs::write(Self::PATH, "1")?;
        Ok(Self(before))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}
