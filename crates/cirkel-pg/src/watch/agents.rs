//! The watcher's side of agents on several hosts (`[coordination]`): what
//! a leader does when it takes the lease over, the commands a follower
//! hands to the leader through etcd, and what every agent keeps between
//! rounds about the others (heartbeats, keepers heard from, members gone,
//! the route it follows).

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_failover::round::{self, RoundState};
use cirkel_state::control::Reply;
use cirkel_state::{Event, EventKind};
use serde_json::json;

use super::execute::Watch;
use super::{Command, Pending};
use crate::coord::{AGENTS, Coord, Heartbeat};
use crate::ha::SwitchoverRequest;
use crate::members::ClusterStatus;

/// The lease was just taken from another agent: the record is read from
/// etcd, and the round decides afresh from it, as after a restart.
pub(super) fn take_over(
    w: &mut Watch,
    decider: &mut cirkel_failover::Decider,
    rounds: &mut RoundState,
    pending: &mut Option<Pending>,
) -> anyhow::Result<()> {
    let Some(k) = &w.coord else { return Ok(()) };
    w.rec = k.load_record().map_err(|e| anyhow::anyhow!("cannot read the record: {e}"))?.unwrap_or_default();
    *decider = crate::members::decider(w.c)?;
    rounds.take_over();
    w.published = None;
    *pending = w.rec.scheduled.clone().map(|req| Pending { req, reply: None });
    Ok(())
}

/// Commands to an agent that does not lead are handed to the leader
/// through etcd (`request-switchover`, `request-pause`); a switchover's
/// caller is answered with the outcome the leader writes back.
pub(super) fn forward_commands(w: &Watch, commands: &Receiver<Command>, holder: Option<String>) {
    let Some(k) = &w.coord else { return };
    let leader = holder.unwrap_or_else(|| "the next leader".into());
    while let Ok(cmd) = commands.try_recv() {
        match cmd {
            Command::Pause(paused, reply) => {
                let body = json!({ "paused": paused }).to_string();
                let _ = reply.send(match k.quick.put(&k.scope, "request-pause", body.as_bytes()) {
                    Ok(()) => Reply::Done {
                        message: format!(
                            "asked {leader}, which leads {}, to {} it",
                            w.cluster,
                            if paused { "pause" } else { "resume" }
                        ),
                    },
                    Err(e) => Reply::Error { message: format!("cannot reach the leader through etcd: {e}") },
                });
            }
            Command::Switchover(req, reply) => {
                let body = serde_json::to_vec(&req).unwrap_or_default();
                if let Err(e) = k.quick.put(&k.scope, "request-switchover", &body) {
                    let _ = reply.send(Reply::Error { message: format!("cannot reach the leader through etcd: {e}") });
                    continue;
                }
                if let Some(at) = req.at.filter(|t| *t > Utc::now()) {
                    let _ = reply.send(Reply::Scheduled { at });
                    continue;
                }
                // The outcome comes back through etcd; waited for aside.
                let (k, id) = (k.clone(), req.id.clone());
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(180);
                    let name = format!("outcome-{id}");
                    while Instant::now() < until {
                        if let Ok(Some(bytes)) = k.quick.get(&k.scope, &name)
                            && let Ok(event) = serde_json::from_slice::<Event>(&bytes)
                        {
                            let _ = k.fence.delete(&k.scope, &name);
                            let _ = reply.send(Reply::Outcome { event });
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    let _ = reply.send(Reply::Error {
                        message: "the leader did not report the switchover's outcome within 180 s; see `cirkel status`"
                            .into(),
                    });
                });
            }
        }
    }
}

/// Requests other agents handed over through etcd, taken by the leader:
/// a pause or resume is applied, a switchover waits like one asked here.
pub(super) fn take_requests(w: &mut Watch, shared: &mut Shared, pending: &mut Option<Pending>) {
    let Some(k) = w.coord.clone() else { return };
    if let Some(body) = shared.requests.remove("request-pause") {
        let _ = k.fence.delete(&k.scope, "request-pause");
        if let Some(paused) =
            serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["paused"].as_bool())
        {
            let _ = w.set_paused(paused);
        }
    }
    if let Some(body) = shared.requests.remove("request-switchover") {
        let _ = k.fence.delete(&k.scope, "request-switchover");
        if let Ok(req) = serde_json::from_slice::<SwitchoverRequest>(&body) {
            if req.at.is_some_and(|t| t > Utc::now()) {
                w.rec.scheduled = Some(req.clone());
                w.save();
            }
            *pending = Some(Pending { req, reply: None });
        }
    }
}

