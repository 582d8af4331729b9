//! The notification store: one SQLite file, `cirkel.db` in the state
//! directory, owner-only.
//!
//! Alerts, the outbox, silences and incidents live together so that one
//! transaction can open an alert, queue its messages and attach it to an
//! incident: after a crash the store holds either all of that or none of
//! it. WAL mode keeps readers (`cirkel alerts`) from blocking the daemon;
//! STRICT tables refuse a value of the wrong type instead of storing it.
//! Times are Unix milliseconds (UTC), so due messages are found by a plain
//! integer comparison.

use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::{Error, Labels, Result, Severity, Status};

/// The store's file name inside the state directory.
pub const FILE_NAME: &str = "cirkel.db";

/// Each entry moves the schema one version up; never edit one that shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE alerts (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    name TEXT NOT NULL,
    severity TEXT NOT NULL,
    source TEXT NOT NULL,
    labels TEXT NOT NULL,
    summary TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
    notified INTEGER NOT NULL DEFAULT 0,
    acknowledged_by TEXT,
    acknowledged_at INTEGER,
    level INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    resolved_at INTEGER,
    last_notified_at INTEGER,
    incident_id INTEGER REFERENCES incidents(id),
    details TEXT NOT NULL DEFAULT 'null'
) STRICT;
CREATE UNIQUE INDEX alerts_open_key ON alerts(key) WHERE state = 'firing';
CREATE INDEX alerts_key ON alerts(key, started_at);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    alert_id INTEGER REFERENCES alerts(id),
    receiver TEXT NOT NULL,
    payload TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,
    delivered_at INTEGER,
    last_error TEXT,
    expires INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX outbox_pending ON outbox(receiver, id) WHERE delivered_at IS NULL;
CREATE TABLE silences (
    id INTEGER PRIMARY KEY,
    matchers TEXT NOT NULL,
    until INTEGER NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY,
    priority TEXT NOT NULL CHECK (priority IN ('P1', 'P2', 'P3', 'P4')),
    title TEXT NOT NULL,
    source TEXT NOT NULL,
    phase TEXT NOT NULL,
    opened_at INTEGER NOT NULL,
    resolved_at INTEGER,
    details TEXT NOT NULL DEFAULT 'null'
) STRICT;
CREATE TABLE timeline (
    id INTEGER PRIMARY KEY,
    incident_id INTEGER NOT NULL REFERENCES incidents(id),
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
) STRICT;
CREATE TRIGGER timeline_no_update BEFORE UPDATE ON timeline
BEGIN SELECT RAISE(ABORT, 'the incident timeline is append-only'); END;
CREATE TRIGGER timeline_no_delete BEFORE DELETE ON timeline
BEGIN SELECT RAISE(ABORT, 'the incident timeline is append-only'); END;
"#,
    r#"
CREATE TABLE drills (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('passed', 'failed', 'over-target', 'aborted', 'skipped')),
    rto_s REAL,
    rto_target_s REAL,
    writes_lost INTEGER NOT NULL,
    reason TEXT NOT NULL,
    report TEXT
) STRICT;
CREATE INDEX drills_by_name ON drills (name, id);
"#,
];

/// The SQLite store. One connection behind a mutex: every call is a short
/// transaction, and the daemon is its only writer.
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// One alert as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AlertRow {
    pub id: i64,
    pub key: String,
    pub name: String,
    #[serde(with = "crate::severity_serde")]
    pub severity: Severity,
    pub source: String,
    pub labels: Labels,
    pub summary: String,
    pub status: Status,
    /// Whether its firing was sent to anyone (a flapping alert's may not be).
    pub notified: bool,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// Escalation levels reached so far (0: none).
    pub level: u32,
    pub started_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub last_notified_at: Option<DateTime<Utc>>,
    pub incident_id: Option<i64>,
    pub details: serde_json::Value,
}

/// One message of the outbox.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutboxRow {
    pub id: i64,
    /// Unique per message; the receiver sees it as its idempotency key.
    pub message_id: String,
    pub alert_id: Option<i64>,
    pub receiver: String,
    /// The rendered [`crate::Payload`], as JSON.
    pub payload: String,
    /// The key a receiver deduplicates on (PagerDuty's `dedup_key`).
    pub dedup_key: String,
    pub attempts: u32,
    pub next_attempt: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub expires: DateTime<Utc>,
}

