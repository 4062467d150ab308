//! Command line: clap types whose doc comments are the `--help` text, turned
//! once into a validated [`RunConfig`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use super::probes::parse_probes;
pub use super::probes::ProbeGroups;
use crate::control::selection::Rule;
use crate::server::report::{Filter, VERDICTS};

/// Finds stray goroutines in running, unmodified Go programs.
///
/// gostray attaches eBPF uprobes to the Go runtime of the processes you name
/// and keeps a live table of their goroutines, served as Prometheus metrics.
/// It needs root, or `CAP_SYS_ADMIN` (`CAP_BPF` + `CAP_PERFMON` before Linux
/// 6.16) and `CAP_SYS_PTRACE`.
#[derive(Debug, Parser)]
#[command(name = "gostray", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, global = true, env = "GOSTRAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` syntax (`info`, `debug`, `gostray=trace`…).
    #[arg(long, global = true, env = "GOSTRAY_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Kernel-side log level (aya-log), fixed when the probes are loaded. Only
/// failure paths log, so even `debug` costs nothing while probes succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[repr(u8)]
pub enum KernelLog {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch Go processes and serve what is seen on --listen.
    ///
    /// Examples:
    ///   gostray run --pid 4242
    ///   gostray run --binary /usr/local/bin/api-server --listen 0.0.0.0:9981
    ///   gostray run                      (every Go process on the host)
    ///   gostray run --include 'namespace=shop' --exclude 'label:gostray=off'
    Run(RunArgs),
    /// Print the running agent's leak report, worst first.
    ///
    /// Examples:
    ///   gostray leaks
    ///   gostray leaks --namespace shop --pod cart-7d9f8b6c5d-x2x9q
    ///   gostray leaks --exe api-server --verdict leak
    ///   gostray leaks --url <http://10.0.0.7:9981> --json
    Leaks(LeaksArgs),
    /// Show what gostray reads from a Go binary and whether it can watch it.
    ///
    /// Prints the Go version and build settings, whether the binary is
    /// stripped, where each struct offset came from (DWARF or the table),
    /// every probe site with its instruction kind, and the wait reason
    /// table. Exits non-zero with one line when the binary is not
    /// supported. No privileges are needed for a file path.
    ///
    /// Examples:
    ///   gostray inspect /usr/local/bin/api-server
    ///   gostray inspect 4242 --json
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
pub struct LeaksArgs {
    /// Where the agent listens.
    #[arg(long, env = "GOSTRAY_URL", default_value = "http://127.0.0.1:9981")]
    pub url: String,
    /// Print the JSON report (as /api/v1/leaks serves it) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only processes of pods in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only processes of this pod.
    #[arg(long)]
    pub pod: Option<String>,
    /// Only processes of this executable (its base name, as in the `exe` label).
    #[arg(long)]
    pub exe: Option<String>,
    /// Only groups of this verdict; `held`: parked long, but something that
    /// can run still reaches what they wait on.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(VERDICTS))]
    pub verdict: Option<String>,
}

impl LeaksArgs {
    /// The report filter these flags ask for.
    pub fn filter(&self) -> Filter {
        Filter {
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            exe: self.exe.clone(),
            verdict: self.verdict.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// An executable path, or the PID of a running process.
    #[arg(value_name = "BINARY|PID")]
    pub target: String,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,

    /// Also report how long the analysis took and the memory it used.
    #[arg(long)]
    pub timing: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Watch this process (repeatable).
    #[arg(
        long = "pid",
        value_name = "PID",
        env = "GOSTRAY_PIDS",
        value_delimiter = ','
    )]
    pub pids: Vec<u32>,

