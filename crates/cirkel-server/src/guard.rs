//! Guardrails for drills: a drill starts only on a quiet estate, stops when
//! something real happens meanwhile, and never runs beside another.
//!
//! Quiet means no alarm of severity high or critical firing (as the alarm
//! loop last published them) and no open incident. While a drill runs, what
//! happens to its own source is the drill's doing; an alarm or incident
//! anywhere else that was not there when it began stops it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cirkel_state::StateDir;

use crate::monitor::{ALARMS_FILE, Published};

/// What holds a drill back now, in words; `exclude` is the drill's own
/// source (`postgres/NAME`, `redis/NAME`), whose alarms and incidents are
/// left out.
pub fn blockers(state: &StateDir, exclude: Option<&str>) -> BTreeSet<String> {
    blockers_except(state, &exclude.map(str::to_string).into_iter().collect())
}

/// The source a drill running now is drilling, from the drill lock
/// (`drill.lock`: the drill's pid and source), or `None` when no drill
/// holds it.
pub fn drilling(state: &StateDir) -> Option<String> {
    let path = state.root().join("drill.lock");
    let f = std::fs::File::open(&path).ok()?;
    match f.try_lock() {
        Ok(()) => {
            let _ = f.unlock();
            None
        }
        Err(_) => {
            let text = std::fs::read_to_string(&path).ok()?;
            text.split_once(' ').map(|(_, source)| source.trim().to_string())
        }
    }
}

/// Undoes the fault of a drill that was killed before it could (see
/// `cirkel_pg::drill::undo_leftover`) and records the drill as aborted:
/// done when `cirkel serve` starts and before every drill. An error is a
/// fault still in place (on record still), which no drill may start on.
pub fn undo_drill_leftover(
    state: &StateDir,
    postgres: &std::collections::BTreeMap<String, cirkel_config::PostgresConfig>,
) -> anyhow::Result<()> {
    undo_scenario_leftover(state);
    let (left, done) = match cirkel_pg::drill::undo_leftover(state, postgres) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::warn!("a drill's leftover fault could not be undone: {e:#}");
            return Err(e);
        }
    };
    let kind = if left.fault.starts_with(cirkel_pg::drill::network::NETWORK) { "network" } else { "failover" };
    let message = format!(
        "the {kind} drill of {} started at {} was interrupted before it undid its fault: {done}",
        left.cluster, left.started
    );
    let name = left.name.clone().unwrap_or_else(|| kind.into());
    let details = serde_json::json!({ "member": left.member, "pid": left.pid, "started": left.started });
    record_aborted(
        state,
        &format!("postgres/{}", left.cluster),
        details,
        (&name, kind, &left.cluster),
        left.started,
        message,
    );
    Ok(())
}

/// Records an interrupted drill: a `drill-aborted` event (which alerts)
/// and an aborted run, `(name, kind, target)`, in the drill history.
fn record_aborted(
    state: &StateDir,
    source: &str,
    details: serde_json::Value,
    (name, kind, target): (&str, &str, &str),
    started: DateTime<Utc>,
    message: String,
) {
    crate::record(
        state,
        &cirkel_state::Event::new(source, cirkel_state::EventKind::DrillAborted, message.clone()).with(details),
    );
    let run = cirkel_notify::drills::DrillRun {
        id: 0,
        name: name.to_string(),
        kind: kind.to_string(),
        target: target.to_string(),
        started_at: started,
        finished_at: Utc::now(),
        outcome: cirkel_notify::drills::Outcome::Aborted,
        rto_s: None,
        rto_target_s: None,
        writes_lost: 0,
        reason: message,
        report: None,
    };
    let stored = cirkel_notify::Store::open_in(state.root()).map_err(|e| e.to_string());
    if let Err(e) = stored.and_then(|s| s.record_drill(&run).map_err(|e| e.to_string())) {
        tracing::error!("the interrupted drill could not be recorded: {e}");
    }
}

