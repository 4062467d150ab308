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

/// What one boot showed; maps are keyed by Go line.
#[derive(Debug, Default)]
pub struct Run {
    pub machine: String,
    pub kernel: String,
    /// (line, phase) → the spawner's counts then.
    pub counts: HashMap<(String, String), Counts>,
    /// Spawns of the timed batches and their milliseconds, bare and probed.
    pub timing: HashMap<String, (u64, u64)>,
    pub leak_pid: HashMap<String, u32>,
    /// The agent's own price of a hit, in ns: floor and per program.
    pub calibration: HashMap<String, u64>,
    pub reports: HashMap<String, Value>,
    /// Double closes and sends on closed channels the agent counted.
    pub misuse: HashMap<String, (u64, u64)>,
    /// Deaths of the leak fixture with reason `unlock_of_unlocked`.
    pub deaths: HashMap<String, u64>,
    /// Deaths of the second leak fixture by an unrecovered panic, and
    /// whether the panic's value is in the agent's report.
    pub panics: HashMap<String, (u64, bool)>,
    /// The leak fixture's parked stacks in the last heap walk: read
    /// through their stack maps, and conservatively.
    pub stacks: HashMap<String, (u64, u64)>,
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

fn text(f: &HashMap<&str, &str>, key: &str) -> String {
    f.get(key).unwrap_or(&"").to_string()
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
        let go = text(&f, "line");
        match word {
            "boot" => {
                run.machine = text(&f, "machine");
                run.kernel = text(&f, "kernel");
            }
            "counts" => {
                let c = Counts {
                    created: num(&f, "created"),
                    exited: num(&f, "exited"),
                    live: num(&f, "live"),
                    lost: num(&f, "lost"),
                };
                run.counts.insert((go, text(&f, "phase")), c);
            }
            "timing" => {
                run.timing
                    .insert(text(&f, "phase"), (num(&f, "spawns"), num(&f, "ms")));
            }
            "calibration" => {
                run.calibration = f
                    .iter()
                    .filter_map(|(k, v)| {
                        Some(((*k).to_string(), v.trim_matches('"').parse().ok()?))
                    })
                    .collect();
            }
            "leaks" => {
                if let Some(pid) = f.get("pid").and_then(|p| p.parse().ok()) {
                    run.leak_pid.insert(go, pid);
                }
            }
            "report" => {
                let json = rest.split_once(' ').map_or("", |(_, j)| j);
                if let Ok(report) = serde_json::from_str(json) {
                    run.reports.insert(go, report);
                }
            }
            "misuse" => {
                run.misuse
                    .insert(go, (num(&f, "double_closes"), num(&f, "sends_on_closed")));
            }
            "death" => {
                run.deaths.insert(go, num(&f, "count"));
            }
            "panic" => {
                run.panics
                    .insert(go, (num(&f, "count"), num(&f, "message_found") > 0));
            }
            "stacks" => {
                run.stacks
                    .insert(go, (num(&f, "precise"), num(&f, "fallback")));
            }
            "error:" => run.errors.push(rest.to_string()),
            "end" => run.ended = true,
            _ => {}
        }
    }
    run
}

/// The groups of Go `line`'s leak fixture's entry in its report.
fn fixture_groups<'a>(run: &'a Run, line: &str) -> Option<&'a Vec<Value>> {
    let pid = *run.leak_pid.get(line)?;
    run.reports.get(line)?["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"] == pid)?["groups"]
        .as_array()
}

