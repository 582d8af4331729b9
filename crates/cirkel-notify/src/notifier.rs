//! The one place where decisions meet the store: each change is decided by
//! the pure [`route`](crate::route) and [`escalate`](crate::escalate)
//! functions and applied in a single transaction, messages included.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Transaction, params};

use crate::escalate::{self, AlertView, Policy, Step};
use crate::receivers::{Action, Notice, Receivers};
use crate::route::{self, Decision, Maintenance, Prior, Routes};
use crate::store::{self, AlertRow, NewMessage, Store, ms, store_err};
use crate::{AlertInput, Result, Status, incident};

/// How an input was handled.
#[derive(Clone, Debug, PartialEq)]
pub struct Handled {
    /// The alert it opened or resolved (`None`: nothing open to resolve).
    pub alert: Option<i64>,
    pub decision: Decision,
    /// The message ids queued, one per receiver.
    pub messages: Vec<String>,
    pub incident: Option<i64>,
}

/// Routing, escalation and incidents over one store. Its calls are short
/// SQLite transactions that block: on a tokio runtime, make them from
/// `spawn_blocking`.
pub struct Notifier {
    pub store: Arc<Store>,
    pub receivers: Arc<Receivers>,
    pub routes: Routes,
    pub escalation: Policy,
    pub maintenance: Vec<Maintenance>,
    /// How long a message is retried before it is given up.
    pub message_ttl: Duration,
    /// Alerts of the same source within this window join an open incident.
    pub incident_window: Duration,
}

impl Notifier {
    pub fn new(store: Arc<Store>, receivers: Arc<Receivers>) -> Notifier {
        Notifier {
            store,
            receivers,
            routes: Routes::default(),
            escalation: Policy::default(),
            maintenance: Vec::new(),
            message_ttl: Duration::from_secs(24 * 3600),
            incident_window: Duration::from_secs(3600),
        }
    }

    /// Records one change at `input.at` and queues its messages.
    pub fn handle(&self, input: &AlertInput) -> Result<Handled> {
        let handled = self.apply(input)?;
        if !handled.messages.is_empty() {
            self.receivers.wake.notify_waiters();
        }
        Ok(handled)
    }

    fn apply(&self, input: &AlertInput) -> Result<Handled> {
        let now = input.at;
        self.store.transaction(|tx| {
            let mut open = store::open_alert(tx, &input.key)?;
            // Events never clear by themselves: once someone acknowledged
            // one, the same kind of event again (a second failover) is a
            // new alert, not a duplicate of the handled one.
            if let Some(a) = &open
                && input.status == Status::Firing
                && a.acknowledged_at.is_some()
                && a.started_at < now
            {
                tx.execute(
                    "UPDATE alerts SET state = 'resolved', resolved_at = ?2 WHERE id = ?1",
                    params![a.id, ms(now)],
                )
                .map_err(store_err)?;
                open = None;
            }
            let prior = Prior {
                open: open.is_some(),
                open_notified: open.as_ref().is_some_and(|a| a.notified),
                last_notified: store::last_notified(tx, &input.key)?,
            };
            let silenced_by = self.silenced_by(tx, &input.labels, now)?;
            let decision =
                route::decide(&self.routes, input.severity, &input.labels, input.status, prior, silenced_by, now);
            let notify = matches!(decision, Decision::Notify(_));
            let (alert, action) = match (input.status, open) {
                (Status::Firing, Some(a)) => (Some(a), Action::Trigger),
                (Status::Firing, None) => (Some(self.insert(tx, input, notify)?), Action::Trigger),
                (Status::Resolved, Some(a)) => {
                    tx.execute(
                        "UPDATE alerts SET state = 'resolved', resolved_at = ?2 WHERE id = ?1",
                        params![a.id, ms(now)],
                    )
                    .map_err(store_err)?;
                    (Some(store::alert_by_id(tx, a.id)?), Action::Resolve)
                }
                (Status::Resolved, None) => (None, Action::Resolve),
            };
            let Some(alert) = alert else {
                return Ok(Handled { alert: None, decision, messages: Vec::new(), incident: None });
            };
            let mut incident = alert.incident_id;
            if input.status == Status::Firing && incident.is_none() && !prior.open {
                incident = incident::on_alert(tx, &alert, input.name == "failover", self.incident_window)?;
            }
            if let Some(id) = incident
                && input.status == Status::Resolved
            {
                incident::append(tx, id, now, "alert", &format!("{} resolved", alert.name))?;
            }
            let mut messages = Vec::new();
            if let Decision::Notify(names) = &decision {
                messages = self.queue(tx, &alert, action, 0, names, now, incident)?;
                tx.execute("UPDATE alerts SET last_notified_at = ?2 WHERE id = ?1", params![alert.id, ms(now)])
                    .map_err(store_err)?;
            }
            Ok(Handled { alert: Some(alert.id), decision, messages, incident })
        })
    }

