//! Incidents (plan §7): a CRITICAL alert or a failover opens one, related
//! alerts join it instead of opening their own, and everything that happens
//! (the failover's own steps, alerts, messages, acknowledgements, notes,
//! phase changes) goes to an append-only timeline, from which
//! [`postmortem`] writes the plan's post-mortem with the measured RTO and
//! data lost.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use crate::store::{ALERT_COLUMNS, AlertRow, Store, from_ms, ms, query_alerts, store_err};
use crate::{Error, Result, Severity};

/// Priority, P1 most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Priority {
    P1,
    P2,
    P3,
    P4,
}

impl Priority {
    /// From severity and scope: a failover (the whole service moved) is P1
    /// whatever its event's severity; otherwise the severity decides.
    pub fn of(severity: Severity, failover: bool) -> Priority {
        if failover {
            return Priority::P1;
        }
        match severity {
            Severity::Critical => Priority::P1,
            Severity::High => Priority::P2,
            Severity::Medium => Priority::P3,
            Severity::Low => Priority::P4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::P1 => "P1",
            Priority::P2 => "P2",
            Priority::P3 => "P3",
            Priority::P4 => "P4",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        [Priority::P1, Priority::P2, Priority::P3, Priority::P4]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

/// The plan's phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Detection,
    Assessment,
    Containment,
    Recovery,
    Resolved,
    Postmortem,
}

impl Phase {
    pub const ALL: [Phase; 6] =
        [Phase::Detection, Phase::Assessment, Phase::Containment, Phase::Recovery, Phase::Resolved, Phase::Postmortem];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Detection => "detection",
            Phase::Assessment => "assessment",
            Phase::Containment => "containment",
            Phase::Recovery => "recovery",
            Phase::Resolved => "resolved",
            Phase::Postmortem => "postmortem",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// One incident as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incident {
    pub id: i64,
    pub priority: Priority,
    pub title: String,
    pub source: String,
    pub phase: Phase,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// What the failover that opened or joined it measured.
    pub details: serde_json::Value,
}

/// One timeline entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    /// `opened`, `alert`, `notified`, `acknowledged`, `note`, `phase`,
    /// `resolved`, `failover` (one of the failover's own steps).
    pub kind: String,
    pub text: String,
}

/// Appends to an incident's timeline (the table refuses updates and deletes).
pub(crate) fn append(tx: &Transaction<'_>, incident: i64, at: DateTime<Utc>, kind: &str, text: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO timeline (incident_id, at, kind, text) VALUES (?1, ?2, ?3, ?4)",
        params![incident, ms(at), kind, text],
    )
    .map_err(store_err)?;
    Ok(())
}

/// The failover's own timestamps, as its event records them.
const FAILOVER_STEPS: &[(&str, &str)] = &[
    ("last_seen_ok", "primary last seen healthy"),
    ("detected", "primary failure detected"),
    ("decided", "failover decided"),
    ("fenced", "old primary fenced"),
    ("promoted", "new primary promoted"),
    ("endpoint_writable", "read-write endpoint writable"),
];

/// Opens an incident for `alert`, or attaches it to an open one of the
/// same source opened within `window`. Alerts below CRITICAL that are not
/// failovers only attach; they open nothing.
pub(crate) fn on_alert(
    tx: &Transaction<'_>,
    alert: &AlertRow,
    failover: bool,
    window: Duration,
) -> Result<Option<i64>> {
    let since = alert.started_at - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let open: Option<i64> = tx
        .query_row(
            "SELECT id FROM incidents WHERE source = ?1 AND resolved_at IS NULL AND opened_at >= ?2 ORDER BY id DESC LIMIT 1",
            params![alert.source, ms(since)],
            |r| r.get(0),
        )
        .optional()
        .map_err(store_err)?;
    let id = match open {
        Some(id) => {
            append(
                tx,
                id,
                alert.started_at,
                "alert",
                &format!("{} [{}] {}", alert.name, alert.severity, alert.summary),
            )?;
            id
        }
        None if alert.severity == Severity::Critical || failover => {
            let priority = Priority::of(alert.severity, failover);
            let title = format!("{} on {}", alert.name, alert.source);
            tx.execute(
                "INSERT INTO incidents (priority, title, source, phase, opened_at, details) VALUES (?1, ?2, ?3, 'detection', ?4, 'null')",
                params![priority.as_str(), title, alert.source, ms(alert.started_at)],
            )
            .map_err(store_err)?;
            let id = tx.last_insert_rowid();
            append(tx, id, alert.started_at, "opened", &format!("{} {}: {}", priority.as_str(), title, alert.summary))?;
            id
        }
        None => return Ok(None),
    };
    if failover {
        record_failover(tx, id, &alert.details)?;
    }
    tx.execute("UPDATE alerts SET incident_id = ?2 WHERE id = ?1", params![alert.id, id]).map_err(store_err)?;
    Ok(Some(id))
}

