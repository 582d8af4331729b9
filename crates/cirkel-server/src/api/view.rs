//! What the API and the dashboard show, computed from cached state only:
//! the collector's [`Estate`], the metrics, the alarm states and the
//! events kept in memory. Nothing here probes a member or opens a
//! repository, so an answer never waits for one.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cirkel_config::Config;
use cirkel_state::{Event, EventKind};
use serde::Serialize;

use super::estate::{ClusterView, Estate, WindowView};
use crate::metrics::Metrics;

/// Collected state older than this is shown as unknown.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// The plan's recovery-time objective, when no alarm sets another.
pub const PLAN_RTO_S: f64 = 900.0;
/// The plan's recovery-point objective, when no alarm sets another.
pub const PLAN_RPO_S: f64 = 300.0;

/// A measure against its target.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Objective {
    /// `None` when not known (never measured, or the measure is stale).
    pub value_s: Option<f64>,
    pub target_s: f64,
    /// `green` (within half the target), `amber` (within it), `red`
    /// (beyond it) or `unknown`.
    pub status: &'static str,
}

impl Objective {
    pub fn judge(value_s: Option<f64>, target_s: f64) -> Objective {
        let status = match value_s {
            None => "unknown",
            Some(v) if !v.is_finite() => "unknown",
            Some(v) if v > target_s => "red",
            Some(v) if v > target_s / 2.0 => "amber",
            Some(_) => "green",
        };
        Objective { value_s: value_s.filter(|v| v.is_finite()), target_s, status }
    }
}

/// One protected source at a glance.
#[derive(Clone, Debug, Serialize)]
pub struct SourceView {
    pub source: String,
    /// `postgres`, `redis` or `files`.
    pub kind: String,
    /// What would be lost if it failed now.
    pub rpo: Objective,
    /// How long until it is back.
    pub rto: Objective,
    /// Where the predicted RTO comes from: `failover` (the last failover
    /// drill) or `restore` (the last restore drill's rate over the newest
    /// backup's size).
    pub rto_kind: Option<String>,
    pub backups: usize,
    pub newest_backup: Option<DateTime<Utc>>,
    /// The widest recoverable window over the repositories.
    pub window: Option<WindowView>,
    /// For clusters and groups: whether every member answers as it should.
    pub healthy: Option<bool>,
    pub primary: Option<String>,
}

/// One drill, from its event.
#[derive(Clone, Debug, Serialize)]
pub struct DrillView {
    pub time: DateTime<Utc>,
    pub source: String,
    pub drill: String,
    pub passed: bool,
    pub rto_s: Option<f64>,
    pub message: String,
    pub details: serde_json::Value,
}

/// The targets: the thresholds of the alarms on the same measures, else the plan's.
pub fn targets(cfg: &Config) -> (f64, f64) {
    let specs = cfg.alarm_specs();
    let of = |metric: &str, default: f64| {
        specs.iter().find(|s| s.metric.name == metric).map(|s| s.threshold).unwrap_or(default)
    };
    (of("cirkel_rpo_exposure_seconds", PLAN_RPO_S), of("cirkel_predicted_rto_seconds", PLAN_RTO_S))
}

/// Whether the estate is recent enough to be believed.
pub fn fresh(estate: &Estate, now: DateTime<Utc>) -> bool {
    estate.updated.is_some_and(|t| (now - t).to_std().map(|d| d <= STALE_AFTER).unwrap_or(true))
}

/// Every configured source, in order: PostgreSQL, Redis, files.
pub fn source_names(cfg: &Config) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    out.extend(cfg.postgres.keys().map(|n| (format!("postgres/{n}"), "postgres")));
    out.extend(cfg.redis.keys().map(|n| (format!("redis/{n}"), "redis")));
    out.extend(cfg.files.keys().map(|n| (format!("files/{n}"), "files")));
    out
}