    /// Acknowledges alert `id`: escalation stops, and the receivers that
    /// heard of the alert and track acknowledgements (PagerDuty) hear of it.
    pub fn acknowledge(&self, id: i64, by: &str, now: DateTime<Utc>) -> Result<AlertRow> {
        let before = self.store.alert(id)?;
        let alert = self.store.acknowledge(id, by, now)?;
        if before.acknowledged_at.is_none() && alert.status == Status::Firing {
            self.store.transaction(|tx| {
                let mut stmt = tx
                    .prepare("SELECT DISTINCT receiver FROM outbox WHERE alert_id = ?1 ORDER BY receiver")
                    .map_err(store_err)?;
                let names = stmt
                    .query_map(params![id], |r| r.get::<_, String>(0))
                    .map_err(store_err)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(store_err)?;
                self.queue(tx, &alert, Action::Acknowledge, alert.level, &names, now, None)
            })?;
            self.receivers.wake.notify_waiters();
        }
        Ok(alert)
    }

    /// Escalates every alert whose next level is due at `now`; returns the
    /// steps taken, each applied in its own transaction.
    pub fn escalate(&self, now: DateTime<Utc>) -> Result<Vec<Step>> {
        let open = self.store.alerts(false)?;
        let views: Vec<AlertView> = open
            .iter()
            .filter(|a| a.notified)
            .map(|a| AlertView {
                id: a.id,
                severity: a.severity,
                started_at: a.started_at,
                level: a.level,
                acknowledged: a.acknowledged_at.is_some(),
                resolved: a.status == Status::Resolved,
            })
            .collect();
        let steps = escalate::due(&self.escalation, &views, now);
        for step in &steps {
            self.store.transaction(|tx| {
                // Re-read inside the transaction: an acknowledgement that
                // arrived since wins.
                let alert = store::alert_by_id(tx, step.alert)?;
                if alert.acknowledged_at.is_some() || alert.status == Status::Resolved || alert.level >= step.level {
                    return Ok(());
                }
                let names = if step.receivers.is_empty() {
                    self.routes.receivers(alert.severity, &alert.labels)
                } else {
                    step.receivers.clone()
                };
                tx.execute("UPDATE alerts SET level = ?2 WHERE id = ?1", params![alert.id, step.level])
                    .map_err(store_err)?;
                if let Some(id) = alert.incident_id {
                    incident::append(
                        tx,
                        id,
                        now,
                        "escalated",
                        &format!("{} unacknowledged: level {} ({})", alert.name, step.level, names.join(", ")),
                    )?;
                }
                self.queue(tx, &alert, Action::Trigger, step.level, &names, now, None)?;
                Ok(())
            })?;
        }
        if !steps.is_empty() {
            self.receivers.wake.notify_waiters();
        }
        Ok(steps)
    }

    fn silenced_by(&self, tx: &Transaction<'_>, labels: &crate::Labels, now: DateTime<Utc>) -> Result<Option<String>> {
        if let Some(s) = store::active_silences(tx, now)?.into_iter().find(|s| route::all_match(&s.matchers, labels)) {
            return Ok(Some(format!("silence {} by {} ({})", s.id, s.by, s.reason)));
        }
        Ok(self
            .maintenance
            .iter()
            .position(|m| route::all_match(&m.matchers, labels) && m.active(now))
            .map(|i| format!("maintenance window {}", i + 1)))
    }

    fn insert(&self, tx: &Transaction<'_>, input: &AlertInput, notified: bool) -> Result<AlertRow> {
        let labels = serde_json::to_string(&input.labels).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
        tx.execute(
            "INSERT INTO alerts (key, name, severity, source, labels, summary, state, notified, started_at, details) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'firing', ?7, ?8, ?9)",
            params![
                input.key,
                input.name,
                input.severity.as_str(),
                input.source,
                labels,
                input.summary,
                notified,
                ms(input.at),
                input.details.to_string()
            ],
        )
        .map_err(store_err)?;
        store::alert_by_id(tx, tx.last_insert_rowid())
    }

    /// Renders and queues one message per receiver; unknown names are
    /// skipped (configuration checks refuse them before the daemon starts).
    #[allow(clippy::too_many_arguments)]
    fn queue(
        &self,
        tx: &Transaction<'_>,
        alert: &AlertRow,
        action: Action,
        level: u32,
        names: &[String],
        now: DateTime<Utc>,
        incident: Option<i64>,
    ) -> Result<Vec<String>> {
        let expires = now + chrono::Duration::from_std(self.message_ttl).unwrap_or(chrono::Duration::days(1));
        let notice = Notice { alert, action, level, at: now };
        let mut ids = Vec::new();
        for name in names {
            let Some(receiver) = self.receivers.get(name) else {
                tracing::warn!(receiver = %name, "no receiver of that name; the route names one that is not configured");
                continue;
            };
            for payload in receiver.render(&notice) {
                let payload = serde_json::to_string(&payload).map_err(|e| crate::Error::Corrupt(e.to_string()))?;
                let id = store::enqueue(
                    tx,
                    &NewMessage {
                        alert_id: Some(alert.id),
                        receiver: name,
                        payload: &payload,
                        dedup_key: &alert.key,
                        now,
                        expires,
                    },
                )?;
                ids.push(id);
            }
        }
        if let Some(inc) = incident.or(alert.incident_id)
            && !ids.is_empty()
        {
            let what = match action {
                Action::Trigger if level > 0 => format!("escalation level {level}"),
                Action::Trigger => "firing".to_string(),
                Action::Acknowledge => "acknowledgement".to_string(),
                Action::Resolve => "resolution".to_string(),
            };
            incident::append(
                tx,
                inc,
                now,
                "notified",
                &format!("{} {what} queued for {}", alert.name, names.join(", ")),
            )?;
        }
        Ok(ids)
    }
}
