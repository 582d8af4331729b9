//! Routing, silences, flapping, escalation, acknowledgement and incidents
//! applied to a real store (no worker: what is queued is what counts).

mod common;
use common::input;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use cirkel_config::Secret;
use cirkel_notify::incident::{Phase, Priority};
use cirkel_notify::route::{Decision, Maintenance, Matcher, Quiet, Window};
use cirkel_notify::{AlertInput, Error, Notifier, Payload, Receiver, ReceiverKind, Receivers, Severity, Status, Store};
use serde_json::json;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
}

fn hook(name: &str) -> Receiver {
    Receiver::new(name, ReceiverKind::Webhook { url: Secret::new("http://127.0.0.1:9/"), external_url: String::new() })
}

fn notifier(dir: &tempfile::TempDir) -> Notifier {
    let store = Arc::new(Store::open_in(dir.path()).unwrap());
    let pd = Receiver::new(
        "pagerduty",
        ReceiverKind::PagerDuty { url: "http://127.0.0.1:9/".into(), routing_key: Secret::new("k") },
    );
    let receivers = Arc::new(Receivers::new([hook("sms"), hook("slack"), hook("email"), pd]));
    Notifier::new(store, receivers)
}

fn queued(n: &Notifier) -> Vec<(String, String)> {
    n.store
        .outbox(None)
        .unwrap()
        .into_iter()
        .map(|m| {
            let status = match serde_json::from_str::<Payload>(&m.payload).unwrap() {
                Payload::Json { body } => {
                    body.get("status").or(body.get("event_action")).and_then(|v| v.as_str()).unwrap_or("").to_string()
                }
                other => format!("{other:?}"),
            };
            (m.receiver, status)
        })
        .collect()
}

#[test]
fn the_store_is_owner_only_strict_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join("cirkel.db")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(store.schema_version().unwrap(), 2);
    store.add_silence(&[], t(10), "r", "ana", t(0)).unwrap();
    // SQLite gives its journal files the database's permissions.
    for side in ["cirkel.db-wal", "cirkel.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(side)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{side}");
    }
    drop(store);
    // Reopening an up-to-date store changes nothing.
    assert_eq!(Store::open_in(dir.path()).unwrap().schema_version().unwrap(), 2);
    // A store from a newer cirkel is refused, saying what to do.
    let conn = rusqlite::Connection::open(dir.path().join("cirkel.db")).unwrap();
    conn.pragma_update(None, "user_version", 7).unwrap();
    drop(conn);
    let err = Store::open_in(dir.path()).err().unwrap();
    assert!(matches!(err, Error::Schema { found: 7, known: 2, .. }), "{err}");
    assert!(err.to_string().contains("run the newer cirkel"));
}

#[test]
fn a_symlink_in_place_of_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("cirkel.db")).unwrap();
    assert!(matches!(Store::open_in(dir.path()), Err(Error::Io { .. })));
}

#[test]
fn the_timeline_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let n = notifier(&dir);
    let h = n.handle(&input("primary-down", "main", Severity::Critical, Status::Firing, t(0))).unwrap();
    assert!(h.incident.is_some());
    drop(n);
    let conn = rusqlite::Connection::open(dir.path().join("cirkel.db")).unwrap();
    let err = conn.execute("UPDATE timeline SET text = 'rewritten'", []).unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(conn.execute("DELETE FROM timeline", []).unwrap_err().to_string().contains("append-only"));
}

