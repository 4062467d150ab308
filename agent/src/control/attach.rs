//! Attaching to one process: its executable analysed (cached), probes on
//! that executable once, the kernel's filter for its PID, then a first read
//! of its goroutine table; and what a failure is called.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::Context;

use super::{target::Target, Agent, Watched};
use crate::{
    cli::config::RunArgs,
    discovery::{self, Fingerprint, Verdict},
    gobin::{sites::ProbeGroup, GoBinError, GoBinary},
    k8s,
    lock::lock,
    proc::{
        procfs::{self, FileId},
        scan,
    },
    tracker::ProcessInfo,
};

/// Checks the targets named on the command line before anything is loaded,
/// so a typo gets one clear line. Returns the `--binary` file identities.
pub fn validate_targets(args: &RunArgs) -> anyhow::Result<Vec<(PathBuf, FileId)>> {
    let mut binary_targets = Vec::new();
    for path in &args.binaries {
        let file = FileId::of(path).with_context(|| format!("binary {}", path.display()))?;
        GoBinary::open_for_host(path).with_context(|| format!("{}", path.display()))?;
        binary_targets.push((path.clone(), file));
    }
    for &pid in &args.pids {
        if procfs::start_time(pid).is_err() {
            anyhow::bail!("no process with PID {pid}");
        }
    }
    Ok(binary_targets)
}

/// Why one process could not be attached, as a metric label.
pub(crate) fn failure_reason(err: &anyhow::Error) -> &'static str {
    match err.downcast_ref::<GoBinError>() {
        Some(e) => e.reason(),
        None if err.downcast_ref::<Gone>().is_some() => "exited",
        None if let Some(known) = err.downcast_ref::<Rejected>() => known.reason,
        None => "attach_error",
    }
}

/// An executable already found unwatchable: the same answer again, without
/// parsing it again or repeating the warning for each of its processes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{why}")]
pub(crate) struct Rejected {
    reason: &'static str,
    why: String,
}

/// The process went away while being attached: a race, not a fault.
#[derive(Debug, thiserror::Error)]
#[error("process exited during attach")]
pub(crate) struct Gone;

impl Agent {
    /// Attaches to one process: analyse its executable (cached), attach the
    /// probes to that executable once, start the kernel's filter for the
    /// PID, then read its goroutine table so goroutines that predate us count.
    pub(crate) fn attach(&mut self, pid: u32) -> anyhow::Result<()> {
        let start_time = procfs::start_time(pid).map_err(|_| Gone)?;
        let fp = match discovery::fingerprint(pid) {
            Ok(fp) => fp,
            // Still there: the executable cannot be read (another user's
            // process, a restricted /proc), which is no race.
            Err(e) if procfs::start_time(pid).ok() == Some(start_time) => {
                return Err(anyhow::Error::new(e)
                    .context("cannot open its executable through /proc/PID/exe"));
            }
            Err(_) => return Err(Gone.into()),
        };
        let result = self.attach_as(pid, start_time, fp);
        if result.is_err() {
            // Probes attached for a process that then failed must not stay.
            self.release_if_unused(fp.file);
            // A process that exited halfway (its /proc entry, or the PID
            // itself, gone) is a race, not a fault worth a warning.
            if procfs::start_time(pid).ok() != Some(start_time) {
                return Err(Gone.into());
            }
        }
        result
    }

    fn attach_as(&mut self, pid: u32, start_time: u64, fp: Fingerprint) -> anyhow::Result<()> {
        let file = fp.file;
        // Opened through /proc/PID/exe: the file in the process's own root.
        let exe = procfs::exe_path(pid);
        let bin = self.analysed(pid, fp, &exe)?;
        if bin.layout_source.is_guess() {
            tracing::warn!(pid, go = %bin.version, layout = ?bin.layout_source,
                "no DWARF and no offsets for this exact Go release: using another release's layout");
            lock(&self.shared.stats)
                .layout_guessed
                .insert((file.dev, file.ino));
        }
        let target = Arc::new(Target::new(bin.clone()));
        self.kernel.attach_binary(file, &exe, &target)?;
        self.idle_binaries.remove(&file);
        let bias = if bin.pie {
            procfs::image_start(pid, file)
                .map_err(|_| Gone)?
                .context("executable mapping not found in /proc/PID/maps")?
                .wrapping_sub(bin.image_base)
        } else {
            0
        };
        self.register(pid, start_time, file, bias, &target);
        if let Err(e) = self.kernel.watch(pid, &target, bias) {
            self.forget(pid);
            return Err(e);
        }
        // The exit notice only fires for PIDs in the watch map: a process
        // that exited before it got there would never be forgotten.
        if !procfs::alive(pid, start_time) {
            self.forget(pid);
            return Err(Gone.into());
        }
        lock(&self.shared.stats).attaches += 1;
        self.first_scan(pid, bias, &target);
        Ok(())
    }

