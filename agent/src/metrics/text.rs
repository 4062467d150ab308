//! The classic Prometheus text format (0.0.4), for scrapers that do not ask
//! for `OpenMetrics`: `curl`, `promtool check metrics`, older tools. Real
//! Prometheus servers ask for `OpenMetrics` and get it unchanged.
//!
//! The two differ where it matters here only in three ways: `OpenMetrics`
//! names a counter family without `_total` in `# HELP`/`# TYPE` (its
//! samples carry the suffix), has `# UNIT` lines, and ends with `# EOF`.

use std::fmt::Write;

/// Content type of [`from_openmetrics`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// True when an `Accept` header in the request head asks for `OpenMetrics`.
pub fn wants_openmetrics(head: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value.contains("application/openmetrics-text")
        })
    })
}

/// Rewrites `OpenMetrics` text as Prometheus text format 0.0.4.
pub fn from_openmetrics(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // HELP precedes TYPE: hold it until the type says whether to rename.
    let mut help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, text);
            }
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((_, text)) = help.take() {
                push_help(&mut out, &name, text);
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn push_help(out: &mut String, name: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gain_total_in_metadata_and_eof_goes() {
        let om = "# HELP a_things Things.\n# TYPE a_things counter\na_things_total{x=\"1\"} 3\n\
                  # HELP b_now Now.\n# TYPE b_now gauge\n# UNIT b_now seconds\nb_now 2\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP a_things_total Things.\n# TYPE a_things_total counter\na_things_total{x=\"1\"} 3\n\
             # HELP b_now Now.\n# TYPE b_now gauge\nb_now 2\n"
        );
    }

    #[test]
    fn accept_header_negotiation() {
        assert!(wants_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        ));
        assert!(!wants_openmetrics("GET /metrics HTTP/1.1\r\nAccept: */*"));
        assert!(!wants_openmetrics("GET /metrics HTTP/1.1"));
    }
}