    /// Watch every process running this executable, now and later (repeatable).
    #[arg(
        long = "binary",
        value_name = "PATH",
        env = "GOSTRAY_BINARIES",
        value_delimiter = ','
    )]
    pub binaries: Vec<PathBuf>,

    /// Address for /metrics, /healthz and /readyz. Loopback by default: expose
    /// it deliberately.
    #[arg(long, env = "GOSTRAY_LISTEN", default_value = "127.0.0.1:9981")]
    pub listen: SocketAddr,

    /// Size of the event ring buffer in bytes (a power of two, at least 4096).
    /// Each event takes 56 bytes; the buffer is drained every --drain-interval.
    #[arg(long, env = "GOSTRAY_RING_BUFFER_BYTES", default_value_t = 4 << 20, value_parser = parse_ring_bytes)]
    pub ring_buffer_bytes: u32,

    /// How often the ring buffer is drained (`10ms`, `50ms`…). Probes never
    /// wake the agent: a wakeup per event costs more than the event.
    #[arg(long, env = "GOSTRAY_DRAIN_INTERVAL", default_value = "10ms", value_parser = parse_drain_interval)]
    pub drain_interval: Duration,

    /// How often watched processes are checked for exit, and --binary
    /// executables for new processes.
    #[arg(long, env = "GOSTRAY_RESCAN_INTERVAL", default_value = "1s", value_parser = parse_rescan_interval)]
    pub rescan_interval: Duration,

    /// How long a goroutine must stay parked on a channel or lock before it
    /// can be called a leak (`90s`, `5m`…).
    #[arg(long, env = "GOSTRAY_LEAK_AFTER", default_value = "5m", value_parser = parse_leak_after)]
    pub leak_after: Duration,

    /// How often each process's goroutine table is read from memory to
    /// confirm what the probes suggest and draw verdicts.
    #[arg(long, env = "GOSTRAY_SCAN_INTERVAL", default_value = "15s", value_parser = parse_rescan_interval)]
    pub scan_interval: Duration,

    /// Bytes of a process's memory one heap walk may read. A walk proves a
    /// goroutine leaked when nothing that can still run reaches what it
    /// waits on; it runs only while some goroutine has been parked for
    /// --leak-after. Past this bound the walk stops and its goroutines keep
    /// the weaker verdicts. `0` turns heap walks off (`512MiB`, `2GiB`…).
    #[arg(long, env = "GOSTRAY_WALK_MAX_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub walk_max_bytes: u64,

    /// Largest heap (address space of its arenas) a walk maps; a larger one
    /// is not walked.
    #[arg(long, env = "GOSTRAY_WALK_MAX_HEAP", default_value = "16GiB", value_parser = parse_size)]
    pub walk_max_heap: u64,
    /// How long an executable keeps its probes after its last watched
    /// process exits, so a program restarted in a loop is not re-attached
    /// each time. Process state and series go at once regardless.
    #[arg(long, env = "GOSTRAY_DETACH_GRACE", default_value = "5s", value_parser = parse_detach_grace)]
    pub detach_grace: Duration,

    /// Kernel-side diagnostics (probe failures), forwarded to the agent's log.
    #[arg(long, env = "GOSTRAY_KERNEL_LOG", value_enum, default_value_t = KernelLog::Off)]
    pub kernel_log: KernelLog,

    /// Probe groups to attach, comma-separated: `lifecycle` (goroutine
    /// creation and exit: exact counts and lifetimes), `park` (where a
    /// goroutine blocks, as it blocks), `misuse` (double close, close of nil,
    /// send on a closed channel), `fatal` (fatal errors and unrecovered
    /// panics, as the process dies; never fires before); `all` (the
    /// default) or `none`. With `none`
    /// nothing fires in the watched process: counts and verdicts come from
    /// the goroutine table scans alone (every --scan-interval; creations
    /// estimated from goroutine IDs, within 16 per P), for services that
    /// cannot spare a microsecond per goroutine.
    #[arg(long, env = "GOSTRAY_PROBES", value_name = "GROUPS", default_value = "all", value_parser = parse_probes)]
    pub probes: ProbeGroups,

    /// The most the probes may cost a watched executable, as a fraction of
    /// its processes' CPU time (`0.01` or `1%`; `off` to never switch).
    /// The agent prices every probe hit at a cost it measures at start; a
    /// group that keeps an executable over budget for 3 s is detached from
    /// it (counts then come from the table scans, as with `--probes none`)
    /// and re-armed later with back-off. Costs under 1 ms of CPU a second
    /// are never acted on. See `/api/v1/overhead`.
    #[arg(long, env = "GOSTRAY_OVERHEAD_BUDGET", value_name = "FRACTION", default_value = "1%", value_parser = parse_budget)]
    pub overhead_budget: Budget,

    /// Goroutines stored per process; beyond it they are counted, not stored.
    #[arg(long, env = "GOSTRAY_MAX_GOROUTINES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub max_goroutines: u64,

    /// Whole-host mode (no --pid/--binary): watch only processes matching a
    /// rule (repeatable). `NAME-GLOB`, `exe~REGEX`, `namespace=GLOB`,
    /// `label:KEY=GLOB` (`~` for a regex everywhere). Default: every Go process.
    #[arg(
        long = "include",
        value_name = "RULE",
        env = "GOSTRAY_INCLUDE",
        value_delimiter = ';'
    )]
    pub include: Vec<Rule>,

    /// Whole-host mode: never watch processes matching a rule (repeatable;
    /// same syntax as --include). The agent never watches itself.
    #[arg(
        long = "exclude",
        value_name = "RULE",
        env = "GOSTRAY_EXCLUDE",
        value_delimiter = ';'
    )]
    pub exclude: Vec<Rule>,

    /// Most processes watched at once; further ones are skipped and counted
    /// (`gostray_processes_skipped_total{reason="max_processes"}`).
    #[arg(long, env = "GOSTRAY_MAX_PROCESSES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=i64::from(gostray_common::MAX_TARGETS)))]
    pub max_processes: u32,

    /// Most metric label sets; processes with a new label set beyond it are
    /// folded into `exe="_folded"` and counted.
    #[arg(long, env = "GOSTRAY_MAX_SERIES", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_series: u32,

    /// Add a `pid` label to per-process metrics (debugging only: every
    /// restart then starts new series).
    #[arg(long, env = "GOSTRAY_PID_LABEL")]
    pub pid_label: bool,

    /// Kubernetes API server URL, without credentials (e.g. `kubectl proxy`'s).
    /// Without it, in-cluster config or KUBECONFIG is used if present; with
    /// neither, pod labels are simply absent.
    #[arg(long, env = "GOSTRAY_KUBE_API", value_name = "URL")]
    pub kube_api: Option<String>,

    /// This node's name, to watch only its pods (a `DaemonSet` sets it from
    /// `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
}

