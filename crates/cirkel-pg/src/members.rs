//! The members of a replicated cluster: who is primary, who streams from
//! whom, how far behind each standby is, and whom a failover would promote
//! now (the decision core of `cirkel-failover`, fed one round of probes).

use std::time::{Duration, Instant};

use cirkel_config::PostgresConfig;
use cirkel_failover::{Decider, Member, Policy, Probe, Rejection, Role};
use serde::Serialize;

use crate::conn::{PgConn, parse_lsn};

/// The file whose presence paused `cluster` before the pause moved into
/// the watcher's record; a watcher that finds one carries it over.
pub fn legacy_pause_flag(state: &cirkel_state::StateDir, cluster: &str) -> std::path::PathBuf {
    state.root().join(format!("paused-postgres-{cluster}"))
}

/// One member, as probed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemberState {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub zone: String,
    pub priority: u32,
    pub reachable: bool,
    pub error: Option<String>,
    /// `primary` or `standby`.
    pub role: Option<String>,
    pub timeline: Option<i32>,
    /// Primary: current write LSN. Standby: last WAL received.
    pub lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// Bytes of WAL a standby lacks against the primary.
    pub lag_bytes: Option<u64>,
    /// A standby's WAL receiver: its status and where it streams from.
    pub receiver: Option<String>,
    pub latency_ms: Option<f64>,
    /// A primary's replication connections (`pg_stat_replication`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaLink>,
    /// A primary's `synchronous_standby_names`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synchronous_standby_names: Option<String>,
    #[serde(skip)]
    pub(crate) lsn_bytes: Option<u64>,
}

/// One replication connection to a primary, named by the standby's
/// `application_name` (cirkel sets it to the member name).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaLink {
    pub name: String,
    pub state: String,
    pub sync_state: String,
    pub flush_lsn: Option<String>,
    #[serde(skip)]
    pub flush_bytes: Option<u64>,
    /// Seconds the standby's replay lags (PostgreSQL's `replay_lag`; 0 when
    /// it has caught up and nothing is in flight).
    pub replay_lag_s: Option<f64>,
}

/// A cluster's status.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub primary: Option<String>,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub members: Vec<MemberState>,
}

/// Whom a failover would promote now, and why the others would not be.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub cluster: String,
    pub primary: Option<String>,
    pub candidate: Option<String>,
    /// WAL the candidate lacks against the primary's last known position.
    pub candidate_lag_bytes: Option<u64>,
    pub rejections: Vec<Rejection>,
    pub max_lag_bytes: u64,
    pub reason: String,
}

/// A libpq connection string for a member of `c` at `host:port`.
pub fn conninfo(c: &PostgresConfig, host: &str, port: u16, timeout: Duration) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut s = format!("host={} port={port} connect_timeout={}", q(host), timeout.as_secs().max(1));
    if let Some(u) = &c.user {
        s.push_str(&format!(" user={}", q(u)));
    }
    if let Some(d) = &c.database {
        s.push_str(&format!(" dbname={}", q(d)));
    }
    s
}

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    CASE WHEN pg_is_in_recovery() THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text \
         ELSE pg_current_wal_lsn()::text END, \
    pg_last_wal_replay_lsn()::text, \
    CASE WHEN pg_is_in_recovery() THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1), \
              (SELECT timeline_id FROM pg_control_checkpoint())) \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
    (SELECT status || ' from ' || COALESCE(sender_host, '?') || ':' || COALESCE(sender_port::text, '?') \
       FROM pg_stat_wal_receiver LIMIT 1)";

const REPLICATION_SQL: &str = "SELECT application_name, state, sync_state, flush_lsn::text, \
     COALESCE(EXTRACT(EPOCH FROM replay_lag), 0)::float8 FROM pg_stat_replication ORDER BY application_name";

/// What one attempt at a probe found: role, positions, timeline, WAL
/// receiver, and a primary's replicas and synchronous standby names.
type ProbeResult = anyhow::Result<(
    bool,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<String>,
    (Vec<ReplicaLink>, Option<String>),
)>;

/// Whether a second, staggered attempt is worth making: over TCP, where a
/// lost packet costs a retransmission timeout (a Unix socket loses none).
fn attempts_left(host: &str) -> bool {
    !host.starts_with('/')
}