/// The same for a scenario's fault outside PostgreSQL (a killed service,
/// a repository moved aside: [`crate::faults`]).
fn undo_scenario_leftover(state: &StateDir) {
    let (left, done) = match crate::faults::undo_leftover(state) {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("a scenario's leftover fault could not be read: {e:#}");
            return;
        }
    };
    let message = format!(
        "the {} scenario started at {} was interrupted before it undid its fault: {done}",
        left.scenario, left.started
    );
    let details = serde_json::json!({ "scenario": left.scenario, "fault": left.fault, "pid": left.pid });
    let name = format!("scenario-{}", left.scenario);
    let source = format!("drill/{}", left.scenario);
    record_aborted(state, &source, details, (&name, "scenario", &left.scenario), left.started, message);
}

/// What holds a drill back: serious alarms firing and open incidents,
/// less what drills caused: those whose source or check is one of
/// `drilled`, and alarms raised during or just after a drill of their
/// source.
pub fn blockers_except(state: &StateDir, drilled: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(Some(p)) = state.load_json::<Published>(ALARMS_FILE) {
        // An alarm raised on a source's datapoints from a drill of it is
        // the drill's, though judged after it.
        let recent = DrillWindows::recent(state);
        for a in p.alarms {
            let serious = matches!(a.severity.as_str(), "high" | "critical");
            let ours = a.labels.get("source").is_some_and(|s| drilled.contains(s))
                || a.labels.get("check").is_some_and(|c| drilled.contains(&format!("check/{c}")))
                || a.labels.get("source").is_some_and(|s| recent.covers(s, a.since, ALARM_AFTER_DRILL));
            if a.state == "ALARM" && serious && !ours {
                let labels: Vec<String> = a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.insert(format!("alarm {} {{{}}} is firing ({})", a.alarm, labels.join(","), a.severity));
            }
        }
    }
    if state.root().join(cirkel_notify::store::FILE_NAME).exists()
        && let Ok(store) = cirkel_notify::Store::open_in(state.root())
        && let Ok(open) = store.incidents(false)
    {
        for i in open.into_iter().filter(|i| !drilled.contains(&i.source)) {
            out.insert(format!("incident #{} is open: {}", i.id, i.title));
        }
    }
    out
}

/// The drills seen ending, per source: what one of them caused is the
/// drill's doing, even when its event is recorded after the drill ended
/// (a watcher records a failover once its timeline is complete).
#[derive(Debug, Default)]
pub struct DrillWindows(std::collections::HashMap<String, Vec<Window>>);

/// When a drill started and ended.
type Window = (DateTime<Utc>, DateTime<Utc>);

impl DrillWindows {
    /// Takes a `drill` event's window (its `started` to its end).
    pub fn observe(&mut self, e: &cirkel_state::Event) {
        if e.kind != cirkel_state::EventKind::Drill {
            return;
        }
        let Some(started) = e.details.get("started").and_then(|s| s.as_str()).and_then(|s| s.parse().ok()) else {
            return;
        };
        let windows = self.0.entry(e.source.clone()).or_default();
        windows.retain(|(_, end)| e.time - *end < chrono::Duration::hours(2));
        windows.push((started, e.time));
    }

    /// Whether `e` happened inside a drill of its source that has ended:
    /// when the failure began (a Redis failover's `last_seen_ok`, a
    /// PostgreSQL failover's `detected`), else when it was recorded. An alarm's change counts up to
    /// [`ALARM_AFTER_DRILL`] after the drill: it is judged at the end of
    /// its period, on datapoints from the drill.
    pub fn caused(&self, e: &cirkel_state::Event) -> bool {
        let grace = match e.kind {
            cirkel_state::EventKind::AlarmRaised | cirkel_state::EventKind::AlarmCleared => ALARM_AFTER_DRILL,
            _ => chrono::Duration::zero(),
        };
        let at = ["last_seen_ok", "detected"]
            .iter()
            .find_map(|k| e.details.get(*k).and_then(|s| s.as_str()).and_then(|s| s.parse::<DateTime<Utc>>().ok()))
            .unwrap_or(e.time);
        self.covers(subject(&e.source), at, grace)
    }

    /// Whether a drill of `source` ran at `at`, or ended at most `grace` before.
    pub fn covers(&self, source: &str, at: DateTime<Utc>, grace: chrono::Duration) -> bool {
        self.0.get(source).is_some_and(|w| w.iter().any(|(a, b)| at >= *a && at <= *b + grace))
    }

