//! Reading `[alarms.NAME]` and `[scrape.NAME]`. The alarm's settings are
//! checked here with `cirkel-alarm`'s own parsers, so a file that loads
//! never gives the engine an alarm it refuses.

use std::collections::BTreeMap;
use std::time::Duration;

use cirkel_alarm::{AlarmSpec, Comparison, Selector, Severity, Statistic, TreatMissing};

use super::Table;
use crate::alarms::{AlarmConfig, ScrapeConfig};

/// The shortest period: shorter ones would evaluate faster than most
/// sources are sampled (a check's own series may go down to 1 s).
const MIN_PERIOD: Duration = Duration::from_secs(10);
/// As in CloudWatch, an alarm looks back at most a day.
const MAX_WINDOW: Duration = Duration::from_secs(cirkel_alarm::spec::MAX_WINDOW_SECS);

/// What alarms are checked against: the scrape targets and health checks
/// the same file defines.
pub(super) struct Known<'k> {
    pub scrapes: Vec<&'k str>,
    pub checks: BTreeMap<&'k str, Duration>,
}

pub(super) fn read_alarms(tables: Vec<(String, Table<'_, '_>)>, known: &Known<'_>) -> BTreeMap<String, AlarmConfig> {
    let mut out = BTreeMap::new();
    for (name, t) in tables {
        if let Some(alarm) = read_alarm(&name, t, known) {
            out.insert(name, alarm);
        }
    }
    out
}

pub(super) fn read_scrapes(tables: Vec<(String, Table<'_, '_>)>) -> BTreeMap<String, ScrapeConfig> {
    tables.into_iter().map(|(name, t)| (name, read_scrape(t))).collect()
}

/// A string setting parsed by `parse`, its error reported at the value.
fn parsed<T>(t: &mut Table<'_, '_>, key: &'static str, parse: impl Fn(&str) -> Result<T, String>) -> Option<T> {
    let s = t.string(key)?;
    match parse(&s) {
        Ok(v) => Some(v),
        Err(e) => {
            t.cx.error(t.value_span(key).unwrap_or(0..0), &t.key_path(key), e);
            None
        }
    }
}

/// An integer or a float.
fn number(t: &mut Table<'_, '_>, key: &'static str) -> Option<f64> {
    let v = t.get(key)?;
    let n = match v.get_ref() {
        toml::de::DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
        toml::de::DeValue::Integer(i) => {
            i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok().map(|n| n as f64)
        }
        _ => {
            t.wrong(key, v, "a number");
            return None;
        }
    };
    match n {
        Some(n) if n.is_finite() => Some(n),
        _ => {
            t.cx.error(v.span(), &t.key_path(key), "expected a finite number such as 300 or 0.5");
            None
        }
    }
}

fn missing(t: &Table<'_, '_>, key: &str, example: &str) {
    t.cx.error(t.span.clone(), &t.key_path(key), format!("missing; a new alarm needs it, e.g. {key} = {example}"));
}