    /// The executable of `pid`, analysed once per file and build: a known
    /// rejection is returned again without parsing the file again.
    fn analysed(&mut self, pid: u32, fp: Fingerprint, exe: &Path) -> anyhow::Result<Arc<GoBinary>> {
        let build_id = match self.classifier.classify(pid, fp).map_err(|_| Gone)? {
            Verdict::Go { build_id } => build_id,
            Verdict::NotGo => return Err(GoBinError::NotGo.into()),
        };
        let key = (fp.file, build_id);
        if let Some(known) = self.rejected.get(&key) {
            return Err(known.clone().into());
        }
        if let Some(bin) = self.binaries.get(&key) {
            return Ok(bin.clone());
        }
        match GoBinary::open_for_host(exe) {
            Ok(bin) => {
                let bin = Arc::new(bin);
                self.binaries.insert(key, bin.clone());
                Ok(bin)
            }
            // An unreadable file may be a process gone mid-read: only
            // verdicts about the binary itself are remembered.
            Err(e @ GoBinError::Io { .. }) => Err(e.into()),
            Err(e) => {
                let e = anyhow::Error::from(e);
                let known = Rejected {
                    reason: failure_reason(&e),
                    why: e.to_string(),
                };
                self.rejected.insert(key, known);
                Err(e)
            }
        }
    }

    /// Enters the process in the tracker, its series and the watched table.
    fn register(
        &mut self,
        pid: u32,
        start_time: u64,
        file: FileId,
        bias: u64,
        target: &Arc<Target>,
    ) {
        let bin = &target.bin;
        let exe_name = procfs::exe_name(pid).unwrap_or_default();
        let placement = k8s::cgroup::placement(pid);
        let (key, labelled) = self.series_key(pid, &exe_name, &placement);
        let info = ProcessInfo {
            exe: exe_name,
            go_version: bin.version.to_string(),
        };
        {
            let mut tracker = lock(&self.shared.tracker);
            tracker.add_process(pid, info);
            if let Some(p) = tracker.process_mut(pid) {
                // The budget took this executable's lifecycle probes away.
                if !self.budget.lifecycle_active(file) {
                    p.set_lifecycle_probes(false);
                }
                p.bias = bias;
                p.wait_reasons.clone_from(&bin.wait_reasons);
                p.pod = super::labels::pod_place(&key);
            }
        }
        lock(&self.shared.series).assign(pid, key);
        self.watched.insert(
            pid,
            Watched {
                start_time,
                file,
                bias,
                target: target.clone(),
                placement,
                labelled,
                next_walk: std::cell::Cell::new(None),
            },
        );
    }

    /// Reads the goroutine table once, so goroutines that predate the
    /// probes count. A failed scan still leaves the process watched: its
    /// counts are then only those of events since attach.
    fn first_scan(&self, pid: u32, bias: u64, target: &Target) {
        let bin = &target.bin;
        let begun = Instant::now();
        let scanned = scan::scan(pid, bin, None, bias, &|_| false).unwrap_or_else(|e| {
            if procfs::running_since(pid).is_some() {
                tracing::warn!(pid, error = %e, "goroutine table scan failed");
            } else {
                tracing::debug!(pid, "exited during attach");
            }
            Vec::new()
        });
        lock(&self.shared.tracker).merge_scan(pid, &scanned);
        tracing::info!(
            pid,
            go = %bin.version,
            goroutines = scanned.len(),
            leak_probes = bin.sites.iter().filter(|s| s.attach && matches!(s.spec.group, ProbeGroup::Park | ProbeGroup::Misuse)).count(),
            create_site = format_args!("{:#x} ({:?})", bin.create_site.address, bin.create_site.kind),
            exit_site = format_args!("{:#x} ({:?})", bin.exit_site.address, bin.exit_site.kind),
            scan_ms = begun.elapsed().as_secs_f64() * 1e3,
            "attached"
        );
    }

    pub(crate) fn count_failure(&self, pid: u32, e: &anyhow::Error) {
        let reason = failure_reason(e);
        // A process that exited while being attached is a race, not a
        // failure: short-lived processes would page through the
        // attach-failure alert otherwise.
        if reason == "exited" {
            tracing::debug!(pid, "exited during attach");
            return;
        }
        *lock(&self.shared.stats)
            .attach_failures
            .entry(reason)
            .or_default() += 1;
        if reason == "exited" {
            tracing::debug!(pid, "exited during attach");
        } else if e.downcast_ref::<Rejected>().is_some() {
            tracing::debug!(pid, error = %e, "not watchable (known executable)");
        } else {
            tracing::warn!(pid, error = format!("{e:#}"), "attach failed");
        }
    }
}