    /// The drills that ended lately, from the tail of the event log.
    pub fn recent(state: &StateDir) -> DrillWindows {
        const TAIL: u64 = 512 << 10;
        let path = state.root().join("events.jsonl");
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // A read from the middle of a line drops that line only.
        let (events, _) = crate::api::tail::read_from(&path, len.saturating_sub(TAIL));
        let mut w = DrillWindows::default();
        for e in &events {
            w.observe(e);
        }
        w
    }
}

/// The source an event concerns for drills: a scheduled job's
/// (`schedule/redis/cache`) is its source's (`redis/cache`).
pub fn subject(source: &str) -> &str {
    source.strip_prefix("schedule/").unwrap_or(source)
}

/// How long after a drill its source's alarm changes are still the
/// drill's: two of the built-in alarms' one-minute periods.
pub const ALARM_AFTER_DRILL: chrono::Duration = chrono::Duration::minutes(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_detected_during_a_drill_is_the_drills_though_recorded_after_it() {
        use cirkel_state::{Event, EventKind};
        let mut w = DrillWindows::default();
        let t0 = Utc::now() - chrono::Duration::seconds(30);
        let mut drill = Event::new("postgres/main", EventKind::Drill, "aborted")
            .with(serde_json::json!({ "started": t0, "outcome": "aborted" }));
        drill.time = t0 + chrono::Duration::seconds(5);
        w.observe(&drill);
        let mut failover = Event::new("postgres/main", EventKind::Failover, "failover a → b")
            .with(serde_json::json!({ "detected": t0 + chrono::Duration::seconds(2) }));
        failover.time = t0 + chrono::Duration::seconds(7);
        assert!(w.caused(&failover), "detected inside the drill");
        failover.details = serde_json::json!({ "detected": t0 + chrono::Duration::seconds(6) });
        assert!(!w.caused(&failover), "detected after it");
        let mut other = failover.clone();
        other.source = "postgres/other".into();
        other.details = serde_json::json!({ "detected": t0 + chrono::Duration::seconds(2) });
        assert!(!w.caused(&other), "another source");
        // A scheduled job's failure is its source's.
        let mut job = Event::new("schedule/postgres/main", EventKind::JobFailed, "backup failed");
        job.time = t0 + chrono::Duration::seconds(3);
        assert!(w.caused(&job));
    }

    #[test]
    fn a_quiet_estate_holds_nothing_back_and_a_firing_alarm_does_unless_it_is_the_drills_own() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        assert!(blockers(&state, None).is_empty());
        let published = serde_json::json!({
            "updated": chrono::Utc::now(),
            "alarms": [
                { "alarm": "member-down", "labels": { "source": "postgres/main", "member": "a" }, "severity": "critical",
                  "state": "ALARM", "reason": "r", "since": chrono::Utc::now() },
                { "alarm": "backup-age", "labels": { "source": "files/www" }, "severity": "medium",
                  "state": "ALARM", "reason": "r", "since": chrono::Utc::now() },
                { "alarm": "lag", "labels": { "source": "redis/cache" }, "severity": "high",
                  "state": "OK", "reason": "r", "since": chrono::Utc::now() }
            ],
            "checks": []
        });
        state.save_json(ALARMS_FILE, &published).unwrap();
        let all = blockers(&state, None);
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all.iter().next().unwrap().contains("member-down"));
        assert!(blockers(&state, Some("postgres/main")).is_empty(), "the drill's own source");
        assert_eq!(blockers(&state, Some("redis/cache")).len(), 1);
    }

    #[test]
    fn the_drill_lock_names_the_source_while_held() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.ensure().unwrap();
        assert_eq!(drilling(&state), None);
        let mut f = state.open_private("drill.lock", false).unwrap();
        f.try_lock().unwrap();
        write!(f, "42 postgres/main").unwrap();
        assert_eq!(drilling(&state).as_deref(), Some("postgres/main"));
        f.unlock().unwrap();
        assert_eq!(drilling(&state), None);
    }
}
