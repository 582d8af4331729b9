//! The daemon's metrics: one table of every series it exposes, set by the
//! parts that know the values, read by `/metrics` (encoded by
//! `prometheus-client` in the OpenMetrics text format) and by the alarm
//! engine, which evaluates the same values a Prometheus server would scrape.
//!
//! Names and units follow Prometheus's conventions: base units (seconds,
//! bytes), `_total` for counters, one family per quantity with labels for
//! the source, member, check or job.

use std::collections::BTreeMap;
use std::sync::RwLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// A series' labels, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// Builds labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

pub use cirkel_alarm::catalog::{FAMILIES, Kind};

/// The current value of every series.
#[derive(Debug, Default)]
pub struct Metrics {
    series: RwLock<BTreeMap<&'static str, BTreeMap<Labels, f64>>>,
}

fn family(name: &str) -> Option<&'static str> {
    FAMILIES.iter().find(|(n, _, _)| *n == name).map(|(n, _, _)| *n)
}

impl Metrics {
    /// Sets a gauge (or a counter to an absolute value). Names outside
    /// [`FAMILIES`] are a programming error and are ignored in release.
    pub fn set(&self, name: &str, labels: Labels, value: f64) {
        let Some(name) = family(name) else {
            debug_assert!(false, "unknown metric {name}");
            return;
        };
        if let Ok(mut s) = self.series.write() {
            s.entry(name).or_default().insert(labels, value);
        }
    }

    /// Adds to a counter.
    pub fn add(&self, name: &str, labels: Labels, by: f64) {
        let Some(name) = family(name) else {
            debug_assert!(false, "unknown metric {name}");
            return;
        };
        if let Ok(mut s) = self.series.write() {
            *s.entry(name).or_default().entry(labels).or_default() += by;
        }
    }

    /// Removes the series of `name` whose labels include every pair of `matching`.
    pub fn remove(&self, name: &str, matching: &Labels) {
        if let Ok(mut s) = self.series.write()
            && let Some(f) = s.get_mut(name)
        {
            f.retain(|l, _| !matching.iter().all(|(k, v)| l.get(k) == Some(v)));
        }
    }

    pub fn get(&self, name: &str, labels: &Labels) -> Option<f64> {
        self.series.read().ok()?.get(name)?.get(labels).copied()
    }

    /// Every series with its value, for the alarm engine.
    pub fn samples(&self) -> Vec<(String, Labels, f64)> {
        let Ok(s) = self.series.read() else { return Vec::new() };
        s.iter().flat_map(|(n, f)| f.iter().map(move |(l, v)| (n.to_string(), l.clone(), *v))).collect()
    }

    /// The OpenMetrics text exposition of every series.
    pub fn encode(self: &std::sync::Arc<Self>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self.clone())));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Metrics {
    /// The Prometheus text format (0.0.4) of every series, for clients that
    /// do not ask for OpenMetrics (`promtool`, older scrapers): the same
    /// series, with counter families named by their `_total` samples and no
    /// `# EOF`.
    pub fn encode_text(self: &std::sync::Arc<Self>) -> String {
        let open = self.encode();
        let counters: Vec<&str> = FAMILIES
            .iter()
            .filter(|(_, k, _)| *k == Kind::Counter)
            .filter_map(|(n, _, _)| n.strip_suffix("_total"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
                let rest = line.strip_prefix(p)?;
                let (name, tail) = rest.split_once(' ')?;
                counters.contains(&name).then(|| format!("{p}{name}_total {tail}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

#[derive(Debug)]
struct Exposition(std::sync::Arc<Metrics>);

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(series) = self.0.series.read() else { return Ok(()) };
        for (name, kind, help) in FAMILIES {
            let Some(f) = series.get(name).filter(|f| !f.is_empty()) else { continue };
            match kind {
                Kind::Gauge => {
                    let mut fam = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                    for (labels, v) in f {
                        let l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                        ConstGauge::new(*v).encode(fam.encode_family(&l)?)?;
                    }
                }
                Kind::Counter => {
                    // The encoder appends `_total` to a counter's name.
                    let stem = name.strip_suffix("_total").unwrap_or(name);
                    let mut fam = encoder.encode_descriptor(stem, help, None, MetricType::Counter)?;
                    for (labels, v) in f {
                        let l: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                        ConstCounter::new(*v).encode(fam.encode_family(&l)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn series_are_set_added_removed_and_encoded() {
        let m = Arc::new(Metrics::default());
        m.set("cirkel_up", Labels::new(), 1.0);
        m.set("cirkel_rpo_exposure_seconds", labels(&[("source", "postgres/main"), ("repository", "main")]), 2.5);
        m.add("cirkel_failovers_total", labels(&[("source", "postgres/main")]), 1.0);
        m.add("cirkel_failovers_total", labels(&[("source", "postgres/main")]), 1.0);
        m.set("cirkel_check_up", labels(&[("check", "api")]), 0.0);
        m.remove("cirkel_check_up", &labels(&[("check", "api")]));
        let text = m.encode();
        assert!(text.contains("# TYPE cirkel_rpo_exposure_seconds gauge"), "{text}");
        assert!(
            text.contains(r#"cirkel_rpo_exposure_seconds{repository="main",source="postgres/main"} 2.5"#),
            "{text}"
        );
        assert!(text.contains(r#"cirkel_failovers_total{source="postgres/main"} 2"#), "{text}");
        assert!(!text.contains("cirkel_check_up"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
        let plain = m.encode_text();
        assert!(plain.contains("# TYPE cirkel_failovers_total counter\ncirkel_failovers_total{"), "{plain}");
        assert!(!plain.contains("# EOF"));
        let names: Vec<String> = m.samples().into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(names, ["cirkel_failovers_total", "cirkel_rpo_exposure_seconds", "cirkel_up"]);
    }
}