fn read_alarm(name: &str, mut t: Table<'_, '_>, known: &Known<'_>) -> Option<AlarmConfig> {
    let builtin = cirkel_alarm::defaults().into_iter().find(|d| d.name == name);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        t.cx.error(
            t.span.clone(),
            &t.path,
            format!("`{name}` is not an alarm name; use letters, digits, `-`, `_` and `.`, e.g. [alarms.disk-full]"),
        );
    }
    // `config show` prints the name inside the table too.
    if let Some(written) = t.string("name")
        && written != name
    {
        t.cx.error(
            t.value_span("name").unwrap_or(0..0),
            &t.key_path("name"),
            format!(
                "`{written}` is not the table's name `{name}`; the alarm is named by its table, so remove this key"
            ),
        );
    }
    let enabled = t.boolean("enabled").unwrap_or(true);
    let metric = parsed(&mut t, "metric", |s| Selector::parse(s).map_err(|e| format!("not a metric selector: {e}")));
    let statistic = parsed(&mut t, "statistic", |s| s.parse::<Statistic>());
    let period = t.duration("period");
    let evaluation_periods = t.integer("evaluation_periods", 1..1441).map(|n| n as u32);
    let datapoints_to_alarm = t.integer("datapoints_to_alarm", 1..1441).map(|n| n as u32);
    let comparison = parsed(&mut t, "comparison", |s| s.parse::<Comparison>());
    let threshold = number(&mut t, "threshold");
    let treat_missing_data = parsed(&mut t, "treat_missing_data", |s| s.parse::<TreatMissing>());
    let severity = parsed(&mut t, "severity", |s| s.parse::<Severity>());
    let description = t.string("description");
    let rate = t.boolean("rate");

    if !enabled && builtin.is_none() {
        let names: Vec<String> = cirkel_alarm::defaults().into_iter().map(|d| d.name).collect();
        t.cx.error(
            t.value_span("enabled").unwrap_or(t.span.clone()),
            &t.key_path("enabled"),
            format!(
                "`enabled = false` removes a built-in alarm, and there is none named `{name}` (built-ins: {}); delete this table instead",
                names.join(", ")
            ),
        );
    }
    let base = builtin.as_ref();
    let has_metric = metric.is_some() || t.value_span("metric").is_some();
    if base.is_none() && !has_metric {
        missing(&t, "metric", "\"cirkel_member_up{cluster=\\\"main\\\"}\"");
    }
    if base.is_none() && comparison.is_none() && t.value_span("comparison").is_none() {
        missing(&t, "comparison", "\">\"");
    }
    if base.is_none() && threshold.is_none() && t.value_span("threshold").is_none() {
        missing(&t, "threshold", "300");
    }

    // A check's series is sampled at every probe, so alarms on it may
    // look at periods as short as the probe interval (checked below).
    let on_checks = metric.as_ref().or(base.map(|b| &b.metric)).is_some_and(|m| m.name.starts_with("cirkel_check_"));
    if let Some(p) = period {
        let span = t.value_span("period").unwrap_or(0..0);
        if p.subsec_nanos() != 0 {
            t.cx.error(span, &t.key_path("period"), "not a whole number of seconds; write e.g. \"60s\" or \"5m\"");
        } else if p < MIN_PERIOD && !on_checks {
            t.cx.error(span, &t.key_path("period"), "shorter than 10s; use a period of 10s or more");
        } else if p.is_zero() {
            t.cx.error(span, &t.key_path("period"), "must be at least 1s");
        }
    }
    let period = period.or(base.map(|b| b.period)).unwrap_or(Duration::from_secs(60));
    let n = evaluation_periods.or(base.map(|b| b.evaluation_periods)).unwrap_or(1);
    // M defaults to N when N is set here, so `evaluation_periods = 3`
    // alone means 3 out of 3.
    let m = datapoints_to_alarm
        .or(if evaluation_periods.is_some() { None } else { base.map(|b| b.datapoints_to_alarm) })
        .unwrap_or(n);
    if m > n {
        let key = if datapoints_to_alarm.is_some() { "datapoints_to_alarm" } else { "evaluation_periods" };
        t.cx.error(
            t.value_span(key).unwrap_or(t.span.clone()),
            &t.key_path(key),
            format!("datapoints_to_alarm ({m}) is more than evaluation_periods ({n}); M out of N needs M ≤ N"),
        );
    }
    if period.checked_mul(n).is_none_or(|w| w > MAX_WINDOW) {
        t.cx.error(
            t.value_span("evaluation_periods").or(t.value_span("period")).unwrap_or(t.span.clone()),
            &t.key_path("evaluation_periods"),
            format!(
                "evaluation_periods × period is over a day ({n} × {}s); use fewer or shorter periods",
                period.as_secs()
            ),
        );
    }
    if let Some(sel) = &metric {
        let span = t.value_span("metric").unwrap_or(t.span.clone());
        let ours = sel.name.starts_with("cirkel_");
        if ours && !cirkel_alarm::catalog::is_known(&sel.name) {
            t.cx.error(
                span.clone(),
                &t.key_path("metric"),
                format!(
                    "`{}` is not one of cirkel's metrics; they are: {}",
                    sel.name,
                    cirkel_alarm::catalog::names().join(", ")
                ),
            );
        } else if !ours && known.scrapes.is_empty() {
            t.cx.error(
                span.clone(),
                &t.key_path("metric"),
                format!(
                    "`{}` is not one of cirkel's metrics, and no [scrape.NAME] target is configured to provide it; \
                     add one, e.g. [scrape.node] url = \"http://127.0.0.1:9100/metrics\"",
                    sel.name
                ),
            );
        }
        // A check's series changes once per probe: a period that is not a
        // whole number of its intervals gets uneven counts of probes.
        if sel.name.starts_with("cirkel_check_") {
            for m in sel.matchers.iter().filter(|m| m.label == "check" && !m.negated) {
                let Some(interval) = known.checks.get(m.value.as_str()) else {
                    t.cx.error(span.clone(), &t.key_path("metric"), format!("no [checks.{}] is configured", m.value));
                    continue;
                };
                let p = period.as_millis();
                if interval.as_millis() > 0 && !p.is_multiple_of(interval.as_millis()) {
                    t.cx.error(
                        t.value_span("period").unwrap_or(span.clone()),
                        &t.key_path("period"),
                        format!(
                            "{}s is not a multiple of check {}'s interval ({}s); use e.g. {}s",
                            period.as_secs_f64(),
                            m.value,
                            interval.as_secs_f64(),
                            (p.div_ceil(interval.as_millis()) * interval.as_millis()) as f64 / 1000.0
                        ),
                    );
                }
            }
        }
    }
    let metric = metric.or(base.map(|b| b.metric.clone()));
    let threshold = threshold.or(base.map(|b| b.threshold));
    if let (Some(m), Some(th)) = (&metric, threshold)
        && th < 0.0
        && (m.name.ends_with("_seconds") || m.name.ends_with("_bytes"))
    {
        t.cx.error(
            t.value_span("threshold").unwrap_or(t.span.clone()),
            &t.key_path("threshold"),
            format!(
                "`{}` is never negative, so a threshold of {th} would never or always breach; use 0 or more",
                m.name
            ),
        );
    }
    t.finish();
    Some(AlarmConfig {
        enabled,
        spec: AlarmSpec {
            name: name.to_string(),
            metric: metric?,
            statistic: statistic.or(base.map(|b| b.statistic)).unwrap_or(Statistic::Maximum),
            period,
            evaluation_periods: n,
            datapoints_to_alarm: m,
            comparison: comparison.or(base.map(|b| b.comparison))?,
            threshold: threshold?,
            treat_missing_data: treat_missing_data.or(base.map(|b| b.treat_missing_data)).unwrap_or_default(),
            severity: severity.or(base.map(|b| b.severity)).unwrap_or_default(),
            description: description.or(base.map(|b| b.description.clone())).unwrap_or_default(),
            rate: rate.or(base.map(|b| b.rate)).unwrap_or(false),
        },
    })
}

