//! `cirkel serve` for one PostgreSQL cluster: health checks every
//! interval, the decision core's verdict, and the executor that carries it
//! out (fence, promote, repoint, rejoin), the endpoints, planned
//! switchovers and synchronous replication.
//!
//! Commands reach the watcher as [`Command`]s over a channel from the
//! daemon's control socket; each is answered on its own reply channel once
//! done, so a switchover's caller learns its outcome without polling.
//!
//! The watcher acts only under the cluster's lease, checked at the top of
//! every round: the moment it is lost the watcher stops acting (no
//! promotion, no router switch, no rejoin), cuts its own endpoint, and
//! only watches until it holds a lease again. Every action carries the
//! lease's epoch and is refused when a newer one was recorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_config::PostgresConfig;
use cirkel_failover::{Decider, Decision, EpochGate, HealthCounter, Leadership, Lease, Probe, SyncSet};
use cirkel_state::control::Reply;
use cirkel_state::election::acquire_or_stand_by;
use cirkel_state::{Event, EventKind, Severity, StateDir};
use serde_json::json;

use crate::failover;
use crate::ha::{self, InFlight, Record, SwitchoverRequest};
use crate::members::{ClusterStatus, probes, status};
use crate::proxy::{Router, Target};

/// What the daemon hands a cluster's watcher, with where to answer.
pub enum Command {
    /// Pause (`true`) or resume automatic action; answered at once.
    Pause(bool, Sender<Reply>),
    /// A planned switchover; answered with its outcome (or, with `at`,
    /// once scheduled).
    Switchover(SwitchoverRequest, Sender<Reply>),
}

/// A switchover waiting for its time or for a steady cluster, and who
/// waits for its outcome.
struct Pending {
    req: SwitchoverRequest,
    reply: Option<Sender<Reply>>,
}

struct Watch<'a> {
    cluster: &'a str,
    c: &'a PostgresConfig,
    state: &'a StateDir,
    source: String,
    router: Arc<Router>,
    rec: Record,
    /// The epoch of the lease this watcher acts under.
    epoch: u64,
}

