//! Archiving health as PostgreSQL itself reports it (`pg_stat_archiver`).
//!
//! The repository alone cannot tell a quiet cluster from one whose
//! `archive_command` fails on every try: both leave the archive unchanged.
//! The server knows: how often archiving failed, on which file, and when a
//! segment was last archived. `pg check`, `pg info`, `status` and
//! `pg backup` read it from here.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::conn::PgConn;

/// One server's archiver, as of now.
#[derive(Clone, Debug, Serialize)]
pub struct ArchiverHealth {
    pub archive_mode: String,
    pub in_recovery: bool,
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<DateTime<Utc>>,
    /// Seconds since a segment was last archived.
    pub last_archived_age_s: Option<f64>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<DateTime<Utc>>,
    /// The newest attempt failed: archiving is stuck now.
    pub failing: bool,
}

const SQL: &str = "SELECT current_setting('archive_mode'), pg_is_in_recovery(), archived_count, last_archived_wal, \
    last_archived_time, EXTRACT(EPOCH FROM now() - last_archived_time)::float8, failed_count, last_failed_wal, \
    last_failed_time FROM pg_stat_archiver";

impl ArchiverHealth {
    pub fn read(conn: &PgConn) -> anyhow::Result<ArchiverHealth> {
        let row = conn.query_one(SQL)?;
        let last_archived_time: Option<DateTime<Utc>> = row.get(4);
        let last_failed_time: Option<DateTime<Utc>> = row.get(8);
        let failing = match (last_failed_time, last_archived_time) {
            (Some(f), Some(a)) => f > a,
            (Some(_), None) => true,
            _ => false,
        };
        Ok(ArchiverHealth {
            archive_mode: row.get(0),
            in_recovery: row.get(1),
            archived_count: row.get(2),
            last_archived_wal: row.get(3),
            last_archived_time,
            last_archived_age_s: row.get(5),
            failed_count: row.get(6),
            last_failed_wal: row.get(7),
            last_failed_time,
            failing,
        })
    }

    /// Whether this server archives at all (a standby only with `always`).
    pub fn archives(&self) -> bool {
        match self.archive_mode.as_str() {
            "always" => true,
            "on" => !self.in_recovery,
            _ => false,
        }
    }

    /// What is wrong, if anything.
    pub fn problem(&self) -> Option<String> {
        if !self.archives() || !self.failing {
            return None;
        }
        Some(format!(
            "archiving fails: {} failed attempt(s), the last on {} at {}; last archived {}",
            self.failed_count,
            self.last_failed_wal.as_deref().unwrap_or("?"),
            self.last_failed_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "?".into()),
            self.last_archived()
        ))
    }

    /// "SEGMENT N s ago", or "nothing yet".
    pub fn last_archived(&self) -> String {
        match (&self.last_archived_wal, self.last_archived_age_s) {
            (Some(w), Some(age)) => format!("{w} {} ago", human_age(age)),
            (Some(w), None) => w.clone(),
            _ => "nothing yet".into(),
        }
    }
}

pub fn human_age(s: f64) -> String {
    let s = s.max(0.0);
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} d", s / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(mode: &str, in_recovery: bool, failing: bool) -> ArchiverHealth {
        ArchiverHealth {
            archive_mode: mode.into(),
            in_recovery,
            archived_count: 3,
            last_archived_wal: Some("000000010000000000000003".into()),
            last_archived_time: None,
            last_archived_age_s: Some(30.0),
            failed_count: if failing { 2 } else { 0 },
            last_failed_wal: failing.then(|| "000000010000000000000004".into()),
            last_failed_time: None,
            failing,
        }
    }

    #[test]
    fn only_a_failing_archiver_that_should_archive_is_a_problem() {
        assert!(health("on", false, true).problem().is_some_and(|p| p.contains("000000010000000000000004")));
        assert_eq!(health("on", false, false).problem(), None);
        assert_eq!(health("on", true, true).problem(), None, "a standby with archive_mode = on archives nothing");
        assert!(health("always", true, true).problem().is_some());
        assert_eq!(health("off", false, true).problem(), None);
        assert_eq!(health("on", false, false).last_archived(), "000000010000000000000003 30 s ago");
    }
}