#[test]
fn one_message_per_transition_per_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let n = notifier(&dir);
    let h = n.handle(&input("lag", "main", Severity::High, Status::Firing, t(0))).unwrap();
    assert_eq!(h.decision, Decision::Notify(vec!["slack".into(), "email".into()]));
    // The same alarm seen again while firing: nothing more.
    let again = n.handle(&input("lag", "main", Severity::High, Status::Firing, t(10))).unwrap();
    assert_eq!(again.decision, Decision::Quiet(Quiet::Duplicate));
    assert_eq!(again.alert, h.alert);
    let resolved = n.handle(&input("lag", "main", Severity::High, Status::Resolved, t(20))).unwrap();
    assert_eq!(resolved.alert, h.alert);
    assert_eq!(
        queued(&n),
        [("slack", "firing"), ("email", "firing"), ("slack", "resolved"), ("email", "resolved")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let alert = n.store.alert(h.alert.unwrap()).unwrap();
    assert_eq!(alert.status, Status::Resolved);
    assert_eq!(alert.resolved_at, Some(t(20)));
    // A resolution of nothing open sends nothing.
    let stray = n.handle(&input("lag", "main", Severity::High, Status::Resolved, t(30))).unwrap();
    assert_eq!(stray.decision, Decision::Quiet(Quiet::NothingOpen));
    assert_eq!(n.store.outbox(None).unwrap().len(), 4);
}

#[test]
fn silences_and_maintenance_windows_suppress_until_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = notifier(&dir);
    let id = n
        .store
        .add_silence(&[Matcher::parse("cluster=main").unwrap()], t(3600), "failover drill", "ana", t(0))
        .unwrap();
    let h = n.handle(&input("lag", "main", Severity::High, Status::Firing, t(10))).unwrap();
    assert_eq!(h.decision, Decision::Quiet(Quiet::Silenced(format!("silence {id} by ana (failover drill)"))));
    // Other clusters are not silenced.
    let other = n.handle(&input("lag", "replica", Severity::High, Status::Firing, t(10))).unwrap();
    assert!(matches!(other.decision, Decision::Notify(_)));
    // Expired early, the silence stops.
    n.store.expire_silence(id, t(20)).unwrap();
    assert!(n.store.silences(t(21)).unwrap().is_empty());
    let after = n.handle(&input("backup-late", "main", Severity::High, Status::Firing, t(30))).unwrap();
    assert!(matches!(after.decision, Decision::Notify(_)));
    assert!(matches!(n.store.expire_silence(99, t(0)), Err(Error::NotFound { what: "silence", id: 99 })));

    n.maintenance.push(Maintenance {
        matchers: vec![Matcher::parse("cluster=main").unwrap()],
        window: Window::Between { start: t(100), end: t(200) },
    });
    let during = n.handle(&input("disk", "main", Severity::Medium, Status::Firing, t(150))).unwrap();
    assert_eq!(during.decision, Decision::Quiet(Quiet::Silenced("maintenance window 1".into())));
    // Its resolution is not sent either: nobody heard the firing.
    let cleared = n.handle(&input("disk", "main", Severity::Medium, Status::Resolved, t(160))).unwrap();
    assert_eq!(cleared.decision, Decision::Quiet(Quiet::FiringNotSent));
    let later = n.handle(&input("disk", "main", Severity::Medium, Status::Firing, t(250))).unwrap();
    assert!(matches!(later.decision, Decision::Notify(_)));
}

#[test]
fn a_flapping_check_sends_a_bounded_number_of_messages() {
    let dir = tempfile::tempdir().unwrap();
    let n = notifier(&dir);
    // Unhealthy and healthy every 10 s for an hour.
    for i in 0..360 {
        let status = if i % 2 == 0 { Status::Firing } else { Status::Resolved };
        n.handle(&input("check-api", "main", Severity::Medium, status, t(i * 10))).unwrap();
    }
    let sent = n.store.outbox(Some("email")).unwrap().len();
    // The default re-notify interval is 15 minutes: at most a firing and
    // its resolution per interval.
    assert!(sent <= 2 * (3600 / 900 + 1), "{sent} messages");
    assert!(sent >= 4, "{sent} messages");
    assert_eq!(n.store.alerts(true).unwrap().len(), 180, "every firing is still recorded");
}

