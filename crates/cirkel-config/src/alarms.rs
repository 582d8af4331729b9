//! Alarms (`[alarms.NAME]`) and the Prometheus endpoints they may watch
//! (`[scrape.NAME]`).
//!
//! The built-in alarms of `cirkel_alarm::defaults()` apply unless the file
//! says otherwise: a table named like one overrides the keys it sets and
//! keeps the others, and `enabled = false` removes it. Any other name is a
//! new alarm, which must say its `metric`, `comparison` and `threshold`.
//! Series scraped from `[scrape.web]` carry the label `scrape="web"`.

use std::collections::BTreeMap;
use std::time::Duration;

use cirkel_alarm::AlarmSpec;
use serde::Serialize;

use crate::Config;

/// One `[alarms.NAME]` table, merged with the built-in of the same name.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AlarmConfig {
    /// `false` removes the built-in alarm of this name.
    pub enabled: bool,
    #[serde(flatten)]
    pub spec: AlarmSpec,
}

/// A Prometheus endpoint to scrape (`[scrape.NAME]`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ScrapeConfig {
    /// An `http://` URL, e.g. "http://127.0.0.1:9100/metrics".
    pub url: String,
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub timeout: Duration,
}

impl Config {
    /// The alarms in effect: the built-ins, overridden or removed by the
    /// file, in the plan's order, then the file's own alarms by name.
    pub fn alarm_specs(&self) -> Vec<AlarmSpec> {
        effective_alarms(&self.alarms)
    }
}

fn effective_alarms(configured: &BTreeMap<String, AlarmConfig>) -> Vec<AlarmSpec> {
    let defaults = cirkel_alarm::defaults();
    let mut out = Vec::new();
    for d in &defaults {
        match configured.get(&d.name) {
            Some(c) if c.enabled => out.push(c.spec.clone()),
            Some(_) => {}
            None => out.push(d.clone()),
        }
    }
    for (name, c) in configured {
        if c.enabled && !defaults.iter().any(|d| &d.name == name) {
            out.push(c.spec.clone());
        }
    }
    out
}