fn read_scrape(mut t: Table<'_, '_>) -> ScrapeConfig {
    let url = t.required_string("url", "\"http://127.0.0.1:9100/metrics\"");
    if let Some(span) = t.value_span("url")
        && let Err(e) = check_url(&url)
    {
        t.cx.error(span, &t.key_path("url"), e);
    }
    let interval = t.duration("interval").unwrap_or(Duration::from_secs(15));
    let timeout = t.duration("timeout").unwrap_or(Duration::from_secs(5));
    if interval.is_zero() {
        t.cx.error(
            t.value_span("interval").unwrap_or(0..0),
            &t.key_path("interval"),
            "zero; scrape every \"15s\" or so",
        );
    }
    if timeout.is_zero() || timeout > interval {
        t.cx.error(
            t.value_span("timeout").or(t.value_span("interval")).unwrap_or(t.span.clone()),
            &t.key_path("timeout"),
            format!("the timeout must be more than zero and at most the interval ({}s)", interval.as_secs_f64()),
        );
    }
    t.finish();
    ScrapeConfig { url, interval, timeout }
}

fn check_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            "https:// is not supported; scrape over http:// on a trusted network, or through a local TLS-terminating proxy".into()
        } else {
            format!("`{url}` is not an http:// URL; expected e.g. \"http://127.0.0.1:9100/metrics\"")
        });
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("credentials in the URL would be printed with it; expose the endpoint without them".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, rest)) => (h, rest.strip_prefix(':').or(if rest.is_empty() { None } else { Some(rest) })),
            None => ("", None),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(format!("`{port}` is not a port; expected e.g. http://127.0.0.1:9100/metrics"));
    }
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Err(format!("`{url}` has no host; expected e.g. \"http://127.0.0.1:9100/metrics\""));
    }
    Ok(())
}
