//! Drill history in the embedded store: every drill run (by hand or by
//! `cirkel serve`), `cirkel pg verify` included, with what it measured and
//! how it compares with its target, for `cirkel drill history` and the
//! trend of each drill's recovery time.

use chrono::{DateTime, Utc};
use rusqlite::params;
use serde::Serialize;

use crate::Result;
use crate::store::{Store, from_ms, ms, store_err};

/// How a drill run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Recovered, within its target.
    Passed,
    /// Did not recover, or its checks failed.
    Failed,
    /// Recovered, but slower than its target.
    OverTarget,
    /// Stopped before the end (a guardrail tripped, or it was killed);
    /// its fault was undone.
    Aborted,
    /// Not started: a guardrail held it back.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::OverTarget => "over-target",
            Outcome::Aborted => "aborted",
            Outcome::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "passed" => Outcome::Passed,
            "over-target" => Outcome::OverTarget,
            "aborted" => Outcome::Aborted,
            "skipped" => Outcome::Skipped,
            _ => Outcome::Failed,
        }
    }

    /// A run that found recovery wanting: what alarms.
    pub fn is_bad(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::OverTarget)
    }
}

/// One drill run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrillRun {
    pub id: i64,
    /// The `[drills.NAME]`, or the kind for a drill run by hand.
    pub name: String,
    pub kind: String,
    /// The cluster, group or backup drilled.
    pub target: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: Outcome,
    /// Fault → recovered (for a restore drill: the whole restore).
    pub rto_s: Option<f64>,
    pub rto_target_s: Option<f64>,
    pub writes_lost: u64,
    /// Why it failed, was aborted or skipped; empty when it passed.
    pub reason: String,
    /// The full report's file, when one was kept.
    pub report: Option<String>,
}

impl Store {
    /// Records a run; returns its id.
    pub fn record_drill(&self, run: &DrillRun) -> Result<i64> {
        self.transaction(|tx| {
            tx.execute(
                "INSERT INTO drills (name, kind, target, started_at, finished_at, outcome, rto_s, rto_target_s, \
                 writes_lost, reason, report) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    run.name,
                    run.kind,
                    run.target,
                    ms(run.started_at),
                    ms(run.finished_at),
                    run.outcome.as_str(),
                    run.rto_s,
                    run.rto_target_s,
                    i64::try_from(run.writes_lost).unwrap_or(i64::MAX),
                    run.reason,
                    run.report,
                ],
            )
            .map_err(store_err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Runs, newest first: of one drill, or of all; at most `limit`.
    pub fn drills(&self, name: Option<&str>, limit: usize) -> Result<Vec<DrillRun>> {
        self.transaction(|tx| {
            let mut stmt = tx
                .prepare(
                    "SELECT id, name, kind, target, started_at, finished_at, outcome, rto_s, rto_target_s, \
                     writes_lost, reason, report FROM drills WHERE ?1 IS NULL OR name = ?1 ORDER BY id DESC LIMIT ?2",
                )
                .map_err(store_err)?;
            let rows = stmt
                .query_map(params![name, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok(DrillRun {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        kind: r.get(2)?,
                        target: r.get(3)?,
                        started_at: from_ms(r.get(4)?),
                        finished_at: from_ms(r.get(5)?),
                        outcome: Outcome::parse(&r.get::<_, String>(6)?),
                        rto_s: r.get(7)?,
                        rto_target_s: r.get(8)?,
                        writes_lost: u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
                        reason: r.get(10)?,
                        report: r.get(11)?,
                    })
                })
                .map_err(store_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(store_err)
        })
    }
}

/// What `cirkel drill history` says of one drill's runs (newest first).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub name: String,
    pub runs: usize,
    pub passed: usize,
    /// The slowest recovery of the runs looked at, and which run.
    pub worst_rto_s: Option<f64>,
    pub worst_run: Option<i64>,
    /// The newest measured recovery time minus the one before it: positive
    /// is slower.
    pub trend_s: Option<f64>,
    pub last_outcome: Option<Outcome>,
}

/// Summarises one drill's runs, newest first.
pub fn summarize(name: &str, runs: &[DrillRun]) -> Summary {
    let measured: Vec<&DrillRun> = runs.iter().filter(|r| r.rto_s.is_some()).collect();
    let worst = measured.iter().max_by(|a, b| a.rto_s.partial_cmp(&b.rto_s).unwrap_or(std::cmp::Ordering::Equal));
    let trend_s = match measured.as_slice() {
        [newest, before, ..] => Some(newest.rto_s.unwrap_or(0.0) - before.rto_s.unwrap_or(0.0)),
        _ => None,
    };
    Summary {
        name: name.to_string(),
        runs: runs.len(),
        passed: runs.iter().filter(|r| r.outcome == Outcome::Passed).count(),
        worst_rto_s: worst.and_then(|r| r.rto_s),
        worst_run: worst.map(|r| r.id),
        trend_s,
        last_outcome: runs.first().map(|r| r.outcome),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, outcome: Outcome, rto: Option<f64>) -> DrillRun {
        DrillRun {
            id: 0,
            name: name.into(),
            kind: "failover".into(),
            target: "main".into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            outcome,
            rto_s: rto,
            rto_target_s: Some(60.0),
            writes_lost: 0,
            reason: String::new(),
            report: None,
        }
    }

    #[test]
    fn runs_are_kept_and_read_back_newest_first_per_drill() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_in(dir.path()).unwrap();
        store.record_drill(&run("monthly", Outcome::Passed, Some(3.0))).unwrap();
        store.record_drill(&run("weekly", Outcome::Failed, None)).unwrap();
        store.record_drill(&run("monthly", Outcome::OverTarget, Some(70.0))).unwrap();
        let monthly = store.drills(Some("monthly"), 10).unwrap();
        assert_eq!(monthly.len(), 2);
        assert_eq!(monthly[0].outcome, Outcome::OverTarget);
        assert_eq!(monthly[1].rto_s, Some(3.0));
        assert_eq!(store.drills(None, 10).unwrap().len(), 3);
        assert_eq!(store.drills(None, 1).unwrap().len(), 1);
        // Reopened: the history outlives the process.
        drop(store);
        let store = Store::open_in(dir.path()).unwrap();
        assert_eq!(store.drills(Some("weekly"), 10).unwrap()[0].outcome, Outcome::Failed);
    }

    #[test]
    fn the_summary_names_the_worst_run_and_the_trend() {
        let mut runs = vec![
            run("m", Outcome::OverTarget, Some(70.0)),
            run("m", Outcome::Aborted, None),
            run("m", Outcome::Passed, Some(3.0)),
            run("m", Outcome::Passed, Some(4.0)),
        ];
        for (i, r) in runs.iter_mut().enumerate() {
            r.id = 10 - i as i64;
        }
        let s = summarize("m", &runs);
        assert_eq!((s.runs, s.passed), (4, 2));
        assert_eq!((s.worst_rto_s, s.worst_run), (Some(70.0), Some(10)));
        assert_eq!(s.trend_s, Some(67.0), "70 s after 3 s: slower");
        assert_eq!(s.last_outcome, Some(Outcome::OverTarget));
        let empty = summarize("m", &[]);
        assert_eq!((empty.runs, empty.worst_rto_s, empty.trend_s), (0, None, None));
    }
}
