//! A real Prometheus (Debian's) on loopback, and the parts of its HTTP API
//! the tests read.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::Value;

use super::http;
use crate::{tools, util};

/// A Prometheus server scraping every second, evaluating the given rule
/// file every second. Stopped when dropped.
pub struct Prometheus {
    pub port: u16,
    _server: util::Guard,
}

impl Prometheus {
    /// Starts Prometheus in `dir` (config, TSDB, log) with the jobs
    /// `scrape_configs` (YAML list entries) and waits until ready.
    pub fn start(dir: &Path, scrape_configs: &str, rules: &Path) -> anyhow::Result<Self> {
        let port = util::free_port()?;
        fs::create_dir_all(dir)?;
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n{scrape_configs}",
                rules = rules.display()
            ),
        )?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(tools::PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let prometheus = Self {
            port,
            _server: util::Guard(child),
        };
        poll(Duration::from_secs(30), "Prometheus ready", || {
            Ok(http::get(port, "/-/ready").is_ok_and(|(status, _)| status == 200))
        })
        .with_context(|| format!("see {}", dir.join("prometheus.log").display()))?;
        Ok(prometheus)
    }

    /// GETs an API path and returns `data`, failing unless status is success.
    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (code, body) = http::get(self.port, path)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path}: not JSON ({code}): {body}"))?;
        if v["status"] != "success" {
            bail!(
                "{} ({})",
                v["error"].as_str().unwrap_or(&body),
                v["errorType"].as_str().unwrap_or("?")
            );
        }
        Ok(v["data"].clone())
    }

    /// Runs an instant query; the result vector (or scalar as a one-element list).
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let data = self.api(&format!("/api/v1/query?query={}", util::encode(promql)))?;
        Ok(match &data["result"] {
            Value::Array(series) => series.clone(),
            Value::Null => Vec::new(),
            scalar => vec![scalar.clone()],
        })
    }

    /// Every rule Prometheus loaded: (kind "alerting"/"recording", name, query).
    pub fn rules(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/rules")?;
        let mut out = Vec::new();
        for group in data["groups"].as_array().into_iter().flatten() {
            for rule in group["rules"].as_array().into_iter().flatten() {
                let s = |k: &str| rule[k].as_str().unwrap_or_default().to_string();
                out.push((s("type"), s("name"), s("query")));
            }
        }
        Ok(out)
    }

    /// Active alerts: (name, state "pending"/"firing", labels).
    pub fn alerts(&self) -> anyhow::Result<Vec<(String, String, Value)>> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or_default().into(),
                    a["state"].as_str().unwrap_or_default().into(),
                    a["labels"].clone(),
                )
            })
            .collect())
    }
}

/// Polls `ok` every 200 ms until it holds or `within` passes.
pub fn poll(
    within: Duration,
    what: &str,
    mut ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last_err = None;
    while Instant::now() < deadline {
        match ok() {
            Ok(true) => return Ok(()),
            Ok(false) => last_err = None,
            Err(e) => last_err = Some(e),
        }
        thread::sleep(Duration::from_millis(200));
    }
    match last_err {
        Some(e) => Err(e.context(format!("{what}: not within {within:?}"))),
        None => bail!("{what}: not within {within:?}"),
    }
}

/// A copy of `rules` whose `for:` durations are all `for_`, so alerts can
/// be seen to fire within seconds. Expressions are untouched.
pub fn fast_rules(rules: &Path, out: &Path, for_: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(rules)?;
    let mut fast = String::with_capacity(text.len());
    let mut changed = 0;
    for line in text.lines() {
        if line.trim_start().starts_with("for:") {
            let indent = &line[..line.len() - line.trim_start().len()];
            let _ = writeln!(fast, "{indent}for: {for_}");
            changed += 1;
        } else {
            fast.push_str(line);
            fast.push('\n');
        }
    }
    if changed == 0 {
        bail!("no `for:` in {}", rules.display());
    }
    fs::write(out, fast)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_rules_shortens_every_for_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("gostray-fast-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (src, out) = (dir.join("in.yaml"), dir.join("out.yaml"));
        std::fs::write(
            &src,
            "groups:\n  - rules:\n      - alert: A\n        expr: x > 0 # for: not this\n        for: 15m\n",
        )
        .unwrap();
        super::fast_rules(&src, &out, "2s").unwrap();
        let fast = std::fs::read_to_string(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            fast,
            "groups:\n  - rules:\n      - alert: A\n        expr: x > 0 # for: not this\n        for: 2s\n"
        );
    }
}
