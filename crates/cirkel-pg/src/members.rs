//! The members of a replicated cluster: who is primary, who streams from
//! whom, how far behind each standby is, and whom a failover would promote
//! now (the decision core of `cirkel-failover`, fed one round of probes).

use std::time::{Duration, Instant};

use cirkel_config::PostgresConfig;
use cirkel_failover::{Decider, Member, Policy, Probe, Rejection, Role};
use serde::Serialize;

use crate::conn::{PgConn, parse_lsn};

/// The file whose presence pauses automatic action on `cluster`
/// (`cirkel pg pause`); `cirkel serve` checks it every round.
pub fn pause_flag(state: &cirkel_state::StateDir, cluster: &str) -> std::path::PathBuf {
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
    #[serde(skip)]
    pub(crate) lsn_bytes: Option<u64>,
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

fn conninfo(c: &PostgresConfig, host: &str, port: u16, timeout: Duration) -> String {
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
    (SELECT timeline_id FROM pg_control_checkpoint()), \
    (SELECT status || ' from ' || COALESCE(sender_host, '?') || ':' || COALESCE(sender_port::text, '?') \
       FROM pg_stat_wal_receiver LIMIT 1)";

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
    std::thread::spawn(move || {
        let r = PgConn::connect(Some(&info)).and_then(|conn| {
            let row = conn.query_one(PROBE_SQL)?;
            Ok((
                row.get::<_, bool>(0),
                row.get::<_, Option<String>>(1),
                row.get::<_, Option<String>>(2),
                row.get::<_, Option<i32>>(3),
                row.get::<_, Option<String>>(4),
            ))
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(timeout) {
        Err(_) => st.error = Some(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => st.error = Some(format!("{e:#}")),
        Ok(Ok((in_recovery, lsn, replay, timeline, receiver))) => {
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

/// Whom a failover would promote if the primary failed now.
pub fn explain(cluster: &str, c: &PostgresConfig) -> anyhow::Result<(ClusterStatus, Explanation)> {
    let st = status(cluster, c);
    let members: Vec<Member> =
        c.members.iter().map(|(n, m)| Member { name: n.clone(), zone: m.zone.clone(), priority: m.priority }).collect();
    let policy = Policy { unhealthy_threshold: c.health.unhealthy_threshold.max(1), max_lag_bytes: c.max_lag_bytes };
    let mut decider = Decider::new(members, policy).map_err(anyhow::Error::msg)?;
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

fn probes(st: &ClusterStatus) -> Vec<Probe> {
    st.members
        .iter()
        .map(|m| Probe {
            member: m.name.clone(),
            ok: m.reachable,
            role: m.role.as_deref().map(|r| if r == "primary" { Role::Primary } else { Role::Replica }),
            lsn: m.lsn_bytes.unwrap_or(0),
        })
        .collect()
}

/// Watches a cluster until `stop`: health checks with the configured
/// thresholds, primary changes, split brain, and the decision core's
/// verdict, each recorded as an event. With `auto_failover` (the default)
/// it also acts: the endpoint stops routing to a primary declared down
/// (fencing it for every client of the endpoint), the chosen standby is
/// promoted, the others follow it, and an old primary that comes back is
/// rewound into a standby. With `proxy_listen` it serves the read-write
/// endpoint.
pub fn watch(
    cluster: &str,
    c: &PostgresConfig,
    state: &cirkel_state::StateDir,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<()> {
    use cirkel_failover::{Decision, HealthCounter};
    use cirkel_state::Event;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    use crate::failover;
    use crate::proxy::{Router, Target};

    let source = format!("postgres/{cluster}");
    let record = |e: Event| {
        match e.severity.as_str() {
            "info" => tracing::info!("{}: {}", e.source, e.message),
            _ => tracing::warn!("{}: {}", e.source, e.message),
        }
        if let Err(err) = state.record(&e) {
            tracing::error!("cannot record an event: {err:#}");
        }
    };
    let members: Vec<Member> =
        c.members.iter().map(|(n, m)| Member { name: n.clone(), zone: m.zone.clone(), priority: m.priority }).collect();
    let policy = Policy { unhealthy_threshold: c.health.unhealthy_threshold.max(1), max_lag_bytes: c.max_lag_bytes };
    let mut decider = Decider::new(members, policy).map_err(anyhow::Error::msg)?;
    let router = Router::new();
    let target_of = |name: &str| c.members.get(name).map(|m| Target::new(&m.host, m.port));
    let proxy = match &c.proxy_listen {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the endpoint of {cluster}: {e}"))?;
            let (router, stop) = (router.clone(), stop.clone());
            Some(std::thread::spawn(move || crate::proxy::run(listener, router, stop)))
        }
        None => None,
    };
    let ro_router = Router::new();
    let proxy_ro = match &c.proxy_listen_ro {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the read-only endpoint of {cluster}: {e}"))?;
            let (router, stop) = (ro_router.clone(), stop.clone());
            Some(std::thread::spawn(move || crate::proxy::run(listener, router, stop)))
        }
        None => None,
    };
    let mut ro_member: Option<String> = None;
    let hook = |event: &str, member: &str, primary: &str| {
        let Some(cmd) = &c.on_role_change else { return };
        let p = c.members.get(primary).cloned().unwrap_or_default();
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .env("CIRKEL_EVENT", event)
            .env("CIRKEL_CLUSTER", cluster)
            .env("CIRKEL_MEMBER", member)
            .env("CIRKEL_PRIMARY", primary)
            .env("CIRKEL_PRIMARY_HOST", &p.host)
            .env("CIRKEL_PRIMARY_PORT", p.port.to_string())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => record(Event::new(
                &source,
                "hook-failed",
                "warning",
                format!("on_role_change exited {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr).trim()),
            )),
            Err(e) => record(Event::new(&source, "hook-failed", "warning", format!("on_role_change: {e}"))),
        }
    };
    let view: crate::api::SharedView = Default::default();
    let mut apis = Vec::new();
    for (name, m) in &c.members {
        if let Some(addr) = &m.api_listen {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the health endpoints of {name}: {e}"))?;
            let (name, view, stop) = (name.clone(), view.clone(), stop.clone());
            apis.push(std::thread::spawn(move || crate::api::run(listener, name, view, stop)));
        }
    }
    let paused_flag = pause_flag(state, cluster);
    let mut health: HashMap<String, HealthCounter> = HashMap::new();
    let mut primary: Option<String> = None;
    let mut last_alarm = String::new();
    let mut first_failure: Option<chrono::DateTime<chrono::Utc>> = None;
    // The old primary after a failover, until it is a standby again.
    let mut fenced: Option<String> = None;
    record(Event::new(&source, "watch-started", "info", format!("watching {} members", c.members.len())));
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let st = status(cluster, c);
        for m in &st.members {
            let h = &c.health;
            match health.entry(m.name.clone()).or_default().observe(
                m.reachable,
                h.healthy_threshold,
                h.unhealthy_threshold,
            ) {
                Some(false) => record(
                    Event::new(
                        &source,
                        "member-down",
                        "critical",
                        format!(
                            "member {} failed {} checks: {}",
                            m.name,
                            h.unhealthy_threshold,
                            m.error.as_deref().unwrap_or("")
                        ),
                    )
                    .with(json!({ "member": m.name, "zone": m.zone })),
                ),
                Some(true) => record(
                    Event::new(&source, "member-up", "info", format!("member {} is healthy", m.name))
                        .with(json!({ "member": m.name, "zone": m.zone })),
                ),
                None => {}
            }
        }
        decider.set_paused(paused_flag.exists());
        let decision = decider.observe(&probes(&st));
        let mut alarm = (String::new(), "", String::new());
        match decision {
            Decision::Steady { primary: p } => {
                first_failure = None;
                if fenced.is_none() || fenced.as_deref() != Some(p.as_str()) {
                    router.set(target_of(&p));
                }
                if primary.as_deref() != Some(p.as_str()) {
                    if let Some(old) = &primary {
                        record(Event::new(
                            &source,
                            "primary-changed",
                            "warning",
                            format!("primary is now {p} (was {old})"),
                        ));
                    }
                    primary = Some(p);
                }
            }
            Decision::Suspect { .. } => {
                first_failure.get_or_insert_with(chrono::Utc::now);
            }
            Decision::Failover { old, new, lost_bytes } if c.auto_failover => {
                let detected = first_failure.take().unwrap_or_else(chrono::Utc::now);
                let decided = chrono::Utc::now();
                router.set(None);
                let fenced_at = chrono::Utc::now();
                match failover::promote(c, &new) {
                    Ok(()) => {
                        let promoted_at = chrono::Utc::now();
                        decider.promoted(&new);
                        router.set(target_of(&new));
                        fenced = Some(old.clone());
                        primary = Some(new.clone());
                        let mut followed = Vec::new();
                        for m in st.members.iter().filter(|m| m.name != old && m.name != new && m.reachable) {
                            match failover::follow(c, &m.name, &new) {
                                Ok(()) => followed.push(m.name.clone()),
                                Err(e) => record(Event::new(
                                    &source,
                                    "follow-failed",
                                    "critical",
                                    format!("{} could not be pointed at {new}: {e:#}", m.name),
                                )),
                            }
                        }
                        let writable_at = c.proxy_listen.as_deref().and_then(|ep| {
                            let until = Instant::now() + Duration::from_secs(30);
                            while Instant::now() < until {
                                if failover::endpoint_writable(c, ep) {
                                    return Some(chrono::Utc::now());
                                }
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            None
                        });
                        let secs = |t: chrono::DateTime<chrono::Utc>| (t - detected).num_milliseconds() as f64 / 1000.0;
                        record(
                            Event::new(
                                &source,
                                "failover",
                                "critical",
                                format!("failover {old} → {new}: {lost_bytes} bytes of WAL not received by {new}"),
                            )
                            .with(json!({
                                "old_primary": old,
                                "new_primary": new,
                                "lost_bytes": lost_bytes,
                                "detected": detected,
                                "decided": decided,
                                "fenced": fenced_at,
                                "promoted": promoted_at,
                                "endpoint_writable": writable_at,
                                "decided_after_s": secs(decided),
                                "promoted_after_s": secs(promoted_at),
                                "endpoint_writable_after_s": writable_at.map(secs),
                                "followers": followed,
                            })),
                        );
                        hook("failover", &new, &new);
                    }
                    Err(e) => {
                        alarm = ("failover-failed".into(), "critical", format!("promoting {new} failed: {e:#}"));
                    }
                }
            }
            Decision::Failover { old, new, lost_bytes } => {
                alarm = (
                    "failover-needed".into(),
                    "critical",
                    format!(
                        "primary {old} is down; the decision core would promote {new} ({lost_bytes} bytes behind); auto_failover is off"
                    ),
                );
            }
            Decision::Paused => {
                alarm = (
                    "paused-primary-down".into(),
                    "critical",
                    "the primary is down, and the cluster is paused: no automatic action (`cirkel pg resume`)".into(),
                );
            }
            Decision::NoCandidate { old, rejections } => {
                alarm = (
                    "no-failover-candidate".into(),
                    "critical",
                    format!(
                        "primary {old} is down and no standby qualifies: {}",
                        rejections.iter().map(|r| format!("{} {}", r.member, r.reason)).collect::<Vec<_>>().join("; ")
                    ),
                );
            }
            Decision::Misconfigured(why) => {
                // The fenced old primary is running as a primary again.
                let back = fenced
                    .as_ref()
                    .filter(|old| st.members.iter().any(|m| &m.name == *old && m.role.as_deref() == Some("primary")));
                match (back.cloned(), decider.primary().map(str::to_string)) {
                    (Some(old), Some(new)) if c.auto_failover => {
                        match failover::rejoin(c, &old, &new, &state.root().join("logs")) {
                            Ok(took) => {
                                fenced = None;
                                record(
                                    Event::new(
                                        &source,
                                        "rejoined",
                                        "info",
                                        format!("{old} was rewound and follows {new} ({:.1} s)", took.as_secs_f64()),
                                    )
                                    .with(json!({ "member": old, "primary": new, "seconds": took.as_secs_f64() })),
                                );
                                hook("rejoin", &old, &new);
                            }
                            Err(e) => {
                                alarm = ("rejoin-failed".into(), "critical", format!("{old}: {e:#}"));
                            }
                        }
                    }
                    _ => alarm = ("cluster-misconfigured".into(), "critical", why),
                }
            }
        }
        // The read-only endpoint: keep the current standby while it streams
        // within the lag limit, else take another, else the primary.
        let eligible = |name: &str| {
            st.members.iter().any(|m| {
                m.name == name
                    && m.reachable
                    && m.role.as_deref() == Some("standby")
                    && m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming"))
                    && m.lag_bytes.is_some_and(|l| l <= c.max_lag_bytes)
            })
        };
        if !ro_member.as_deref().is_some_and(eligible) {
            ro_member = st.members.iter().map(|m| m.name.clone()).find(|n| eligible(n));
        }
        let routed_primary = router.target().and(decider.primary().map(str::to_string));
        match (&ro_member, &routed_primary) {
            (Some(m), _) | (None, Some(m)) => ro_router.set(target_of(m)),
            (None, None) => ro_router.set(None),
        }
        if let Ok(mut v) = view.lock() {
            v.primary = router.target().and(decider.primary().map(str::to_string));
            v.status = Some(st.clone());
        }
        if alarm.2 != last_alarm {
            if !alarm.0.is_empty() {
                record(Event::new(&source, &alarm.0, alarm.1, alarm.2.clone()));
            }
            last_alarm = alarm.2;
        }
        let left = c.health.interval.saturating_sub(round.elapsed());
        let until = Instant::now() + left;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
    if let Some(p) = proxy {
        let _ = p.join();
    }
    for a in apis {
        let _ = a.join();
    }
    if let Some(p) = proxy_ro {
        let _ = p.join();
    }
    Ok(())
}
