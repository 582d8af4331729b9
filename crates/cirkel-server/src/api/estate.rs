//! What the collector last saw, kept for the API and the dashboard: the
//! members of every cluster and group, the backups and recoverable windows
//! of every source in every repository, and which repositories answered.
//! The collector builds a fresh [`Estate`] each round and replaces the
//! shared one at its end, so a reader never waits for a probe: a dead member
//! or an unreachable repository slows the collector, never the page.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The shared, cached state.
pub type Shared = Arc<RwLock<Estate>>;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Estate {
    /// When the last collection ended; `None` before the first.
    pub updated: Option<DateTime<Utc>>,
    /// How long the last collection took, in seconds.
    pub round_s: Option<f64>,
    /// Clusters and groups by source (`postgres/NAME`, `redis/NAME`).
    pub clusters: BTreeMap<String, ClusterView>,
    /// Every repository the collector tried, by name (`default` is the main one).
    pub repositories: BTreeMap<String, RepositoryView>,
    /// Backups by source, newest first, from every repository that answered.
    pub backups: BTreeMap<String, Vec<BackupView>>,
    /// Recoverable windows by source, one per repository.
    pub windows: BTreeMap<String, Vec<WindowView>>,
    /// RPO exposure by source: the smallest over the repositories that answered.
    pub exposure: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    pub source: String,
    pub name: String,
    /// `postgres` or `redis`.
    pub kind: String,
    pub primary: Option<String>,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub members: Vec<MemberView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    pub name: String,
    pub zone: Option<String>,
    /// `primary`, `standby` or `unknown` (not reachable, or no answer).
    pub role: String,
    pub reachable: bool,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RepositoryView {
    pub name: String,
    pub reachable: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackupView {
    pub id: String,
    pub time: DateTime<Utc>,
    pub repository: String,
    /// `base` (PostgreSQL), `rdb` (Redis) or `files`.
    pub kind: String,
    pub bytes: u64,
    pub duration_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WindowView {
    pub repository: String,
    /// The earliest point a restore can reach.
    pub earliest: Option<DateTime<Utc>>,
    /// The latest point a restore can reach.
    pub latest: Option<DateTime<Utc>>,
    /// Gaps in the WAL (a restore cannot cross one).
    pub gaps: usize,
}

impl Estate {
    /// Adds a backup of `source`; the list is sorted when published.
    pub fn backup(&mut self, source: &str, b: BackupView) {
        self.backups.entry(source.to_string()).or_default().push(b);
    }

    /// Keeps the smallest exposure of `source` seen this round.
    pub fn exposed(&mut self, source: &str, seconds: f64) {
        let e = self.exposure.entry(source.to_string()).or_insert(seconds);
        *e = e.min(seconds);
    }

    /// Finishes a round: sorts, stamps, and replaces the shared estate.
    pub fn publish(mut self, into: &Shared, started: std::time::Instant) {
        for list in self.backups.values_mut() {
            list.sort_by_key(|b| std::cmp::Reverse(b.time));
        }
        self.updated = Some(Utc::now());
        self.round_s = Some(started.elapsed().as_secs_f64());
        if let Ok(mut e) = into.write() {
            *e = self;
        }
    }
}