/// The sources with their RPO exposure and predicted RTO against the targets.
pub fn sources(cfg: &Config, estate: &Estate, metrics: &Metrics, now: DateTime<Utc>) -> Vec<SourceView> {
    let (rpo_target, rto_target) = targets(cfg);
    let fresh = fresh(estate, now);
    let mut rto: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (name, l, v) in metrics.samples() {
        if name == "cirkel_predicted_rto_seconds"
            && let (Some(s), Some(k)) = (l.get("source"), l.get("kind"))
        {
            rto.insert((s.clone(), k.clone()), v);
        }
    }
    source_names(cfg)
        .into_iter()
        .map(|(source, kind)| {
            let cluster: Option<&ClusterView> = estate.clusters.get(&source);
            let replicated = cluster.is_some_and(|c| c.members.len() > 1);
            let failover = rto.get(&(source.clone(), "failover".into())).copied();
            let restore = rto.get(&(source.clone(), "restore".into())).copied();
            let (rto_value, rto_kind) = match (replicated, failover, restore) {
                (true, Some(f), _) => (Some(f), Some("failover")),
                (_, _, Some(r)) => (Some(r), Some("restore")),
                (_, Some(f), None) => (Some(f), Some("failover")),
                _ => (None, None),
            };
            let exposure = if fresh { estate.exposure.get(&source).copied() } else { None };
            let backups = estate.backups.get(&source);
            let window = estate
                .windows
                .get(&source)
                .and_then(|w| w.iter().filter(|w| w.earliest.is_some()).min_by_key(|w| w.earliest).cloned());
            SourceView {
                rpo: Objective::judge(exposure, rpo_target),
                rto: Objective::judge(rto_value, rto_target),
                rto_kind: rto_kind.map(String::from),
                backups: backups.map(|b| b.len()).unwrap_or(0),
                newest_backup: backups.and_then(|b| b.first()).map(|b| b.time),
                window,
                healthy: if fresh { cluster.map(|c| c.healthy) } else { None },
                primary: if fresh { cluster.and_then(|c| c.primary.clone()) } else { None },
                source,
                kind: kind.to_string(),
            }
        })
        .collect()
}

/// The drills among `events`, newest first.
pub fn drills<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<DrillView> {
    let mut out: Vec<DrillView> = events
        .filter(|e| e.kind == EventKind::Drill)
        .map(|e| {
            let d = &e.details;
            let report = d.get("report").unwrap_or(d);
            let get = |k: &str| d.get(k).or_else(|| report.get(k));
            DrillView {
                time: e.time,
                source: e.source.clone(),
                drill: get("drill").and_then(|v| v.as_str()).unwrap_or("drill").to_string(),
                passed: get("passed").and_then(|v| v.as_bool()).unwrap_or(false),
                rto_s: ["rto_s", "endpoint_writable_after_s", "promoted_after_s", "downtime_s"]
                    .iter()
                    .find_map(|k| get(k).and_then(|v| v.as_f64())),
                message: e.message.clone(),
                details: d.clone(),
            }
        })
        .collect();
    out.reverse();
    out
}

/// The events the daemon keeps in memory for the API: the newest
/// [`EventRing::CAPACITY`], each with its sequence number in the log.
#[derive(Debug, Default)]
pub struct EventRing {
    events: VecDeque<(u64, Event)>,
    next: u64,
}

impl EventRing {
    pub const CAPACITY: usize = 10_000;

    pub fn push(&mut self, e: Event) {
        if self.events.len() == Self::CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back((self.next, e));
        self.next += 1;
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &(u64, Event)> {
        self.events.iter()
    }

    /// Up to `limit` events older than `before` (newest first) that match.
    pub fn page(&self, before: Option<u64>, limit: usize, keep: &dyn Fn(&Event) -> bool) -> Vec<(u64, Event)> {
        self.events
            .iter()
            .rev()
            .filter(|(seq, _)| before.is_none_or(|b| *seq < b))
            .filter(|(_, e)| keep(e))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_measure_is_never_green() {
        assert_eq!(Objective::judge(None, 300.0).status, "unknown");
        assert_eq!(Objective::judge(Some(f64::NAN), 300.0).status, "unknown");
        assert_eq!(Objective::judge(Some(0.0), 300.0).status, "green");
        assert_eq!(Objective::judge(Some(200.0), 300.0).status, "amber");
        assert_eq!(Objective::judge(Some(301.0), 300.0).status, "red");
    }

    #[test]
    fn a_stale_estate_shows_exposure_and_health_as_unknown() {
        let mut cfg = Config::default();
        cfg.postgres.insert("main".into(), Default::default());
        let mut estate = Estate::default();
        estate.exposed("postgres/main", 1.0);
        let m = Metrics::default();
        let now = Utc::now();
        // Never collected: unknown.
        assert_eq!(sources(&cfg, &estate, &m, now)[0].rpo.status, "unknown");
        estate.updated = Some(now);
        assert_eq!(sources(&cfg, &estate, &m, now)[0].rpo.status, "green");
        // Collected two minutes ago: unknown again.
        estate.updated = Some(now - chrono::Duration::seconds(120));
        assert_eq!(sources(&cfg, &estate, &m, now)[0].rpo.status, "unknown");
    }

    #[test]
    fn the_ring_pages_backwards_and_forgets_the_oldest() {
        let mut r = EventRing::default();
        for i in 0..(EventRing::CAPACITY + 5) {
            r.push(Event::new("s", EventKind::JobDone, format!("{i}")));
        }
        let first = r.page(None, 3, &|_| true);
        assert_eq!(first.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [10_004, 10_003, 10_002]);
        let next = r.page(Some(10_002), 2, &|_| true);
        assert_eq!(next[0].0, 10_001);
        assert_eq!(r.iter().next().map(|(s, _)| *s), Some(5));
    }
}