/// What an agent keeps between rounds about the others: when it last
/// heard from each member's keeper, which members are reported gone, and
/// how long it has had no word from etcd.
pub(super) struct Shared {
    started: chrono::DateTime<Utc>,
    pub(super) gone: HashSet<String>,
    /// The last successful read of the route.
    pub(super) route_read: Option<Instant>,
    /// The endpoint was cut for want of a route; said once.
    cut: bool,
    /// etcd did not answer the last try to take the lease: the next one.
    pub(super) retry_at: Option<Instant>,
    /// The primary the last route read named.
    routed: Option<String>,
    /// Requests from agents that do not lead, as last read.
    requests: HashMap<String, Vec<u8>>,
    /// When each member's keeper was last heard from (its report changed).
    pub(super) keepers: HashMap<String, (Vec<u8>, Instant)>,
    /// A failover was refused for want of etcd; said once per outage.
    refused: bool,
}

impl Shared {
    pub(super) fn new() -> Shared {
        Shared {
            started: Utc::now(),
            gone: HashSet::new(),
            route_read: None,
            cut: false,
            retry_at: None,
            routed: None,
            refused: false,
            keepers: HashMap::new(),
            requests: HashMap::new(),
        }
    }

    /// Writes this agent's heartbeat (for `cirkel status`) and reads the
    /// cluster's reports (keepers, members gone): a write and a read a round.
    pub(super) fn heartbeat(&mut self, k: &Coord, _st: &ClusterStatus) {
        let beat = Heartbeat {
            node: k.node.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started: self.started,
            seen: Utc::now(),
        };
        let bytes = serde_json::to_vec(&beat).unwrap_or_default();
        if let Err(e) = k.quick.put(AGENTS, &format!("agent-{}", k.node), &bytes) {
            // etcd does not answer: the reads would wait as long again.
            tracing::debug!("heartbeat: {e}");
            return;
        }
        if let Ok(records) = k.quick.list(&k.scope) {
            self.gone = records.iter().filter_map(|(name, _)| name.strip_prefix("gone-").map(str::to_string)).collect();
            self.requests = records.iter().filter(|(name, _)| name.starts_with("request-")).cloned().collect();
            for (name, value) in &records {
                if let Some(member) = name.strip_prefix("keeper-") {
                    let changed = self.keepers.get(member).is_none_or(|(v, _)| v != value);
                    if changed {
                        self.keepers.insert(member.to_string(), (value.clone(), Instant::now()));
                    }
                }
            }
        }
    }

    /// An agent that does not lead routes its endpoint where the leader's
    /// route says. Without word from etcd for `fence_after` it keeps the
    /// route only while it sees every member (the primary among them, as a
    /// primary); otherwise it routes nowhere, since the majority may be
    /// failing over. Returns the member routed to.
    pub(super) fn follow(&mut self, w: &Watch, st: &ClusterStatus, actions: &[round::Action]) -> Option<String> {
        let k = w.coord.as_ref()?;
        match k.route() {
            Ok(route) => {
                self.route_read = Some(Instant::now());
                self.cut = false;
                self.refused = false;
                let route = route?;
                self.routed = route.primary.clone();
                let target = route.primary.as_deref().and_then(|m| w.target_of(m));
                if let Err(stale) = w.router.switch(route.epoch, target) {
                    tracing::debug!("{}: route refused: {stale}", w.source);
                }
                route.primary
            }
            Err(e) => {
                let silent = self.route_read.is_none_or(|t| t.elapsed() >= k.fence_after(w.c));
                let routed = w.router.target();
                // The routed primary counted down while nobody can lead.
                for a in actions {
                    if let round::Action::Record(ev) = a
                        && ev.kind == round::EventKind::MemberDown
                        && let Some((_, m)) = ev.details.iter().find(|(k, _)| *k == "member")
                        && self.routed.as_deref() == Some(m.as_str())
                        && !self.refused
                    {
                        self.refused = true;
                        w.record(w.event(
                            EventKind::FailoverRefused,
                            format!("primary {m} is down, but no agent can lead while etcd cannot be reached ({e}): no failover until it can"),
                        ).with(json!({ "member": m })));
                    }
                }
                let primary = st.members.iter().find(|m| {
                    routed.as_ref().is_some_and(|t| w.target_of(&m.name).as_ref() == Some(t))
                        && m.role.as_deref() == Some("primary")
                });
                let everyone = st.members.iter().all(|m| m.reachable);
                if silent && !(everyone && primary.is_some()) {
                    w.router.set(None);
                    if !self.cut {
                        self.cut = true;
                        w.record(w.event(
                            EventKind::EndpointCut,
                            format!(
                                "no route from etcd ({e}) and not every member answers: the endpoint routes nowhere"
                            ),
                        ));
                    }
                    return None;
                }
                primary.map(|m| m.name.clone())
            }
        }
    }
}
