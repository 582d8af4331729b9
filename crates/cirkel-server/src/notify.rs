//! Notifications inside the daemon: events and alarm transitions become
//! alerts (`cirkel-notify`), routed by severity to the `[notify.NAME]`
//! receivers through the durable outbox, escalated while nobody
//! acknowledges them, and gathered into incidents.
//!
//! Which events notify: those of severity medium or above, except the
//! alarm and check events themselves (an alarm's ALARM/OK transitions
//! notify instead, with a resolution message when it clears). A paused
//! cluster is silenced until it is resumed (`pause_silence`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cirkel_config::Config;
use cirkel_notify::outbox::{Counters, WorkerOptions};
use cirkel_notify::route::Matcher;
use cirkel_notify::{AlertInput, Notifier, Receivers, Settings, Store};
use cirkel_state::{Event, EventKind, Severity, StateDir};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, labels};

/// How often unacknowledged alerts are looked at for escalation.
const ESCALATE_EVERY: Duration = Duration::from_secs(5);

/// The notification parts of a daemon, when `[notify.NAME]` is configured.
pub struct Notify {
    pub notifier: Arc<Notifier>,
    pub counters: Arc<Counters>,
    /// Alerts are made and escalated only while this daemon leads.
    pub leading: crate::lead::Leading,
    pub state: StateDir,
}

impl Notify {
    pub fn from_config(
        cfg: &Config,
        state: &StateDir,
        leading: crate::lead::Leading,
    ) -> anyhow::Result<Option<Notify>> {
        if cfg.notifications.receivers.is_empty() {
            return Ok(None);
        }
        let settings = Settings::from_config(&cfg.notifications).map_err(|e| anyhow::anyhow!("notifications: {e}"))?;
        state.ensure()?;
        let store = Arc::new(Store::open_in(state.root()).map_err(|e| anyhow::anyhow!("open the alert store: {e}"))?);
        let receivers = Arc::new(Receivers::new(settings.receivers.clone()));
        let counters = Arc::new(Counters::new(settings.receivers.iter().map(|r| r.name.as_str())));
        let mut notifier = Notifier::new(store, receivers);
        settings.apply(&mut notifier);
        Ok(Some(Notify { notifier: Arc::new(notifier), counters, leading, state: state.clone() }))
    }

    /// Delivers the outbox until `cancel`.
    pub async fn deliver(&self, cancel: CancellationToken) -> anyhow::Result<()> {
        let n = &self.notifier;
        cirkel_notify::outbox::run(
            n.store.clone(),
            n.receivers.clone(),
            self.counters.clone(),
            WorkerOptions::default(),
            cancel,
        )
        .await;
        Ok(())
    }

    /// Whether `e`, which began before it was recorded (a failover's
    /// `detected`, `last_seen_ok`), is the doing of a drill that another
    /// process ended a moment before: the log's follower may not have
    /// brought that drill's end yet, so what it holds is taken first, then
    /// the log itself is read.
    fn ended_just_before(
        &self,
        e: &Event,
        log: &mut broadcast::Receiver<Event>,
        drills: &mut crate::guard::DrillWindows,
    ) -> bool {
        if !["detected", "last_seen_ok"].iter().any(|k| e.details.get(*k).is_some()) {
            return false;
        }
        while let Ok(l) = log.try_recv() {
            drills.observe(&l);
        }
        drills.caused(e) || crate::guard::DrillWindows::recent(&self.state).caused(e)
    }