fn record_failover(tx: &Transaction<'_>, id: i64, details: &serde_json::Value) -> Result<()> {
    // The failover's own measures stay: a later `failover` alarm (raised
    // at the end of its period) carries none.
    if measured_rto(details).is_some() {
        tx.execute(
            "UPDATE incidents SET details = ?2, phase = 'recovery' WHERE id = ?1",
            params![id, details.to_string()],
        )
        .map_err(store_err)?;
    } else {
        tx.execute(
            "UPDATE incidents SET phase = 'recovery', details = CASE WHEN details = 'null' THEN ?2 ELSE details END \
             WHERE id = ?1",
            params![id, details.to_string()],
        )
        .map_err(store_err)?;
    }
    for (key, what) in FAILOVER_STEPS {
        if let Some(at) = details.get(key).and_then(|v| v.as_str()).and_then(|s| s.parse::<DateTime<Utc>>().ok()) {
            append(tx, id, at, "failover", what)?;
        }
    }
    Ok(())
}

impl Store {
    /// Incidents, newest first; only open ones unless `all`.
    pub fn incidents(&self, all: bool) -> Result<Vec<Incident>> {
        self.transaction(|tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT id, priority, title, source, phase, opened_at, resolved_at, details FROM incidents \
                     WHERE ?1 OR resolved_at IS NULL ORDER BY id DESC",
                )
                .map_err(store_err)?;
            let rows = stmt.query_map(params![all], incident_row).map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(store_err)
        })
    }

    pub fn incident(&self, id: i64) -> Result<Incident> {
        self.transaction(|tx| incident_by_id(tx, id))
    }

    /// The timeline in time order (entries at the same time in the order written).
    pub fn timeline(&self, id: i64) -> Result<Vec<Entry>> {
        self.transaction(|tx| timeline(tx, id))
    }

    /// Adds a note by `by`.
    pub fn note(&self, id: i64, by: &str, text: &str, now: DateTime<Utc>) -> Result<()> {
        self.transaction(|tx| {
            incident_by_id(tx, id)?;
            append(tx, id, now, "note", &format!("{by}: {text}"))
        })
    }

    /// Moves an incident to `phase`; `resolved` also resolves it.
    pub fn set_phase(&self, id: i64, phase: Phase, by: &str, now: DateTime<Utc>) -> Result<()> {
        self.transaction(|tx| {
            let inc = incident_by_id(tx, id)?;
            tx.execute("UPDATE incidents SET phase = ?2 WHERE id = ?1", params![id, phase.as_str()])
                .map_err(store_err)?;
            append(tx, id, now, "phase", &format!("{} → {} by {by}", inc.phase.as_str(), phase.as_str()))?;
            if phase >= Phase::Resolved && inc.resolved_at.is_none() {
                tx.execute("UPDATE incidents SET resolved_at = ?2 WHERE id = ?1", params![id, ms(now)])
                    .map_err(store_err)?;
                append(tx, id, now, "resolved", &format!("resolved by {by}"))?;
            }
            Ok(())
        })
    }

    /// Resolves an incident.
    pub fn resolve_incident(&self, id: i64, by: &str, now: DateTime<Utc>) -> Result<()> {
        self.set_phase(id, Phase::Resolved, by, now)
    }

    /// Overrides the priority the incident opened with.
    pub fn set_priority(&self, id: i64, priority: Priority, by: &str, now: DateTime<Utc>) -> Result<()> {
        self.transaction(|tx| {
            let inc = incident_by_id(tx, id)?;
            tx.execute("UPDATE incidents SET priority = ?2 WHERE id = ?1", params![id, priority.as_str()])
                .map_err(store_err)?;
            append(tx, id, now, "priority", &format!("{} → {} by {by}", inc.priority.as_str(), priority.as_str()))
        })
    }

    /// The plan's post-mortem of incident `id`, as Markdown.
    pub fn postmortem(&self, id: i64) -> Result<String> {
        let (inc, entries, alerts) = self.transaction(|tx| {
            let inc = incident_by_id(tx, id)?;
            let entries = timeline(tx, id)?;
            let alerts = query_alerts(
                tx,
                &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE incident_id = ?1 ORDER BY id"),
                params![id],
            )?;
            Ok((inc, entries, alerts))
        })?;
        Ok(postmortem(&inc, &entries, &alerts))
    }
}

fn incident_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Incident> {
    let bad = |i, what: String| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into());
    let priority: String = r.get(1)?;
    let phase: String = r.get(4)?;
    let details: String = r.get(7)?;
    Ok(Incident {
        id: r.get(0)?,
        priority: Priority::parse(&priority).ok_or_else(|| bad(1, format!("priority `{priority}`")))?,
        title: r.get(2)?,
        source: r.get(3)?,
        phase: Phase::parse(&phase).ok_or_else(|| bad(4, format!("phase `{phase}`")))?,
        opened_at: from_ms(r.get(5)?),
        resolved_at: r.get::<_, Option<i64>>(6)?.map(from_ms),
        details: serde_json::from_str(&details).map_err(|e| bad(7, e.to_string()))?,
    })
}

