//! cirkel's notifications: who hears of an alarm or an event, and the
//! guarantee that they do even when cirkel crashes.
//!
//! The daemon hands this crate what changed ([`AlertInput`]: an alarm
//! transition or an event). [`Notifier::handle`] decides, in one SQLite
//! transaction, what that means: an alert opened, deduplicated or resolved,
//! the messages each receiver gets (routing by severity, silences,
//! maintenance windows, a bound on flapping) written to the outbox, and an
//! incident opened or joined. Nothing is sent there: the [`outbox`] worker
//! sends what the outbox holds, one task per receiver, and marks each message
//! delivered only after the receiver took it, so a crash repeats at most the
//! message in flight, under the same dedup key.
//!
//! - [`store`]: the SQLite file (`cirkel.db`) and its schema.
//! - [`route`]: pure routing, grouping, silences and the flapping bound.
//! - [`escalate`]: pure escalation of unacknowledged alerts, clock injected.
//! - [`incident`]: incidents, their timeline and the post-mortem.
//! - [`receivers`]: the payload each kind of receiver takes, and its sender.
//! - [`outbox`]: the delivery worker.
//! - [`config`]: the configuration's settings as the notifier's types.

pub mod config;
pub mod drills;
pub mod escalate;
pub mod incident;
pub mod notifier;
pub mod outbox;
pub mod receivers;
pub mod route;
pub mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use cirkel_state::Severity;
pub use config::Settings;
pub use notifier::{Handled, Notifier};
pub use outbox::{Counters, ReceiverCounts, WorkerOptions};
pub use receivers::{Payload, Receiver, ReceiverKind, Receivers};
pub use store::Store;

/// Labels of an alert: `source`, `cluster`, `tag`, the alarm's own labels.
pub type Labels = BTreeMap<String, String>;

/// What this crate refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be read or written; the message says which file.
    #[error("notification store {path}: {source}; check that the state directory is writable and not full")]
    Store { path: String, source: rusqlite::Error },
    /// The store was written by a newer cirkel.
    #[error(
        "notification store {path} has schema version {found}, newer than this cirkel knows ({known}); run the newer cirkel or restore an older state directory"
    )]
    Schema { path: String, found: i64, known: i64 },
    /// Something stored does not read back (a hand-edited database).
    #[error("notification store: {0}; the row was edited outside cirkel")]
    Corrupt(String),
    /// An alert or incident id that does not exist.
    #[error("{what} {id} does not exist; `cirkel alerts` and `cirkel incident list` show the ids")]
    NotFound { what: &'static str, id: i64 },
    /// The file could not be created with owner-only permissions.
    #[error("notification store {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A blocking store call could not be run.
    #[error("notification store task failed: {0}")]
    Task(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether an alert is firing or has cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "firing" => Some(Status::Firing),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }
}

/// One change that may notify: an alarm transition or an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertInput {
    /// What identifies one alert across its firing and resolution: the
    /// alarm name and its labels, or an event's source and kind.
    pub key: String,
    /// The alarm's or event kind's name.
    pub name: String,
    /// `postgres/main`, `redis/cache`, `check/api`.
    pub source: String,
    #[serde(with = "severity_serde")]
    pub severity: Severity,
    pub labels: Labels,
    pub summary: String,
    pub status: Status,
    pub at: DateTime<Utc>,
    /// What the event carried (a failover's measured RTO and data lost).
    pub details: serde_json::Value,
}

impl AlertInput {
    /// An alarm transition: firing when it enters ALARM, resolved when it
    /// leaves it; `None` for a change that notifies nobody (between OK and
    /// INSUFFICIENT_DATA).
    pub fn from_transition(t: &cirkel_alarm::Transition) -> Option<AlertInput> {
        use cirkel_alarm::AlarmState;
        let status = match (t.from, t.to) {
            (_, AlarmState::Alarm) if t.from != AlarmState::Alarm => Status::Firing,
            (AlarmState::Alarm, to) if to != AlarmState::Alarm => Status::Resolved,
            _ => return None,
        };
        let mut labels = t.labels.clone();
        labels.insert("alertname".into(), t.alarm.clone());
        let source = labels.get("source").cloned().unwrap_or_else(|| format!("alarm/{}", t.alarm));
        let key = alert_key(&t.alarm, &labels);
        Some(AlertInput {
            key,
            name: t.alarm.clone(),
            source,
            severity: severity_of_alarm(t.severity),
            labels,
            summary: if t.reason.text.is_empty() { t.alarm.clone() } else { format!("{}: {}", t.alarm, t.reason) },
            status,
            at: DateTime::<Utc>::from(t.at),
            details: serde_json::Value::Null,
        })
    }

    /// An event: it fires once; events have no resolution of their own, so
    /// a later event of the same source and kind is deduplicated while the
    /// first is open.
    pub fn from_event(e: &cirkel_state::Event) -> AlertInput {
        let name = e.kind.to_string();
        let mut labels = Labels::new();
        labels.insert("alertname".into(), name.clone());
        labels.insert("source".into(), e.source.clone());
        if let Some((_, cluster)) = e.source.split_once('/') {
            labels.insert("cluster".into(), cluster.to_string());
        }
        AlertInput {
            key: alert_key(&name, &labels),
            name,
            source: e.source.clone(),
            severity: e.severity,
            labels,
            summary: e.message.clone(),
            status: Status::Firing,
            at: e.time,
            details: e.details.clone(),
        }
    }
}

/// The dedup key of an alert: its name and labels, hashed so it fits any
/// receiver's key length (PagerDuty takes 255 characters).
pub fn alert_key(name: &str, labels: &Labels) -> String {
    let mut h = blake3::Hasher::new();
    h.update(name.as_bytes());
    for (k, v) in labels {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    let hex = h.finalize().to_hex();
    format!("{name}-{}", &hex[..16])
}

fn severity_of_alarm(s: cirkel_alarm::Severity) -> Severity {
    match s {
        cirkel_alarm::Severity::Critical => Severity::Critical,
        cirkel_alarm::Severity::High => Severity::High,
        cirkel_alarm::Severity::Medium => Severity::Medium,
        cirkel_alarm::Severity::Low => Severity::Low,
    }
}

/// The plan's severities by name (`critical`), as the event log writes them.
pub(crate) mod severity_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Severity;

    pub fn serialize<S: Serializer>(s: &Severity, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Severity, D::Error> {
        let s = String::deserialize(de)?;
        Severity::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("`{s}`: expected critical, high, medium or low")))
    }
}
