//! The watcher: follows a group's Sentinels, tracks the master's offset,
//! enforces the loss limit, records every failover with its timeline and
//! loss, checks member health, and turns a returning old master into a
//! replica at once.
//!
//! The loss limit works through Sentinel, not around it. When the master
//! stops answering, the replicas' offsets are final: if the best of them is
//! further behind the master's last seen offset than the limit, every
//! Sentinel's `down-after-milliseconds` is raised to an hour, so none flags
//! the master down and no lossy failover starts. When the master answers
//! again (or an operator forces a failover), the setting is put back.
//!
//! One watcher acts on a group per state directory: it runs under the
//! group's lease (`lock-redis-NAME`), checked at every poll. Without it the
//! watcher takes no action (no hold, no release, no repointing) and reads
//! no events, and it tries each health round to take the lease again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cirkel_config::{CoordinationConfig, OnLag};
use cirkel_failover::loss::{self, Verdict};
use cirkel_failover::{Leadership, Lease};
use cirkel_state::election::{LocalLock, acquire_or_stand_by};
use cirkel_state::{Event, EventKind, Severity, StateDir};
use serde_json::json;

use crate::events::{SentinelEvent, follow};
use crate::group::Group;
use crate::resp::Addr;
use cirkel_failover::HealthCounter;

/// How often the master's offset is read.
pub const OFFSET_POLL: Duration = Duration::from_millis(100);

/// What the watcher has seen of the current failover.
#[derive(Debug, Default)]
struct Timeline {
    sdown: Option<DateTime<Utc>>,
    odown: Option<DateTime<Utc>>,
    selected: Option<(DateTime<Utc>, Addr)>,
    promoted: Option<DateTime<Utc>>,
}

struct Watch<'a> {
    group: &'a Group,
    state: &'a StateDir,
    master: Option<Addr>,
    last_ok: Option<(DateTime<Utc>, u64)>,
    outage_evaluated: bool,
    held: bool,
    timeline: Timeline,
    health: HashMap<Addr, HealthCounter>,
}

/// Watches `group` until `stop` is set.
/// Alone, one watcher per state directory acts; with `[coordination]`, one
/// per etcd prefix: the group's Sentinel watcher and loss-limit hold run on
/// whichever agent holds the group's lease, and move with it.
pub fn watch(
    group: &Group,
    state: &StateDir,
    coordination: Option<&CoordinationConfig>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let scope = format!("redis-{}", group.name);
    let mut election: Box<dyn Leadership> = match coordination {
        Some(cc) => Box::new(
            cirkel_election::EtcdElection::connect(cc, &scope)
                .map_err(|e| anyhow::anyhow!("{}: {e}", group.source()))?,
        ),
        None => Box::new(LocalLock::new(state, &scope)),
    };
    let interval = group.health.interval.max(Duration::from_millis(200));
    let Some(first) = acquire_or_stand_by(&mut *election, state, &group.source(), interval, &stop, || {})? else {
        return Ok(());
    };
    let mut lease = Some(first);
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for s in &group.sentinels {
        let (s, tx, stop) = (s.clone(), tx.clone(), stop.clone());
        threads.push(std::thread::spawn(move || follow(s, tx, stop)));
    }
    drop(tx);
    let status = group.status();
    let mut w = Watch {
        group,
        state,
        master: status.master.clone(),
        last_ok: None,
        outage_evaluated: false,
        held: status.held,
        timeline: Timeline::default(),
        health: HashMap::new(),
    };
    w.record(Event::new(
        &group.source(),
        EventKind::WatchStarted,
        format!(
            "watching, master {}",
            status
                .master
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "unknown (the sentinels do not agree)".into())
        ),
    ));
    let mut next_health = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if !w.hold(&mut election, &mut lease, &mut next_health) {
            while rx.try_recv().is_ok() {}
            std::thread::sleep(OFFSET_POLL);
            continue;
        }
        while let Ok(ev) = rx.try_recv() {
            w.on_event(ev);
        }
        w.poll_master();
        if Instant::now() >= next_health {
            next_health = Instant::now() + group.health.interval;
            w.check_health();
        }
        std::thread::sleep(OFFSET_POLL);
    }
    for t in threads {
        let _ = t.join();
    }
    if let Some(l) = lease.take() {
        election.release(l);
    }
    Ok(())
}

