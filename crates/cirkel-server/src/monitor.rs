//! Detection inside the daemon: what turns observations into metrics, and
//! metrics into alarms.
//!
//! - [`EventMetrics`] follows the event log (replayed once at start, then
//!   live from the daemon's channel): failovers and their RTO, scheduled
//!   runs and misses, verify results, drills.
//! - [`run_checks`] runs the `[checks.NAME]` engine and reports its state.
//! - [`collect`] asks the sources themselves, on a timer: members' roles,
//!   health and lag; each repository's newest backups and WAL, which give
//!   backup ages and the RPO exposure; predicted RTOs.
//! - [`AlarmLoop`] feeds every series (and scraped ones) to the alarm
//!   engine, records each transition as an event and publishes the alarms'
//!   states in `alarms.json` for `cirkel alarms`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use cirkel_config::Config;
use cirkel_repo::Repository;
use cirkel_state::{Event, EventKind, Severity, StateDir};
use serde::Serialize;
use serde_json::json;

use crate::api::estate::{BackupView, ClusterView, Estate, MemberView, RepositoryView, Shared, WindowView};
use crate::metrics::{Labels, Metrics, labels};

/// The file the daemon keeps its alarm and check states in.
pub const ALARMS_FILE: &str = "alarms.json";
/// How long the `_recent` gauges stay at 1.
const FAILOVER_RECENT: Duration = Duration::from_secs(3600);
const MISSED_RECENT: Duration = Duration::from_secs(24 * 3600);

/// What the collector needs from outside the daemon: the repositories
/// (opening one needs the passphrase) and how to reach a cluster's server.
pub trait Access: Send + Sync {
    /// Opens the repository `name` of `[repositories.NAME]`, or the main one.
    fn repository(&self, name: Option<&str>) -> anyhow::Result<Repository>;
    /// A connection string for cluster `name`'s server, for clusters
    /// without `members`.
    fn conninfo(&self, cluster: &str) -> anyhow::Result<Option<String>>;
}

/// Measures taken from events, shared with the collector.
#[derive(Debug, Default)]
pub struct EventMetrics {
    last_failover: HashMap<String, DateTime<Utc>>,
    last_missed: HashMap<String, DateTime<Utc>>,
    /// Drills that ended: a failover one caused is not recent news.
    drills: crate::guard::DrillWindows,
    /// Per source: bytes per second of its last restore drill.
    pub restore_rate: HashMap<String, f64>,
}

/// The RTO an event about a failover or drill carries, in seconds.
fn rto_of(details: &serde_json::Value) -> Option<f64> {
    ["rto_s", "endpoint_writable_after_s", "promoted_after_s", "downtime_s"]
        .iter()
        .find_map(|k| details.get(*k).and_then(|v| v.as_f64()))
}

impl EventMetrics {
    /// Takes one event recorded while a drill of its source ran: a
    /// failover is counted but is not recent news (the drill reports it).
    pub fn observe_drilled(&mut self, e: &Event, m: &Metrics) {
        let before = self.last_failover.get(&e.source).copied();
        self.observe(e, m);
        match before {
            Some(t) => self.last_failover.insert(e.source.clone(), t),
            None => self.last_failover.remove(&e.source),
        };
    }

