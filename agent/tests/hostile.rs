//! Strings taken from a target are bounded and escaped wherever they go: a
//! leaking Go program whose function name is unicode and 600 characters
//! long, run from an executable whose file name holds quotes, backslashes,
//! spaces and a newline. /metrics stays valid exposition text and the JSON
//! report valid JSON, each string bounded and free of control characters.

mod support;

use std::{process::Command, time::Duration};

use support::{http_get, Agent, KernelEnv, Metrics, Proc};

/// The exposition format's grammar for one sample line, strictly: a
/// metric name, optional `{name="escaped value",…}`, a space and a value.
/// Returns the unescaped label values.
fn parse_sample(line: &str) -> Result<Vec<String>, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    let mut rest = &line[name_end..];
    let mut values = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            let eq = rest.find("=\"").ok_or("label without =\"")?;
            let key = &rest[..eq];
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {key:?}"));
            }
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next().ok_or("unterminated value")? {
                    (_, '\\') => match chars.next().ok_or("dangling \\")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (i, '"') => break eq + 2 + i + 1,
                    (_, '\n') => return Err("raw newline".into()),
                    (_, c) => value.push(c),
                }
            };
            values.push(value);
            rest = &rest[end..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                rest = rest.strip_prefix('}').ok_or("no closing }")?;
                break;
            }
        }
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    value
        .parse::<f64>()
        .map_err(|_| format!("bad value {value:?}"))?;
    Ok(values)
}

fn check_strings(v: &serde_json::Value, max: usize) {
    match v {
        serde_json::Value::String(s) => {
            assert!(s.chars().count() <= max, "string of {} chars", s.len());
            assert!(
                !s.chars().any(char::is_control),
                "control character in {s:?}"
            );
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| check_strings(v, max)),
        serde_json::Value::Object(o) => o.values().for_each(|v| check_strings(v, max)),
        _ => {}
    }
}

#[test]
fn hostile_names_are_bounded_and_escaped() {
    let Some(env) = KernelEnv::get() else { return };
    let dir = std::env::temp_dir().join(format!("gostray-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("we \"ird\\ na\nme\",pid=\"1 {}", "y".repeat(150));
    let exe = dir.join(&name);
    std::fs::copy(env.fixture("hostile", "1.27"), &exe).unwrap();
    let mut target = Proc::spawn(&mut Command::new(&exe));
    assert_eq!(target.line(), "ready");
    let pid = target.pid();
    let agent = Agent::start(&[
        "--pid",
        &pid.to_string(),
        "--leak-after",
        "1s",
        "--scan-interval",
        "200ms",
    ]);
    let leaked = |m: &Metrics| m.for_pid("gostray_leaked_goroutines", pid) == Some(3);
    let m = agent.metrics_until(Duration::from_secs(15), leaked);
    assert!(leaked(&m), "no leak reported:\n{}", m.0);

    let mut functions = Vec::new();
    let page = m.0.split_once("\r\n\r\n").expect("HTTP response").1;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let values = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        for v in values {
            assert!(!v.chars().any(char::is_control), "{v:?}");
            assert!(v.chars().count() <= 256, "label of {} chars", v.len());
            if v.starts_with("main.Ünïcødé_") {
                functions.push(v);
            }
        }
    }
    assert!(
        !functions.is_empty(),
        "no series names the leaking function:\n{page}"
    );
    let exe_label = format!("exe=\"{}\"", {
        let shown: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        shown.replace('\\', "\\\\").replace('"', "\\\"")
    });
    assert!(m.0.contains(&exe_label), "{exe_label} not in:\n{}", m.0);

    let response = http_get(agent.port, "/api/v1/leaks").unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    let report: serde_json::Value = serde_json::from_str(body).expect("valid JSON");
    check_strings(&report, 256);
    assert!(body.contains("main.Ünïcødé_"), "{body}");

    // The terminal: `gostray leaks` prints no control character but line
    // ends (no escape sequence a name could smuggle in), lines bounded.
    let out = agent.leaks_command(&[]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("main.Ünïcødé_"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "{text:?}"
    );
    assert!(text.lines().all(|l| l.chars().count() <= 512), "{text}");
    drop(target);
    let _ = std::fs::remove_dir_all(dir);
}
