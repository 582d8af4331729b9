//! The watcher's executor: what a round decided (`cirkel_failover::round`)
//! carried out against the cluster, the endpoints, the record and the event
//! log. Every step that changes who takes writes is admitted under the
//! lease's epoch first, and every step is recorded so that a restart
//! finishes or abandons it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cirkel_config::PostgresConfig;
use cirkel_failover::round::{self, Action, ReadOnly};
use cirkel_failover::{Decider, EpochGate};
use cirkel_state::control::Reply;
use cirkel_state::{Event, EventKind, Severity, StateDir};
use serde_json::json;

use super::{Command, Pending, check_target};
use crate::coord::Coord;
use crate::failover;
use crate::ha::{self, InFlight, Record, SwitchoverRequest};
use crate::members::ClusterStatus;
use crate::proxy::{Router, Target};

/// A cluster's watcher as the executor needs it: the configuration, the
/// record it keeps, the read-write endpoint it switches, and the epoch of
/// the lease it acts under.
pub(super) struct Watch<'a> {
    pub(super) cluster: &'a str,
    pub(super) c: &'a PostgresConfig,
    pub(super) state: &'a StateDir,
    pub(super) source: String,
    pub(super) router: Arc<Router>,
    pub(super) rec: Record,
    /// The epoch of the lease this watcher acts under.
    pub(super) epoch: u64,
    /// With `[coordination]`: etcd, where the record and the route live.
    pub(super) coord: Option<Coord>,
    /// The route last published under this lease (`None`: not yet).
    pub(super) published: Option<Option<String>>,
    /// When each member's keeper was last heard from, by this host's clock.
    pub(super) heard: HashMap<String, Instant>,
}