    /// Turns events from the daemon's channel into alerts until `cancel`.
    /// `log` carries every event the log receives, from any process: the
    /// ends of drills run as other processes are learnt from it.
    pub async fn follow(
        &self,
        mut rx: broadcast::Receiver<Event>,
        mut log: broadcast::Receiver<Event>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut drills = crate::guard::DrillWindows::default();
        let mut log_open = true;
        loop {
            let e = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                e = log.recv(), if log_open => {
                    match e {
                        Ok(e) => drills.observe(&e),
                        Err(broadcast::error::RecvError::Closed) => log_open = false,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                    }
                    continue;
                }
                e = rx.recv() => match e {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("notifications missed {n} events (see the event log)");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
            };
            // Every agent sees the cluster's events; the leader tells
            // people, except what only this host saw happen.
            let own = matches!(
                e.kind,
                EventKind::SelfFenced | EventKind::PostmasterGone | EventKind::MemberStarted | EventKind::EndpointCut
            );
            if !self.leading.now() && !own {
                continue;
            }
            // What a drill does to its own source pages nobody, even when it
            // is recorded after the drill ended; its outcome does, when it
            // failed or was aborted.
            if !matches!(e.kind, EventKind::Drill | EventKind::DrillAborted | EventKind::DrillSkipped)
                && (crate::guard::drilling(&self.state).as_deref() == Some(crate::guard::subject(&e.source))
                    || drills.caused(&e)
                    || self.ended_just_before(&e, &mut log, &mut drills))
            {
                tracing::info!("{}: {} during a drill of it; not notified", e.source, e.kind);
                continue;
            }
            if matches!(e.kind, EventKind::Paused | EventKind::Resumed) {
                let store = self.notifier.store.clone();
                let (event, resumed) = (e.clone(), e.kind == EventKind::Resumed);
                let done = tokio::task::spawn_blocking(move || pause_silence(&store, &event, resumed)).await?;
                if let Err(err) = done {
                    tracing::error!("cannot silence or unsilence the paused {}: {err}", e.source);
                }
                continue;
            }
            let Some(input) = alert_of(&e) else { continue };
            let notifier = self.notifier.clone();
            let handled = tokio::task::spawn_blocking(move || notifier.handle(&input)).await?;
            if let Err(err) = handled {
                tracing::error!("cannot queue the notification of {}: {err}", e.kind);
            }
        }
    }

    /// Escalates unacknowledged alerts until `cancel`.
    pub async fn escalate(&self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(ESCALATE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let notifier = self.notifier.clone();
            match tokio::task::spawn_blocking(move || notifier.escalate(Utc::now())).await? {
                Ok(steps) => {
                    for s in steps {
                        tracing::warn!("escalated: {s:?}");
                    }
                }
                Err(e) => tracing::error!("escalation: {e}"),
            }
        }
    }

    /// The receivers' delivery counts as metrics.
    pub fn export(&self, m: &Metrics) {
        for (receiver, delivered, failed, expired) in self.counters.snapshot() {
            let l = labels(&[("receiver", &receiver)]);
            m.set("cirkel_notifications_delivered_total", l.clone(), delivered as f64);
            m.set("cirkel_notifications_failed_total", l.clone(), failed as f64);
            m.set("cirkel_notifications_expired_total", l, expired as f64);
        }
    }
}

/// How long a pause silences at most: a pause forgotten for a day should
/// not keep the pager quiet for ever.
const PAUSE_SILENCE: chrono::Duration = chrono::Duration::hours(24);

/// A paused cluster's members go down and come back on purpose: while it
/// is paused its alerts are recorded but not sent, except the one that
/// says its primary is down with nobody to act. Resuming ends the silence.
fn pause_silence(store: &cirkel_notify::Store, e: &Event, resumed: bool) -> cirkel_notify::Result<()> {
    let reason = format!("paused: {}", e.source);
    let now = Utc::now();
    if resumed {
        for s in store.silences(now)?.into_iter().filter(|s| s.reason == reason) {
            store.expire_silence(s.id, now)?;
        }
        return Ok(());
    }
    let matchers = [
        Matcher { label: "source".into(), value: e.source.clone(), negate: false },
        Matcher { label: "alertname".into(), value: EventKind::PausedPrimaryDown.to_string(), negate: true },
    ];
    store.add_silence(&matchers, now + PAUSE_SILENCE, &reason, "cirkel", now)?;
    Ok(())
}

/// The alert an event makes, if it makes one. An event that reports a
/// happening rather than a state (a failover, a failed job) is news each
/// time: its alert is its own, never folded into the last one of its kind
/// by the re-notify interval that keeps a flapping state quiet.
pub fn alert_of(e: &Event) -> Option<AlertInput> {
    match e.kind {
        EventKind::AlarmRaised | EventKind::AlarmCleared => AlertInput::from_transition(&transition_of(e)?),
        EventKind::AlarmInsufficientData | EventKind::CheckDown | EventKind::CheckUp => None,
        _ if e.severity >= Severity::Medium => {
            let mut a = AlertInput::from_event(e);
            if happening(&e.kind) {
                a.labels.insert("occurred".into(), e.time.to_rfc3339());
                a.key = cirkel_notify::alert_key(&a.name, &a.labels);
            }
            Some(a)
        }
        _ => None,
    }
}

