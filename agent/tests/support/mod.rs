//! Shared by the kernel tests: the environment check, process guards, and
//! reading /metrics.
#![allow(dead_code)]

pub mod host;
pub mod kubeapi;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// What a kernel test needs: root and the fixtures built by `cargo xtask test`.
pub struct KernelEnv {
    pub fixtures: PathBuf,
}

impl KernelEnv {
    /// Returns `None` (after saying so loudly) when kernel tests cannot run
    /// here. Under CI=true that is a failure, never a skip.
    pub fn get() -> Option<Self> {
        let why = if !is_root() {
            "not running as root"
        } else if std::env::var_os("GOSTRAY_FIXTURES").is_none() {
            "GOSTRAY_FIXTURES is not set (run through `cargo xtask test`)"
        } else {
            return Some(Self {
                fixtures: PathBuf::from(std::env::var_os("GOSTRAY_FIXTURES").unwrap()),
            });
        };
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "kernel test cannot run under CI: {why}");
        eprintln!("SKIPPED kernel test: {why}; run `cargo xtask test` as root");
        None
    }

    /// Every Go line of the matrix (`GOSTRAY_GO_LINES`, set by `cargo xtask test`).
    #[allow(clippy::unused_self)] // asked of the environment, like `fixture`
    pub fn go_lines(&self) -> Vec<String> {
        let lines = std::env::var("GOSTRAY_GO_LINES")
            .expect("GOSTRAY_GO_LINES is not set (run through `cargo xtask test`)");
        let lines: Vec<String> = lines.split(',').map(str::to_string).collect();
        assert!(lines.len() >= 2, "Go matrix too small: {lines:?}");
        lines
    }

    /// The fixture `name` built with Go `line`.
    pub fn fixture(&self, name: &str, line: &str) -> PathBuf {
        let path = self.fixtures.join(format!("{name}-{line}"));
        assert!(
            path.exists(),
            "fixture {} missing: run `cargo xtask test`",
            path.display()
        );
        path
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Starts `cmd` with piped stdin and stdout.
    pub fn spawn(cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        // A binary a test has just copied may still be open for writing in
        // a child another test thread forked meanwhile (until it execs):
        // exec then fails with ETXTBSY for a moment.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    thread::sleep(Duration::from_millis(10));
                }
                spawned => break spawned.unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
            }
        };
        Self {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(BufReader::new),
            child,
        }
    }

    /// Starts `cmd` with stderr piped too (read it with [`Proc::stderr`]).
    pub fn spawn_with_stderr(cmd: &mut Command) -> Self {
        Self::spawn(cmd.stderr(Stdio::piped()))
    }

    /// Everything the child wrote to stderr (it must have exited or closed it).
    pub fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Closes stdin and waits up to `within` for the exit status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.stdin = None;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the fixture `binary` with no arguments and waits for its
    /// "ready" line (every Go fixture prints one once it is set up).
    pub fn spawn_ready(binary: &std::path::Path) -> Self {
        let mut p = Self::spawn(&mut Command::new(binary));
        assert_eq!(p.line(), "ready", "{} did not start", binary.display());
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to fixture");
        stdin.flush().expect("flush");
    }

    /// The next stdout line.
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout
            .as_mut()
            .expect("stdout piped")
            .read_line(&mut s)
            .expect("read fixture stdout");
        if s.is_empty() {
            thread::sleep(Duration::from_millis(100));
            let status = self.child.try_wait();
            panic!(
                "fixture {} closed its stdout; status {status:?}",
                self.pid()
            );
        }
        s.trim_end().to_string()
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    /// Sends SIGTERM and waits up to `within` for the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // A child already reaped has a PID that may now be another
        // process's: never signal it.
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: plain kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.terminate(Duration::from_secs(3)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent under test, serving on a free loopback port.
pub struct Agent {
    pub proc: Proc,
    pub port: u16,
}

impl Agent {
    /// Starts `gostray run <args> --pid-label` and waits until /readyz says
    /// ready. The PID label lets tests read one process's series exactly.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, true, &[])
    }

    /// Starts `gostray run --binary PATH --rescan-interval RESCAN`.
    pub fn for_binary(path: &std::path::Path, rescan: &str) -> Self {
        let path = path.to_str().expect("UTF-8 path");
        Self::start(&["--binary", path, "--rescan-interval", rescan])
    }

    /// Starts the agent with or without `--pid-label`, and extra environment.
    pub fn start_with(args: &[&str], pid_label: bool, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("run").args(args);
        if pid_label {
            cmd.arg("--pid-label");
        }
        cmd.envs(env.iter().copied());
        Self::start_command(cmd)
    }

    /// Starts `cmd` (a `gostray run …` command line, perhaps behind a
    /// wrapper such as setpriv) on a free port and waits until ready.
    pub fn start_command(mut cmd: Command) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        cmd.args(["--listen", &listen]);
        let mut agent = Self {
            proc: Proc::spawn(&mut cmd),
            port,
        };
        agent.wait_ready(Duration::from_secs(30));
        agent
    }

    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.proc.child.try_wait() {
                panic!("agent exited before ready: {status}");
            }
            if http_get(self.port, "/readyz").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("agent not ready within {within:?}");
    }

    /// Waits until the metrics show `pid` attached.
    pub fn wait_attached(&self, pid: u32, within: Duration) -> Metrics {
        // Attached and its goroutine table merged: a Go process always has
        // at least its main goroutine.
        let seen = |m: &Metrics| m.for_pid("gostray_goroutines", pid).is_some_and(|n| n > 0);
        let m = self.metrics_until(within, seen);
        assert!(
            seen(&m),
            "process {pid} not attached within {within:?}:\n{}",
            m.0
        );
        m
    }

    /// Waits until `pid`'s (created, exited, live) are `want` and the gauge
    /// `processes` says one process is left, and asserts both.
    pub fn settle_one(&self, pid: u32, want: (u64, u64, u64), processes: &str) -> Metrics {
        let m = self.metrics_until(Duration::from_secs(10), |m| {
            m.counts(pid) == want && m.total(processes) == 1
        });
        assert_eq!(m.counts(pid), want, "{}", m.0);
        assert_eq!(m.total(processes), 1, "stale processes:\n{}", m.0);
        m
    }

    /// `gostray leaks ARGS` against this agent.
    pub fn leaks_command(&self, args: &[&str]) -> std::process::Output {
        Command::new(agent_bin())
            .args(["leaks", "--url", &format!("http://127.0.0.1:{}", self.port)])
            .args(args)
            .output()
            .expect("running gostray leaks")
    }

    pub fn metrics(&self) -> Metrics {
        Metrics(http_get(self.port, "/metrics").expect("scrape /metrics"))
    }

    /// Polls /metrics until `ok` holds, returning the last scrape either way.
    pub fn metrics_until(&self, within: Duration, ok: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + within;
        loop {
            // A scrape may time out while a big scan holds the tracker: poll on.
            let m = match http_get(self.port, "/metrics") {
                Some(page) => Metrics(page),
                None if Instant::now() < deadline => continue,
                None => self.metrics(),
            };
            if ok(&m) || Instant::now() >= deadline {
                return m;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One scrape of /metrics.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of a series with no labels, or the sum over every series of `name`.
    pub fn total(&self, name: &str) -> u64 {
        self.0
            .lines()
            .filter(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// The value of `name` for process `pid`, if that series exists.
    pub fn for_pid(&self, name: &str, pid: u32) -> Option<u64> {
        let needle = format!("pid=\"{pid}\"");
        self.0
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&needle))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// The value of the series `name` whose labels include all of `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// A label-less sample's value (0 when absent).
    pub fn scalar(&self, name: &str) -> u64 {
        self.value(name, &[]).unwrap_or(0.0) as u64
    }

    /// The series lines of metric family `name`.
    pub fn series(&self, name: &str) -> Vec<&str> {
        self.0
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect()
    }

    /// (created, exited, live) for `pid`, zeros where absent.
    pub fn counts(&self, pid: u32) -> (u64, u64, u64) {
        let get = |n| self.for_pid(n, pid).unwrap_or(0);
        (
            get("gostray_goroutines_created_total"),
            get("gostray_goroutines_exited_total"),
            get("gostray_goroutines"),
        )
    }
}

/// The agent under test: the static release build that ships, which
/// `cargo xtask test` makes and names in `GOSTRAY_AGENT`, or else this
/// package's own debug build (a plain `cargo test`).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("GOSTRAY_AGENT").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_gostray")),
        PathBuf::from,
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET request; the whole response, or `None` if nothing answered.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