impl Watch<'_> {
    pub(super) fn record(&self, e: Event) {
        match e.severity {
            Severity::Low => tracing::info!("{}: {}", e.source, e.message),
            _ => tracing::warn!("{}: {}", e.source, e.message),
        }
        if let Err(err) = self.state.record(&e) {
            tracing::error!("cannot record an event: {err:#}");
        }
    }

    pub(super) fn event(&self, kind: EventKind, message: impl Into<String>) -> Event {
        Event::new(&self.source, kind, message)
    }

    pub(super) fn save(&self) {
        if let Err(e) = self.persist() {
            self.record(self.event(EventKind::StateNotSaved, format!("{e:#}")));
        }
    }

    /// Saves the record: in etcd under this watcher's epoch (refused once
    /// another holds the lease), else in the state directory.
    pub(super) fn persist(&self) -> anyhow::Result<()> {
        match &self.coord {
            Some(k) => k.save_record(self.epoch, &self.rec).map_err(|e| anyhow::anyhow!("saving the record: {e}")),
            None => self.rec.save(self.state, self.cluster),
        }
    }

    /// Publishes the read-write endpoints' target for every agent, under
    /// this watcher's epoch; nothing to do alone or when unchanged.
    pub(super) fn publish(&mut self, primary: Option<&str>) -> Result<(), String> {
        let Some(k) = &self.coord else { return Ok(()) };
        let want = primary.map(str::to_string);
        if self.published.as_ref() == Some(&want) {
            return Ok(());
        }
        k.publish_route(self.epoch, primary).map_err(|e| format!("publishing the route failed: {e}"))?;
        self.published = Some(want);
        Ok(())
    }

    /// Admits an action under this watcher's lease: refused when a newer
    /// epoch than its own is recorded (another holder acted since), else
    /// its epoch is recorded as the newest before the action is taken.
    /// With etcd, the lease itself is asked: the action is admitted only
    /// while the leader key still carries this watcher's epoch.
    pub(super) fn admit(&mut self, what: &str) -> Result<(), String> {
        if let Some(k) = &self.coord {
            let current = k.fence.current_epoch(&k.scope).map_err(|e| format!("{what} refused: {e}"))?;
            if current == self.epoch {
                return Ok(());
            }
            let why =
                format!("{what} refused: lease epoch {} is no longer held (epoch {current} holds it)", self.epoch);
            self.record(self.event(EventKind::StaleEpoch, why.clone()).with(json!({ "epoch": self.epoch })));
            return Err(why);
        }
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
    pub(super) fn route(&self, target: Option<Target>) {
        if let Err(stale) = self.router.switch(self.epoch, target) {
            self.record(self.event(EventKind::StaleEpoch, format!("router switch refused: {stale}")));
        }
    }

    pub(super) fn target_of(&self, name: &str) -> Option<Target> {
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

    /// A planned switchover led through etcd: the route names
    /// nobody and asks that host's agent to stop `old` cleanly; once it
    /// answers with the shutdown checkpoint, `new` is promoted when it has
    /// replayed past it, and the route names `new`. Until the promotion a
    /// failure routes back to `old`, which its agent starts again.
    fn hand_off(&mut self, old: &str, new: &str, id: &str) -> Result<failover::Switched, String> {
        let Some(k) = self.coord.clone() else { return Err("no coordination".into()) };
        let handoff = crate::coord::Handoff { id: id.to_string(), old: old.to_string(), new: new.to_string() };
        let n = self.c.members.get(new).ok_or_else(|| format!("no member `{new}`"))?;
        let standby = crate::conn::PgConn::connect(Some(&failover::member_conninfo(self.c, n, self.c.health.timeout)))
            .map_err(|e| format!("cannot reach {new}: {e:#}"))?;
        let fenced = Utc::now();
        self.route(None);
        k.publish_handoff(self.epoch, None, Some(&handoff)).map_err(|e| format!("switchover refused: {e}"))?;
        self.published = Some(None);
        let rollback = |w: &mut Self, why: String| -> String {
            w.route(w.target_of(old));
            match k.publish_route(w.epoch, Some(old)) {
                Ok(()) => {
                    w.published = Some(Some(old.to_string()));
                    format!("{why}; switchover rolled back: {old} is the primary again")
                }
                Err(e) => format!("{why}; the route back to {old} could not be published ({e})"),
            }
        };
        let until = Instant::now() + Duration::from_secs(90);
        let done = loop {
            match k.handoff_done(id) {
                Ok(Some(d)) => break d,
                _ if Instant::now() > until => {
                    return Err(rollback(self, format!("the agent on {old}'s host did not stop it within 90 s")));
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let _ = k.fence.delete(&k.scope, &format!("handoff-{id}"));
        let Some(final_lsn) = done.final_lsn else {
            let why = done.error.unwrap_or_else(|| "no reason given".into());
            return Err(rollback(self, format!("{old} was not stopped cleanly: {why}")));
        };
        let end = crate::conn::parse_lsn(&final_lsn).ok_or_else(|| format!("bad LSN {final_lsn}"))?;
        if let Err(e) = failover::promote_past(self.c, &standby, new, old, &final_lsn, end) {
            return Err(rollback(self, format!("{e:#}")));
        }
        let promoted = Utc::now();
        self.route(self.target_of(new));
        Ok(failover::Switched {
            old: old.to_string(),
            new: new.to_string(),
            fenced,
            stopped: done.stopped,
            promoted,
            final_lsn,
        })
    }

    /// With agents on several hosts, waits before promoting until the old
    /// primary can no longer take writes: its own agent reported it gone,
    /// or it has had the time to fence itself (an agent with no word from
    /// etcd stops its primary after `fence_after`; one that reads the route
    /// stops it at its next check).
    fn await_fenced(&self, old: &str, detected: DateTime<Utc>) {
        let Some(k) = &self.coord else { return };
        if k.gone(old).ok().flatten().is_some() {
            return;
        }
        // A keeper that still reports reads the route too, and stops its
        // primary at its next check; one silent since `t` (its last word
        // from etcd was no later) has stopped it by `t + fence_after` and a
        // tick, a probe of the other members and `pg_ctl stop`: a second
        // covers those.
        let check = self.c.health.interval + Duration::from_millis(500);
        let margin = Duration::from_secs(1);
        let left = match self.heard.get(old) {
            _ if k.is_local(self.c, old) => check,
            Some(t) if t.elapsed() < self.c.health.interval / 2 => check,
            Some(t) => (*t + k.fence_after(self.c) + margin).saturating_duration_since(Instant::now()),
            None => (detected + k.fence_after(self.c) + margin - Utc::now()).to_std().unwrap_or_default(),
        };
        if !left.is_zero() {
            tracing::info!("{}: waiting {:.1} s for {old} to be fenced on its host", self.source, left.as_secs_f64());
            std::thread::sleep(left);
        }
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

    pub(super) fn rejoin(&mut self, old: &str, new: &str) -> Result<f64, String> {
        if let Some(k) = &self.coord
            && !k.is_local(self.c, old)
        {
            // The agent on its host rewinds it once the route names `new`.
            return Ok(0.0);
        }
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
    pub(super) fn failover(
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
        let published = match &self.coord {
            Some(k) => k.publish_failover(self.epoch, &new).map_err(|e| format!("publishing the route failed: {e}")),
            None => Ok(()),
        };
        if let Err(e) = published {
            self.rec.failover = None;
            self.save();
            return Err(format!("failover {old} → {new} refused: {e}"));
        }
        self.published = Some(None);
        self.await_fenced(&old, detected);
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
        if let Err(e) = self.publish(Some(&new)) {
            tracing::warn!("{}: {e}; the next round publishes it", self.source);
        }
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
    pub(super) fn switchover(
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
        // With agents on several hosts, the old primary's own agent stops
        // it, wherever the leader runs.
        let remote = self.coord.is_some();
        let sw = if remote {
            self.hand_off(&old, &new, &req.id)?
        } else {
            failover::switchover(self.c, &old, &new, &fence, &self.state.root().join("logs"))
                .map_err(|e| format!("{e:#}"))?
        };
        decider.promoted(&new);
        if let Err(e) = self.publish(Some(&new)) {
            tracing::warn!("{}: {e}; the next round publishes it", self.source);
        }
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
        // A remote old primary is rewound by its own agent, which sees the
        // route name `new`.
        let rejoin = if remote { None } else { Some(self.rejoin(&old, &new)) };
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
                "rejoin_s": rejoin.as_ref().and_then(|r| r.as_ref().ok()),
                "rejoin_error": rejoin.as_ref().and_then(|r| r.as_ref().err()),
                "rejoin_by_agent": rejoin.is_none().then(|| self.c.members.get(&old).and_then(|m| m.node.clone())),
            }));
        self.record(done.clone());
        Ok(done)
    }

    /// Carries out a switchover and records a failure: the event that
    /// says how it went.
    pub(super) fn switchover_recorded(
        &mut self,
        decider: &mut Decider,
        st: &ClusterStatus,
        req: &SwitchoverRequest,
    ) -> Event {
        self.switchover(decider, st, req).unwrap_or_else(|why| {
            let failed = self
                .event(EventKind::SwitchoverFailed, format!("switchover refused or failed: {why}"))
                .with(json!({ "id": req.id }));
            self.record(failed.clone());
            failed
        })
    }

    /// Pauses or resumes, durably.
    pub(super) fn set_paused(&mut self, paused: bool) -> Reply {
        if self.rec.paused != paused {
            self.rec.paused = paused;
            if let Err(e) = self.persist() {
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
    pub(super) fn take_commands(&mut self, commands: &Receiver<Command>, pending: &mut Option<Pending>) {
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
                            if let Err(e) = self.persist() {
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

/// What one action needs besides the watcher: the round's status, the
/// decision core, the switchover waiting and the read-only endpoint.
pub(super) struct Scene<'s> {
    pub(super) st: &'s ClusterStatus,
    pub(super) decider: &'s mut Decider,
    pub(super) pending: &'s mut Option<Pending>,
    pub(super) ro_router: &'s Router,
}

impl Watch<'_> {
    /// Carries out one action of a round; an error is the message of the
    /// alarm its failure raises (`Action::failure`).
    pub(super) fn execute(&mut self, action: &Action, s: &mut Scene) -> Result<(), String> {
        match action {
            Action::Record(e) => {
                let details: serde_json::Map<String, serde_json::Value> =
                    e.details.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
                let mut event = self.event(event_kind(e.kind), e.message.clone());
                if !details.is_empty() {
                    event = event.with(serde_json::Value::Object(details));
                }
                self.record(event);
            }
            Action::FinishFailover { .. } | Action::AbandonFailover { .. } => self.resume(action),
            Action::Unfence(_) => {
                self.rec.fenced = None;
                self.save();
            }
            Action::Route(to) => {
                self.route(to.as_deref().and_then(|m| self.target_of(m)));
                if let Err(e) = self.publish(to.as_deref()) {
                    tracing::warn!("{}: {e}", self.source);
                }
            }
            Action::RecordPrimary(p) => {
                self.rec.primary = Some(p.clone());
                self.save();
            }
            Action::Switchover => {
                if let Some(Pending { req, reply }) = s.pending.take() {
                    if self.rec.scheduled.take().is_some() {
                        self.save();
                    }
                    let outcome = self.switchover_recorded(s.decider, s.st, &req);
                    // An agent that forwarded the request waits for this.
                    if let Some(k) = &self.coord
                        && let Ok(bytes) = serde_json::to_vec(&outcome)
                        && let Err(e) = k.fence.put(&k.scope, &format!("outcome-{}", req.id), &bytes)
                    {
                        tracing::warn!("{}: cannot report the switchover's outcome: {e}", self.source);
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Reply::Outcome { event: outcome });
                    }
                }
            }
            Action::Rejoin { old, new } => {
                self.rejoin(old, new)?;
            }
            Action::RewindFollower { member, primary } => {
                if let Some(k) = &self.coord
                    && !k.is_local(self.c, member)
                {
                    return Err(format!(
                        "{member} does not stream from {primary} after being pointed at it; it must be rewound on its host: \
                         stop it and run pg_rewind --source-server pointing at {primary}, or rebuild it with pg_basebackup"
                    ));
                }
                self.admit(&format!("rewinding {member}"))?;
                let took = failover::rejoin(self.c, member, primary, &self.state.root().join("logs"))
                    .map_err(|e| format!("{member}: {e:#}"))?;
                self.record(
                    self.event(
                        EventKind::Rejoined,
                        format!(
                            "{member} did not stream from {primary} after being pointed at it (its history went past \
                             {primary}'s); it was rewound and follows {primary} ({:.1} s)",
                            took.as_secs_f64()
                        ),
                    )
                    .with(json!({ "member": member, "primary": primary, "seconds": took.as_secs_f64(), "follower": true })),
                );
            }
            Action::RepairFollower { member, primary } => match failover::follow(self.c, member, primary) {
                Ok(()) => self.record(self.event(
                    EventKind::FollowerRepointed,
                    format!("{member} did not stream from {primary} as `{member}`; it was pointed at it"),
                )),
                Err(e) => self.record(
                    self.event(EventKind::FollowFailed, format!("{member} could not be pointed at {primary}: {e:#}")),
                ),
            },
            Action::SyncRound { primary } => {
                let before = self.rec.clone();
                let changes = ha::sync_round(self.c, s.st, primary, &mut self.rec, self.state, self.cluster)
                    .map_err(|e| format!("{e:#}"))?;
                if self.coord.is_some() && self.rec != before {
                    self.save();
                }
                for ch in changes {
                    self.record(self.event(EventKind::SynchronousSet, ch));
                }
            }
            Action::ClearSyncSet { primary } => {
                if ha::set_sync_names(self.c, primary, "").is_ok() {
                    self.rec.sync = None;
                    self.rec.shrink = None;
                    self.save();
                }
            }
            Action::Failover { old, new, lost_bytes, detected } => {
                let detected = DateTime::from_timestamp_millis(*detected).unwrap_or_else(Utc::now);
                self.failover(s.decider, s.st, (old.clone(), new.clone(), *lost_bytes), detected)?;
            }
            Action::RouteReadOnly(to) => {
                let member = match to {
                    ReadOnly::Standby(m) => Some(m.clone()),
                    ReadOnly::Primary => self.router.target().and(s.decider.primary().map(str::to_string)),
                };
                s.ro_router.set(member.and_then(|m| self.target_of(&m)));
            }
            Action::RaiseAlarm(a) => self.record(self.event(alarm_kind(a.key.kind), a.message.clone())),
            Action::ClearAlarm(k) => tracing::info!("{}: {:?} on {:?} is over", self.source, k.kind, k.subject),
        }
        Ok(())
    }

    /// After a restart: finishes a failover that got as far as the
    /// promotion, or abandons one that did not (the decision core decides
    /// afresh).
    fn resume(&mut self, action: &Action) {
        let Some(f) = self.rec.failover.take() else { return };
        let details = json!({ "old_primary": f.old, "new_primary": f.new, "started": f.started });
        if let Action::FinishFailover { old, new } = action {
            self.rec.primary = Some(new.clone());
            self.rec.fenced = Some(old.clone());
            if self.c.synchronous {
                self.rec.sync = Some(Default::default());
                self.rec.shrink = None;
            }
            let msg = format!("cirkel stopped after promoting {new}; the failover from {old} is finished now");
            self.record(self.event(EventKind::FailoverResumed, msg).with(details));
        } else {
            let msg = format!(
                "cirkel stopped during a failover from {} to {} before the promotion; nothing was promoted, and it decides afresh",
                f.old, f.new
            );
            self.record(self.event(EventKind::FailoverAbandoned, msg).with(details));
        }
        self.save();
    }
}

fn event_kind(k: round::EventKind) -> EventKind {
    match k {
        round::EventKind::MemberDown => EventKind::MemberDown,
        round::EventKind::MemberUp => EventKind::MemberUp,
        round::EventKind::PrimaryChanged => EventKind::PrimaryChanged,
    }
}

fn alarm_kind(k: round::AlarmKind) -> EventKind {
    match k {
        round::AlarmKind::FailoverNeeded => EventKind::FailoverNeeded,
        round::AlarmKind::FailoverFailed => EventKind::FailoverFailed,
        round::AlarmKind::PausedPrimaryDown => EventKind::PausedPrimaryDown,
        round::AlarmKind::NoFailoverCandidate => EventKind::NoFailoverCandidate,
        round::AlarmKind::ClusterMisconfigured => EventKind::ClusterMisconfigured,
        round::AlarmKind::RejoinFailed => EventKind::RejoinFailed,
        round::AlarmKind::SynchronousSetFailed => EventKind::SynchronousSetFailed,
    }
}
