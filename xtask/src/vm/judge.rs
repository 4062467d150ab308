//! Judging the arm64 VM's console: the `gostray-vm: ...` lines that
//! `xtask/vm/init.sh` prints, turned into checks. Pure, so it is tested on
//! captured text without a VM.

use std::collections::HashMap;

use serde_json::Value;

/// The fixture's leaking goroutine: `main.abandon`'s closure.
pub const LEAK_FUNCTION: &str = "main.abandon.func1";
const LINE: &str = "gostray-vm: ";

/// The counts the VM printed at one phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub exited: u64,
    pub live: u64,
    pub lost: u64,
}

/// What one boot showed.
#[derive(Debug, Default)]
pub struct Run {
    pub machine: String,
    pub kernel: String,
    pub counts: HashMap<String, Counts>,
    /// Spawns of the timed batches and their milliseconds, bare and probed.
    pub timing: HashMap<String, (u64, u64)>,
    pub leak_pid: Option<u32>,
    /// The agent's own price of a hit, in ns: floor and per program.
    pub calibration: HashMap<String, u64>,
    pub report: Option<Value>,
    pub errors: Vec<String>,
    pub ended: bool,
}

fn fields(rest: &str) -> HashMap<&str, &str> {
    rest.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

fn num(f: &HashMap<&str, &str>, key: &str) -> u64 {
    // Prometheus text may carry a float even for a counter.
    f.get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Reads the console text; other kernel and agent output is ignored.
pub fn parse(console: &str) -> Run {
    let mut run = Run::default();
    for line in console.lines() {
        let Some(rest) = line.trim_end_matches('\r').split_once(LINE).map(|(_, r)| r) else {
            continue;
        };
        let (word, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let f = fields(rest);
        match word {
            "boot" => {
                run.machine = f.get("machine").unwrap_or(&"").to_string();
                run.kernel = f.get("kernel").unwrap_or(&"").to_string();
            }
            "counts" => {
                let c = Counts {
                    created: num(&f, "created"),
                    exited: num(&f, "exited"),
                    live: num(&f, "live"),
                    lost: num(&f, "lost"),
                };
                run.counts
                    .insert(f.get("phase").unwrap_or(&"").to_string(), c);
            }
            "timing" => {
                run.timing.insert(
                    f.get("phase").unwrap_or(&"").to_string(),
                    (num(&f, "spawns"), num(&f, "ms")),
                );
            }
            "calibration" => {
                run.calibration = f
                    .iter()
                    .filter_map(|(k, v)| {
                        Some(((*k).to_string(), v.trim_matches('"').parse().ok()?))
                    })
                    .collect();
            }
            "leaks" => run.leak_pid = f.get("pid").and_then(|p| p.parse().ok()),
            "report" => run.report = serde_json::from_str(rest).ok(),
            "error:" => run.errors.push(rest.to_string()),
            "end" => run.ended = true,
            _ => {}
        }
    }
    run
}

/// The leak group of [`LEAK_FUNCTION`] in the leak fixture's report entry:
/// (verdict, wait reason, count, created at), if there is one.
pub fn leak_group(run: &Run) -> Option<(String, String, u64, String)> {
    let pid = run.leak_pid?;
    let process = run.report.as_ref()?["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"] == pid)?;
    let g = process["groups"]
        .as_array()?
        .iter()
        .find(|g| g["start_function"] == LEAK_FUNCTION)?;
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Some((
        s(&g["verdict"]),
        s(&g["wait_reason"]),
        g["count"].as_u64().unwrap_or(0),
        format!(
            "{}:{}",
            s(&g["created_at"]["file"]).rsplit('/').next().unwrap_or(""),
            g["created_at"]["line"]
        ),
    ))
}

/// The probe cost per hit, in µs: the probed batch's extra time over the
/// bare one, over its hits (a create and an exit per spawn).
pub fn per_hit_us(run: &Run) -> Option<f64> {
    let (n, bare) = *run.timing.get("bare")?;
    let (m, probed) = *run.timing.get("probed")?;
    if n == 0 || n != m {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // milliseconds and spawn counts are small
    let us = (probed as f64 - bare as f64) * 1000.0 / (2.0 * n as f64);
    Some(us)
}

/// Every check of one boot, as (what, passed); `batch` is the timed
/// batch's size the VM was told.
pub fn checks(run: &Run, batch: u64) -> Vec<(String, bool)> {
    let mut out = vec![
        (
            format!("booted an arm64 kernel (machine={})", run.machine),
            run.machine == "aarch64",
        ),
        (
            format!("no error in the VM {:?}", run.errors),
            run.errors.is_empty(),
        ),
        ("the VM ran to its end".to_string(), run.ended),
        (
            format!(
                "the agent priced a probe hit at start {:?}",
                run.calibration
            ),
            run.calibration.get("floor_ns").is_some_and(|&ns| ns > 0),
        ),
    ];
    let Some(attach) = run.counts.get("attach").copied() else {
        out.push(("counts at attach".to_string(), false));
        return out;
    };
    out.push((
        format!(
            "at attach: nothing created or exited yet, the scan found the live ones ({attach:?})"
        ),
        attach.created == 0 && attach.exited == 0 && attach.live >= 3,
    ));
    let live0 = attach.live;
    let expected = [
        ("spawn", 150, 100, live0 + 50),
        ("release", 150, 150, live0),
        ("batch", 150 + batch, 150 + batch, live0),
    ];
    for (phase, created, exited, live) in expected {
        let want = Counts {
            created,
            exited,
            live,
            lost: 0,
        };
        let got = run.counts.get(phase).copied();
        out.push((
            format!("counts after {phase}: want {want:?}, got {got:?}"),
            got == Some(want),
        ));
    }
    let leak = leak_group(run);
    out.push((
        format!("one leak of {LEAK_FUNCTION} on chan send: {leak:?}"),
        leak.as_ref()
            .is_some_and(|(v, r, n, _)| v == "leak" && r == "chan send" && *n == 1),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = r#"[    0.000000] Booting Linux on physical CPU 0x0
gostray-vm: boot kernel=6.1.0-57-cloud-arm64 machine=aarch64 cpus=2
gostray-vm: timing phase=bare spawns=1000 ms=100
gostray-vm: agent ready after 7s
gostray-vm: calibration floor_ns="6743" create_ns="8389" exit_ns="8799" park_ns="7737" close_ns="11763"
gostray-vm: counts phase=attach created=0 exited=0 live=5 lost=0 numgoroutine=1
gostray-vm: counts phase=spawn exiting=100 blocking=50 created=150 exited=100 live=55 lost=0 numgoroutine=51
gostray-vm: counts phase=release created=150 exited=150 live=5 lost=0 numgoroutine=1
gostray-vm: timing phase=probed spawns=1000 ms=180
gostray-vm: counts phase=batch exiting=1000 blocking=0 created=1150 exited=1150 live=5 lost=0 numgoroutine=1
gostray-vm: leaks after 3s pid=77
gostray-vm: report {"processes":[{"pid":77,"groups":[{"verdict":"leak","start_function":"main.abandon.func1","wait_reason":"chan send","count":1,"created_at":{"function":"main.abandon","file":"/x/vmleak/main.go","line":23}}]}]}
gostray-vm: end
"#;

    #[test]
    fn a_good_run_passes_every_check() {
        let run = parse(CONSOLE);
        let failed: Vec<_> = checks(&run, 1000).into_iter().filter(|c| !c.1).collect();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            leak_group(&run),
            Some(("leak".into(), "chan send".into(), 1, "main.go:23".into()))
        );
        assert_eq!(per_hit_us(&run), Some(40.0));
        assert_eq!(run.calibration.get("create_ns"), Some(&8389));
    }

    #[test]
    fn an_off_count_or_a_missing_leak_fails() {
        let run = parse(&CONSOLE.replace("created=150 exited=100", "created=149 exited=100"));
        assert!(checks(&run, 1000).iter().any(|c| !c.1));
        let run = parse(&CONSOLE.replace("\"verdict\":\"leak\"", "\"verdict\":\"suspect\""));
        assert!(checks(&run, 1000).iter().any(|c| !c.1));
    }

    #[test]
    fn a_vm_that_stopped_early_fails() {
        let cut = CONSOLE
            .split("gostray-vm: timing phase=probed")
            .next()
            .unwrap();
        let run = parse(cut);
        let failed: Vec<_> = checks(&run, 1000).into_iter().filter(|c| !c.1).collect();
        assert!(failed.len() >= 3, "{failed:?}");
        assert_eq!(per_hit_us(&run), None);
    }
}
