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
    /// `cirkel drill scenario TARGET`: one of the plan's five failures
    /// ([`Scenario`]).
    Scenario,
    /// `cirkel drill network --fault FAULT`: a PostgreSQL member's network
    /// degraded ([`NetFault`]) for a while; the cluster must ride it out
    /// without failing over or losing a write.
    Network,
}

impl DrillKind {
    pub const ALL: [(&'static str, DrillKind); 7] = [
        ("failover", DrillKind::Failover),
        ("switchover", DrillKind::Switchover),
        ("redis-failover", DrillKind::RedisFailover),
        ("restore", DrillKind::Restore),
        ("region", DrillKind::Region),
        ("scenario", DrillKind::Scenario),
        ("network", DrillKind::Network),
    ];

    pub fn name(self) -> &'static str {
        DrillKind::ALL.iter().find(|(_, k)| *k == self).map_or("?", |(n, _)| n)
    }

    /// The plan's recovery-time target for what the drill rehearses: the
    /// PostgreSQL primary < 60 s (§2.3), the Redis master < 15 s (§2.4), a
    /// restore within the plan's RTO of 15 minutes, a region < 30 min (§2.5).
    /// A scenario's target is its own ([`Scenario::plan_rto`]); this is the
    /// loosest of them.
    pub fn plan_rto(self) -> Duration {
        match self {
            DrillKind::Failover | DrillKind::Switchover | DrillKind::Network => Duration::from_secs(60),
            DrillKind::RedisFailover => Duration::from_secs(15),
            DrillKind::Restore => Duration::from_secs(15 * 60),
            DrillKind::Region | DrillKind::Scenario => Duration::from_secs(30 * 60),
        }
    }

    /// Whether `target` names a PostgreSQL cluster (else a Redis group, or
    /// nothing for a restore of the main repository's newest backup).
    pub fn targets_postgres(self) -> bool {
        matches!(self, DrillKind::Failover | DrillKind::Switchover | DrillKind::Network)
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
    /// A failover drill's fault: `kill` (the default), `stop` (SIGSTOP),
    /// `zone` (the primary's zone frozen), `disk-full` (its WAL volume) or
    /// `partition` (the primary cut off from the network); a network
    /// drill's [`NetFault`] (required).
    pub fault: Option<String>,
    /// A network drill: the member whose network is degraded (default: the
    /// primary).
    pub member: Option<String>,
    /// A network drill: how long the fault lasts.
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub hold: Duration,
}

/// The plan's five failures (§2), each rehearsed by `cirkel drill scenario
/// NAME` and all of them by `cirkel drill suite`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// §2.1: an application instance dies; it must leave rotation (its
    /// health check down) and be alarmed.
    AppInstance,
    /// §2.2: a whole zone is cut off, every member in it silent.
    Zone,
    /// §2.3: the PostgreSQL primary dies.
    PgPrimary,
    /// §2.4: the Redis master dies.
    RedisMaster,
    /// §2.5: the region is lost; everything is rebuilt from the second
    /// region's repository, the main one unreachable meanwhile.
    Region,
}

impl Scenario {
    /// In the order the suite runs them: the least disruptive first.
    pub const ALL: [(&'static str, Scenario); 5] = [
        ("app-instance", Scenario::AppInstance),
        ("redis-master", Scenario::RedisMaster),
        ("pg-primary", Scenario::PgPrimary),
        ("zone", Scenario::Zone),
        ("region", Scenario::Region),
    ];

    pub fn name(self) -> &'static str {
        Scenario::ALL.iter().find(|(_, s)| *s == self).map_or("?", |(n, _)| n)
    }

    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }

    pub fn names() -> String {
        Scenario::ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    }

    /// The plan's recovery-time objective for this failure (§2).
    pub fn plan_rto(self) -> Duration {
        Duration::from_secs(match self {
            Scenario::AppInstance => 30,
            Scenario::Zone => 120,
            Scenario::PgPrimary => 60,
            Scenario::RedisMaster => 15,
            Scenario::Region => 30 * 60,
        })
    }

    /// What cirkel holds itself to: a third of the plan's objective or
    /// less (a sixth for the PostgreSQL primary).
    pub fn target_rto(self) -> Duration {
        Duration::from_secs(match self {
            Scenario::AppInstance => 10,
            Scenario::Zone => 30,
            Scenario::PgPrimary => 10,
            Scenario::RedisMaster => 5,
            Scenario::Region => 10 * 60,
        })
    }
}

/// A network fault between one member and the rest.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NetFault {
    /// Every packet to and from the member dropped.
    Partition,
    /// This share of the packets (1–100 %) dropped at random, each
    /// direction.
    Loss(u8),
    /// Every byte, each direction, held back this long: round trips take
    /// twice this longer.
    Latency(Duration),
}

impl std::str::FromStr for NetFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hint = "expected `partition`, `loss=PCT%` (1–100) or `latency=DURATION` (e.g. 200ms)";
        match s.split_once('=') {
            None if s == "partition" => Ok(NetFault::Partition),
            Some(("loss", v)) => match v.trim_end_matches('%').parse::<u8>() {
                Ok(p @ 1..=100) => Ok(NetFault::Loss(p)),
                _ => Err(format!("`{v}` is not a loss between 1% and 100%; {hint}")),
            },
            Some(("latency", v)) => match humantime::parse_duration(v) {
                Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(30) => Ok(NetFault::Latency(d)),
                Ok(_) => Err(format!("`{v}` is not a latency between 1ms and 30s; {hint}")),
                Err(e) => Err(format!("`{v}`: {e}; {hint}")),
            },
            _ => Err(format!("`{s}` is not a network fault; {hint}")),
        }
    }
}

impl std::fmt::Display for NetFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetFault::Partition => write!(f, "partition"),
            NetFault::Loss(p) => write!(f, "loss={p}%"),
            NetFault::Latency(d) => write!(f, "latency={}", humantime::format_duration(*d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_a_name_and_a_target_within_a_third_of_the_plan() {
        for (name, s) in Scenario::ALL {
            assert_eq!(Scenario::parse(name), Some(s));
            assert_eq!(s.name(), name);
            assert!(s.target_rto() * 3 <= s.plan_rto(), "{name}");
        }
        assert_eq!(Scenario::parse("moon"), None);
    }

    #[test]
    fn faults_parse_and_print_back() {
        for s in ["partition", "loss=30%", "latency=200ms"] {
            let f: NetFault = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        assert_eq!("loss=5".parse::<NetFault>().unwrap(), NetFault::Loss(5));
        for bad in ["loss=0%", "loss=101%", "latency=0s", "latency=1h", "latency=soon", "jitter=5ms", "cut"] {
            let e = bad.parse::<NetFault>().unwrap_err();
            assert!(e.contains("expected `partition`"), "{bad}: {e}");
        }
    }
}
