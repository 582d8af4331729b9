//! A cluster watched by an agent on every host (`[coordination]`): what the
//! agents share through etcd, under the prefix's `postgres-NAME` scope.
//!
//! - `leader`: the election's key; its create revision is the epoch.
//! - `record`: the watcher's record (`ha::Record`), written only under the
//!   leader's epoch, so a leader that lost its lease cannot change it.
//! - `route`: the member the read-write endpoints route to (or none while
//!   a failover runs), with the epoch it was written under. Every agent's
//!   endpoint follows it; a proxy's epoch gate refuses an older one.
//! - `gone-MEMBER`: written by the agent on the member's host when its
//!   postmaster exits, so the leader fails over at once instead of after
//!   more failed checks; removed when it runs again.
//! - `agent-NODE` (scope `agents`): each agent's heartbeat, for `cirkel status`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cirkel_config::{CoordinationConfig, PostgresConfig};
use cirkel_election::{EtcdElection, Fence, FenceError};
use cirkel_failover::ElectionError;
use serde::{Deserialize, Serialize};

use crate::ha::Record;

/// Where an agent reaches the other agents' view of one cluster.
#[derive(Clone, Debug)]
pub struct Coord {
    pub fence: Fence,
    /// The same, with requests bounded by a fraction of a check interval:
    /// for what is read or reported every round.
    pub quick: Fence,
    /// `postgres-NAME`.
    pub scope: String,
    /// This agent's name.
    pub node: String,
    pub ttl: Duration,
}

/// The read-write endpoints' target, as the leader published it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub primary: Option<String>,
    /// The lease epoch it was written under.
    pub epoch: u64,
    /// The agent that wrote it.
    pub leader: String,
    /// A planned switchover under way: the old primary's agent stops it
    /// cleanly (rather than at once, as for a failover) and answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    /// While a failover routes nowhere: the member being promoted, which
    /// its agent must leave running when it turns primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoting: Option<String>,
}

/// A planned switchover from a primary on another host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub id: String,
    pub old: String,
    pub new: String,
}

/// The old primary's agent's answer to a [`Handoff`] (`handoff-ID`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffDone {
    /// Its shutdown checkpoint, once stopped cleanly.
    pub final_lsn: Option<String>,
    pub error: Option<String>,
    pub stopped: DateTime<Utc>,
}

/// A member's postmaster seen gone by the agent on its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gone {
    pub at: DateTime<Utc>,
    pub node: String,
}

/// An agent's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub pid: u32,
    pub version: String,
    pub started: DateTime<Utc>,
    pub seen: DateTime<Utc>,
}

pub const AGENTS: &str = "agents";

impl Coord {
    pub fn scope_of(cluster: &str) -> String {
        format!("postgres-{cluster}")
    }

    /// Connects to etcd for `cluster` as this agent (`cfg.node`); what
    /// it reads every round waits at most `quick`.
    pub fn connect(cfg: &CoordinationConfig, cluster: &str, quick: Duration) -> Result<Coord, ElectionError> {
        let node = cfg.node.clone().ok_or_else(|| {
            ElectionError("this agent has no name: pass --node NAME or set [coordination] node".into())
        })?;
        let fence = Fence::connect(cfg)?;
        let quick = fence.with_timeout(quick);
        Ok(Coord { fence, quick, scope: Coord::scope_of(cluster), node, ttl: cfg.ttl })
    }

    /// This agent's contender for the cluster's leadership.
    pub fn election(&self, cfg: &CoordinationConfig) -> Result<EtcdElection, ElectionError> {
        let mut cfg = cfg.clone();
        cfg.node = Some(self.node.clone());
        EtcdElection::connect(&cfg, &self.scope)
    }

    /// Whether `member` is on this agent's host.
    pub fn is_local(&self, c: &PostgresConfig, member: &str) -> bool {
        c.members.get(member).is_some_and(|m| m.node.as_deref() == Some(self.node.as_str()))
    }

    /// The record as the leader last wrote it (`None`: never written).
    pub fn load_record(&self) -> Result<Option<Record>, ElectionError> {
        self.read(&self.fence, "record")
    }

    /// The record, read with the quick bound (an agent's every check).
    pub fn load_record_quick(&self) -> Result<Option<Record>, ElectionError> {
        self.read(&self.quick, "record")
    }

    pub fn save_record(&self, epoch: u64, rec: &Record) -> Result<(), FenceError> {
        self.write_fenced(epoch, "record", rec)
    }

    pub fn publish_route(&self, epoch: u64, primary: Option<&str>) -> Result<(), FenceError> {
        self.publish_handoff(epoch, primary, None)
    }

    /// Routes nowhere while `new` is promoted in a failover.
    pub fn publish_failover(&self, epoch: u64, new: &str) -> Result<(), FenceError> {
        let route =
            Route { primary: None, epoch, leader: self.node.clone(), handoff: None, promoting: Some(new.to_string()) };
        self.write_fenced(epoch, "route", &route)
    }