/// A silence (`cirkel silence add`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SilenceRow {
    pub id: i64,
    pub matchers: Vec<crate::route::Matcher>,
    pub until: DateTime<Utc>,
    pub reason: String,
    pub by: String,
}

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Store {
    /// Opens (creating it if needed) `cirkel.db` in `state_dir`.
    pub fn open_in(state_dir: &Path) -> Result<Store> {
        Store::open(&state_dir.join(FILE_NAME))
    }

    /// Opens the store at `path`, created 0600, and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let shown = path.display().to_string();
        let io = |source| Error::Io { path: shown.clone(), source };
        // Created owner-only before SQLite sees it, and never through a planted
        // symlink; SQLite gives its -wal and
        // -shm files the database file's permissions.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(io)?;
        let db = |source| Error::Store { path: shown.clone(), source };
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        migrate(&mut conn, &shown)?;
        Ok(Store { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back on drop), so the poison carries no meaning.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction, committed when it returns `Ok`. The
    /// write lock is taken at the start (`BEGIN IMMEDIATE`): a transaction
    /// that began as a reader could not wait for another process's write
    /// (the daemon and a command share the file) and would fail with
    /// "database is locked" instead of waiting out the busy timeout.
    pub fn transaction<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(|e| self.err(e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> Error {
        Error::Store { path: self.path.display().to_string(), source }
    }

    /// The schema version the file is at.
    pub fn schema_version(&self) -> Result<i64> {
        self.lock().pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| self.err(e))
    }

    /// Alerts, newest first; only firing ones unless `all`.
    pub fn alerts(&self, all: bool) -> Result<Vec<AlertRow>> {
        self.transaction(|tx| {
            let sql = if all {
                format!("SELECT {ALERT_COLUMNS} FROM alerts ORDER BY id DESC")
            } else {
                format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE state = 'firing' ORDER BY id DESC")
            };
            query_alerts(tx, &sql, [])
        })
    }

    pub fn alert(&self, id: i64) -> Result<AlertRow> {
        self.transaction(|tx| alert_by_id(tx, id))
    }

    /// Every message for `receiver` (or all), oldest first.
    pub fn outbox(&self, receiver: Option<&str>) -> Result<Vec<OutboxRow>> {
        self.transaction(|tx| {
            let mut stmt = tx
                .prepare(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE ?1 IS NULL OR receiver = ?1 ORDER BY id"))
                .map_err(store_err)?;
            let rows = stmt.query_map(params![receiver], outbox_row).map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(store_err)
        })
    }

    /// The oldest message `receiver` has not taken and that has not
    /// expired: messages go out in order, so a trigger never overtakes its
    /// resolution.
    pub fn next_pending(&self, receiver: &str) -> Result<Option<OutboxRow>> {
        self.transaction(|tx| {
            tx.query_row(
                &format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE receiver = ?1 AND delivered_at IS NULL \
                     AND (last_error IS NULL OR last_error NOT LIKE 'expired:%') ORDER BY id LIMIT 1"
                ),
                params![receiver],
                outbox_row,
            )
            .optional()
            .map_err(store_err)
        })
    }

    /// Records that `id` was taken by its receiver.
    pub fn mark_delivered(&self, id: i64, at: DateTime<Utc>) -> Result<()> {
        self.transaction(|tx| {
            tx.execute(
                "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
                params![id, ms(at)],
            )
            .map_err(store_err)?;
            Ok(())
        })
    }

    /// Records a failed attempt and when to try again.
    pub fn mark_failed(&self, id: i64, error: &str, next: DateTime<Utc>) -> Result<()> {
        self.transaction(|tx| {
            tx.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt = ?3 WHERE id = ?1",
                params![id, error, ms(next)],
            )
            .map_err(store_err)?;
            Ok(())
        })
    }

    /// Gives up on a message past its expiry; it stays, with the reason.
    pub fn mark_expired(&self, id: i64, last_error: Option<&str>) -> Result<()> {
        let text = format!("expired: {}", last_error.unwrap_or("never delivered"));
        self.transaction(|tx| {
            tx.execute("UPDATE outbox SET last_error = ?2 WHERE id = ?1", params![id, text]).map_err(store_err)?;
            Ok(())
        })
    }

    /// Messages not delivered yet whose last attempt failed, oldest first:
    /// what `cirkel alerts` reports as delivery problems.
    pub fn failing(&self) -> Result<Vec<OutboxRow>> {
        self.transaction(|tx| {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE delivered_at IS NULL AND last_error IS NOT NULL ORDER BY id"
                ))
                .map_err(store_err)?;
            let rows = stmt.query_map([], outbox_row).map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(store_err)
        })
    }

    /// Deletes messages delivered or given up before `before`, so the
    /// outbox does not grow forever; returns how many. Alerts, silences
    /// and incidents are kept: they are the record.
    pub fn prune_outbox(&self, before: DateTime<Utc>) -> Result<usize> {
        self.transaction(|tx| {
            tx.execute(
                "DELETE FROM outbox WHERE (delivered_at IS NOT NULL AND delivered_at < ?1) \
                 OR (delivered_at IS NULL AND expires < ?1 AND last_error LIKE 'expired:%')",
                params![ms(before)],
            )
            .map_err(store_err)
        })
    }

    /// Adds a silence; returns its id.
    pub fn add_silence(
        &self,
        matchers: &[crate::route::Matcher],
        until: DateTime<Utc>,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<i64> {
        let m = serde_json::to_string(matchers).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.transaction(|tx| {
            tx.execute(
                "INSERT INTO silences (matchers, until, reason, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![m, ms(until), reason, by, ms(now)],
            )
            .map_err(store_err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Ends a silence now.
    pub fn expire_silence(&self, id: i64, now: DateTime<Utc>) -> Result<()> {
        self.transaction(|tx| {
            let n = tx
                .execute("UPDATE silences SET until = MIN(until, ?2) WHERE id = ?1", params![id, ms(now)])
                .map_err(store_err)?;
            if n == 0 {
                return Err(Error::NotFound { what: "silence", id });
            }
            Ok(())
        })
    }

    /// Silences still in force at `now`.
    pub fn silences(&self, now: DateTime<Utc>) -> Result<Vec<SilenceRow>> {
        self.transaction(|tx| active_silences(tx, now))
    }

    /// Acknowledges alert `id`: its escalation stops. Acknowledging twice
    /// keeps the first.
    pub fn acknowledge(&self, id: i64, by: &str, now: DateTime<Utc>) -> Result<AlertRow> {
        self.transaction(|tx| {
            let alert = alert_by_id(tx, id)?;
            if alert.acknowledged_at.is_some() {
                return Ok(alert);
            }
            tx.execute(
                "UPDATE alerts SET acknowledged_by = ?2, acknowledged_at = ?3 WHERE id = ?1",
                params![id, by, ms(now)],
            )
            .map_err(store_err)?;
            if let Some(incident) = alert.incident_id {
                crate::incident::append(
                    tx,
                    incident,
                    now,
                    "acknowledged",
                    &format!("{} acknowledged by {by}", alert.name),
                )?;
            }
            alert_by_id(tx, id)
        })
    }
}

fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    let db = |source| Error::Store { path: path.to_string(), source };
    let tx = conn.transaction().map_err(db)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Schema { path: path.to_string(), found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(db)?;
    }
    tx.commit().map_err(db)
}

/// Errors inside a transaction name no file: the caller's `Store` adds it.
pub(crate) fn store_err(source: rusqlite::Error) -> Error {
    Error::Store { path: FILE_NAME.to_string(), source }
}

pub(crate) const ALERT_COLUMNS: &str = "id, key, name, severity, source, labels, summary, state, notified, \
     acknowledged_by, acknowledged_at, level, started_at, resolved_at, last_notified_at, incident_id, details";

const OUTBOX_COLUMNS: &str = "id, message_id, alert_id, receiver, payload, dedup_key, attempts, next_attempt, \
     delivered_at, last_error, expires";

fn conversion(i: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, what.into())
}

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    let severity: String = r.get(3)?;
    let labels: String = r.get(5)?;
    let state: String = r.get(7)?;
    let details: String = r.get(16)?;
    Ok(AlertRow {
        id: r.get(0)?,
        key: r.get(1)?,
        name: r.get(2)?,
        severity: Severity::parse(&severity).ok_or_else(|| conversion(3, format!("severity `{severity}`")))?,
        source: r.get(4)?,
        labels: serde_json::from_str(&labels).map_err(|e| conversion(5, e.to_string()))?,
        summary: r.get(6)?,
        status: Status::parse(&state).ok_or_else(|| conversion(7, format!("state `{state}`")))?,
        notified: r.get(8)?,
        acknowledged_by: r.get(9)?,
        acknowledged_at: r.get::<_, Option<i64>>(10)?.map(from_ms),
        level: r.get(11)?,
        started_at: from_ms(r.get(12)?),
        resolved_at: r.get::<_, Option<i64>>(13)?.map(from_ms),
        last_notified_at: r.get::<_, Option<i64>>(14)?.map(from_ms),
        incident_id: r.get(15)?,
        details: serde_json::from_str(&details).map_err(|e| conversion(16, e.to_string()))?,
    })
}

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        message_id: r.get(1)?,
        alert_id: r.get(2)?,
        receiver: r.get(3)?,
        payload: r.get(4)?,
        dedup_key: r.get(5)?,
        attempts: r.get(6)?,
        next_attempt: from_ms(r.get(7)?),
        delivered_at: r.get::<_, Option<i64>>(8)?.map(from_ms),
        last_error: r.get(9)?,
        expires: from_ms(r.get(10)?),
    })
}

