//! The `PromQL` in `deploy/`: every dashboard query and template variable, as
//! Prometheus will see it once Grafana has substituted its variables.

use std::{fs, path::Path};

use anyhow::{bail, Context};
use serde_json::Value;

/// One expression and where it comes from.
pub struct Expr {
    pub origin: String,
    pub promql: String,
}

/// Grafana variables and what the tests put in their place: "All" for the
/// selection variables (allValue `.*`, which also matches an absent label),
/// and windows that hold several samples at a one-second scrape interval.
const SUBSTITUTIONS: [(&str, &str); 8] = [
    ("$__rate_interval", "30s"),
    ("$__range", "1m"),
    ("$cluster", ".*"),
    ("$node", ".*"),
    ("$namespace", ".*"),
    ("$pod", ".*"),
    ("$exe", ".*"),
    ("$instance", ".*"),
];

/// Variables every dashboard has: where a series comes from.
const SCOPE_VARIABLES: [&str; 2] = ["cluster", "node"];

/// What a stat panel's query ends with, so that it shows 0 rather than "No
/// data" on a healthy cluster (no leak series at all).
pub const ZERO_DEFAULT: &str = " or vector(0)";

/// Every dashboard expression, variables substituted. Fails on a dashboard
/// without a Prometheus datasource variable or the `cluster` and `node`
/// variables, with an unknown variable, or with a stat panel that would show
/// "No data" for no series.
pub fn dashboards(dir: &Path) -> anyhow::Result<Vec<Expr>> {
    let mut out = Vec::new();
    let mut files: Vec<_> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no dashboards in {}", dir.display());
    }
    for file in files {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let dash: Value = serde_json::from_str(&fs::read_to_string(&file)?)
            .with_context(|| format!("{name} is not JSON"))?;
        let vars = dash["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !vars
            .iter()
            .any(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        {
            bail!("{name}: no Prometheus datasource variable");
        }
        for scope in SCOPE_VARIABLES {
            if !vars
                .iter()
                .any(|v| v["name"] == scope && v["type"] == "query")
            {
                bail!("{name}: no {scope} variable");
            }
        }
        for v in &vars {
            if v["type"] != "query" {
                continue;
            }
            if v["includeAll"] == true && v["allValue"] != ".*" {
                bail!(
                    "{name}: variable {} needs allValue .* so that All matches absent labels",
                    v["name"]
                );
            }
            let query = v["query"]["query"].as_str().unwrap_or_default();
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map(|(sel, _)| sel)
                .with_context(|| {
                    format!("{name}: variable query {query:?} is not label_values(…)")
                })?;
            out.push(Expr {
                origin: format!("{name} variable {}", v["name"]),
                promql: substitute(selector)?,
            });
        }
        for panel in dash["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                if panel["type"] == "stat" && !expr.ends_with(ZERO_DEFAULT) {
                    bail!(
                        "{name}: stat panel {} shows \"No data\" when nothing is wrong: end its query with `{}`",
                        panel["title"],
                        ZERO_DEFAULT.trim()
                    );
                }
                out.push(Expr {
                    origin: format!("{name} panel {:?}", panel["title"].as_str().unwrap_or("?")),
                    promql: substitute(expr)?,
                });
            }
        }
    }
    Ok(out)
}

fn substitute(expr: &str) -> anyhow::Result<String> {
    let mut s = expr.to_string();
    for (var, value) in SUBSTITUTIONS {
        s = s.replace(var, value);
    }
    if let Some(at) = s.find('$') {
        bail!("unknown Grafana variable in {expr:?} at {:?}", &s[at..]);
    }
    Ok(s)
}

/// Metric names an expression reads: identifiers outside string literals
/// that name gostray's series or the ones Prometheus and Go clients make.
pub fn metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = expr.chars().peekable();
    let mut word = String::new();
    let flush = |word: &mut String, names: &mut Vec<String>| {
        let is_metric = word.contains("gostray")
            || word == "up"
            || word.starts_with("process_")
            || word.starts_with("scrape_");
        if is_metric && !names.contains(word) {
            names.push(word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            flush(&mut word, &mut names);
            // Skip the literal, honouring backslash escapes.
            while let Some(d) = chars.next() {
                if d == '\\' {
                    chars.next();
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word, &mut names);
        }
    }
    flush(&mut word, &mut names);
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_metrics_not_labels_or_strings() {
        assert_eq!(
            metrics(
                r#"sum by (namespace) (rate(gostray_events_lost_total{job=~".*gostray.*"}[5m])) > 0 and up == 0"#
            ),
            vec!["gostray_events_lost_total", "up"]
        );
        assert_eq!(
            metrics("delta(gostray:leaked_goroutines:sum[30m])"),
            vec!["gostray:leaked_goroutines:sum"]
        );
    }

    #[test]
    fn substitutes_grafana_variables() {
        assert_eq!(
            substitute(r#"rate(x{pod=~"$pod"}[$__rate_interval])"#).unwrap(),
            r#"rate(x{pod=~".*"}[30s])"#
        );
        assert!(substitute("x{a=\"$nope\"}").is_err());
        assert_eq!(
            substitute(r#"x{cluster=~"$cluster", node=~"$node"}"#).unwrap(),
            r#"x{cluster=~".*", node=~".*"}"#
        );
    }
}
