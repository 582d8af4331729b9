//! What `cirkel serve` keeps about a cluster across restarts, who may act
//! on a cluster, and the upkeep of synchronous replication.
//!
//! The record (`postgres-NAME.json` in the state directory) is replaced
//! atomically, so a crash leaves the state before or after a step:
//! - `primary` and `fenced`: whom the endpoint routes to, and the old
//!   primary it must never route to again until it is a standby;
//! - `failover`: written before fencing and cleared once the promotion is
//!   recorded, so a restarted `cirkel serve` finishes or abandons it;
//! - `sync`: the synchronous set, a superset of every set the primary has
//!   waited for since the last promotion (see [`sync_round`]);
//! - `paused`: maintenance mode, and `scheduled`: a switchover asked for a
//!   time to come; both outlive a restart;
//! - `epoch`: the newest lease epoch acted under, the fencing token an
//!   executor under an older lease is refused by.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cirkel_config::PostgresConfig;
use cirkel_state::StateDir;
use cirkel_state::election::LocalLock;
use serde::{Deserialize, Serialize};

use crate::conn::PgConn;
use crate::failover::member_conninfo;
use crate::members::ClusterStatus;

/// A failover between the decision and its record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub old: String,
    pub new: String,
    pub started: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub primary: Option<String>,
    pub fenced: Option<String>,
    pub failover: Option<InFlight>,
    /// Synchronous mode: members that may hold acknowledged commits the
    /// others lack. `None` until first set: every promotable standby.
    pub sync: Option<BTreeSet<String>>,
    /// A smaller set the primary already waits for, and the primary's LSN
    /// once it did: the record shrinks to it when all of it has flushed there.
    pub shrink: Option<(BTreeSet<String>, u64)>,
    /// Paused (`cirkel pg pause`): no automatic action until resumed, across
    /// restarts of `cirkel serve`.
    #[serde(default)]
    pub paused: bool,
    /// A switchover asked for a time to come (`--at`), kept until then.
    #[serde(default)]
    pub scheduled: Option<SwitchoverRequest>,
    /// The newest lease epoch an action (promotion, router switch, rejoin)
    /// was taken under: an action under an older one is refused.
    #[serde(default)]
    pub epoch: u64,
}

impl Record {
    fn file(cluster: &str) -> String {
        format!("postgres-{cluster}.json")
    }

    pub fn load(state: &StateDir, cluster: &str) -> anyhow::Result<Record> {
        Ok(state.load_json(&Record::file(cluster))?.unwrap_or_default())
    }

    pub fn save(&self, state: &StateDir, cluster: &str) -> anyhow::Result<()> {
        state.save_json(&Record::file(cluster), self)
    }

    /// The synchronous set to decide with: the recorded one, or, before
    /// any was recorded, every promotable member but the primary.
    pub fn sync_set(&self, c: &PostgresConfig, primary: Option<&str>) -> BTreeSet<String> {
        self.sync.clone().unwrap_or_else(|| {
            c.members
                .iter()
                .filter(|(n, m)| m.priority > 0 && Some(n.as_str()) != primary)
                .map(|(n, _)| n.clone())
                .collect()
        })
    }
}

/// The cluster's election in the local state directory (`lock-postgres-NAME`,
/// its epochs in `epoch-postgres-NAME`): one `cirkel serve` acts on a cluster
/// per state directory.
pub fn local_lease(state: &StateDir, cluster: &str) -> LocalLock {
    LocalLock::new(state, &format!("postgres-{cluster}"))
}

/// Stops the process at a named point when `CIRKEL_FAILPOINT` names it:
/// how the tests crash `cirkel serve` in the middle of a failover.
pub fn failpoint(name: &str) {
    if std::env::var("CIRKEL_FAILPOINT").is_ok_and(|v| v == name) {
        eprintln!("cirkel: failpoint {name} reached; aborting");
        std::process::abort();
    }
}

/// `synchronous_standby_names` for a set: any one of its members.
pub fn sync_names(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        return String::new();
    }
    let names: Vec<String> = set.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    format!("ANY 1 ({})", names.join(", "))
}