impl Watch<'_> {
    /// Checks the lease before a poll: whether this watcher may act now.
    /// Once lost it tries again at each health round, under a new epoch.
    fn hold(&mut self, election: &mut impl Leadership, lease: &mut Option<Lease>, next: &mut Instant) -> bool {
        if let Some(l) = lease.as_ref() {
            let why = match election.still_held(l) {
                Ok(true) => return true,
                Ok(false) => "it was lost".to_string(),
                Err(e) => format!("it cannot be checked: {e}"),
            };
            let msg =
                format!("the lease (epoch {}) is no longer held: {why}; no action until it is taken again", l.epoch);
            self.record(
                Event::new(&self.group.source(), EventKind::LeadershipLost, msg).with(json!({ "epoch": l.epoch })),
            );
            *lease = None;
        }
        if Instant::now() < *next {
            return false;
        }
        *next = Instant::now() + self.group.health.interval;
        match election.acquire() {
            Ok(Some(l)) => {
                let msg = format!("this cirkel serve acts on the group again (lease epoch {})", l.epoch);
                self.record(
                    Event::new(&self.group.source(), EventKind::LeadershipAcquired, msg)
                        .with(json!({ "epoch": l.epoch })),
                );
                // What happened meanwhile was another watcher's to act on.
                self.master = None;
                self.last_ok = None;
                self.outage_evaluated = false;
                *lease = Some(l);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("{}: cannot take the lease: {e}", self.group.source());
                false
            }
        }
    }

    fn record(&self, event: Event) {
        match event.severity {
            Severity::Low => tracing::info!("{}: {}", event.source, event.message),
            _ => tracing::warn!("{}: {}", event.source, event.message),
        }
        if let Err(e) = self.state.record(&event) {
            tracing::error!("cannot record an event in {}: {e:#}", self.state.root().display());
        }
    }

    fn poll_master(&mut self) {
        let Some(master) = self.master.clone().or_else(|| self.group.current_master()) else {
            return;
        };
        self.master = Some(master.clone());
        let polled = self.group.member(&master).and_then(|mut c| c.info("replication"));
        match polled {
            Ok(info) if info.get("role").map(String::as_str) == Some("master") => {
                let offset = info.get("master_repl_offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                self.last_ok = Some((Utc::now(), offset));
                self.outage_evaluated = false;
                if self.held {
                    self.release("the master answers again");
                }
            }
            _ => {
                if !self.outage_evaluated {
                    self.outage_evaluated = true;
                    self.evaluate_outage(&master);
                }
            }
        }
    }

    /// The master has stopped answering: would a failover now stay within
    /// the loss limit?
    fn evaluate_outage(&mut self, master: &Addr) {
        let Some((_, master_offset)) = self.last_ok else {
            return;
        };
        let replicas: Vec<_> = self
            .group
            .members
            .iter()
            .filter(|a| *a != master)
            .map(|a| self.group.probe_member(a))
            .filter(|m| m.reachable && m.role.as_deref() == Some("slave") && m.priority != Some(0))
            .collect();
        let offsets: Vec<(Addr, Option<u64>)> = replicas.iter().map(|m| (m.addr.clone(), m.offset)).collect();
        let on_lag = match self.group.on_lag {
            OnLag::Refuse => loss::OnLag::Refuse,
            OnLag::Warn => loss::OnLag::Warn,
        };
        let (best, hold) =
            match loss::judge_outage(master_offset, &offsets, self.group.max_lag_bytes, self.held, on_lag) {
                Verdict::Within(_) | Verdict::AlreadyHeld => return,
                Verdict::HoldBack(best) => (best, true),
                Verdict::Warn(best) => (best, false),
            };
        let details = json!({
            "master": master,
            "master_last_offset": master_offset,
            "best_replica": best.as_ref().map(|b| &b.replica),
            "best_replica_lag_bytes": best.as_ref().map(|b| b.lag_bytes),
            "max_lag_bytes": self.group.max_lag_bytes,
        });
        let what = match &best {
            Some(b) => format!("the best replica {} is {} bytes behind", b.replica, b.lag_bytes),
            None => "no replica answers".to_string(),
        };
        if hold {
            let failed = self.group.hold();
            self.held = true;
            self.record(
                Event::new(
                    &self.group.source(),
                    EventKind::FailoverHeld,
                    format!(
                        "master {master} unreachable and {what} (limit {} bytes): failover held back; restart the master, or run `cirkel redis failover --group {} --allow-data-loss`",
                        self.group.max_lag_bytes, self.group.name
                    ),
                )
                .with(json!({ "outage": details, "sentinels_not_told": failed })),
            );
        } else {
            self.record(
                Event::new(
                    &self.group.source(),
                    EventKind::LossLimitWarning,
                    format!("master {master} unreachable and {what} (limit {} bytes)", self.group.max_lag_bytes),
                )
                .with(details),
            );
        }
    }

    fn release(&mut self, why: &str) {
        let failed = self.group.release();
        self.held = !failed.is_empty();
        self.record(
            Event::new(&self.group.source(), EventKind::FailoverHoldReleased, format!("failover hold released: {why}"))
                .with(json!({ "sentinels_not_told": failed })),
        );
    }

    fn on_event(&mut self, ev: SentinelEvent) {
        if !ev.concerns(&self.group.master_name) {
            return;
        }
        let t = &mut self.timeline;
        match ev.channel.as_str() {
            "+sdown" if ev.is_master() => {
                t.sdown.get_or_insert(ev.time);
            }
            "+odown" => {
                t.odown.get_or_insert(ev.time);
            }
            "+selected-slave" => {
                if t.selected.is_none()
                    && let Some(a) = ev.instance()
                {
                    t.selected = Some((ev.time, a));
                }
            }
            "+promoted-slave" => {
                t.promoted.get_or_insert(ev.time);
            }
            "-failover-abort-no-good-slave" => self.record(Event::new(
                &self.group.source(),
                EventKind::FailoverAborted,
                format!("sentinel {}: no replica qualifies for promotion", ev.sentinel),
            )),
            "+switch-master" => {
                if let Some((old, new)) = ev.switch()
                    && self.master.as_ref() != Some(&new)
                {
                    self.on_switch(ev.time, old, new);
                }
            }
            _ => {}
        }
    }

    fn on_switch(&mut self, at: DateTime<Utc>, old: Addr, new: Addr) {
        if let Some(planned) = planned_switchover(self.state, self.group, &old, at) {
            // The master was paused and the replica caught up before
            // Sentinel switched: nothing was lost, whatever the offsets
            // say (the old master keeps sending pings to its replicas).
            self.timeline = Default::default();
            self.record(
                Event::new(
                    &self.group.source(),
                    EventKind::MasterChanged,
                    format!("master {old} → {new} by a planned switchover: no acknowledged write lost"),
                )
                .with(json!({ "old_master": old, "new_master": new, "planned": planned })),
            );
            self.master = Some(new);
            self.last_ok = None;
            self.outage_evaluated = false;
            if self.held {
                self.release("a planned switchover changed the master");
            }
            return;
        }
        let t = std::mem::take(&mut self.timeline);
        let promoted = self.group.probe_member(&new);
        let last = self.last_ok;
        let lost = match (last, promoted.promoted_at_offset) {
            (Some((_, m)), Some(p)) => Some(m.saturating_sub(p)),
            _ => None,
        };
        let within = lost.map(|l| l <= self.group.max_lag_bytes);
        let secs = |x: Option<DateTime<Utc>>| {
            x.zip(last.map(|(t, _)| t)).map(|(a, b)| (a - b).num_milliseconds() as f64 / 1000.0)
        };
        let details = json!({
            "old_master": old,
            "new_master": new,
            "last_seen_ok": last.map(|(t, _)| t),
            "old_master_last_offset": last.map(|(_, o)| o),
            "promoted_at_offset": promoted.promoted_at_offset,
            "lost_bytes_at_least": lost,
            "max_lag_bytes": self.group.max_lag_bytes,
            "within_limit": within,
            "sdown_after_s": secs(t.sdown),
            "odown_after_s": secs(t.odown),
            "selected_after_s": secs(t.selected.as_ref().map(|s| s.0)),
            "promoted_after_s": secs(t.promoted),
            "switched_after_s": secs(Some(at)),
            "offset_poll_ms": OFFSET_POLL.as_millis() as u64,
        });
        let severity = if within == Some(false) { Severity::Critical } else { Severity::High };
        let loss = match lost {
            Some(l) => format!("{l} bytes of replication stream lost at least"),
            None => "loss unknown".into(),
        };
        self.record(
            Event::new(&self.group.source(), EventKind::Failover, format!("failover {old} → {new}: {loss}"))
                .with_severity(severity)
                .with(details),
        );
        self.master = Some(new);
        self.last_ok = None;
        self.outage_evaluated = false;
        if self.held {
            self.release("the sentinels failed over");
        }
    }

    fn check_health(&mut self) {
        let h = &self.group.health;
        let states: Vec<_> = self.group.members.iter().map(|a| self.group.probe_member(a)).collect();
        for m in &states {
            let changed = self.health.entry(m.addr.clone()).or_default().observe(
                m.reachable,
                h.healthy_threshold,
                h.unhealthy_threshold,
            );
            match changed {
                Some(false) => self.record(
                    Event::new(
                        &self.group.source(),
                        EventKind::MemberDown,
                        format!(
                            "member {} failed {} checks: {}",
                            m.addr,
                            h.unhealthy_threshold,
                            m.error.as_deref().unwrap_or("")
                        ),
                    )
                    .with(json!({ "member": m.addr })),
                ),
                Some(true) => self.record(
                    Event::new(&self.group.source(), EventKind::MemberUp, format!("member {} is healthy", m.addr))
                        .with(json!({ "member": m.addr })),
                ),
                None => {}
            }
        }
        // A returning old master: make it a replica now rather than when
        // Sentinel gets round to it, but only with the Sentinels' majority.
        let Some(agreed) = self.group.current_master() else {
            return;
        };
        self.master = Some(agreed.clone());
        for m in &states {
            if m.reachable && m.addr != agreed && self.group.demote_stray_master(m, &agreed) {
                self.record(
                    Event::new(
                        &self.group.source(),
                        EventKind::MemberRepointed,
                        format!(
                            "{} ran as {} while the sentinels name {agreed} as master; made it a replica of {agreed}",
                            m.addr,
                            m.role.as_deref().unwrap_or("?").replace("slave", "a replica of another node")
                        ),
                    )
                    .with(json!({ "member": m.addr, "master": agreed })),
                );
            }
        }
    }
}

/// The file `cirkel redis switchover` writes before it starts, so that the
/// watcher records the master change it sees as planned, not as a failover.
pub fn switchover_marker(group: &str) -> String {
    format!("redis-switchover-{group}.json")
}

/// A switchover of `group` away from `old` requested shortly before `at`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PlannedSwitchover {
    pub old: Addr,
    pub requested: DateTime<Utc>,
}

fn planned_switchover(state: &StateDir, group: &Group, old: &Addr, at: DateTime<Utc>) -> Option<PlannedSwitchover> {
    let p: PlannedSwitchover = state.load_json(&switchover_marker(&group.name)).ok()??;
    let window = chrono::Duration::from_std(group.failover_timeout).unwrap_or_default() + chrono::Duration::minutes(1);
    (p.old == *old && p.requested <= at && at - p.requested <= window).then_some(p)
}