impl RunArgs {
    /// True when no target is named: watch every Go process on the host.
    pub fn whole_host(&self) -> bool {
        self.pids.is_empty() && self.binaries.is_empty()
    }
}

/// Parses `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 10s or 5m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?} has no unit: use ms, s, m or h")),
    };
    Ok(d)
}

fn parse_bounded(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < min || d > max {
        return Err(format!("must be between {min:?} and {max:?}"));
    }
    Ok(d)
}

fn parse_drain_interval(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::from_millis(1), Duration::from_secs(1))
}

fn parse_rescan_interval(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::from_millis(100), Duration::from_mins(10))
}

fn parse_leak_after(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::from_secs(1), Duration::from_hours(168))
}

fn parse_detach_grace(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::ZERO, Duration::from_hours(1))
}

/// `--overhead-budget`: a fraction of CPU time, or `None` for `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget(pub Option<f64>);

/// Parses `0.01`, `1%` or `off`; a budget is above 0 and at most 1.
fn parse_budget(s: &str) -> Result<Budget, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Budget(None));
    }
    let (number, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (s, 1.0),
    };
    let f: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a fraction (0.01), a percentage (1%) or `off`"))?;
    let f = f / scale;
    if !(f > 0.0 && f <= 1.0) {
        return Err(format!(
            "{s:?} is outside (0, 100%]; use `off` to never detach probes"
        ));
    }
    Ok(Budget(Some(f)))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two and at least 4096".into());
    }
    Ok(n)
}

/// Parses `4096`, `512KiB`, `64MiB`, `2GiB`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = [("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40)]
        .iter()
        .find_map(|(unit, shift)| t.strip_suffix(unit).map(|d| (d, *shift)))
        .unwrap_or((t, 0));
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (bytes, or with KiB, MiB, GiB, TiB)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("1GB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn budgets_are_fractions_percentages_or_off() {
        assert_eq!(parse_budget("0.01"), Ok(Budget(Some(0.01))));
        assert_eq!(parse_budget("1%"), Ok(Budget(Some(0.01))));
        assert_eq!(parse_budget("OFF"), Ok(Budget(None)));
        assert!(parse_budget("0").unwrap_err().contains("off"));
        assert!(parse_budget("150%").is_err());
        assert!(parse_budget("lots").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("fast").is_err());
        assert!(parse_drain_interval("2s").is_err());
    }

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_bytes("8192"), Ok(8192));
        assert!(parse_ring_bytes("5000").is_err());
        assert!(parse_ring_bytes("1024").is_err());
    }

    #[test]
    fn cli_parses_repeated_targets() {
        let cli = Cli::try_parse_from([
            "gostray", "run", "--pid", "1", "--pid", "2", "--binary", "/x",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.pids, vec![1, 2]);
        assert!(Cli::try_parse_from(["gostray", "run", "--pid", "abc"]).is_err());
    }

    #[test]
    fn leaks_filters() {
        let cli = Cli::try_parse_from([
            "gostray",
            "leaks",
            "--namespace",
            "shop",
            "--pod",
            "cart-0",
            "--exe",
            "api",
            "--verdict",
            "leak",
        ])
        .unwrap();
        let Command::Leaks(leaks) = cli.command else {
            panic!("not leaks")
        };
        assert_eq!(
            leaks.filter().to_query(),
            "?namespace=shop&pod=cart-0&exe=api&verdict=leak"
        );
        assert!(Cli::try_parse_from(["gostray", "leaks", "--verdict", "leaks"]).is_err());
    }

    #[test]
    fn whole_host_mode_and_its_rules() {
        let cli = Cli::try_parse_from([
            "gostray",
            "run",
            "--include",
            "api-*",
            "--exclude",
            "namespace=kube-system",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.whole_host());
        assert_eq!(
            (run.include.len(), run.exclude.len(), run.max_processes),
            (1, 1, 256)
        );
        assert!(!run.pid_label);
        assert!(Cli::try_parse_from(["gostray", "run", "--include", "pod=x"]).is_err());
        assert!(Cli::try_parse_from(["gostray", "run", "--max-processes", "0"]).is_err());
    }
}
