//! The engine on a simulated clock: instances per label set, one
//! evaluation per period boundary, leaps and steps back of the clock,
//! snapshots, and its bounds.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cirkel_alarm::engine::{FORGET_AFTER, MAX_INSTANCES};
use cirkel_alarm::{
    AlarmSpec, AlarmState, Comparison, Engine, Error, Labels, Selector, Severity, Snapshot, Statistic, TreatMissing,
    defaults, exposition, scraped_labels,
};

const P: u64 = 60;

/// The start of period `n` (60 s periods), plus `s` seconds.
fn at(n: u64, s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_040 + n * P + s)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn rpo_only() -> Vec<AlarmSpec> {
    defaults().into_iter().filter(|s| s.name == "rpo-exposure").collect()
}

fn spec(name: &str, selector: &str, n: u32, m: u32, treat: TreatMissing) -> AlarmSpec {
    AlarmSpec {
        name: name.into(),
        metric: Selector::parse(selector).unwrap(),
        statistic: Statistic::Maximum,
        period: Duration::from_secs(P),
        evaluation_periods: n,
        datapoints_to_alarm: m,
        comparison: Comparison::GreaterThanThreshold,
        threshold: 10.0,
        treat_missing_data: treat,
        severity: Severity::Low,
        description: String::new(),
        rate: false,
    }
}

#[test]
fn each_series_is_its_own_instance() {
    let mut e = Engine::new(rpo_only()).unwrap();
    assert!(e.evaluate(at(0, 0)).is_empty());
    let main = labels(&[("source", "postgres/main")]);
    let cache = labels(&[("source", "redis/cache")]);
    e.observe(at(0, 10), "cirkel_rpo_exposure_seconds", &main, 412.0);
    e.observe(at(0, 20), "cirkel_rpo_exposure_seconds", &cache, 12.0);
    e.observe(at(0, 30), "cirkel_backup_age_seconds", &main, 1e9);
    let states = e.states();
    assert_eq!(states.len(), 2);
    assert!(states.iter().all(|s| s.state == AlarmState::InsufficientData));
    assert_eq!(states[0].since, at(0, 10));

    let t = e.evaluate(at(1, 0));
    assert_eq!(t.len(), 2);
    let to: BTreeMap<&str, AlarmState> = t.iter().map(|t| (t.labels["source"].as_str(), t.to)).collect();
    assert_eq!(to["postgres/main"], AlarmState::Alarm);
    assert_eq!(to["redis/cache"], AlarmState::Ok);
    let alarm = t.iter().find(|t| t.to == AlarmState::Alarm).unwrap();
    assert_eq!(alarm.from, AlarmState::InsufficientData);
    assert_eq!(alarm.severity, Severity::Critical);
    assert_eq!(alarm.at, at(1, 0));
    assert_eq!(alarm.reason.text, "1 of the last 1 datapoints (1 min each) were above 300: 412");
    let states = e.states();
    assert_eq!(states.iter().filter(|s| s.state == AlarmState::Alarm).count(), 1);
    assert!(states.iter().all(|s| s.since == at(1, 0)));
}

#[test]
fn one_evaluation_per_period_boundary() {
    let mut e = Engine::new(vec![spec("a", "m", 1, 1, TreatMissing::Missing)]).unwrap();
    let l = labels(&[]);
    e.evaluate(at(0, 0));
    e.observe(at(0, 5), "m", &l, 50.0);
    assert_eq!(e.evaluate(at(1, 0)).len(), 1);
    // A sample within the threshold in the running period changes nothing
    // until that period is complete, however often the engine is asked.
    e.observe(at(1, 5), "m", &l, 1.0);
    for s in 0..60 {
        assert!(e.evaluate(at(1, s)).is_empty(), "second {s}");
    }
    let t = e.evaluate(at(2, 0));
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].from, t[0].to), (AlarmState::Alarm, AlarmState::Ok));
    assert!(e.evaluate(at(2, 30)).is_empty());
}

