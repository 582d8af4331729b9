//! Drills `cirkel serve` runs on a schedule (`[drills.NAME]`): the plan's
//! §6 proof (a restore test every week, a failover drill every month) as
//! configuration, each judged against the plan's recovery-time target for
//! its kind unless the table sets its own.

use std::time::Duration;

use serde::Serialize;

/// What a drill does, as the `cirkel drill` and `cirkel pg verify`
/// commands that carry it out.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DrillKind {
    /// `cirkel drill failover`: SIGKILL of the PostgreSQL primary.
    Failover,
    /// `cirkel drill switchover`: a planned PostgreSQL switchover.
    Switchover,
    /// `cirkel drill redis-failover`: SIGKILL of the Redis master.
    RedisFailover,
    /// `cirkel pg verify`: the newest base backup restored and checked.
    Restore,
    /// `cirkel drill region --from TARGET`: everything the repository holds
    /// rebuilt in a scratch directory, checked and removed.
    Region,
}

impl DrillKind {
    pub const ALL: [(&'static str, DrillKind); 5] = [
        ("failover", DrillKind::Failover),
        ("switchover", DrillKind::Switchover),
        ("redis-failover", DrillKind::RedisFailover),
        ("restore", DrillKind::Restore),
        ("region", DrillKind::Region),
    ];

    pub fn name(self) -> &'static str {
        DrillKind::ALL.iter().find(|(_, k)| *k == self).map_or("?", |(n, _)| n)
    }

    /// The plan's recovery-time target for what the drill rehearses: the
    /// PostgreSQL primary < 60 s (§2.3), the Redis master < 15 s (§2.4), a
    /// restore within the plan's RTO of 15 minutes, a region < 30 min (§2.5).
    pub fn plan_rto(self) -> Duration {
        match self {
            DrillKind::Failover | DrillKind::Switchover => Duration::from_secs(60),
            DrillKind::RedisFailover => Duration::from_secs(15),
            DrillKind::Restore => Duration::from_secs(15 * 60),
            DrillKind::Region => Duration::from_secs(30 * 60),
        }
    }

    /// Whether `target` names a PostgreSQL cluster (else a Redis group, or
    /// nothing for a restore of the main repository's newest backup).
    pub fn targets_postgres(self) -> bool {
        matches!(self, DrillKind::Failover | DrillKind::Switchover)
    }
}

/// One scheduled drill.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DrillConfig {
    pub kind: DrillKind,
    /// Cron expression; without one the drill runs only by hand
    /// (`cirkel drill run NAME`).
    pub schedule: Option<String>,
    /// The cluster or group (default: the only one configured).
    pub target: Option<String>,
    /// Slower than this is a failed drill (default: the plan's target).
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub rto_target: Duration,
    /// Longest wait for the fault to be recovered from.
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub timeout: Duration,
    /// A failover drill's fault: `kill` (the default) or `stop` (SIGSTOP).
    pub fault: Option<String>,
}
