//! Writing one metric family: its descriptor, then a sample per label set,
//! with label values escaped (they come from the watched processes).

use std::fmt;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::MetricType,
};

/// A series' labels, in order.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// Writes the family `name` with one sample per label set.
pub(crate) fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        if labels.is_empty() {
            // `name{} 1` is legal but noisy; a bare sample reads better.
            value.encode(metric)?;
            return Ok(());
        }
        // prometheus-client (0.24) writes label values as they are: a quote
        // in an executable or function name would end the value early, break
        // the whole page for the scraper and let a target forge labels.
        let labels: Labels = labels
            .into_iter()
            .map(|(k, v)| (k, escape_label_value(&v)))
            .collect();
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Escapes a label value for the text formats: backslash, double quote
/// and line feed, as the exposition format specifies.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), r"x\ny");
    }
}