pub(crate) fn query_alerts<P: rusqlite::Params>(tx: &Transaction<'_>, sql: &str, p: P) -> Result<Vec<AlertRow>> {
    let mut stmt = tx.prepare(sql).map_err(store_err)?;
    let rows = stmt.query_map(p, alert_row).map_err(store_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(store_err)
}

pub(crate) fn alert_by_id(tx: &Transaction<'_>, id: i64) -> Result<AlertRow> {
    tx.query_row(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = ?1"), params![id], alert_row)
        .optional()
        .map_err(store_err)?
        .ok_or(Error::NotFound { what: "alert", id })
}

pub(crate) fn open_alert(tx: &Transaction<'_>, key: &str) -> Result<Option<AlertRow>> {
    tx.query_row(
        &format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE key = ?1 AND state = 'firing'"),
        params![key],
        alert_row,
    )
    .optional()
    .map_err(store_err)
}

/// When any alert of `key` last notified anyone.
pub(crate) fn last_notified(tx: &Transaction<'_>, key: &str) -> Result<Option<DateTime<Utc>>> {
    let v: Option<i64> = tx
        .query_row("SELECT MAX(last_notified_at) FROM alerts WHERE key = ?1", params![key], |r| r.get(0))
        .map_err(store_err)?;
    Ok(v.map(from_ms))
}

pub(crate) fn active_silences(tx: &Transaction<'_>, now: DateTime<Utc>) -> Result<Vec<SilenceRow>> {
    let mut stmt = tx
        .prepare("SELECT id, matchers, until, reason, created_by FROM silences WHERE until > ?1 ORDER BY id")
        .map_err(store_err)?;
    let rows = stmt
        .query_map(params![ms(now)], |r| {
            let m: String = r.get(1)?;
            Ok(SilenceRow {
                id: r.get(0)?,
                matchers: serde_json::from_str(&m).map_err(|e| conversion(1, e.to_string()))?,
                until: from_ms(r.get(2)?),
                reason: r.get(3)?,
                by: r.get(4)?,
            })
        })
        .map_err(store_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(store_err)
}

/// A new message in the outbox.
pub(crate) struct NewMessage<'a> {
    pub alert_id: Option<i64>,
    pub receiver: &'a str,
    pub payload: &'a str,
    pub dedup_key: &'a str,
    pub now: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

/// Queues a message, due at once (whatever the clock of the change that
/// queued it said); its id is random so two daemons' ids never collide.
pub(crate) fn enqueue(tx: &Transaction<'_>, m: &NewMessage<'_>) -> Result<String> {
    let message_id = hex::encode(rand::random::<[u8; 16]>());
    tx.execute(
        "INSERT INTO outbox (message_id, alert_id, receiver, payload, dedup_key, next_attempt, expires, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 0, ?7, ?6)",
        params![message_id, m.alert_id, m.receiver, m.payload, m.dedup_key, ms(m.now), ms(m.expires)],
    )
    .map_err(store_err)?;
    Ok(message_id)
}
