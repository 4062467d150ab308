//! Running commands with a visible step line and a clear failure.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_path_buf()
}

/// Where installed tools live (bpf-linker, Go toolchains): `$GOSTRAY_TOOLS`,
/// else `~/.cache/gostray`, so every clone on a machine shares one install.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("GOSTRAY_TOOLS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| root().join(".tools"));
    cache.join("gostray")
}

/// Prints a step header; pair with [`done`].
pub fn step(what: &str) -> Instant {
    eprintln!("==> {what}");
    Instant::now()
}

pub fn done(started: Instant) {
    eprintln!("    done in {:.1}s", started.elapsed().as_secs_f64());
}

/// Runs `cmd` with inherited output; fails with the command line on error.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {line}"))?;
    if !status.success() {
        bail!("{line} failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly, showing its output only if it fails.
pub fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {line}"))?;
    if !out.status.success() {
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bail!("{line} failed ({})", out.status);
    }
    Ok(())
}

/// Runs a `cargo test` command, echoing its output, and adds up the
/// "test result:" lines: (passed, failed). Fails if cargo test failed.
pub fn run_counting_tests(cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let line = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    let (mut passed, mut failed) = (0, 0);
    for l in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let l = l?;
        println!("{l}");
        if let Some(rest) = l.strip_prefix("test result: ") {
            let count = |what: &str| -> u64 {
                rest.split(['.', ';'])
                    .find_map(|part| part.trim().strip_suffix(what)?.trim().parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("tests: {passed} passed, {} failed", failed.max(1));
        bail!("{line} failed ({status})");
    }
    Ok((passed, failed))
}

/// Captures stdout of `cmd`, or `None` if it cannot run or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// A child process stopped when dropped: SIGTERM first, so an agent detaches
/// cleanly, then SIGKILL after three seconds.
pub struct Guard(pub Child);

impl Guard {
    /// Sends SIGTERM and waits up to `within` for the exit; `None` if it
    /// is still running.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg(self.0.id().to_string())
            .stderr(Stdio::null())
            .status();
        wait_exit(&mut self.0, within)
    }
}

/// Waits up to `within` for `child` to exit; `None` if it is still running.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        if self.terminate(Duration::from_secs(3)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A TCP port free on loopback right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Percent-encodes a query parameter value.
pub fn encode(value: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Whether `CI` asks for tests that fail rather than skip.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_promql() {
        assert_eq!(
            super::encode(r#"sum(up{job=~".*"})"#),
            "sum%28up%7Bjob%3D~%22.%2A%22%7D%29"
        );
    }
}