    /// Publishes the route, with a switchover under way or not.
    pub fn publish_handoff(
        &self,
        epoch: u64,
        primary: Option<&str>,
        handoff: Option<&Handoff>,
    ) -> Result<(), FenceError> {
        let route = Route {
            primary: primary.map(str::to_string),
            epoch,
            leader: self.node.clone(),
            handoff: handoff.cloned(),
            promoting: handoff.map(|h| h.new.clone()),
        };
        self.write_fenced(epoch, "route", &route)
    }

    /// The published route (`None`: never published).
    pub fn route(&self) -> Result<Option<Route>, ElectionError> {
        self.read(&self.quick, "route")
    }

    /// Reads one of the scope's JSON records through `fence`.
    fn read<T: serde::de::DeserializeOwned>(&self, fence: &Fence, name: &str) -> Result<Option<T>, ElectionError> {
        match fence.get(&self.scope, name)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ElectionError(format!("the {name} of {} in etcd is damaged: {e}", self.scope))),
        }
    }

    /// Writes one of the scope's JSON records under `epoch`.
    fn write_fenced<T: Serialize>(&self, epoch: u64, name: &str, value: &T) -> Result<(), FenceError> {
        let bytes = serde_json::to_vec(value).map_err(|e| FenceError::Store(ElectionError(e.to_string())))?;
        self.fence.put_if_epoch(&self.scope, epoch, name, &bytes)
    }

    pub fn handoff_done(&self, id: &str) -> Result<Option<HandoffDone>, ElectionError> {
        Ok(self.quick.get(&self.scope, &format!("handoff-{id}"))?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    pub fn answer_handoff(&self, id: &str, done: &HandoffDone) -> Result<(), ElectionError> {
        self.fence.put(&self.scope, &format!("handoff-{id}"), &serde_json::to_vec(done).unwrap_or_default())
    }

    pub fn gone(&self, member: &str) -> Result<Option<Gone>, ElectionError> {
        Ok(self.quick.get(&self.scope, &format!("gone-{member}"))?.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    pub fn report_gone(&self, member: &str, gone: Option<&Gone>) -> Result<(), ElectionError> {
        let name = format!("gone-{member}");
        match gone {
            Some(g) => self.quick.put(&self.scope, &name, &serde_json::to_vec(g).unwrap_or_default()),
            None => self.quick.delete(&self.scope, &name),
        }
    }

    /// How long an agent may go without word from etcd before it fences
    /// its primary (unless it still sees every member): the time the
    /// leader takes to declare a primary down, never more than the TTL.
    pub fn fence_after(&self, c: &PostgresConfig) -> Duration {
        (c.health.interval * c.health.unhealthy_threshold.max(1)).min(self.ttl)
    }
}

/// Every agent's last heartbeat.
pub fn agents(fence: &Fence) -> Result<Vec<Heartbeat>, ElectionError> {
    Ok(fence.list(AGENTS)?.into_iter().filter_map(|(_, v)| serde_json::from_slice(&v).ok()).collect())
}

/// What `cirkel status` shows of the agents from any host.
#[derive(Clone, Debug, Serialize)]
pub struct Overview {
    pub agents: Vec<AgentView>,
    pub leaders: Vec<LeaderView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// Seconds since its last heartbeat, by this host's clock.
    pub age_s: f64,
    /// Heard from within the lease TTL.
    pub alive: bool,
}

/// Who leads a scope (`daemon`, `postgres-NAME`, `redis-NAME`) and under
/// which epoch (the fencing token), and for a cluster the route.
#[derive(Clone, Debug, Serialize)]
pub struct LeaderView {
    pub scope: String,
    pub holder: Option<String>,
    pub epoch: Option<u64>,
    pub route: Option<Route>,
}

/// The agents and the leader of each scope, as etcd has them now.
pub fn overview(cfg: &CoordinationConfig, scopes: &[String]) -> Result<Overview, ElectionError> {
    let fence = Fence::connect(cfg)?;
    let now = Utc::now();
    let mut agents: Vec<AgentView> = agents(&fence)?
        .into_iter()
        .map(|h| {
            let age_s = (now - h.seen).num_milliseconds().max(0) as f64 / 1000.0;
            AgentView { alive: age_s <= cfg.ttl.as_secs_f64(), age_s, heartbeat: h }
        })
        .collect();
    agents.sort_by(|a, b| a.heartbeat.node.cmp(&b.heartbeat.node));
    let mut leaders = Vec::new();
    for scope in scopes {
        let lease = fence.current(scope)?;
        let route = if scope.starts_with("postgres-") {
            fence.get(scope, "route")?.and_then(|b| serde_json::from_slice(&b).ok())
        } else {
            None
        };
        leaders.push(LeaderView {
            scope: scope.clone(),
            holder: lease.as_ref().map(|l| l.holder.clone()),
            epoch: lease.map(|l| l.epoch),
            route,
        });
    }
    Ok(Overview { agents, leaders })
}