fn happening(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Failover
            | EventKind::ForcedFailover
            | EventKind::FailoverFailed
            | EventKind::SwitchoverFailed
            | EventKind::RejoinFailed
            | EventKind::JobFailed
            | EventKind::JobMissed
            | EventKind::VerifyFailed
            | EventKind::WorkerFailed
    )
}

/// The alarm transition an `alarm-*` event records.
fn transition_of(e: &Event) -> Option<cirkel_alarm::Transition> {
    let d = &e.details;
    let text = |k: &str| d.get(k).and_then(|v| v.as_str());
    Some(cirkel_alarm::Transition {
        alarm: text("alarm")?.to_string(),
        labels: serde_json::from_value(d.get("labels")?.clone()).ok()?,
        severity: text("severity")?.parse().ok()?,
        from: text("from")?.parse().ok()?,
        to: text("to")?.parse().ok()?,
        reason: cirkel_alarm::Reason {
            text: text("reason").unwrap_or_default().to_string(),
            datapoints: d.get("datapoints").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default(),
        },
        at: e.time.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pause_silences_its_cluster_until_resumed_but_not_its_primary_down() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        let paused = Event::new("postgres/main", EventKind::Paused, "paused");
        pause_silence(&store, &paused, false).unwrap();
        let s = store.silences(Utc::now()).unwrap();
        assert_eq!(s.len(), 1);
        let labels = |name: &str| -> cirkel_notify::Labels {
            [("source", "postgres/main"), ("alertname", name)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(s[0].matchers.iter().all(|m| m.matches(&labels("member-down"))));
        assert!(!s[0].matchers.iter().all(|m| m.matches(&labels("paused-primary-down"))));
        pause_silence(&store, &Event::new("postgres/other", EventKind::Resumed, "resumed"), true).unwrap();
        assert_eq!(store.silences(Utc::now()).unwrap().len(), 1, "another cluster's resume ends nothing");
        pause_silence(&store, &Event::new("postgres/main", EventKind::Resumed, "resumed"), true).unwrap();
        assert!(store.silences(Utc::now()).unwrap().is_empty());
    }

    #[test]
    fn which_events_notify() {
        let failover = Event::new("postgres/main", EventKind::Failover, "failover a → b");
        let mut again = Event::new("postgres/main", EventKind::Failover, "failover b → a");
        again.time = failover.time + chrono::Duration::seconds(30);
        assert_ne!(alert_of(&failover).unwrap().key, alert_of(&again).unwrap().key, "each failover is news");
        let down = Event::new("postgres/main", EventKind::MemberDown, "a down");
        assert_eq!(alert_of(&down).unwrap().key, alert_of(&down.clone()).unwrap().key);
        assert!(alert_of(&Event::new("schedule/x", EventKind::JobDone, "done")).is_none(), "low: dashboard only");
        assert!(alert_of(&Event::new("check/api", EventKind::CheckDown, "down")).is_none(), "its alarm notifies");
        let raised = Event::new("postgres/main", EventKind::AlarmRaised, "alarm")
            .with_severity(Severity::Critical)
            .with(json!({ "alarm": "rpo-exposure", "labels": { "source": "postgres/main" }, "severity": "critical",
                    "from": "OK", "to": "ALARM", "reason": "1 of 1 above 300", "datapoints": [412.0] }));
        let a = alert_of(&raised).unwrap();
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.status, cirkel_notify::Status::Firing);
        let cleared = Event::new("postgres/main", EventKind::AlarmCleared, "ok")
            .with(json!({ "alarm": "rpo-exposure", "labels": { "source": "postgres/main" }, "severity": "critical",
                    "from": "ALARM", "to": "OK", "reason": "fine" }));
        let c = alert_of(&cleared).unwrap();
        assert_eq!(c.status, cirkel_notify::Status::Resolved);
        assert_eq!(c.key, a.key, "the resolution closes the same alert");
        let first_ok = Event::new("postgres/main", EventKind::AlarmCleared, "ok").with(
            json!({ "alarm": "rpo-exposure", "labels": {}, "severity": "critical", "from": "INSUFFICIENT_DATA", "to": "OK" }),
        );
        assert!(alert_of(&first_ok).is_none(), "a first OK is not news");
    }
}