/// Sets `synchronous_standby_names` on `member` and reloads it.
pub fn set_sync_names(c: &PostgresConfig, member: &str, names: &str) -> anyhow::Result<()> {
    let m = c.members.get(member).ok_or_else(|| anyhow::anyhow!("no member `{member}`"))?;
    let conn = PgConn::connect(Some(&member_conninfo(c, m, c.health.timeout)))?;
    conn.execute(&format!("ALTER SYSTEM SET synchronous_standby_names = '{}'", names.replace('\'', "''")))?;
    conn.execute("SELECT pg_reload_conf()")?;
    Ok(())
}

/// One round of synchronous-set upkeep on the primary. The primary waits
/// for any one of the promotable standbys streaming from it now (`W`); the
/// record `R` must cover every member the primary may have waited for:
/// - a standby starts streaming: `R` grows first (durably), then the
///   primary waits for it too;
/// - a standby stops: the primary stops waiting for it first; once the
///   new setting is visible, the primary's LSN is taken, and `R` shrinks
///   only when every remaining member has flushed that far (a stopped
///   standby acknowledges nothing more).
///
/// With nobody streaming the primary stops waiting (writes go on), and no
/// failover is possible until a standby streams again. Returns what
/// changed, for the event log.
pub fn sync_round(
    c: &PostgresConfig,
    st: &ClusterStatus,
    primary: &str,
    rec: &mut Record,
    state: &StateDir,
    cluster: &str,
) -> anyhow::Result<Vec<String>> {
    let mut changes = Vec::new();
    let Some(p) = st.members.iter().find(|m| m.name == primary && m.reachable) else { return Ok(changes) };
    let want: BTreeSet<String> = p
        .replicas
        .iter()
        .filter(|l| l.state == "streaming" && l.name != primary)
        .filter(|l| c.members.get(&l.name).is_some_and(|m| m.priority > 0))
        .map(|l| l.name.clone())
        .collect();
    let recorded = rec.sync_set(c, Some(primary));
    if !want.is_subset(&recorded) {
        let grown: BTreeSet<String> = recorded.union(&want).cloned().collect();
        rec.sync = Some(grown.clone());
        rec.shrink = None;
        rec.save(state, cluster)?;
        changes.push(format!("synchronous set grows to {}", list(&grown)));
    }
    let names = sync_names(&want);
    if p.synchronous_standby_names.as_deref() != Some(names.as_str()) {
        set_sync_names(c, primary, &names)?;
        if want.is_empty() {
            changes.push(
                "no standby streams: commits are not synchronous, and no automatic failover is possible until one streams again"
                    .into(),
            );
        }
        return Ok(changes);
    }
    if rec.sync_set(c, Some(primary)) != want {
        match &rec.shrink {
            Some((keep, lsn)) if *keep == want => {
                let caught_up = keep
                    .iter()
                    .all(|n| p.replicas.iter().any(|l| &l.name == n && l.flush_bytes.is_some_and(|f| f >= *lsn)));
                if caught_up {
                    rec.sync = Some(want.clone());
                    rec.shrink = None;
                    rec.save(state, cluster)?;
                    changes.push(format!("synchronous set shrinks to {}", list(&want)));
                }
            }
            _ => {
                rec.shrink = Some((want.clone(), p.lsn_bytes.unwrap_or(u64::MAX)));
                rec.save(state, cluster)?;
            }
        }
    }
    Ok(changes)
}

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() { "{}".into() } else { format!("{{{}}}", set.iter().cloned().collect::<Vec<_>>().join(", ")) }
}

/// A planned switchover, asked of the watcher through the control socket
/// (`cirkel pg switchover`), or carried out alone without one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    pub id: String,
    pub to: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub requested: DateTime<Utc>,
}

/// Pauses or resumes `cluster` while no `cirkel serve` watches it: the
/// watcher reads the record when it starts.
pub fn set_paused(state: &StateDir, cluster: &str, paused: bool) -> anyhow::Result<()> {
    let mut rec = Record::load(state, cluster)?;
    rec.paused = paused;
    rec.save(state, cluster)
}