impl Watch<'_> {
    fn record(&self, e: Event) {
        match e.severity {
            Severity::Low => tracing::info!("{}: {}", e.source, e.message),
            _ => tracing::warn!("{}: {}", e.source, e.message),
        }
        if let Err(err) = self.state.record(&e) {
            tracing::error!("cannot record an event: {err:#}");
        }
    }

    fn event(&self, kind: EventKind, message: impl Into<String>) -> Event {
        Event::new(&self.source, kind, message)
    }

    fn save(&self) {
        if let Err(e) = self.rec.save(self.state, self.cluster) {
            self.record(self.event(EventKind::StateNotSaved, format!("{e:#}")));
        }
    }

    /// Admits an action under this watcher's lease: refused when a newer
    /// epoch than its own is recorded (another holder acted since), else
    /// its epoch is recorded as the newest before the action is taken.
    fn admit(&mut self, what: &str) -> Result<(), String> {
        let recorded = Record::load(self.state, self.cluster).map(|r| r.epoch).unwrap_or(0);
        let mut gate = EpochGate::new(recorded.max(self.rec.epoch));
        if let Err(stale) = gate.admit(self.epoch) {
            let why = format!("{what} refused: {stale}");
            self.record(self.event(EventKind::StaleEpoch, why.clone()).with(json!({ "epoch": self.epoch })));
            return Err(why);
        }
        if self.rec.epoch != gate.newest() {
            self.rec.epoch = gate.newest();
            self.save();
        }
        Ok(())
    }

    /// Switches the read-write endpoint under this watcher's epoch.
    fn route(&self, target: Option<Target>) {
        if let Err(stale) = self.router.switch(self.epoch, target) {
            self.record(self.event(EventKind::StaleEpoch, format!("router switch refused: {stale}")));
        }
    }

    fn target_of(&self, name: &str) -> Option<Target> {
        self.c.members.get(name).map(|m| Target::new(&m.host, m.port))
    }

    /// Runs `on_role_change`.
    fn hook(&self, event: &str, member: &str, primary: &str) {
        let Some(cmd) = &self.c.on_role_change else { return };
        let p = self.c.members.get(primary).cloned().unwrap_or_default();
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .env("CIRKEL_EVENT", event)
            .env("CIRKEL_CLUSTER", self.cluster)
            .env("CIRKEL_MEMBER", member)
            .env("CIRKEL_PRIMARY", primary)
            .env("CIRKEL_PRIMARY_HOST", &p.host)
            .env("CIRKEL_PRIMARY_PORT", p.port.to_string())
            .output();
        let failed = match out {
            Ok(o) if o.status.success() => return,
            Ok(o) => {
                format!("on_role_change exited {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr).trim())
            }
            Err(e) => format!("on_role_change: {e}"),
        };
        self.record(self.event(EventKind::HookFailed, failed));
    }

    /// The first time the endpoint (or, without one, the member) takes a
    /// write session, within 30 s.
    fn writable_at(&self, new: &str) -> Option<chrono::DateTime<Utc>> {
        let endpoint = self.c.proxy_listen.clone().or_else(|| {
            self.c.members.get(new).filter(|m| !m.host.starts_with('/')).map(|m| format!("{}:{}", m.host, m.port))
        })?;
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if failover::endpoint_writable(self.c, &endpoint) {
                return Some(Utc::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Points every reachable standby but `skip` at `primary`.
    fn repoint(&self, st: &ClusterStatus, primary: &str, skip: &str) -> Vec<String> {
        let mut followed = Vec::new();
        for m in st.members.iter().filter(|m| m.name != primary && m.name != skip && m.reachable) {
            match failover::follow(self.c, &m.name, primary) {
                Ok(()) => followed.push(m.name.clone()),
                Err(e) => self.record(
                    self.event(EventKind::FollowFailed, format!("{} could not be pointed at {primary}: {e:#}", m.name)),
                ),
            }
        }
        followed
    }

    fn rejoin(&mut self, old: &str, new: &str) -> Result<f64, String> {
        self.admit(&format!("rejoining {old}"))?;
        match failover::rejoin(self.c, old, new, &self.state.root().join("logs")) {
            Ok(took) => {
                self.rec.fenced = None;
                self.save();
                self.record(
                    self.event(
                        EventKind::Rejoined,
                        format!("{old} was rewound and follows {new} ({:.1} s)", took.as_secs_f64()),
                    )
                    .with(json!({ "member": old, "primary": new, "seconds": took.as_secs_f64() })),
                );
                self.hook("rejoin", old, new);
                Ok(took.as_secs_f64())
            }
            Err(e) => Err(format!("{old}: {e:#}")),
        }
    }

    /// Fences `old`, promotes `new`, repoints the others; every step
    /// recorded so that a restart finishes or abandons it.
    fn failover(
        &mut self,
        decider: &mut Decider,
        st: &ClusterStatus,
        (old, new, lost_bytes): (String, String, u64),
        detected: chrono::DateTime<Utc>,
    ) -> Result<(), String> {
        self.admit(&format!("failover {old} → {new}"))?;
        let decided = Utc::now();
        self.rec.failover = Some(InFlight { old: old.clone(), new: new.clone(), started: decided });
        self.save();
        self.route(None);
        let fenced_at = Utc::now();
        ha::failpoint("pg-failover-fenced");
        if self.c.synchronous
            && let Err(e) = ha::set_sync_names(self.c, &new, "")
        {
            return Err(format!("preparing {new} for synchronous mode failed: {e:#}"));
        }
        if let Err(e) = failover::promote(self.c, &new) {
            self.rec.failover = None;
            self.save();
            return Err(format!("promoting {new} failed: {e:#}"));
        }
        let promoted_at = Utc::now();
        ha::failpoint("pg-failover-promoted");
        decider.promoted(&new);
        self.route(self.target_of(&new));
        self.rec.primary = Some(new.clone());
        self.rec.fenced = Some(old.clone());
        self.rec.failover = None;
        if self.c.synchronous {
            self.rec.sync = Some(Default::default());
            self.rec.shrink = None;
        }
        self.save();
        let followed = self.repoint(st, &new, &old);
        let writable_at = self.c.proxy_listen.as_ref().and_then(|_| self.writable_at(&new));
        let secs = |t: chrono::DateTime<Utc>| (t - detected).num_milliseconds() as f64 / 1000.0;
        self.record(
            self.event(
                EventKind::Failover,
                format!("failover {old} → {new}: {lost_bytes} bytes of WAL not received by {new}"),
            )
            .with(json!({
                "old_primary": old,
                "new_primary": new,
                "lost_bytes": lost_bytes,
                "epoch": self.epoch,
                "synchronous": self.c.synchronous,
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
        self.hook("failover", &new, &new);
        Ok(())
    }

    /// A planned switchover asked by `cirkel pg switchover`.
    fn switchover(
        &mut self,
        decider: &mut Decider,
        st: &ClusterStatus,
        req: &SwitchoverRequest,
    ) -> Result<Event, String> {
        let old = decider.primary().map(str::to_string).ok_or("no primary is known")?;
        let healthy = st.members.iter().any(|m| m.name == old && m.reachable && m.role.as_deref() == Some("primary"));
        if !healthy {
            return Err(format!("the primary {old} does not answer as a primary; a switchover needs a healthy one"));
        }
        let new = match &req.to {
            Some(to) => {
                check_target(self.c, st, to)?;
                to.clone()
            }
            None => decider.choose(&old).map(|(n, _)| n).map_err(|r| {
                format!(
                    "no standby qualifies: {}",
                    r.iter().map(|r| format!("{} {}", r.member, r.reason)).collect::<Vec<_>>().join("; ")
                )
            })?,
        };
        self.admit(&format!("switchover {old} → {new}"))?;
        let (router, epoch) = (self.router.clone(), self.epoch);
        let targets: HashMap<String, Target> =
            self.c.members.iter().map(|(n, m)| (n.clone(), Target::new(&m.host, m.port))).collect();
        let fence = |to: Option<&str>| {
            if let Err(stale) = router.switch(epoch, to.and_then(|n| targets.get(n).cloned())) {
                tracing::error!("router switch refused: {stale}");
            }
        };
        let sw = failover::switchover(self.c, &old, &new, &fence, &self.state.root().join("logs"))
            .map_err(|e| format!("{e:#}"))?;
        decider.promoted(&new);
        self.rec.primary = Some(new.clone());
        self.rec.fenced = Some(old.clone());
        if self.c.synchronous {
            self.rec.sync = Some(Default::default());
            self.rec.shrink = None;
        }
        self.save();
        let writable = self.writable_at(&new);
        let followed = self.repoint(st, &new, &old);
        self.hook("switchover", &new, &new);
        let rejoin = self.rejoin(&old, &new);
        let pause = writable.map(|w| (w - sw.fenced).num_milliseconds() as f64 / 1000.0);
        let done = self
            .event(
                EventKind::Switchover,
                format!(
                    "switchover {old} → {new}: writes paused {}",
                    pause.map(|p| format!("{p:.2} s")).unwrap_or_else(|| "(not measured)".into())
                ),
            )
            .with(json!({
                "id": req.id,
                "requested": req.requested,
                "scheduled": req.at,
                "old_primary": old,
                "new_primary": new,
                "epoch": self.epoch,
                "fenced": sw.fenced,
                "stopped": sw.stopped,
                "promoted": sw.promoted,
                "endpoint_writable": writable,
                "write_pause_s": pause,
                "final_lsn": sw.final_lsn,
                "followers": followed,
                "rejoin_s": rejoin.as_ref().ok(),
                "rejoin_error": rejoin.as_ref().err(),
            }));
        self.record(done.clone());
        Ok(done)
    }

    /// Carries out a switchover and records a failure: the event that
    /// says how it went.
    fn switchover_recorded(&mut self, decider: &mut Decider, st: &ClusterStatus, req: &SwitchoverRequest) -> Event {
        self.switchover(decider, st, req).unwrap_or_else(|why| {
            let failed = self
                .event(EventKind::SwitchoverFailed, format!("switchover refused or failed: {why}"))
                .with(json!({ "id": req.id }));
            self.record(failed.clone());
            failed
        })
    }

    /// Pauses or resumes, durably.
    fn set_paused(&mut self, paused: bool) -> Reply {
        if self.rec.paused != paused {
            self.rec.paused = paused;
            if let Err(e) = self.rec.save(self.state, self.cluster) {
                self.rec.paused = !paused;
                return Reply::Error { message: format!("{e:#}") };
            }
        }
        let (what, kind) = if paused { ("paused", EventKind::Paused) } else { ("resumed", EventKind::Resumed) };
        let message =
            format!("cluster {} {what}: automatic action {}", self.cluster, if paused { "off" } else { "on" });
        self.record(self.event(kind, message.clone()));
        Reply::Done { message }
    }

    /// Takes the commands that arrived: pauses at once, switchovers into
    /// `pending` (a newer request replaces an older one, as it always has).
    fn take_commands(&mut self, commands: &Receiver<Command>, pending: &mut Option<Pending>) {
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Pause(paused, reply) => {
                    let _ = reply.send(self.set_paused(paused));
                }
                Command::Switchover(req, reply) => {
                    if let Some(old) = pending.take()
                        && let Some(r) = old.reply
                    {
                        let _ = r.send(Reply::Error { message: "replaced by a newer switchover request".into() });
                    }
                    let reply = match req.at {
                        Some(at) if at > Utc::now() => {
                            self.rec.scheduled = Some(req.clone());
                            if let Err(e) = self.rec.save(self.state, self.cluster) {
                                self.rec.scheduled = None;
                                let _ = reply.send(Reply::Error { message: format!("{e:#}") });
                                continue;
                            }
                            let _ = reply.send(Reply::Scheduled { at });
                            None
                        }
                        _ => Some(reply),
                    };
                    *pending = Some(Pending { req, reply });
                }
            }
        }
    }
}

/// Whether `to` can take over in a planned switchover.
pub fn check_target(c: &PostgresConfig, st: &ClusterStatus, to: &str) -> Result<(), String> {
    let m = st.members.iter().find(|m| m.name == to).ok_or_else(|| format!("no member `{to}`"))?;
    if !m.reachable || m.role.as_deref() != Some("standby") {
        return Err(format!("{to} is not a reachable standby"));
    }
    if !m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming")) {
        return Err(format!("{to} is not streaming ({})", m.receiver.as_deref().unwrap_or("no WAL receiver")));
    }
    if c.members.get(to).is_some_and(|m| m.priority == 0) {
        return Err(format!("{to} has priority 0 (never promote)"));
    }
    Ok(())
}

/// Watches a cluster until `stop`: health checks with the configured
/// thresholds, primary changes, split brain, and the decision core's
/// verdict, each recorded as an event. With `auto_failover` (the default)
/// it also acts: the endpoint stops routing to a primary declared down
/// (fencing it for every client of the endpoint), the chosen standby is
/// promoted, the others follow it, and an old primary that comes back is
/// rewound into a standby. With `proxy_listen` it serves the read-write
/// endpoint. Only one watcher acts per cluster and state directory.
pub fn watch(
    cluster: &str,
    c: &PostgresConfig,
    state: &StateDir,
    stop: Arc<AtomicBool>,
    commands: Receiver<Command>,
) -> anyhow::Result<()> {
    let source = format!("postgres/{cluster}");
    let mut election = ha::local_lease(state, cluster);
    let interval = c.health.interval.max(Duration::from_millis(200));
    let Some(first) = acquire_or_stand_by(&mut election, state, &source, interval, &stop, || {
        // Another process acts: pausing only changes the record it reads,
        // and a switchover is its to make.
        while let Ok(cmd) = commands.try_recv() {
            let _ = match cmd {
                Command::Pause(paused, reply) => reply.send(match ha::set_paused(state, cluster, paused) {
                    Ok(()) => Reply::Done {
                        message: format!("cluster {cluster} {}", if paused { "paused" } else { "resumed" }),
                    },
                    Err(e) => Reply::Error { message: format!("{e:#}") },
                }),
                Command::Switchover(_, reply) => reply.send(Reply::Error {
                    message: format!("this cirkel serve waits while another acts on {cluster}; ask that one"),
                }),
            };
        }
    })?
    else {
        return Ok(());
    };
    let mut decider = crate::members::decider(c)?;
    let router = Router::new();
    let listen = |addr: &Option<String>, what: &str, router: &Arc<Router>| -> anyhow::Result<_> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {what} of {cluster}: {e}"))?;
        let (router, stop) = (router.clone(), stop.clone());
        let cap = c.proxy_max_connections;
        Ok(Some(std::thread::spawn(move || crate::proxy::run(listener, router, stop, cap))))
    };
    let proxy = listen(&c.proxy_listen, "endpoint", &router)?;
    let ro_router = Router::new();
    let proxy_ro = listen(&c.proxy_listen_ro, "read-only endpoint", &ro_router)?;
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
    let rec = Record::load(state, cluster)?;
    let mut w = Watch { cluster, c, state, source, router, rec, epoch: first.epoch };
    let mut lease = Some(first);
    // A switchover scheduled before a restart is still due.
    let mut pending: Option<Pending> = w.rec.scheduled.clone().map(|req| Pending { req, reply: None });
    let legacy = crate::members::legacy_pause_flag(state, cluster);
    if legacy.exists() {
        w.rec.paused = true;
        w.save();
        let _ = std::fs::remove_file(&legacy);
    }
    let mut health: HashMap<String, HealthCounter> = HashMap::new();
    let mut strays: HashMap<String, Instant> = HashMap::new();
    let mut ro_member: Option<String> = None;
    let mut last_alarm = String::new();
    let mut first_failure: Option<chrono::DateTime<Utc>> = None;
    let mut first_round = true;
    let watch_started = Instant::now();
    w.record(
        w.event(EventKind::WatchStarted, format!("watching {} members", c.members.len()))
            .with(json!({ "epoch": w.epoch })),
    );
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        let st = status(cluster, c);
        let is = |name: &str, role: &str| st.members.iter().any(|m| m.name == name && m.role.as_deref() == Some(role));
        if first_round {
            first_round = false;
            resume(&mut w, &mut decider, &st);
        }
        for m in &st.members {
            let h = &c.health;
            let change = health.entry(m.name.clone()).or_default().observe(
                m.reachable,
                h.healthy_threshold,
                h.unhealthy_threshold,
            );
            let details = json!({ "member": m.name, "zone": m.zone });
            match change {
                Some(false) => w.record(
                    w.event(
                        EventKind::MemberDown,
                        format!(
                            "member {} failed {} checks: {}",
                            m.name,
                            h.unhealthy_threshold,
                            m.error.as_deref().unwrap_or("")
                        ),
                    )
                    .with(details),
                ),
                Some(true) => {
                    w.record(w.event(EventKind::MemberUp, format!("member {} is healthy", m.name)).with(details))
                }
                None => {}
            }
        }
        if !hold(&mut w, &mut election, &mut lease) {
            rest(&mut w, round, &stop, &commands, &mut pending);
            continue;
        }
        w.take_commands(&commands, &mut pending);
        let paused = w.rec.paused;
        decider.set_paused(paused);
        decider.set_sync(c.synchronous.then(|| SyncSet { members: w.rec.sync_set(c, decider.primary()), k: 1 }));
        // The fenced old primary is invisible to the decision core: it is
        // never routed to, promoted or counted, until it is a standby again.
        let fenced = w.rec.fenced.clone();
        if let Some(f) = &fenced
            && is(f, "standby")
        {
            w.rec.fenced = None;
            w.save();
        }
        let observed: Vec<Probe> = probes(&st)
            .into_iter()
            .map(|p| if Some(&p.member) == fenced.as_ref() { Probe { ok: false, role: None, ..p } } else { p })
            .collect();
        let mut alarm: (Option<EventKind>, String) = (None, String::new());
        let decision = decider.observe(&observed);
        match decision {
            Decision::Steady { primary: p } => {
                first_failure = None;
                w.route(w.target_of(&p));
                if w.rec.primary.as_deref() != Some(p.as_str()) {
                    if let Some(old) = &w.rec.primary {
                        w.record(w.event(EventKind::PrimaryChanged, format!("primary is now {p} (was {old})")));
                    }
                    w.rec.primary = Some(p.clone());
                    w.save();
                }
                let due = pending.as_ref().is_some_and(|p| p.req.at.is_none_or(|t| Utc::now() >= t));
                if let Some(Pending { req, reply }) = pending.take_if(|_| due) {
                    if w.rec.scheduled.take().is_some() {
                        w.save();
                    }
                    let outcome = w.switchover_recorded(&mut decider, &st, &req);
                    if let Some(r) = reply {
                        let _ = r.send(Reply::Outcome { event: outcome });
                    }
                } else {
                    if c.auto_failover && !paused {
                        if let Some(f) = &fenced
                            && is(f, "primary")
                        {
                            // The old primary is back, on its old timeline.
                            if let Err(e) = w.rejoin(f, &p) {
                                alarm = (Some(EventKind::RejoinFailed), e);
                            }
                        }
                        let fresh = watch_started.elapsed() < Duration::from_secs(3);
                        repair_followers(&w, &st, &p, &mut strays, fresh);
                    }
                    // Kept up even when paused or with auto_failover off: it
                    // is what keeps the primary writable when a standby stops.
                    if c.synchronous {
                        match ha::sync_round(c, &st, &p, &mut w.rec, state, cluster) {
                            Ok(changes) => {
                                for ch in changes {
                                    w.record(w.event(EventKind::SynchronousSet, ch));
                                }
                            }
                            Err(e) => alarm = (Some(EventKind::SynchronousSetFailed), format!("{e:#}")),
                        }
                    } else if w.rec.sync.is_some()
                        && st.members.iter().any(|m| {
                            m.name == p && m.synchronous_standby_names.as_deref().is_some_and(|n| !n.is_empty())
                        })
                    {
                        // Synchronous mode was turned off.
                        if ha::set_sync_names(c, &p, "").is_ok() {
                            w.rec.sync = None;
                            w.rec.shrink = None;
                            w.save();
                        }
                    }
                }
            }
            Decision::Suspect { .. } => {
                first_failure.get_or_insert_with(Utc::now);
            }
            Decision::Failover { old, new, lost_bytes } if c.auto_failover => {
                let detected = first_failure.take().unwrap_or_else(Utc::now);
                if let Err(e) = w.failover(&mut decider, &st, (old, new, lost_bytes), detected) {
                    alarm = (Some(EventKind::FailoverFailed), e);
                }
            }
            Decision::Failover { old, new, lost_bytes } => {
                alarm = (
                    Some(EventKind::FailoverNeeded),
                    format!(
                        "primary {old} is down; the decision core would promote {new} ({lost_bytes} bytes behind); auto_failover is off"
                    ),
                );
            }
            Decision::Paused => {
                alarm = (
                    Some(EventKind::PausedPrimaryDown),
                    "the primary is down, and the cluster is paused: no automatic action (`cirkel pg resume`)".into(),
                );
            }
            Decision::NoCandidate { old, rejections } => {
                alarm = (
                    Some(EventKind::NoFailoverCandidate),
                    format!(
                        "primary {old} is down and no standby qualifies: {}",
                        rejections.iter().map(|r| format!("{} {}", r.member, r.reason)).collect::<Vec<_>>().join("; ")
                    ),
                );
            }
            Decision::Misconfigured(why) => {
                let why = match &fenced {
                    Some(f) if is(f, "primary") => format!(
                        "{why}; {f} runs as a primary but was fenced after a failover, so it is never routed to"
                    ),
                    _ => why,
                };
                alarm = (Some(EventKind::ClusterMisconfigured), why);
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
        let routed_primary = w.router.target().and(decider.primary().map(str::to_string));
        match (&ro_member, &routed_primary) {
            (Some(m), _) | (None, Some(m)) => ro_router.set(w.target_of(m)),
            (None, None) => ro_router.set(None),
        }
        if let Ok(mut v) = view.lock() {
            v.primary = routed_primary;
            v.status = Some(st.clone());
        }
        if alarm.1 != last_alarm {
            if let Some(kind) = alarm.0 {
                w.record(w.event(kind, alarm.1.clone()));
            }
            last_alarm = alarm.1;
        }
        rest(&mut w, round, &stop, &commands, &mut pending);
    }
    if let Some(l) = lease.take() {
        election.release(l);
    }
    for t in [proxy, proxy_ro].into_iter().flatten() {
        let _ = t.join();
    }
    for a in apis {
        let _ = a.join();
    }
    Ok(())
}

/// Sleeps out the rest of a round, taking commands as they come.
fn rest(w: &mut Watch, round: Instant, stop: &AtomicBool, commands: &Receiver<Command>, pending: &mut Option<Pending>) {
    let left = w.c.health.interval.saturating_sub(round.elapsed());
    let until = Instant::now() + left;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(left.min(Duration::from_millis(50)));
        w.take_commands(commands, pending);
    }
}

/// Checks the lease at the top of a round: whether this watcher may act
/// in it. A lease that is lost, or that cannot be checked, stops every
/// action at once and cuts this watcher's endpoint (its clients must not
/// write to a primary another holder may be failing over); the watcher
/// then tries each round to take a new lease, under a new epoch.
fn hold(w: &mut Watch, election: &mut impl Leadership, lease: &mut Option<Lease>) -> bool {
    if let Some(l) = lease.as_ref() {
        let why = match election.still_held(l) {
            Ok(true) => return true,
            Ok(false) => "it was lost".to_string(),
            Err(e) => format!("it cannot be checked: {e}"),
        };
        let msg = format!(
            "the lease on {} (epoch {}) is no longer held: {why}; no action until it is taken again",
            w.cluster, l.epoch
        );
        w.record(w.event(EventKind::LeadershipLost, msg).with(json!({ "epoch": l.epoch })));
        w.router.set(None);
        *lease = None;
    }
    match election.acquire() {
        Ok(Some(l)) => {
            w.epoch = l.epoch;
            let msg = format!("this cirkel serve acts on {} again (lease epoch {})", w.cluster, l.epoch);
            w.record(w.event(EventKind::LeadershipAcquired, msg).with(json!({ "epoch": l.epoch })));
            *lease = Some(l);
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!("{}: cannot take the lease: {e}", w.source);
            false
        }
    }
}

/// After a restart: finishes a failover that got as far as the promotion,
/// abandons one that did not (the decision core decides afresh), and takes
/// the recorded primary as the primary while nothing contradicts it, so
/// that a primary that died while cirkel was down is still failed over.
fn resume(w: &mut Watch, decider: &mut Decider, st: &ClusterStatus) {
    let is = |name: &str, role: &str| st.members.iter().any(|m| m.name == name && m.role.as_deref() == Some(role));
    if let Some(f) = w.rec.failover.take() {
        let details = json!({ "old_primary": f.old, "new_primary": f.new, "started": f.started });
        if is(&f.new, "primary") {
            w.rec.primary = Some(f.new.clone());
            w.rec.fenced = Some(f.old.clone());
            if w.c.synchronous {
                w.rec.sync = Some(Default::default());
                w.rec.shrink = None;
            }
            let msg = format!("cirkel stopped after promoting {}; the failover from {} is finished now", f.new, f.old);
            w.record(w.event(EventKind::FailoverResumed, msg).with(details));
        } else {
            let msg = format!(
                "cirkel stopped during a failover from {} to {} before the promotion; nothing was promoted, and it decides afresh",
                f.old, f.new
            );
            w.record(w.event(EventKind::FailoverAbandoned, msg).with(details));
        }
        w.save();
    }
    if let Some(p) = w.rec.primary.clone() {
        let other = st
            .members
            .iter()
            .any(|m| m.name != p && Some(&m.name) != w.rec.fenced.as_ref() && m.role.as_deref() == Some("primary"));
        if !is(&p, "standby") && !other {
            decider.assume_primary(&p);
        }
    }
}

/// Points at the primary every standby that has not been streaming from
/// it (under its member name, which synchronous mode relies on) for 5 s:
/// the followers of a failover cirkel was stopped in, and standbys made by
/// hand with another `application_name`.
fn repair_followers(w: &Watch, st: &ClusterStatus, primary: &str, strays: &mut HashMap<String, Instant>, fresh: bool) {
    let Some(p) = st.members.iter().find(|m| m.name == primary) else { return };
    for m in &st.members {
        if m.name == primary || !m.reachable || m.role.as_deref() != Some("standby") {
            continue;
        }
        if p.replicas.iter().any(|l| l.name == m.name) {
            strays.remove(&m.name);
            continue;
        }
        // At start every stray is repointed at once; later ones get 5 s to
        // reconnect by themselves (after a failover they are already pointed).
        let since = *strays
            .entry(m.name.clone())
            .or_insert_with(|| if fresh { Instant::now() - Duration::from_secs(5) } else { Instant::now() });
        if since.elapsed() >= Duration::from_secs(5) {
            strays.insert(m.name.clone(), Instant::now());
            match failover::follow(w.c, &m.name, primary) {
                Ok(()) => w.record(w.event(
                    EventKind::FollowerRepointed,
                    format!("{} did not stream from {primary} as `{}`; it was pointed at it", m.name, m.name),
                )),
                Err(e) => w.record(
                    w.event(EventKind::FollowFailed, format!("{} could not be pointed at {primary}: {e:#}", m.name)),
                ),
            }
        }
    }
}

/// A planned switchover when no `cirkel serve` watches the cluster: the
/// same steps, without an endpoint to move. Holds the cluster's lease
/// meanwhile, so that a watcher starting now waits.
pub fn switchover_now(
    cluster: &str,
    c: &PostgresConfig,
    state: &StateDir,
    req: &SwitchoverRequest,
) -> anyhow::Result<Result<Event, String>> {
    let mut election = ha::local_lease(state, cluster);
    let Some(lease) = election.acquire()? else {
        anyhow::bail!(
            "a cirkel serve ({}) acts on {cluster} but does not answer on its control socket",
            election.holder().unwrap_or_default()
        );
    };
    let mut decider = crate::members::decider(c)?;
    let mut w = Watch {
        cluster,
        c,
        state,
        source: format!("postgres/{cluster}"),
        router: Router::new(),
        rec: Record::load(state, cluster)?,
        epoch: lease.epoch,
    };
    let st = status(cluster, c);
    decider.set_sync(c.synchronous.then(|| SyncSet { members: w.rec.sync_set(c, st.primary.as_deref()), k: 1 }));
    if let Decision::Misconfigured(why) = decider.observe(&probes(&st)) {
        return Ok(Err(why));
    }
    let outcome = w.switchover(&mut decider, &st, req);
    if let Err(why) = &outcome {
        w.record(
            w.event(EventKind::SwitchoverFailed, format!("switchover refused or failed: {why}"))
                .with(json!({ "id": req.id })),
        );
    }
    election.release(lease);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirkel_failover::MemoryElection;

    fn config() -> PostgresConfig {
        let text = "[postgres.main]\n[postgres.main.members.a]\nhost = \"127.0.0.1\"\nport = 5432\n";
        let mut cfg = cirkel_config::Config::parse(text, "c.toml", None).unwrap();
        cfg.postgres.remove("main").unwrap()
    }

    fn kinds(state: &StateDir) -> Vec<String> {
        state.events().unwrap().into_iter().map(|e| e.kind.to_string()).collect()
    }

    #[test]
    fn a_stale_lease_epoch_stops_a_promotion() {
        let t = tempfile::tempdir().unwrap();
        let state = StateDir::new(t.path().join("state"));
        let c = config();
        let election = MemoryElection::new();
        let (mut a, mut b) = (election.contender("a"), election.contender("b"));
        let la = a.acquire().unwrap().unwrap();
        let watch = |epoch| Watch {
            cluster: "main",
            c: &c,
            state: &state,
            source: "postgres/main".into(),
            router: Router::new(),
            rec: Record::default(),
            epoch,
        };
        let mut wa = watch(la.epoch);
        let mut lease = Some(la.clone());
        assert!(hold(&mut wa, &mut a, &mut lease), "the holder acts");
        wa.admit("failover").expect("its epoch is the newest");
        wa.route(wa.target_of("a"));
        assert!(wa.router.target().is_some());
        // The lease goes to b, which acts and records its epoch.
        let lb = election.hand_to("b");
        let mut wb = watch(lb.epoch);
        let mut lease_b = Some(lb);
        assert!(hold(&mut wb, &mut b, &mut lease_b));
        wb.admit("failover").unwrap();
        assert_eq!(Record::load(&state, "main").unwrap().epoch, election.epoch());
        // a, before its next check, would promote: refused, and recorded.
        assert!(wa.admit("failover a → b").is_err());
        assert!(kinds(&state).contains(&"stale-epoch".to_string()));
        // At its next round a sees the lease lost, cuts its endpoint and
        // does not act while b holds it.
        assert!(!hold(&mut wa, &mut a, &mut lease));
        assert!(lease.is_none());
        assert_eq!(wa.router.target(), None);
        assert!(kinds(&state).contains(&"leadership-lost".to_string()));
        assert!(!hold(&mut wa, &mut a, &mut lease), "b still holds it");
        // Revoked from b, it is a's again under a newer epoch.
        election.revoke();
        assert!(hold(&mut wa, &mut a, &mut lease));
        assert!(!hold(&mut wb, &mut b, &mut lease_b), "b sees it lost, and a holds it");
        assert!(wa.epoch > la.epoch);
        wa.admit("failover").expect("a newer epoch acts again");
    }
}