    /// Takes one event into the metrics.
    pub fn observe(&mut self, e: &Event, m: &Metrics) {
        let source = labels(&[("source", &e.source)]);
        match e.kind {
            EventKind::Failover | EventKind::ForcedFailover => {
                m.add("cirkel_failovers_total", source.clone(), 1.0);
                if let Some(s) = rto_of(&e.details) {
                    m.set("cirkel_failover_rto_seconds", source, s);
                }
                if !self.drills.caused(e) {
                    self.last_failover.insert(e.source.clone(), e.time);
                }
            }
            EventKind::JobDone | EventKind::JobFailed => {
                let job = e.details.get("job").and_then(|j| j.as_str()).unwrap_or(&e.source).to_string();
                let outcome = if e.kind == EventKind::JobDone { "done" } else { "failed" };
                m.add("cirkel_schedule_runs_total", labels(&[("job", &job), ("outcome", outcome)]), 1.0);
            }
            EventKind::JobMissed => {
                let job = e.details.get("job").and_then(|j| j.as_str()).unwrap_or(&e.source).to_string();
                let n = e.details.get("slots").and_then(|s| s.as_array()).map(|a| a.len()).unwrap_or(1);
                m.add("cirkel_schedule_missed_total", labels(&[("job", &job)]), n as f64);
                self.last_missed.insert(job, e.time);
            }
            EventKind::Verified | EventKind::VerifyFailed => {
                let repo = e.details.get("repository").and_then(|r| r.as_str()).unwrap_or(&e.source).to_string();
                let ok = if e.kind == EventKind::Verified { 1.0 } else { 0.0 };
                m.set("cirkel_repository_verify_ok", labels(&[("repository", &repo)]), ok);
            }
            EventKind::Drill => {
                self.drills.observe(e);
                let d = &e.details;
                // A failover the drill itself caused is no news: the drill's
                // outcome says how it went.
                let started = d.get("started").and_then(|s| s.as_str()).and_then(|s| s.parse::<DateTime<Utc>>().ok());
                if let Some(started) = started
                    && self.last_failover.get(&e.source).is_some_and(|t| *t >= started && *t <= e.time)
                {
                    self.last_failover.remove(&e.source);
                    m.set("cirkel_failovers_recent", source.clone(), 0.0);
                }
                if d.get("passed").and_then(|p| p.as_bool()) != Some(true) {
                    return;
                }
                let kind = d.get("drill").and_then(|k| k.as_str()).unwrap_or("");
                match (kind, rto_of(d), d.get("bytes").and_then(|b| b.as_u64())) {
                    ("restore-drill", Some(s), Some(b)) if s > 0.0 => {
                        self.restore_rate.insert(e.source.clone(), b as f64 / s);
                    }
                    (k, Some(s), _) if k.contains("failover") => {
                        m.set(
                            "cirkel_predicted_rto_seconds",
                            labels(&[("source", &e.source), ("kind", "failover")]),
                            s,
                        );
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Sets the gauges that depend on how long ago something happened.
    pub fn tick(&self, now: DateTime<Utc>, m: &Metrics) {
        let recent = |t: &DateTime<Utc>, within: Duration| {
            if (now - *t).to_std().is_ok_and(|d| d < within) { 1.0 } else { 0.0 }
        };
        for (source, t) in &self.last_failover {
            m.set("cirkel_failovers_recent", labels(&[("source", source)]), recent(t, FAILOVER_RECENT));
        }
        for (job, t) in &self.last_missed {
            m.set("cirkel_schedule_missed_recent", labels(&[("job", job)]), recent(t, MISSED_RECENT));
        }
    }
}

/// The state of checks and alarms as `cirkel alarms` and `cirkel status`
/// read it.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct Published {
    pub updated: Option<DateTime<Utc>>,
    pub alarms: Vec<PublishedAlarm>,
    pub checks: Vec<PublishedCheck>,
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PublishedAlarm {
    pub alarm: String,
    pub labels: BTreeMap<String, String>,
    pub severity: String,
    pub state: String,
    pub reason: String,
    pub since: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PublishedCheck {
    pub name: String,
    pub state: String,
    pub since: DateTime<Utc>,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
    pub probes: u64,
    pub failures: u64,
}

/// Runs the health checks until `cancel`: each transition is an event,
/// each state a metric; the latest snapshot goes into `checks`.
pub async fn run_checks(
    cfg: &Config,
    state: StateDir,
    metrics: Arc<Metrics>,
    checks: Arc<Mutex<Vec<PublishedCheck>>>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let specs = cirkel_health::specs_from_config(&cfg.checks)
        .map_err(|errs| anyhow::anyhow!("{}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
    if specs.is_empty() {
        cancel.cancelled().await;
        return Ok(());
    }
    let engine = cirkel_health::Engine::new(specs)
        .map_err(|errs| anyhow::anyhow!("{}", errs.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
    let mut transitions = engine.subscribe();
    let handle = engine.start(&tokio::runtime::Handle::current(), cancel.child_token());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            t = transitions.recv() => match t {
                Ok(t) => {
                    let down = t.to.as_str() == "down";
                    let up = t.to.as_str() == "up";
                    if up || down {
                        metrics.set("cirkel_check_up", labels(&[("check", &t.name)]), if up { 1.0 } else { 0.0 });
                    }
                    let (kind, what) = match (down, up) {
                        (true, _) => (EventKind::CheckDown, format!("check {} is down: {}", t.name, t.error.clone().unwrap_or_default())),
                        (_, true) => (EventKind::CheckUp, format!("check {} is up", t.name)),
                        _ => continue,
                    };
                    crate::record(&state, &Event::new(&format!("check/{}", t.name), kind, what).with(json!({
                        "check": t.name, "from": t.from.as_str(), "to": t.to.as_str(),
                        "probes": t.probes_total, "failures": t.failures_total, "error": t.error,
                    })));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            },
            _ = tick.tick() => {
                let snap = handle.snapshot();
                let mut published = Vec::with_capacity(snap.len());
                for s in snap {
                    let l = labels(&[("check", &s.name)]);
                    match s.state.as_str() {
                        "up" => metrics.set("cirkel_check_up", l.clone(), 1.0),
                        "down" => metrics.set("cirkel_check_up", l.clone(), 0.0),
                        _ => metrics.remove("cirkel_check_up", &l),
                    }
                    if let Some(d) = s.last_latency {
                        metrics.set("cirkel_check_latency_seconds", l.clone(), d.as_secs_f64());
                    }
                    metrics.set("cirkel_check_probes_total", l.clone(), s.probes_total as f64);
                    metrics.set("cirkel_check_failures_total", l, s.failures_total as f64);
                    published.push(PublishedCheck {
                        name: s.name,
                        state: s.state.as_str().to_string(),
                        since: s.since.into(),
                        latency_ms: s.last_latency.map(|d| d.as_secs_f64() * 1000.0),
                        error: s.last_error,
                        probes: s.probes_total,
                        failures: s.failures_total,
                    });
                }
                if let Ok(mut c) = checks.lock() {
                    *c = published;
                }
            }
        }
    }
    handle.stopped().await;
    Ok(())
}

/// The newest complete snapshot among `snaps` that `belongs`.
fn newest(
    snaps: &[(cirkel_repo::Id, cirkel_repo::snapshot::Snapshot)],
    belongs: impl Fn(&cirkel_repo::snapshot::Snapshot) -> bool,
) -> (usize, Option<&cirkel_repo::snapshot::Snapshot>) {
    let mine: Vec<&cirkel_repo::snapshot::Snapshot> =
        snaps.iter().map(|(_, s)| s).filter(|s| belongs(s) && !s.incomplete).collect();
    (mine.len(), mine.into_iter().max_by_key(|s| s.time))
}

/// The newest WAL position a repository holds for a system: the end of its
/// newest archived segment.
fn repo_end_lsn(info: &cirkel_pg::catalog::ClusterInfo, seg_size: u64) -> Option<u64> {
    let seg = cirkel_pg::wal::Segment::parse(info.latest_wal.as_deref()?)?;
    Some((seg.segno(seg_size) + 1) * seg_size)
}

/// One cluster's server as the collector sees it.
struct Server {
    system_id: String,
    current_lsn: Option<u64>,
}

fn read_server(conninfo: &str, streamed: bool, m: &Metrics, source: &str) -> anyhow::Result<Server> {
    let conn = cirkel_pg::conn::PgConn::connect(Some(conninfo))?;
    let row = conn.query_one(
        "SELECT system_identifier::text, CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END \
         FROM pg_control_system()",
    )?;
    let lsn: Option<String> = row.get(1);
    if streamed {
        // The streamer is the replication connection on cirkel's slot.
        let lag = conn.query(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), r.flush_lsn)::float8 FROM pg_stat_replication r \
             JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = 'cirkel'",
        )?;
        let l = labels(&[("source", source)]);
        match lag.first().and_then(|r| r.get::<_, Option<f64>>(0)) {
            Some(b) => m.set("cirkel_wal_stream_lag_bytes", l, b.max(0.0)),
            None => m.remove("cirkel_wal_stream_lag_bytes", &l),
        }
    }
    Ok(Server { system_id: row.get(0), current_lsn: lsn.as_deref().and_then(cirkel_pg::conn::parse_lsn) })
}

/// Keeps open repositories between collections, and publishes what each
/// collection saw for the API.
#[derive(Default)]
pub struct Collector {
    repos: HashMap<String, Repository>,
    /// Replaced at the end of every collection.
    pub estate: Shared,
}

fn role_of(role: Option<&str>) -> &'static str {
    match role {
        Some("primary") | Some("master") => "primary",
        Some("standby") | Some("slave") | Some("replica") => "standby",
        _ => "unknown",
    }
}

impl Collector {
    fn repo(&mut self, access: &dyn Access, name: &str) -> anyhow::Result<Repository> {
        if let Some(r) = self.repos.get(name) {
            return Ok(r.clone());
        }
        let r = access.repository(if name == "default" { None } else { Some(name) })?;
        self.repos.insert(name.to_string(), r.clone());
        Ok(r)
    }

    /// One collection: members, then every repository.
    pub fn collect(&mut self, cfg: &Config, access: &dyn Access, m: &Metrics, events: &Mutex<EventMetrics>) {
        let now = Utc::now();
        let started = std::time::Instant::now();
        let mut view = Estate::default();
        // PostgreSQL members, and each cluster's primary.
        let mut servers: HashMap<String, Server> = HashMap::new();
        for (name, c) in &cfg.postgres {
            let source = format!("postgres/{name}");
            let mut primary_conn = None;
            if !c.members.is_empty() {
                let st = cirkel_pg::members::status(name, c);
                let lag_s: HashMap<&str, f64> = st
                    .members
                    .iter()
                    .filter(|m| m.role.as_deref() == Some("primary"))
                    .flat_map(|m| m.replicas.iter().filter_map(|l| Some((l.name.as_str(), l.replay_lag_s?))))
                    .collect();
                view.clusters.insert(
                    source.clone(),
                    ClusterView {
                        source: source.clone(),
                        name: name.clone(),
                        kind: "postgres".into(),
                        primary: st.primary.clone(),
                        healthy: st.healthy,
                        problems: st.problems.clone(),
                        members: st
                            .members
                            .iter()
                            .map(|mem| MemberView {
                                name: mem.name.clone(),
                                zone: Some(mem.zone.clone()).filter(|z| !z.is_empty()),
                                role: role_of(mem.role.as_deref()).into(),
                                reachable: mem.reachable,
                                lag_bytes: mem.lag_bytes,
                                lag_seconds: lag_s.get(mem.name.as_str()).copied(),
                                error: mem.error.clone(),
                            })
                            .collect(),
                    },
                );
                for mem in &st.members {
                    let l = labels(&[("source", &source), ("member", &mem.name)]);
                    m.set("cirkel_member_up", l.clone(), if mem.reachable { 1.0 } else { 0.0 });
                    let role = mem.role.as_deref().unwrap_or("unknown");
                    for r in ["primary", "standby", "unknown"] {
                        let mut rl = l.clone();
                        rl.insert("role".into(), r.into());
                        m.set("cirkel_member_role", rl, if r == role { 1.0 } else { 0.0 });
                    }
                    match mem.lag_bytes {
                        Some(b) if role == "standby" => m.set("cirkel_replication_lag_bytes", l.clone(), b as f64),
                        _ => m.remove("cirkel_replication_lag_bytes", &l),
                    }
                    if role == "primary" {
                        primary_conn = Some(cirkel_pg::members::conninfo(
                            c,
                            &mem.host,
                            mem.port,
                            c.health.timeout.max(Duration::from_secs(1)),
                        ));
                        for link in &mem.replicas {
                            if let Some(s) = link.replay_lag_s {
                                m.set(
                                    "cirkel_replication_lag_seconds",
                                    labels(&[("source", &source), ("member", &link.name)]),
                                    s,
                                );
                            }
                        }
                    }
                }
            } else {
                primary_conn = access.conninfo(name).ok().flatten();
            }
            if let Some(ci) = primary_conn {
                match read_server(&ci, c.stream_wal, m, &source) {
                    Ok(s) => {
                        servers.insert(name.clone(), s);
                    }
                    Err(e) => tracing::debug!("collect: cannot read {source}'s server: {e:#}"),
                }
            }
        }
        // Redis members.
        for (name, g) in &cfg.redis {
            let Ok(group) = cirkel_redis::group::Group::from_config(name, g) else { continue };
            let st = group.status();
            view.clusters.insert(
                group.source(),
                ClusterView {
                    source: group.source(),
                    name: name.clone(),
                    kind: "redis".into(),
                    primary: st.master.as_ref().map(|a| a.to_string()),
                    healthy: st.healthy,
                    problems: st.problems.clone(),
                    members: st
                        .members
                        .iter()
                        .map(|mem| MemberView {
                            name: mem.addr.to_string(),
                            zone: None,
                            role: role_of(mem.role.as_deref()).into(),
                            reachable: mem.reachable,
                            lag_bytes: mem.lag_bytes,
                            lag_seconds: None,
                            error: mem.error.clone(),
                        })
                        .collect(),
                },
            );
            for mem in &st.members {
                let addr = mem.addr.to_string();
                let l = labels(&[("source", &group.source()), ("member", &addr)]);
                m.set("cirkel_member_up", l.clone(), if mem.reachable { 1.0 } else { 0.0 });
                let role = match mem.role.as_deref() {
                    Some("master") => "primary",
                    Some("slave") | Some("replica") => "standby",
                    _ => "unknown",
                };
                for r in ["primary", "standby", "unknown"] {
                    let mut rl = l.clone();
                    rl.insert("role".into(), r.into());
                    m.set("cirkel_member_role", rl, if r == role { 1.0 } else { 0.0 });
                }
                if let (Some(b), "standby") = (mem.lag_bytes, role) {
                    m.set("cirkel_replication_lag_bytes", l, b as f64);
                }
            }
        }
        // Every repository: the main one and the named ones (second region).
        let mut names: Vec<String> = vec!["default".into()];
        names.extend(cfg.repositories.keys().cloned());
        let rates = events.lock().map(|e| e.restore_rate.clone()).unwrap_or_default();
        for repo_name in names {
            let repo = match self.repo(access, &repo_name) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("collect: cannot open repository {repo_name}: {e:#}");
                    let error = Some(format!("{e:#}"));
                    view.repositories
                        .insert(repo_name.clone(), RepositoryView { name: repo_name, reachable: false, error });
                    continue;
                }
            };
            let mut part = Estate::default();
            let error = match self.collect_repo(cfg, &repo, &repo_name, &servers, &rates, now, m, &mut part) {
                Ok(()) => {
                    for (source, list) in part.backups {
                        view.backups.entry(source).or_default().extend(list);
                    }
                    for (source, w) in part.windows {
                        view.windows.entry(source).or_default().extend(w);
                    }
                    for (source, e) in part.exposure {
                        view.exposed(&source, e);
                    }
                    None
                }
                Err(e) => {
                    tracing::debug!("collect: repository {repo_name}: {e:#}");
                    // Opened again next time: the error may be the handle's.
                    self.repos.remove(&repo_name);
                    Some(format!("{e:#}"))
                }
            };
            let reachable = error.is_none();
            view.repositories.insert(repo_name.clone(), RepositoryView { name: repo_name, reachable, error });
        }
        view.publish(&self.estate, started);
    }

    #[allow(clippy::too_many_arguments)]
    fn collect_repo(
        &self,
        cfg: &Config,
        repo: &Repository,
        repo_name: &str,
        servers: &HashMap<String, Server>,
        rates: &HashMap<String, f64>,
        now: DateTime<Utc>,
        m: &Metrics,
        view: &mut Estate,
    ) -> anyhow::Result<()> {
        let snaps = repo.snapshots()?;
        // Every complete snapshot that `belongs`, for the calendar and the window.
        let list = |view: &mut Estate,
                    source: &str,
                    kind: &str,
                    belongs: &dyn Fn(&cirkel_repo::snapshot::Snapshot) -> bool| {
            let mine: Vec<BackupView> = snaps
                .iter()
                .filter(|(_, s)| belongs(s) && !s.incomplete)
                .map(|(id, s)| BackupView {
                    id: id.short(),
                    time: s.time,
                    repository: repo_name.to_string(),
                    kind: kind.to_string(),
                    bytes: s.summary.bytes,
                    duration_s: s.summary.duration_ms as f64 / 1000.0,
                })
                .collect();
            let earliest = mine.iter().map(|b| b.time).min();
            let latest = mine.iter().map(|b| b.time).max();
            view.windows.entry(source.to_string()).or_default().push(WindowView {
                repository: repo_name.to_string(),
                earliest,
                latest,
                gaps: 0,
            });
            for b in mine {
                view.backup(source, b);
            }
        };
        let age = |t: DateTime<Utc>| (now - t).num_milliseconds().max(0) as f64 / 1000.0;
        let backup = |source: &str, kind: &str, count: usize, s: Option<&cirkel_repo::snapshot::Snapshot>| {
            let l = labels(&[("source", source), ("repository", repo_name), ("kind", kind)]);
            m.set("cirkel_backups", l.clone(), count as f64);
            if let Some(s) = s {
                m.set("cirkel_backup_age_seconds", l.clone(), age(s.time));
                m.set("cirkel_backup_duration_seconds", l.clone(), s.summary.duration_ms as f64 / 1000.0);
                m.set("cirkel_backup_size_bytes", l, s.summary.bytes as f64);
            }
        };
        for (name, set) in &cfg.files {
            let paths: Vec<String> = set.paths.iter().map(|p| p.display().to_string()).collect();
            let belongs = |s: &cirkel_repo::snapshot::Snapshot| {
                s.kind == "files" && (s.paths == paths || set.tags.first().is_some_and(|t| s.tags.contains(t)))
            };
            list(view, &format!("files/{name}"), "files", &belongs);
            let (n, s) = newest(&snaps, belongs);
            backup(&format!("files/{name}"), "files", n, s);
        }
        for name in cfg.redis.keys() {
            let source = format!("redis/{name}");
            let path = format!("redis:{name}");
            let belongs = |s: &cirkel_repo::snapshot::Snapshot| s.kind == "redis" && s.paths.first() == Some(&path);
            list(view, &source, "rdb", &belongs);
            let (n, s) = newest(&snaps, belongs);
            backup(&source, "rdb", n, s);
            if let Some(s) = s {
                view.exposed(&source, age(s.time));
                // An RDB is all a Redis restore has: what came after it is exposed.
                m.set(
                    "cirkel_rpo_exposure_seconds",
                    labels(&[("source", &source), ("repository", repo_name)]),
                    age(s.time),
                );
            }
        }
        if cfg.postgres.is_empty() {
            return Ok(());
        }
        let backups = cirkel_pg::catalog::backups(repo)?;
        let infos = cirkel_pg::catalog::info(repo)?;
        for (name, c) in &cfg.postgres {
            let source = format!("postgres/{name}");
            // Which system is this cluster's: its server says; a lone cluster
            // owns whatever the repository holds.
            let system = match servers.get(name) {
                Some(s) => Some(s.system_id.clone()),
                None if cfg.postgres.len() == 1 && infos.len() == 1 => infos.first().map(|i| i.system_id.clone()),
                None => None,
            };
            let _ = c;
            let Some(system) = system else { continue };
            let mine: Vec<&cirkel_pg::catalog::BackupInfo> =
                backups.iter().filter(|b| b.meta.system_id == system).collect();
            for b in &mine {
                view.backup(
                    &source,
                    BackupView {
                        id: b.short_id.clone(),
                        time: b.meta.stop_time,
                        repository: repo_name.to_string(),
                        kind: "base".into(),
                        bytes: b.bytes,
                        duration_s: b.duration_ms as f64 / 1000.0,
                    },
                );
            }
            let newest = mine.iter().max_by_key(|b| b.time);
            let l = labels(&[("source", &source), ("repository", repo_name), ("kind", "base")]);
            m.set("cirkel_backups", l.clone(), mine.len() as f64);
            if let Some(b) = newest {
                m.set("cirkel_backup_age_seconds", l.clone(), age(b.meta.stop_time));
                m.set("cirkel_backup_duration_seconds", l.clone(), b.duration_ms as f64 / 1000.0);
                m.set("cirkel_backup_size_bytes", l, b.bytes as f64);
                if let Some(rate) = rates.get(&format!("postgres@{system}")).or_else(|| rates.get(&source))
                    && *rate > 0.0
                {
                    m.set(
                        "cirkel_predicted_rto_seconds",
                        labels(&[("source", &source), ("kind", "restore")]),
                        b.bytes as f64 / rate,
                    );
                }
            }
            let Some(info) = infos.iter().find(|i| i.system_id == system) else { continue };
            view.windows.entry(source.clone()).or_default().push(WindowView {
                repository: repo_name.to_string(),
                earliest: info.earliest_time,
                latest: if caught_up_now(servers.get(name), info, &mine) { Some(now) } else { info.latest_time },
                gaps: info.gaps.len(),
            });
            let seg_size = mine.first().map(|b| b.meta.wal_segment_size).unwrap_or(16 << 20);
            let caught_up = match (servers.get(name).and_then(|s| s.current_lsn), repo_end_lsn(info, seg_size)) {
                (Some(cur), Some(end)) => cur <= end,
                _ => false,
            };
            let exposure = if caught_up { 0.0 } else { info.latest_time.map(age).unwrap_or(f64::NAN) };
            let l = labels(&[("source", &source), ("repository", repo_name)]);
            if exposure.is_nan() {
                m.remove("cirkel_rpo_exposure_seconds", &l);
            } else {
                view.exposed(&source, exposure);
                m.set("cirkel_rpo_exposure_seconds", l, exposure);
            }
        }
        Ok(())
    }
}

/// Whether the repository holds the primary's current WAL position.
fn caught_up_now(
    server: Option<&Server>,
    info: &cirkel_pg::catalog::ClusterInfo,
    mine: &[&cirkel_pg::catalog::BackupInfo],
) -> bool {
    let seg_size = mine.first().map(|b| b.meta.wal_segment_size).unwrap_or(16 << 20);
    match (server.and_then(|s| s.current_lsn), repo_end_lsn(info, seg_size)) {
        (Some(cur), Some(end)) => cur <= end,
        _ => false,
    }
}

/// The latest series of every scrape target, by target.
pub type Scraped = Arc<Mutex<HashMap<String, Vec<(String, Labels, f64)>>>>;

/// The alarm engine and what it needs between evaluations.
pub struct AlarmLoop {
    engine: cirkel_alarm::Engine,
    pub scraped: Scraped,
}

const ALARM_SNAPSHOT: &str = "alarm-states.json";

impl AlarmLoop {
    pub fn new(cfg: &Config, state: &StateDir) -> anyhow::Result<AlarmLoop> {
        let mut engine = cirkel_alarm::Engine::new(cfg.alarm_specs()).map_err(|e| anyhow::anyhow!("alarms: {e}"))?;
        if let Ok(Some(snap)) = state.load_json::<cirkel_alarm::Snapshot>(ALARM_SNAPSHOT) {
            engine.restore(snap);
        }
        Ok(AlarmLoop { engine, scraped: Arc::default() })
    }

    /// Feeds the current values, evaluates, records transitions, publishes.
    pub fn step(&mut self, now: SystemTime, state: &StateDir, m: &Metrics, checks: &Mutex<Vec<PublishedCheck>>) {
        for (name, l, v) in m.samples() {
            if name != "cirkel_alarm_state" {
                self.engine.observe(now, &name, &l, v);
            }
        }
        if let Ok(s) = self.scraped.lock() {
            for series in s.values() {
                for (name, l, v) in series {
                    self.engine.observe(now, name, l, *v);
                }
            }
        }
        let transitions = self.engine.evaluate(now);
        for t in &transitions {
            let (kind, severity) = match t.to {
                cirkel_alarm::AlarmState::Alarm => {
                    (EventKind::AlarmRaised, Severity::parse(&t.severity.to_string()).unwrap_or(Severity::High))
                }
                cirkel_alarm::AlarmState::Ok => (EventKind::AlarmCleared, Severity::Low),
                cirkel_alarm::AlarmState::InsufficientData => (EventKind::AlarmInsufficientData, Severity::Low),
            };
            let subject = if t.labels.is_empty() {
                t.alarm.clone()
            } else {
                format!(
                    "{} {{{}}}",
                    t.alarm,
                    t.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
                )
            };
            let source = t.labels.get("source").cloned().unwrap_or_else(|| format!("alarm/{}", t.alarm));
            crate::record(
                state,
                &Event::new(&source, kind, format!("alarm {subject}: {} → {}: {}", t.from, t.to, t.reason.text))
                    .with_severity(severity)
                    .with(json!({
                        "alarm": t.alarm,
                        "labels": t.labels,
                        "severity": t.severity.to_string(),
                        "from": t.from.to_string(),
                        "to": t.to.to_string(),
                        "reason": t.reason.text,
                        "datapoints": t.reason.datapoints,
                    })),
            );
        }
        let states = self.engine.states();
        for s in &states {
            for st in ["OK", "ALARM", "INSUFFICIENT_DATA"] {
                let mut l: Labels = s.labels.clone();
                l.insert("alarm".into(), s.alarm.clone());
                l.insert("state".into(), st.into());
                m.set("cirkel_alarm_state", l, if s.state.to_string() == st { 1.0 } else { 0.0 });
            }
        }
        let published = Published {
            updated: Some(Utc::now()),
            alarms: states
                .into_iter()
                .map(|s| PublishedAlarm {
                    alarm: s.alarm,
                    labels: s.labels,
                    severity: s.severity.to_string(),
                    state: s.state.to_string(),
                    reason: s.reason.text,
                    since: s.since.into(),
                })
                .collect(),
            checks: checks.lock().map(|c| c.clone()).unwrap_or_default(),
        };
        if let Err(e) = state.save_json(ALARMS_FILE, &published) {
            tracing::warn!("cannot publish the alarm states: {e:#}");
        }
        if !transitions.is_empty()
            && let Err(e) = state.save_json(ALARM_SNAPSHOT, &self.engine.snapshot())
        {
            tracing::warn!("cannot save the alarm states: {e:#}");
        }
    }
}

/// Scrapes one `[scrape.NAME]` target until `cancel`, keeping its latest
/// series (labelled `scrape="NAME"`) for the alarm engine.
pub async fn scrape(
    name: String,
    cfg: cirkel_config::ScrapeConfig,
    scraped: Scraped,
    metrics: Arc<Metrics>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let up = labels(&[("scrape", &name)]);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let got = match tokio::time::timeout(cfg.timeout, crate::http::get(&cfg.url)).await {
            Ok(Ok((200, body))) => {
                cirkel_alarm::exposition::parse(&body).map_err(|e| format!("not a Prometheus exposition: {e}"))
            }
            Ok(Ok((code, _))) => Err(format!("answered HTTP {code}")),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no answer within {} s", cfg.timeout.as_secs_f64())),
        };
        // A failed scrape leaves no series: the alarms see missing data.
        let series = match got {
            Ok(samples) => {
                metrics.set("cirkel_scrape_up", up.clone(), 1.0);
                samples
                    .into_iter()
                    .map(|s| {
                        let l = cirkel_alarm::exposition::scraped_labels(&name, s.labels);
                        (s.name, l, s.value)
                    })
                    .collect()
            }
            Err(e) => {
                tracing::debug!("scrape {name}: {e}");
                metrics.set("cirkel_scrape_up", up.clone(), 0.0);
                Vec::new()
            }
        };
        if let Ok(mut s) = scraped.lock() {
            s.insert(name.clone(), series);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, kind: EventKind, details: serde_json::Value) -> Event {
        Event::new(source, kind, "x").with(details)
    }

    #[test]
    fn events_become_failover_schedule_verify_and_drill_metrics() {
        let m = Metrics::default();
        let mut em = EventMetrics::default();
        em.observe(&event("postgres/main", EventKind::Failover, json!({ "endpoint_writable_after_s": 2.5 })), &m);
        em.observe(&event("schedule/files/a", EventKind::JobDone, json!({ "job": "files/a" })), &m);
        em.observe(&event("schedule/files/a", EventKind::JobFailed, json!({ "job": "files/a" })), &m);
        em.observe(
            &event("schedule/files/a", EventKind::JobMissed, json!({ "job": "files/a", "slots": ["x", "y"] })),
            &m,
        );
        em.observe(&event("repository/r", EventKind::VerifyFailed, json!({ "repository": "/r" })), &m);
        em.observe(
            &event(
                "postgres@7",
                EventKind::Drill,
                json!({ "drill": "restore-drill", "passed": true, "rto_s": 4.0, "bytes": 400 }),
            ),
            &m,
        );
        em.observe(
            &event(
                "postgres/main",
                EventKind::Drill,
                json!({ "drill": "failover-drill", "passed": true, "rto_s": 3.0 }),
            ),
            &m,
        );
        em.tick(Utc::now(), &m);
        let src = labels(&[("source", "postgres/main")]);
        assert_eq!(m.get("cirkel_failovers_total", &src), Some(1.0));
        assert_eq!(m.get("cirkel_failover_rto_seconds", &src), Some(2.5));
        assert_eq!(m.get("cirkel_failovers_recent", &src), Some(1.0));
        assert_eq!(
            m.get("cirkel_schedule_runs_total", &labels(&[("job", "files/a"), ("outcome", "failed")])),
            Some(1.0)
        );
        assert_eq!(m.get("cirkel_schedule_missed_total", &labels(&[("job", "files/a")])), Some(2.0));
        assert_eq!(m.get("cirkel_schedule_missed_recent", &labels(&[("job", "files/a")])), Some(1.0));
        assert_eq!(m.get("cirkel_repository_verify_ok", &labels(&[("repository", "/r")])), Some(0.0));
        assert_eq!(em.restore_rate.get("postgres@7"), Some(&100.0));
        assert_eq!(
            m.get("cirkel_predicted_rto_seconds", &labels(&[("source", "postgres/main"), ("kind", "failover")])),
            Some(3.0)
        );
        // A failover that a drill of the source caused is not recent news.
        let drilled = labels(&[("source", "redis/cache")]);
        let before = Utc::now() - chrono::Duration::seconds(5);
        em.observe(&event("redis/cache", EventKind::Failover, json!({})), &m);
        em.tick(Utc::now(), &m);
        assert_eq!(m.get("cirkel_failovers_recent", &drilled), Some(1.0));
        em.observe(
            &event(
                "redis/cache",
                EventKind::Drill,
                json!({ "drill": "redis-failover", "passed": true, "started": before }),
            ),
            &m,
        );
        em.tick(Utc::now(), &m);
        assert_eq!(m.get("cirkel_failovers_recent", &drilled), Some(0.0));
        assert_eq!(m.get("cirkel_failovers_total", &drilled), Some(1.0), "still counted");
        // Recorded after the drill ended, but begun during it: the drill's too.
        let mut late = event("redis/cache", EventKind::Failover, json!({ "last_seen_ok": before }));
        late.time = Utc::now() + chrono::Duration::seconds(10);
        em.observe(&late, &m);
        em.tick(Utc::now(), &m);
        assert_eq!(m.get("cirkel_failovers_recent", &drilled), Some(0.0));
        // One while a drill of its source runs is the drill's.
        em.observe_drilled(&event("postgres/other", EventKind::Failover, json!({})), &m);
        em.tick(Utc::now(), &m);
        assert_eq!(m.get("cirkel_failovers_recent", &labels(&[("source", "postgres/other")])), None);
        assert_eq!(m.get("cirkel_failovers_total", &labels(&[("source", "postgres/other")])), Some(1.0));
        // One that began after the drill is news.
        em.observe(&event("redis/cache", EventKind::Failover, json!({})), &m);
        em.tick(Utc::now(), &m);
        assert_eq!(m.get("cirkel_failovers_recent", &drilled), Some(1.0));
        // An hour later the failover is no longer recent; a day later neither is the miss.
        em.tick(Utc::now() + chrono::Duration::hours(2), &m);
        assert_eq!(m.get("cirkel_failovers_recent", &src), Some(0.0));
        assert_eq!(m.get("cirkel_schedule_missed_recent", &labels(&[("job", "files/a")])), Some(1.0));
        em.tick(Utc::now() + chrono::Duration::days(2), &m);
        assert_eq!(m.get("cirkel_schedule_missed_recent", &labels(&[("job", "files/a")])), Some(0.0));
    }
}