fn incident_by_id(tx: &Transaction<'_>, id: i64) -> Result<Incident> {
    tx.query_row(
        "SELECT id, priority, title, source, phase, opened_at, resolved_at, details FROM incidents WHERE id = ?1",
        params![id],
        incident_row,
    )
    .optional()
    .map_err(store_err)?
    .ok_or(Error::NotFound { what: "incident", id })
}

fn timeline(tx: &Transaction<'_>, id: i64) -> Result<Vec<Entry>> {
    let mut stmt =
        tx.prepare("SELECT at, kind, text FROM timeline WHERE incident_id = ?1 ORDER BY at, id").map_err(store_err)?;
    let rows = stmt
        .query_map(params![id], |r| Ok(Entry { at: from_ms(r.get(0)?), kind: r.get(1)?, text: r.get(2)? }))
        .map_err(store_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(store_err)
}

/// The measured recovery time: from the failure's detection to the
/// endpoint taking writes (or, without an endpoint, the promotion).
pub fn measured_rto(details: &serde_json::Value) -> Option<f64> {
    ["endpoint_writable_after_s", "switched_after_s", "promoted_after_s"]
        .iter()
        .find_map(|k| details.get(*k).and_then(serde_json::Value::as_f64))
}

/// The data a failover lost, in bytes (PostgreSQL: exact; Redis: a floor).
pub fn data_lost(details: &serde_json::Value) -> Option<(u64, bool)> {
    if let Some(b) = details.get("lost_bytes").and_then(serde_json::Value::as_u64) {
        return Some((b, true));
    }
    details.get("lost_bytes_at_least").and_then(serde_json::Value::as_u64).map(|b| (b, false))
}

/// Renders the post-mortem: facts filled in, judgement left to people.
pub fn postmortem(inc: &Incident, entries: &[Entry], alerts: &[AlertRow]) -> String {
    let mut s = String::new();
    let t = |d: DateTime<Utc>| d.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let _ = writeln!(s, "# Post-mortem: incident {} — {}\n", inc.id, inc.title);
    let _ = writeln!(s, "## Summary\n");
    let _ = writeln!(s, "- Priority: {}", inc.priority.as_str());
    let _ = writeln!(s, "- Source: {}", inc.source);
    let _ = writeln!(s, "- Opened: {}", t(inc.opened_at));
    match inc.resolved_at {
        Some(r) => {
            let mins = (r - inc.opened_at).num_seconds() as f64 / 60.0;
            let _ = writeln!(s, "- Resolved: {} (after {mins:.1} minutes)", t(r));
        }
        None => {
            let _ = writeln!(s, "- Resolved: not yet (phase: {})", inc.phase.as_str());
        }
    }
    let _ = writeln!(s, "\n_What happened, in two or three sentences._\n");
    let _ = writeln!(s, "## Timeline\n\n| Time | Event | Details |\n|---|---|---|");
    for e in entries {
        let _ = writeln!(s, "| {} | {} | {} |", t(e.at), e.kind, e.text.replace('|', "\\|").replace('\n', " "));
    }
    let _ = writeln!(s, "\n## Impact\n");
    match measured_rto(&inc.details) {
        Some(rto) => {
            let _ = writeln!(s, "- Recovery time (measured RTO): {rto:.1} s");
        }
        None => {
            let _ = writeln!(s, "- Recovery time (measured RTO): not measured (no failover recorded)");
        }
    }
    match data_lost(&inc.details) {
        Some((b, true)) => {
            let _ = writeln!(s, "- Data lost: {b} bytes");
        }
        Some((b, false)) => {
            let _ = writeln!(s, "- Data lost: at least {b} bytes");
        }
        None => {
            let _ = writeln!(s, "- Data lost: not measured");
        }
    }
    let _ = writeln!(s, "- Alerts: {}", alerts.len());
    for a in alerts {
        let acked = match (&a.acknowledged_by, a.acknowledged_at) {
            (Some(by), Some(at)) => format!(", acknowledged by {by} after {} s", (at - a.started_at).num_seconds()),
            _ => ", never acknowledged".to_string(),
        };
        let _ = writeln!(s, "  - {} [{}] {}{acked}", a.name, a.severity, a.summary);
    }
    let _ = writeln!(s, "- Users and services affected: _to fill in_\n");
    let _ = writeln!(s, "## Root cause\n\n_To fill in: why it happened, not only what failed._\n");
    let _ = writeln!(s, "## What went well\n\n_To fill in._\n");
    let _ = writeln!(s, "## What went badly\n\n_To fill in._\n");
    let _ = writeln!(s, "## Actions\n\n| Action | Owner | Due |\n|---|---|---|\n| _to fill in_ | | |");
    s
}
