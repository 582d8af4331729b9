//! The Prometheus text exposition format (version 0.0.4), read from the
//! endpoints of `[scrape.NAME]` targets.
//!
//! The text comes from another program, so any input gives samples or an
//! error with its line, never a panic; the parser is one pass over the
//! text and holds nothing but the samples it returns.
//!
//! Scraped series enter the engine under their own metric name with one
//! label added, `scrape="NAME"` ([`scraped_labels`]), the way Prometheus
//! adds `job`. A selector then picks a target with `{scrape="web"}`, and
//! `{scrape=""}` keeps to cirkel's own series.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::selector::{is_label_name, is_metric_name};

/// The label naming the `[scrape.NAME]` target a series came from.
pub const SCRAPE_LABEL: &str = "scrape";

/// One sample line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    /// Milliseconds since the Unix epoch, when the line carries one.
    pub timestamp_ms: Option<i64>,
}

/// Why a text is not the exposition format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

/// Parses a whole exposition.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |message: String| ParseError { line: i + 1, message };
        let line = raw.trim_matches(|c| c == ' ' || c == '\t' || c == '\r');
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            check_comment(comment).map_err(err)?;
            continue;
        }
        out.push(sample(line).map_err(err)?);
    }
    Ok(out)
}

/// The labels a scraped series carries in the engine: its own, with
/// `scrape="TARGET"` added. A `scrape` label the target exported itself
/// is kept as `exported_scrape`, as Prometheus keeps `exported_job`.
pub fn scraped_labels(target: &str, mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if let Some(own) = labels.remove(SCRAPE_LABEL) {
        labels.insert(format!("exported_{SCRAPE_LABEL}"), own);
    }
    labels.insert(SCRAPE_LABEL.to_string(), target.to_string());
    labels
}

fn check_comment(comment: &str) -> Result<(), String> {
    let mut words = comment.split([' ', '\t']).filter(|w| !w.is_empty());
    match words.next() {
        Some("TYPE") => {
            let name = words.next().unwrap_or("");
            if !is_metric_name(name) {
                return Err(format!("`# TYPE` names `{name}`, which is not a metric name"));
            }
            match words.next() {
                Some("counter" | "gauge" | "histogram" | "summary" | "untyped") if words.next().is_none() => Ok(()),
                other => Err(format!(
                    "`# TYPE {name}` has type `{}`; expected counter, gauge, histogram, summary or untyped",
                    other.unwrap_or("")
                )),
            }
        }
        Some("HELP") => {
            let name = words.next().unwrap_or("");
            if is_metric_name(name) {
                Ok(())
            } else {
                Err(format!("`# HELP` names `{name}`, which is not a metric name"))
            }
        }
        _ => Ok(()),
    }
}

fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        let shown: String = line.chars().take(40).collect();
        return Err(format!("`{shown}` does not start with a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = read_labels(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
        return Err(format!("expected a space after `{name}`"));
    }
    let value_text = fields.next().ok_or_else(|| format!("`{name}` has no value"))?;
    let value =
        parse_value(value_text).ok_or_else(|| format!("`{value_text}` is not a number (use e.g. 1.5, +Inf, NaN)"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(t.parse::<i64>().map_err(|_| format!("`{t}` is not a timestamp in milliseconds"))?),
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the timestamp"));
    }
    Ok(Sample { name: name.to_string(), labels, value, timestamp_ms })
}

fn parse_value(s: &str) -> Option<f64> {
    // Rust also reads "infinity" and "inf" in any case; the format's
    // writers use +Inf, -Inf and NaN, which it reads too.
    let digits_or_special = s.trim_start_matches(['+', '-']);
    if digits_or_special.is_empty() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Reads `name="value",...}` and returns what follows the `}`.
fn read_labels<'a>(mut s: &'a str, labels: &mut BTreeMap<String, String>) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix('}') {
            return Ok(after);
        }
        let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
        let label = &s[..end];
        if !is_label_name(label) {
            return Err(match s.chars().next() {
                None => "unclosed `{`".to_string(),
                Some(c) if label.is_empty() => format!("expected a label name, found `{c}`"),
                Some(_) => format!("`{label}` is not a label name"),
            });
        }
        s = s[end..].trim_start_matches([' ', '\t']);
        s = s.strip_prefix('=').ok_or_else(|| format!("expected `=` after label `{label}`"))?;
        s = s.trim_start_matches([' ', '\t']);
        s = s.strip_prefix('"').ok_or_else(|| format!("the value of `{label}` must be in double quotes"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let rest = loop {
            match chars.next() {
                None => return Err(format!("the value of `{label}` is not closed with `\"`")),
                Some((i, '"')) => break &s[i + 1..],
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => {
                        return Err(format!("unknown escape `\\{c}` in `{label}`; expected \\\\, \\\" or \\n"));
                    }
                    None => return Err(format!("the value of `{label}` is not closed with `\"`")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(label.to_string(), value).is_some() {
            return Err(format!("label `{label}` appears twice"));
        }
        s = rest.trim_start_matches([' ', '\t']);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label `{label}`"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_format() {
        let text = "# HELP http_requests_total The total.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
                    \n\
                    # a free comment\n\
                    msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
                    metric_without_timestamp_and_labels 12.47\n\
                    something_weird{problem=\"division by zero\"} +Inf -3982045\n\
                    neg -Inf\n\
                    nan NaN\n\
                    trailing_comma{a=\"1\",} 2\n\
                    empty_labels{} 3\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 8);
        assert_eq!(s[0].labels["code"], "200");
        assert_eq!(s[0].timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(s[1].labels["path"], "C:\\DIR\\FILE.TXT");
        assert_eq!(s[1].labels["error"], "Cannot find file:\n\"FILE.TXT\"");
        assert_eq!(s[2].value, 12.47);
        assert_eq!(s[3].value, f64::INFINITY);
        assert_eq!(s[3].timestamp_ms, Some(-3_982_045));
        assert_eq!(s[4].value, f64::NEG_INFINITY);
        assert!(s[5].value.is_nan());
        assert_eq!(s[6].labels.len(), 1);
        assert!(s[7].labels.is_empty());
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        for (text, line, needle) in [
            ("ok 1\n{a=\"b\"} 1", 2, "metric name"),
            ("m", 1, "no value"),
            ("m abc", 1, "not a number"),
            ("m +", 1, "not a number"),
            ("m 1 2 3", 1, "unexpected"),
            ("m 1 1.5", 1, "timestamp"),
            ("m{a=\"b\" 1", 1, "expected `,` or `}`"),
            ("m{a=b} 1", 1, "double quotes"),
            ("m{a=\"b\\x\"} 1", 1, "unknown escape"),
            ("m{a=\"b} 1", 1, "not closed"),
            ("m{a=\"1\",a=\"2\"} 1", 1, "twice"),
            ("m{", 1, "unclosed"),
            ("m{a} 1", 1, "expected `=`"),
            ("m{9=\"x\"} 1", 1, "not a label name"),
            ("m{a=\"1\"}1", 1, "space"),
            ("# TYPE m gauges", 1, "expected counter"),
            ("# TYPE 1m gauge", 1, "not a metric name"),
            ("# HELP", 1, "not a metric name"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(e.message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn scraped_series_get_their_target() {
        let own = BTreeMap::from([("scrape".to_string(), "x".to_string()), ("a".to_string(), "1".to_string())]);
        let l = scraped_labels("web", own);
        assert_eq!(l["scrape"], "web");
        assert_eq!(l["exported_scrape"], "x");
        assert_eq!(l["a"], "1");
    }
}