#[test]
fn a_clock_leaping_ahead_gives_one_evaluation_with_the_gap_missing() {
    let mut e = Engine::new(vec![spec("a", "m", 3, 3, TreatMissing::Breaching)]).unwrap();
    let l = labels(&[]);
    e.evaluate(at(0, 0));
    for n in 0..3 {
        e.observe(at(n, 1), "m", &l, 1.0);
    }
    let t = e.evaluate(at(3, 0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Ok);
    // A hundred periods later: one evaluation, the skipped periods missing
    // (and so breaching under this treatment), not a burst of a hundred.
    let t = e.evaluate(at(103, 7));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Alarm);
    assert_eq!(t[0].reason.datapoints, vec![None, None, None]);
    assert!(e.evaluate(at(103, 59)).is_empty());
}

#[test]
fn a_clock_going_back_evaluates_nothing_until_it_passes_the_last_boundary() {
    let mut e = Engine::new(vec![spec("a", "m", 1, 1, TreatMissing::Missing)]).unwrap();
    let l = labels(&[]);
    e.evaluate(at(10, 0));
    e.observe(at(10, 30), "m", &l, 1.0);
    let t = e.evaluate(at(11, 0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Ok);
    // The clock steps back three periods; breaching samples arrive. Any
    // evaluation now would see them, yet none happens before 12.
    e.observe(at(8, 30), "m", &l, 99.0);
    e.observe(at(10, 40), "m", &l, 99.0);
    for (n, s) in [(8, 59), (9, 0), (10, 0), (11, 0), (11, 59)] {
        assert!(e.evaluate(at(n, s)).is_empty(), "{n}:{s}");
    }
    e.observe(at(11, 30), "m", &l, 99.0);
    let t = e.evaluate(at(12, 0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Alarm);
}

#[test]
fn snapshots_restore_states_and_the_schedule() {
    let mut e = Engine::new(vec![
        spec("a", "m", 1, 1, TreatMissing::Missing),
        spec("b", "m{x!=\"gone\"}", 1, 1, TreatMissing::Missing),
    ])
    .unwrap();
    e.evaluate(at(0, 0));
    e.observe(at(0, 1), "m", &labels(&[("x", "1")]), 50.0);
    e.observe(at(0, 1), "m", &labels(&[("x", "2")]), 5.0);
    assert_eq!(e.evaluate(at(1, 0)).len(), 4);
    let snap = e.snapshot();
    let json = serde_json::to_string(&snap).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    let mut r = Engine::new(vec![
        spec("a", "m", 1, 1, TreatMissing::Missing),
        // "b" now excludes x="2": that instance is not restored.
        spec("b", "m{x!=\"2\"}", 1, 1, TreatMissing::Missing),
        spec("c", "m", 1, 1, TreatMissing::Missing),
    ])
    .unwrap();
    r.restore(back);
    let states = r.states();
    assert_eq!(states.len(), 3, "{states:?}");
    let a1 = states.iter().find(|s| s.alarm == "a" && s.labels["x"] == "1").unwrap();
    assert_eq!((a1.state, a1.since), (AlarmState::Alarm, at(1, 0)));
    assert!(a1.reason.text.contains("above 10: 50"));
    // The restored schedule: no second evaluation of boundary 1 for "a"
    // and "b"; "c" was never evaluated, so its first call only notes it.
    assert!(r.evaluate(at(1, 30)).is_empty());
    // Samples are not kept across a restart: without new ones, the
    // periods are missing.
    let t = r.evaluate(at(2, 0));
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(t.iter().all(|t| t.to == AlarmState::InsufficientData));
}

#[test]
fn alarms_are_checked_when_the_engine_is_built() {
    let mut twice = vec![spec("a", "m", 1, 1, TreatMissing::Missing), spec("a", "n", 1, 1, TreatMissing::Missing)];
    assert!(
        matches!(Engine::new(twice.clone()), Err(Error::Spec { ref message, .. }) if message.contains("two alarms"))
    );
    twice.pop();
    twice[0].datapoints_to_alarm = 2;
    let err = Engine::new(twice.clone()).err().unwrap().to_string();
    assert!(err.contains("datapoints_to_alarm is 2 with evaluation_periods 1"), "{err}");
    twice[0].datapoints_to_alarm = 1;
    twice[0].period = Duration::from_millis(1500);
    assert!(Engine::new(twice.clone()).is_err());
    twice[0].period = Duration::from_secs(60);
    twice[0].threshold = f64::NAN;
    assert!(Engine::new(twice.clone()).is_err());
    twice[0].threshold = 1.0;
    twice[0].period = Duration::from_secs(u64::MAX);
    assert!(Engine::new(twice.clone()).err().unwrap().to_string().contains("more than a day"));
    twice[0].period = Duration::from_secs(3600);
    twice[0].evaluation_periods = 24;
    assert!(Engine::new(twice.clone()).is_ok());
    twice[0].evaluation_periods = 25;
    assert!(Engine::new(twice.clone()).is_err());
    twice[0].period = Duration::from_secs(60);
    twice[0].evaluation_periods = 0;
    assert!(Engine::new(twice).is_err());
}

#[test]
fn instances_are_bounded_and_vanished_series_forgotten() {
    let mut e = Engine::new(vec![spec("a", "m", 1, 1, TreatMissing::Missing)]).unwrap();
    e.evaluate(at(0, 0));
    for i in 0..=MAX_INSTANCES {
        e.observe(at(0, 1), "m", &labels(&[("i", &i.to_string())]), 1.0);
    }
    assert_eq!(e.states().len(), MAX_INSTANCES);
    assert_eq!(e.refused_samples(), 1);
    assert_eq!(e.evaluate(at(1, 0)).len(), MAX_INSTANCES);
    // No more samples: INSUFFICIENT_DATA after the range runs dry, then
    // forgotten a day later.
    let t = e.evaluate(at(4, 0));
    assert!(t.len() == MAX_INSTANCES && t.iter().all(|t| t.to == AlarmState::InsufficientData));
    let day = FORGET_AFTER.as_secs() / P;
    e.evaluate(at(4 + day - 1, 0));
    assert_eq!(e.states().len(), MAX_INSTANCES);
    e.evaluate(at(4 + day, 0));
    assert!(e.states().is_empty());
    // A series that comes back starts again as a new instance.
    e.observe(at(4 + day, 1), "m", &labels(&[("i", "7")]), 1.0);
    assert_eq!(e.states().len(), 1);
    assert_eq!(e.states()[0].state, AlarmState::InsufficientData);
}

#[test]
fn scraped_series_are_told_apart_by_their_target() {
    let mut e = Engine::new(vec![
        spec("remote", r#"node_load1{scrape="web"}"#, 1, 1, TreatMissing::Missing),
        spec("own", r#"node_load1{scrape=""}"#, 1, 1, TreatMissing::Missing),
    ])
    .unwrap();
    e.evaluate(at(0, 0));
    let text = "# TYPE node_load1 gauge\nnode_load1{cpu=\"all\"} 42\n";
    for s in exposition::parse(text).unwrap() {
        e.observe(at(0, 3), &s.name, &scraped_labels("web", s.labels), s.value);
    }
    e.observe(at(0, 4), "node_load1", &labels(&[]), 1.0);
    let t = e.evaluate(at(1, 0));
    assert_eq!(t.len(), 2);
    let remote = t.iter().find(|t| t.alarm == "remote").unwrap();
    assert_eq!(remote.to, AlarmState::Alarm);
    assert_eq!(remote.labels, labels(&[("cpu", "all"), ("scrape", "web")]));
    assert_eq!(t.iter().find(|t| t.alarm == "own").unwrap().to, AlarmState::Ok);
}

#[test]
fn m_out_of_n_over_real_samples() {
    // 2 of 3 with a percentile: the p99 of each minute is compared.
    let mut s = spec("p", "lat", 3, 2, TreatMissing::Missing);
    s.statistic = Statistic::Percentile(99.0);
    let mut e = Engine::new(vec![s]).unwrap();
    let l = labels(&[]);
    e.evaluate(at(0, 0));
    for (n, high) in [(0, true), (1, false), (2, true)] {
        for i in 0..100 {
            let v = if high && i >= 98 { 500.0 } else { 1.0 };
            e.observe(at(n, i % 60), "lat", &l, v);
        }
    }
    let t = e.evaluate(at(3, 0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Alarm);
    assert_eq!(t[0].reason.datapoints, vec![Some(500.0), Some(1.0), Some(500.0)]);
}

#[test]
fn snapshots_that_do_not_fit_are_refused_or_left_out() {
    // A state this build does not know is an error, not a guess.
    let bad = r#"{"instances":[{"alarm":"a","labels":{},"severity":"low","state":"MAYBE","reason":{"text":"","datapoints":[]},"since":{"secs_since_epoch":0,"nanos_since_epoch":0}}],"evaluated":{}}"#;
    let err = serde_json::from_str::<Snapshot>(bad).unwrap_err().to_string();
    assert!(err.contains("unknown alarm state `MAYBE`"), "{err}");
    // A schedule saved under another period starts afresh: the first
    // evaluation only notes its boundary.
    let mut e = Engine::new(vec![spec("a", "m", 1, 1, TreatMissing::Breaching)]).unwrap();
    let mut snap = Snapshot::default();
    snap.evaluated.insert("a".into(), at(5, 30));
    e.restore(snap);
    assert!(e.snapshot().evaluated.is_empty());
    e.observe(at(6, 1), "m", &labels(&[]), 1.0);
    assert!(e.evaluate(at(7, 0)).is_empty());
    assert_eq!(e.evaluate(at(8, 0)).len(), 1);
}

#[test]
fn samples_per_instance_are_bounded() {
    let mut e = Engine::new(vec![spec("a", "m", 1, 1, TreatMissing::Missing)]).unwrap();
    e.evaluate(at(0, 0));
    let l = labels(&[]);
    // The oldest samples go first: the one breaching sample is dropped.
    e.observe(at(0, 0), "m", &l, 99.0);
    for _ in 0..cirkel_alarm::engine::MAX_SAMPLES {
        e.observe(at(0, 1), "m", &l, 1.0);
    }
    let t = e.evaluate(at(1, 0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Ok);
}

#[test]
fn a_counter_alarms_on_its_rate_across_a_reset() {
    // The plan's 5xx alarm: more than 100 errors in a minute, as an average
    // rate above 100/60 per second.
    let mut s = spec("errors", "http_errors_total", 1, 1, TreatMissing::Missing);
    s.rate = true;
    s.statistic = Statistic::Average;
    s.threshold = 100.0 / 60.0;
    let mut e = Engine::new(vec![s]).unwrap();
    let l = labels(&[]);
    e.evaluate(at(0, 0));
    // 40 errors a minute: within the limit.
    for (i, v) in [1000.0, 1010.0, 1020.0, 1030.0].iter().enumerate() {
        e.observe(at(0, 5 + 15 * i as u64), "http_errors_total", &l, *v);
    }
    let t = e.evaluate(at(1, 0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Ok, "{}", t[0].reason.text);
    // The server restarts (the counter drops to 0) and errors run at 8 a second.
    for (i, v) in [40.0, 160.0, 280.0].iter().enumerate() {
        e.observe(at(1, 5 + 15 * i as u64), "http_errors_total", &l, *v);
    }
    let t = e.evaluate(at(2, 0));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].to, AlarmState::Alarm, "{}", t[0].reason.text);
    // The datapoint is the average rate: (40/15 + 120/15 + 120/15) / 3.
    assert_eq!(t[0].reason.datapoints, [Some((40.0 / 15.0 + 8.0 + 8.0) / 3.0)]);
}