/// The leak group of [`LEAK_FUNCTION`] in Go `line`'s leak fixture's
/// report entry: (verdict, wait reason, count, created at), if there is one.
pub fn leak_group(run: &Run, line: &str) -> Option<(String, String, u64, String)> {
    let g = fixture_groups(run, line)?
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

/// The start functions of every group judged `leak` in Go `line`'s leak
/// fixture's report entry.
pub fn leaked_functions(run: &Run, line: &str) -> Vec<String> {
    fixture_groups(run, line)
        .into_iter()
        .flatten()
        .filter(|g| g["verdict"] == "leak")
        .map(|g| g["start_function"].as_str().unwrap_or("?").to_string())
        .collect()
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
/// batch's size the VM was told, `lines` the Go lines it ran, the first
/// attached to while running and timed, the others found at exec.
pub fn checks(run: &Run, batch: u64, lines: &[String]) -> Vec<(String, bool)> {
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
    for (i, line) in lines.iter().enumerate() {
        out.extend(line_checks(run, line, (i == 0).then_some(batch)));
    }
    out
}

/// The checks of Go `line`'s fixtures; `batch` for the timed line.
fn line_checks(run: &Run, line: &str, batch: Option<u64>) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let phase = |p: &str| run.counts.get(&(line.to_string(), p.to_string())).copied();
    let Some(attach) = phase("attach") else {
        out.push((format!("Go {line}: counts at attach"), false));
        return out;
    };
    out.push(if batch.is_some() {
        (
            format!("Go {line}: attached to a running process: nothing created or exited yet, the scan found the live ones ({attach:?})"),
            attach.created == 0 && attach.exited == 0 && attach.live >= 3,
        )
    } else {
        (
            format!("Go {line}: found at exec, the runtime's own goroutines counted ({attach:?})"),
            attach.live >= 3 && attach.lost == 0,
        )
    });
    let (c0, e0, l0) = (attach.created, attach.exited, attach.live);
    let mut expected = vec![
        ("spawn", c0 + 150, e0 + 100, l0 + 50),
        ("release", c0 + 150, e0 + 150, l0),
    ];
    if let Some(batch) = batch {
        expected.push(("batch", c0 + 150 + batch, e0 + 150 + batch, l0));
    }
    for (p, created, exited, live) in expected {
        let want = Counts {
            created,
            exited,
            live,
            lost: 0,
        };
        let got = phase(p);
        out.push((
            format!("Go {line}: counts after {p}: want {want:?}, got {got:?}"),
            got == Some(want),
        ));
    }
    let leak = leak_group(run, line);
    out.push((
        format!("Go {line}: one leak of {LEAK_FUNCTION} on chan send: {leak:?}"),
        leak.as_ref()
            .is_some_and(|(v, r, n, _)| v == "leak" && r == "chan send" && *n == 1),
    ));
    let leaked = leaked_functions(run, line);
    out.push((
        format!("Go {line}: no other leak, the worker whose channel only a sleeping frame holds among them: {leaked:?}"),
        leaked == [LEAK_FUNCTION],
    ));
    let stacks = run.stacks.get(line).copied();
    out.push((
        format!("Go {line}: every parked stack walked through its stack maps (precise, conservative): {stacks:?}"),
        stacks.is_some_and(|(precise, fallback)| precise >= 3 && fallback == 0),
    ));
    let misuse = run.misuse.get(line).copied();
    out.push((
        format!(
            "Go {line}: one double close and one send on a closed channel (recovered): {misuse:?}"
        ),
        misuse == Some((1, 1)),
    ));
    let died = run.deaths.get(line).copied();
    out.push((
        format!("Go {line}: the fatal error's death recorded as unlock_of_unlocked: {died:?}"),
        died == Some(1),
    ));
    let panicked = run.panics.get(line).copied();
    out.push((
        format!("Go {line}: the unrecovered panic's death recorded as panic, with its value: {panicked:?}"),
        panicked == Some((1, true)),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = r#"[    0.000000] Booting Linux on physical CPU 0x0
gostray-vm: boot kernel=6.1.0-57-cloud-arm64 machine=aarch64 cpus=2 lines=1.27,1.19
gostray-vm: timing phase=bare spawns=1000 ms=100
gostray-vm: agent ready after 7s
gostray-vm: calibration floor_ns="6743" create_ns="8389" exit_ns="8799" park_ns="7737" close_ns="11763"
gostray-vm: counts line=1.27 phase=attach created=0 exited=0 live=5 lost=0 numgoroutine=1
gostray-vm: counts line=1.27 phase=spawn exiting=100 blocking=50 created=150 exited=100 live=55 lost=0 numgoroutine=51
gostray-vm: counts line=1.27 phase=release created=150 exited=150 live=5 lost=0 numgoroutine=1
gostray-vm: timing phase=probed spawns=1000 ms=180
gostray-vm: counts line=1.27 phase=batch exiting=1000 blocking=0 created=1150 exited=1150 live=5 lost=0 numgoroutine=1
gostray-vm: leaks line=1.27 after 3s pid=77
gostray-vm: report line=1.27 {"processes":[{"pid":77,"groups":[{"verdict":"live","start_function":"main.holder.func1","wait_reason":"chan receive","count":1},{"verdict":"leak","start_function":"main.abandon.func1","wait_reason":"chan send","count":1,"created_at":{"function":"main.abandon","file":"/x/vmleak/main.go","line":23}}]}]}
gostray-vm: stacks line=1.27 precise=7 fallback=0
gostray-vm: misuse line=1.27 double_closes=1 sends_on_closed=1 waited=1s
gostray-vm: death line=1.27 reason=unlock_of_unlocked count=1 waited=0s
gostray-vm: panic line=1.27 reason=panic count=1 message_found=1 waited=0s
gostray-vm: counts line=1.19 phase=attach created=4 exited=1 live=4 lost=0 numgoroutine=1
gostray-vm: counts line=1.19 phase=spawn exiting=100 blocking=50 created=154 exited=101 live=54 lost=0 numgoroutine=51
gostray-vm: counts line=1.19 phase=release created=154 exited=151 live=4 lost=0 numgoroutine=1
gostray-vm: leaks line=1.19 after 3s pid=90
gostray-vm: report line=1.19 {"processes":[{"pid":90,"groups":[{"verdict":"leak","start_function":"main.abandon.func1","wait_reason":"chan send","count":1,"created_at":{"function":"main.abandon","file":"/x/vmleak/main.go","line":23}}]}]}
gostray-vm: stacks line=1.19 precise=6 fallback=0
gostray-vm: misuse line=1.19 double_closes=1 sends_on_closed=1 waited=1s
gostray-vm: death line=1.19 reason=unlock_of_unlocked count=1 waited=0s
gostray-vm: panic line=1.19 reason=panic count=1 message_found=2 waited=0s
gostray-vm: end
"#;

    fn lines() -> Vec<String> {
        vec!["1.27".into(), "1.19".into()]
    }

    fn failed(run: &Run) -> Vec<(String, bool)> {
        checks(run, 1000, &lines())
            .into_iter()
            .filter(|c| !c.1)
            .collect()
    }

    #[test]
    fn a_good_run_passes_every_check() {
        let run = parse(CONSOLE);
        let failed = failed(&run);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(checks(&run, 1000, &lines()).len(), 4 + 10 + 9);
        assert_eq!(leaked_functions(&run, "1.27"), [LEAK_FUNCTION]);
        assert_eq!(
            leak_group(&run, "1.19"),
            Some(("leak".into(), "chan send".into(), 1, "main.go:23".into()))
        );
        assert_eq!(per_hit_us(&run), Some(40.0));
        assert_eq!(run.calibration.get("create_ns"), Some(&8389));
    }

    #[test]
    fn an_off_count_a_missing_leak_misuse_or_death_fails() {
        for (from, to) in [
            ("created=150 exited=100", "created=149 exited=100"),
            ("created=154 exited=151", "created=154 exited=150"),
            (
                "\"verdict\":\"leak\",\"start_function\":\"main.abandon.func1\",\"wait_reason\":\"chan send\",\"count\":1,\"created_at\":{\"function\":\"main.abandon\",\"file\":\"/x/vmleak/main.go\",\"line\":23}}]}]}\ngostray-vm: stacks line=1.19",
                "\"verdict\":\"suspect\",\"start_function\":\"main.abandon.func1\",\"wait_reason\":\"chan send\",\"count\":1,\"created_at\":{\"function\":\"main.abandon\",\"file\":\"/x/vmleak/main.go\",\"line\":23}}]}]}\ngostray-vm: stacks line=1.19",
            ),
            ("line=1.19 double_closes=1", "line=1.19 double_closes=0"),
            ("\"verdict\":\"live\"", "\"verdict\":\"leak\""),
            ("line=1.19 precise=6 fallback=0", "line=1.19 precise=4 fallback=2"),
            ("line=1.27 reason=unlock_of_unlocked count=1", "line=1.27 reason=unlock_of_unlocked count=0"),
            ("line=1.19 reason=panic count=1 message_found=2", "line=1.19 reason=panic count=1 message_found=0"),
        ] {
            assert!(CONSOLE.contains(from), "{from}");
            let run = parse(&CONSOLE.replace(from, to));
            // A leak judged suspect fails both leak checks.
            let want = if to.contains("suspect") { 2 } else { 1 };
            assert_eq!(failed(&run).len(), want, "{to}: {:?}", failed(&run));
        }
    }

    #[test]
    fn a_vm_that_stopped_early_fails() {
        let cut = CONSOLE
            .split("gostray-vm: timing phase=probed")
            .next()
            .unwrap();
        let run = parse(cut);
        let failed = failed(&run);
        assert!(failed.len() >= 5, "{failed:?}");
        assert_eq!(per_hit_us(&run), None);
    }
}