/// Probes one member within `timeout`.
pub fn probe(c: &PostgresConfig, name: &str, timeout: Duration) -> MemberState {
    let m = c.members.get(name).cloned().unwrap_or_default();
    let mut st = MemberState {
        name: name.to_string(),
        host: m.host.clone(),
        port: m.port,
        zone: m.zone.clone(),
        priority: m.priority,
        ..Default::default()
    };
    let info = conninfo(c, &m.host, m.port, timeout);
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let attempt = move |info: String, tx: std::sync::mpsc::Sender<ProbeResult>| {
        std::thread::spawn(move || {
            let r = PgConn::connect(Some(&info)).and_then(|conn| {
                let row = conn.query_one(PROBE_SQL)?;
                Ok((
                    row.get::<_, bool>(0),
                    row.get::<_, Option<String>>(1),
                    row.get::<_, Option<String>>(2),
                    row.get::<_, Option<i32>>(3),
                    row.get::<_, Option<String>>(4),
                    if row.get::<_, bool>(0) {
                        (Vec::new(), None)
                    } else {
                        let links = conn
                            .query(REPLICATION_SQL)?
                            .iter()
                            .map(|r| {
                                let flush_lsn: Option<String> = r.get(3);
                                ReplicaLink {
                                    name: r.get::<_, Option<String>>(0).unwrap_or_default(),
                                    state: r.get::<_, Option<String>>(1).unwrap_or_default(),
                                    sync_state: r.get::<_, Option<String>>(2).unwrap_or_default(),
                                    flush_bytes: flush_lsn.as_deref().and_then(parse_lsn),
                                    flush_lsn,
                                    replay_lag_s: r.get::<_, Option<f64>>(4),
                                }
                            })
                            .collect();
                        let names: String = conn.query_one("SHOW synchronous_standby_names")?.get(0);
                        (links, Some(names))
                    },
                ))
            });
            let _ = tx.send(r);
        });
    };
    attempt(info.clone(), tx.clone());
    // A second attempt when the first has not answered within a third of
    // the budget: a lost SYN costs the kernel's 1 s retransmission timeout,
    // which would fail the check on a lossy but live network. A refusal
    // (a dead server) still fails at once.
    let (mut pending, mut second) = (1, attempts_left(&m.host));
    let mut outcome = None;
    while outcome.is_none() {
        let left = timeout.saturating_sub(start.elapsed());
        let wait = if second { left.min(timeout / 3) } else { left };
        match rx.recv_timeout(wait) {
            Ok(Ok(v)) => outcome = Some(Ok(v)),
            Ok(Err(e)) => {
                pending -= 1;
                if pending == 0 {
                    outcome = Some(Err(Some(e)));
                }
            }
            Err(_) if start.elapsed() >= timeout => outcome = Some(Err(None)),
            Err(_) => {
                if second {
                    second = false;
                    pending += 1;
                    attempt(info.clone(), tx.clone());
                }
            }
        }
    }
    match outcome {
        Some(Err(None)) | None => st.error = Some(format!("no answer within {timeout:?}")),
        Some(Err(Some(e))) => st.error = Some(format!("{e:#}")),
        Some(Ok((in_recovery, lsn, replay, timeline, receiver, (replicas, sync_names)))) => {
            st.replicas = replicas;
            st.synchronous_standby_names = sync_names;
            st.reachable = true;
            st.role = Some(if in_recovery { "standby" } else { "primary" }.to_string());
            st.lsn_bytes = lsn.as_deref().and_then(parse_lsn);
            st.lsn = lsn;
            st.replay_lsn = replay.filter(|_| in_recovery);
            st.timeline = timeline;
            st.receiver = receiver;
        }
    }
    st.latency_ms = Some(start.elapsed().as_secs_f64() * 1000.0);
    st
}

