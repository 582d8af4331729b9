//! What a drill measured, in one shape for every engine.
//!
//! A PostgreSQL failover or switchover drill and a Redis failover drill
//! answer the same questions (did it pass, how long until writes were
//! acknowledged again, how many acknowledged writes were lost, did the old
//! member come back), so they share this type and differ only in what
//! names the members, kept in `engine` and flattened into the same JSON
//! object. Reports are stored by [`crate::StateDir::save_report`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One drill's outcome; `E` holds what only its engine knows.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport<E> {
    /// `failover`, `switchover`, `redis-failover`.
    pub kind: String,
    pub started: DateTime<Utc>,
    pub passed: bool,
    pub failures: Vec<String>,
    #[serde(flatten)]
    pub engine: E,
    /// Fault → first canary write acknowledged by the new primary or master.
    pub rto_s: Option<f64>,
    pub writes_acknowledged: usize,
    pub writes_failed: usize,
    /// Acknowledged canary writes missing afterwards.
    pub writes_lost: usize,
    /// What was seen after the fault, in seconds from it, by name.
    pub timeline_s: BTreeMap<String, f64>,
    /// Fault (or restart) → the old member replicates from the new one.
    pub rejoin_s: Option<f64>,
    pub healthy_after: bool,
    pub problems_after: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Engine {
        cluster: &'static str,
    }

    #[test]
    fn the_engine_fields_sit_beside_the_shared_ones() {
        let r = DrillReport {
            kind: "failover".into(),
            started: Utc::now(),
            passed: true,
            failures: vec![],
            engine: Engine { cluster: "main" },
            rto_s: Some(1.5),
            writes_acknowledged: 10,
            writes_failed: 1,
            writes_lost: 0,
            timeline_s: BTreeMap::from([("writable".to_string(), 1.5)]),
            rejoin_s: None,
            healthy_after: true,
            problems_after: vec![],
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cluster"], "main");
        assert_eq!(v["rto_s"], 1.5);
        assert_eq!(v["timeline_s"]["writable"], 1.5);
        assert!(v.get("engine").is_none());
    }
}
