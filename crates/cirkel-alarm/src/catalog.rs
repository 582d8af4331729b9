//! The metrics cirkel's daemon exposes: names as exposed, kinds and help.
//! The daemon serves exactly these, and alarms on `cirkel_…` names are
//! checked against them, so a typo in `[alarms.NAME] metric` is an error
//! in `cirkel config check`, not an alarm that never fires.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// Every family the daemon exposes: name as exposed, kind, help.
pub const FAMILIES: &[(&str, Kind, &str)] = &[
    ("cirkel_up", Kind::Gauge, "1 while cirkel serve runs"),
    ("cirkel_backup_age_seconds", Kind::Gauge, "Seconds since the newest complete backup of a source ended"),
    ("cirkel_backup_duration_seconds", Kind::Gauge, "How long the newest backup of a source took"),
    ("cirkel_backup_size_bytes", Kind::Gauge, "Bytes the newest backup of a source read"),
    ("cirkel_backups", Kind::Gauge, "Backups of a source the repository holds"),
    (
        "cirkel_rpo_exposure_seconds",
        Kind::Gauge,
        "Seconds of changes that would be lost if the source died now: now minus the newest WAL or RDB safely in the repository (0 when nothing newer exists)",
    ),
    (
        "cirkel_predicted_rto_seconds",
        Kind::Gauge,
        "Expected time to recover a source: restore (today's size at the last measured restore throughput) or failover (the last failover drill)",
    ),
    ("cirkel_member_up", Kind::Gauge, "1 when a member answers its health probe"),
    ("cirkel_member_role", Kind::Gauge, "1 for a member's current role"),
    ("cirkel_replication_lag_bytes", Kind::Gauge, "Bytes of WAL or replication stream a replica lacks"),
    ("cirkel_replication_lag_seconds", Kind::Gauge, "Seconds a standby's replay lags behind the primary"),
    ("cirkel_check_up", Kind::Gauge, "1 when a health check is up, 0 when down (absent while unknown)"),
    ("cirkel_check_latency_seconds", Kind::Gauge, "Duration of a health check's last probe"),
    ("cirkel_check_probes_total", Kind::Counter, "Probes a health check ran"),
    ("cirkel_check_failures_total", Kind::Counter, "Probes of a health check that failed"),
    ("cirkel_failovers_total", Kind::Counter, "Failovers cirkel performed or saw"),
    ("cirkel_failover_rto_seconds", Kind::Gauge, "Downtime of the last failover, from detection to a writable primary"),
    ("cirkel_failovers_recent", Kind::Gauge, "1 for an hour after a failover"),
    ("cirkel_schedule_runs_total", Kind::Counter, "Scheduled job runs by outcome"),
    ("cirkel_schedule_missed_total", Kind::Counter, "Scheduled slots skipped because the previous run was still going"),
    ("cirkel_schedule_missed_recent", Kind::Gauge, "1 for a day after a scheduled slot was missed"),
    ("cirkel_repository_verify_ok", Kind::Gauge, "1 when the last verify of a repository found no damage"),
    (
        "cirkel_wal_stream_lag_bytes",
        Kind::Gauge,
        "Bytes of WAL the primary wrote that cirkel's WAL streamer has not flushed",
    ),
    (
        "cirkel_copy_lag_seconds",
        Kind::Gauge,
        "Seconds of a repository's history its continuous copy may lack: since the oldest object not yet copied reached it, or since the source was last listed",
    ),
    ("cirkel_copy_lag_bytes", Kind::Gauge, "Bytes a continuous copy has yet to carry to the second repository"),
    ("cirkel_alarm_state", Kind::Gauge, "1 for an alarm instance's current state"),
    ("cirkel_scrape_up", Kind::Gauge, "1 when the last scrape of a target succeeded"),
    ("cirkel_notifications_delivered_total", Kind::Counter, "Messages a receiver accepted"),
    (
        "cirkel_notifications_failed_total",
        Kind::Counter,
        "Delivery attempts to a receiver that failed (each is retried)",
    ),
    ("cirkel_notifications_expired_total", Kind::Counter, "Messages given up on after their time to live"),
];

/// Whether `name` is one of cirkel's own metrics.
pub fn is_known(name: &str) -> bool {
    FAMILIES.iter().any(|(n, _, _)| *n == name)
}

/// Every metric's name, for messages.
pub fn names() -> Vec<&'static str> {
    FAMILIES.iter().map(|(n, _, _)| *n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions_and_every_default_alarm_watches_one() {
        for (name, kind, help) in FAMILIES {
            assert!(name.starts_with("cirkel_") && crate::selector::is_metric_name(name), "{name}");
            assert_eq!(*kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert!(!help.is_empty());
        }
        for d in crate::defaults() {
            assert!(is_known(&d.metric.name), "{} watches {}", d.name, d.metric.name);
        }
    }
}