/// Probes every member at once and says what is wrong.
pub fn status(cluster: &str, c: &PostgresConfig) -> ClusterStatus {
    let timeout = c.health.timeout;
    let mut members: Vec<MemberState> = std::thread::scope(|s| {
        let hs: Vec<_> = c.members.keys().map(|n| s.spawn(move || probe(c, n, timeout))).collect();
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let primaries: Vec<&MemberState> = members.iter().filter(|m| m.role.as_deref() == Some("primary")).collect();
    let mut problems = Vec::new();
    let primary = match primaries.as_slice() {
        [one] => Some(one.name.clone()),
        [] => {
            problems.push("no reachable member runs as primary".to_string());
            None
        }
        many => {
            let names: Vec<&str> = many.iter().map(|m| m.name.as_str()).collect();
            problems.push(format!("{} members run as primary ({}): split brain", many.len(), names.join(", ")));
            None
        }
    };
    let primary_lsn = members.iter().find(|m| Some(&m.name) == primary.as_ref()).and_then(|m| m.lsn_bytes);
    for m in &mut members {
        if m.role.as_deref() == Some("standby") {
            m.lag_bytes = primary_lsn.zip(m.lsn_bytes).map(|(p, s)| p.saturating_sub(s));
        }
    }
    if c.synchronous
        && let Some(p) = members.iter().find(|m| Some(&m.name) == primary.as_ref())
        && p.synchronous_standby_names.as_deref().is_none_or(str::is_empty)
    {
        problems.push(format!(
            "synchronous mode: {} waits for no standby yet, so no automatic failover is possible",
            p.name
        ));
    }
    for m in &members {
        if !m.reachable {
            problems.push(format!("member {} unreachable: {}", m.name, m.error.as_deref().unwrap_or("")));
        } else if m.role.as_deref() == Some("standby")
            && !m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming"))
        {
            problems.push(format!(
                "standby {} is not streaming ({})",
                m.name,
                m.receiver.as_deref().unwrap_or("no WAL receiver")
            ));
        }
    }
    ClusterStatus { cluster: cluster.to_string(), primary, healthy: problems.is_empty(), problems, members }
}

/// The primary's archiver, and the problem it makes for the cluster's
/// status when archiving fails (`cirkel status` reports it as degraded).
pub fn check_archiving(c: &PostgresConfig, st: &mut ClusterStatus) -> Option<crate::archiver::ArchiverHealth> {
    let p = st.primary.as_ref().and_then(|p| c.members.get(p))?;
    let info = conninfo(c, &p.host, p.port, c.health.timeout);
    let read = PgConn::connect(Some(&info)).and_then(|conn| crate::archiver::ArchiverHealth::read(&conn));
    match read {
        Ok(h) => {
            if let Some(problem) = h.problem() {
                st.problems.push(format!("primary: {problem}"));
                st.healthy = false;
            }
            Some(h)
        }
        Err(e) => {
            st.problems.push(format!("cannot read the primary's archiver: {e:#}"));
            None
        }
    }
}

/// The decision core for a cluster's members and policy.
pub fn decider(c: &PostgresConfig) -> anyhow::Result<Decider> {
    let members: Vec<Member> =
        c.members.iter().map(|(n, m)| Member { name: n.clone(), zone: m.zone.clone(), priority: m.priority }).collect();
    let policy = Policy { unhealthy_threshold: c.health.unhealthy_threshold.max(1), max_lag_bytes: c.max_lag_bytes };
    Decider::new(members, policy).map_err(anyhow::Error::msg)
}

/// Whom a failover would promote if the primary failed now.
pub fn explain(cluster: &str, c: &PostgresConfig) -> anyhow::Result<(ClusterStatus, Explanation)> {
    let st = status(cluster, c);
    let mut decider = decider(c)?;
    decider.observe(&probes(&st));
    let mut ex = Explanation {
        cluster: cluster.to_string(),
        primary: st.primary.clone(),
        candidate: None,
        candidate_lag_bytes: None,
        rejections: Vec::new(),
        max_lag_bytes: c.max_lag_bytes,
        reason: String::new(),
    };
    match &st.primary {
        None => ex.reason = format!("nobody: {}", st.problems.join("; ")),
        Some(p) => match decider.choose(p) {
            Ok((name, lag)) => {
                ex.reason = format!(
                    "{name}: the healthy, promotable standby with the most WAL received ({} behind {p})",
                    human(lag)
                );
                ex.candidate = Some(name);
                ex.candidate_lag_bytes = Some(lag);
            }
            Err(rejections) => {
                ex.reason = "nobody: no standby qualifies".into();
                ex.rejections = rejections;
            }
        },
    }
    if ex.candidate.is_some() {
        // The others' reasons, for the record.
        if let Some(p) = &st.primary {
            let best = ex.candidate.clone().unwrap_or_default();
            for m in st.members.iter().filter(|m| &m.name != p && m.name != best) {
                let why = if !m.reachable {
                    "unhealthy".to_string()
                } else if m.role.as_deref() != Some("standby") {
                    "not a standby".to_string()
                } else if m.priority == 0 {
                    "never-promote (priority 0)".to_string()
                } else if m.lag_bytes.is_some_and(|l| l > c.max_lag_bytes) {
                    format!("{} behind, over the limit", human(m.lag_bytes.unwrap_or(0)))
                } else {
                    format!(
                        "less WAL or lower priority than {best} ({} at {})",
                        m.lsn.as_deref().unwrap_or("?"),
                        m.name
                    )
                };
                ex.rejections.push(Rejection { member: m.name.clone(), reason: why });
            }
        }
    }
    Ok((st, ex))
}

fn human(bytes: u64) -> String {
    if bytes < 1024 { format!("{bytes} B") } else { format!("{:.1} KiB", bytes as f64 / 1024.0) }
}

pub(crate) fn probes(st: &ClusterStatus) -> Vec<Probe> {
    st.members
        .iter()
        .map(|m| Probe { member: m.name.clone(), ok: m.reachable, role: role(m), lsn: m.lsn_bytes.unwrap_or(0) })
        .collect()
}

/// A member's role as the decision rules know it (`None`: unknown, as
/// when it did not answer).
pub(crate) fn role(m: &MemberState) -> Option<Role> {
    match m.role.as_deref()? {
        "primary" => Some(Role::Primary),
        "standby" => Some(Role::Replica),
        _ => None,
    }
}