#[test]
fn an_unacknowledged_alert_escalates_level_by_level_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = notifier(&dir);
    n.escalation.levels.insert(
        Severity::Critical,
        vec![
            cirkel_notify::escalate::Level { after: Duration::from_secs(300), receivers: vec!["pagerduty".into()] },
            cirkel_notify::escalate::Level { after: Duration::from_secs(900), receivers: vec!["sms".into()] },
        ],
    );
    let h = n.handle(&input("primary-down", "main", Severity::Critical, Status::Firing, t(0))).unwrap();
    let id = h.alert.unwrap();
    assert!(n.escalate(t(299)).unwrap().is_empty());
    let s1 = n.escalate(t(300)).unwrap();
    assert_eq!(s1.len(), 1);
    assert_eq!(s1[0].level, 1);
    // Once per level, whatever the number of calls.
    assert!(n.escalate(t(301)).unwrap().is_empty());
    assert_eq!(n.store.alert(id).unwrap().level, 1);
    // Down past both deadlines: one level per call, in order.
    let late = n.escalate(t(5000)).unwrap();
    assert_eq!(late[0].level, 2);
    assert!(n.escalate(t(6000)).unwrap().is_empty());
    let before = n.store.outbox(None).unwrap().len();
    let acked = n.acknowledge(id, "ana", t(6001)).unwrap();
    assert_eq!(acked.acknowledged_by.as_deref(), Some("ana"));
    // PagerDuty hears of the acknowledgement; the webhooks have none.
    let q = queued(&n);
    assert_eq!(q.len(), before + 1);
    assert_eq!(q.last().unwrap(), &("pagerduty".to_string(), "acknowledge".to_string()));

    let n2 = notifier(&tempfile::tempdir().unwrap());
    let h2 = n2.handle(&input("primary-down", "main", Severity::Critical, Status::Firing, t(0))).unwrap();
    n2.acknowledge(h2.alert.unwrap(), "bo", t(10)).unwrap();
    assert!(n2.escalate(t(100_000)).unwrap().is_empty(), "acknowledged: never escalates");
    assert!(matches!(n2.acknowledge(42, "bo", t(11)), Err(Error::NotFound { what: "alert", id: 42 })));
    let timeline = n.store.timeline(h.incident.unwrap()).unwrap();
    let kinds: Vec<&str> = timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "escalated").count(), 2);
    assert!(kinds.contains(&"acknowledged"));
}

#[test]
fn a_failover_opens_a_p1_incident_that_related_alerts_join_and_the_postmortem_measures() {
    let dir = tempfile::tempdir().unwrap();
    let n = notifier(&dir);
    let detected = t(0);
    let event = cirkel_state::Event {
        time: t(4),
        source: "postgres/main".into(),
        kind: cirkel_state::EventKind::Failover,
        severity: Severity::Critical,
        message: "failover pg1 → pg2: 0 bytes of WAL not received by pg2".into(),
        details: json!({
            "old_primary": "pg1", "new_primary": "pg2", "lost_bytes": 0,
            "detected": detected, "decided": t(1), "fenced": t(2), "promoted": t(3), "endpoint_writable": t(4),
            "promoted_after_s": 3.2, "endpoint_writable_after_s": 4.1,
        }),
    };
    let h = n.handle(&cirkel_notify::AlertInput::from_event(&event)).unwrap();
    let inc_id = h.incident.unwrap();
    let inc = n.store.incident(inc_id).unwrap();
    assert_eq!(inc.priority, Priority::P1);
    assert_eq!(inc.phase, Phase::Recovery);
    // A related alert of the same source joins it instead of opening another.
    let lag = n.handle(&input("replication-lag", "main", Severity::Critical, Status::Firing, t(60))).unwrap();
    assert_eq!(lag.incident, Some(inc_id));
    // The `failover` alarm, judged later, joins it and keeps its measures.
    let alarm = n.handle(&input("failover", "main", Severity::Critical, Status::Firing, t(61))).unwrap();
    assert_eq!(alarm.incident, Some(inc_id));
    // Another source opens its own.
    let other = n.handle(&input("primary-down", "billing", Severity::Critical, Status::Firing, t(60))).unwrap();
    assert_ne!(other.incident, Some(inc_id));
    // Below CRITICAL and unrelated: no incident.
    let minor = n.handle(&input("disk", "reports", Severity::Medium, Status::Firing, t(60))).unwrap();
    assert_eq!(minor.incident, None);
    n.store.note(inc_id, "ana", "pg1's disk failed", t(120)).unwrap();
    n.store.set_priority(other.incident.unwrap(), Priority::P2, "bo", t(130)).unwrap();
    assert_eq!(n.store.incident(other.incident.unwrap()).unwrap().priority, Priority::P2);
    assert_eq!(n.store.incidents(false).unwrap().len(), 2);
    n.store.set_phase(inc_id, Phase::Resolved, "ana", t(600)).unwrap();
    assert!(n.store.incidents(false).unwrap().iter().all(|i| i.id != inc_id));
    assert!(matches!(n.store.note(99, "ana", "x", t(0)), Err(Error::NotFound { what: "incident", .. })));

    let pm = n.store.postmortem(inc_id).unwrap();
    assert!(pm.starts_with("# Post-mortem: incident 1 — failover on postgres/main"), "{pm}");
    assert!(pm.contains("- Priority: P1"), "{pm}");
    assert!(pm.contains("- Recovery time (measured RTO): 4.1 s"), "{pm}");
    assert!(pm.contains("- Data lost: 0 bytes"), "{pm}");
    assert!(pm.contains("(after 9.9 minutes)"), "{pm}");
    for step in [
        "primary failure detected",
        "new primary promoted",
        "read-write endpoint writable",
        "ana: pg1's disk failed",
        "replication-lag [critical]",
        "recovery → resolved by ana",
    ] {
        assert!(pm.contains(step), "{step} missing:\n{pm}");
    }
    for heading in ["## Summary", "## Timeline", "## Impact", "## Root cause", "## Actions"] {
        assert!(pm.contains(heading), "{heading} missing:\n{pm}");
    }
    // The timeline is in time order: the failover's own steps come first.
    let tl = n.store.timeline(inc_id).unwrap();
    assert!(tl.windows(2).all(|w| w[0].at <= w[1].at));
    assert_eq!(tl[0].text, "primary failure detected");
}

#[test]
fn an_alarm_transition_becomes_one_alert() {
    use cirkel_alarm::{AlarmState, Reason, Transition};
    let labels = BTreeMap::from([("cluster".to_string(), "main".to_string())]);
    let tr = |from, to| Transition {
        alarm: "rpo-exposure".into(),
        labels: labels.clone(),
        severity: cirkel_alarm::Severity::Critical,
        from,
        to,
        reason: Reason::new("3 of the last 3 datapoints (1 min each) were above 300: 412, 530, 611"),
        at: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    };
    let fire = AlertInput::from_transition(&tr(AlarmState::Ok, AlarmState::Alarm)).unwrap();
    let clear = AlertInput::from_transition(&tr(AlarmState::Alarm, AlarmState::Ok)).unwrap();
    assert_eq!((fire.status, clear.status), (Status::Firing, Status::Resolved));
    assert_eq!(fire.key, clear.key);
    assert_eq!(fire.severity, Severity::Critical);
    assert_eq!(fire.summary, "rpo-exposure: 3 of the last 3 datapoints (1 min each) were above 300: 412, 530, 611");
    assert_eq!(fire.labels["alertname"], "rpo-exposure");
    assert!(AlertInput::from_transition(&tr(AlarmState::Ok, AlarmState::InsufficientData)).is_none());
}

#[test]
fn an_event_that_recurs_after_its_acknowledgement_opens_a_new_alert() {
    let dir = tempfile::tempdir().unwrap();
    let n = notifier(&dir);
    let event = |at| cirkel_state::Event {
        time: at,
        source: "redis/cache".into(),
        kind: cirkel_state::EventKind::Failover,
        severity: Severity::Critical,
        message: "failover".into(),
        details: serde_json::Value::Null,
    };
    let first = n.handle(&AlertInput::from_event(&event(t(0)))).unwrap();
    // Unacknowledged, the same event again is the same alert.
    let again = n.handle(&AlertInput::from_event(&event(t(60)))).unwrap();
    assert_eq!(again.decision, Decision::Quiet(Quiet::Duplicate));
    n.acknowledge(first.alert.unwrap(), "ana", t(120)).unwrap();
    // A week later, a second failover: a new alert, sent again.
    let week = 7 * 24 * 3600;
    let second = n.handle(&AlertInput::from_event(&event(t(week)))).unwrap();
    assert_ne!(second.alert, first.alert);
    assert!(matches!(second.decision, Decision::Notify(_)));
    assert_eq!(n.store.alert(first.alert.unwrap()).unwrap().status, Status::Resolved);
}

#[test]
fn the_daemon_and_a_command_write_the_store_at_once_without_a_lock_error() {
    // Two handles on one file, as `cirkel serve` and `cirkel alerts ack` are.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Store::open_in(dir.path()).unwrap(), Store::open_in(dir.path()).unwrap());
    let m = vec![cirkel_notify::route::Matcher::parse("cluster=main").unwrap()];
    std::thread::scope(|s| {
        for store in [&a, &b] {
            let m = &m;
            s.spawn(move || {
                for i in 0..200 {
                    let now = chrono::Utc::now();
                    store.add_silence(m, now + chrono::Duration::hours(1), &format!("r{i}"), "t", now).unwrap();
                    // A read before the write in one transaction is what used to fail.
                    store.silences(now).unwrap();
                }
            });
        }
    });
    assert_eq!(a.silences(chrono::Utc::now()).unwrap().len(), 400);
}
