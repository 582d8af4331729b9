//! The evaluation against CloudWatch's documentation: the two tables of
//! "How alarm state is evaluated when data is missing" (3 out of 3 and 2
//! out of 3 alarms over 5 retrieved datapoints), then every pattern of
//! breaching, within-threshold and missing datapoints for every M out of
//! N up to 5, against a reference written from the documentation's prose.

use std::time::Duration;

use cirkel_alarm::{AlarmSpec, AlarmState, Comparison, Selector, Severity, Statistic, TreatMissing, evaluate};

use AlarmState::{Alarm, InsufficientData as Insufficient, Ok};

const TREATMENTS: [TreatMissing; 4] =
    [TreatMissing::Missing, TreatMissing::Ignore, TreatMissing::Breaching, TreatMissing::NotBreaching];
const STATES: [AlarmState; 3] = [Ok, Alarm, Insufficient];

fn spec(n: u32, m: u32, treat: TreatMissing) -> AlarmSpec {
    AlarmSpec {
        name: "t".into(),
        metric: Selector::parse("m").unwrap(),
        statistic: Statistic::Maximum,
        period: Duration::from_secs(60),
        evaluation_periods: n,
        datapoints_to_alarm: m,
        comparison: Comparison::GreaterThanThreshold,
        threshold: 300.0,
        treat_missing_data: treat,
        severity: Severity::High,
        description: String::new(),
        rate: false,
    }
}

/// `0` within the threshold, `X` breaching, `-` missing, oldest first.
fn points(pattern: &str) -> Vec<Option<f64>> {
    pattern
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| match c {
            '0' => Some(100.0),
            'X' => Some(400.0),
            '-' => None,
            _ => panic!("bad pattern {pattern}"),
        })
        .collect()
}

/// What a table cell says: a state, or "retain current state".
#[derive(Clone, Copy, Debug)]
enum Cell {
    Is(AlarmState),
    Retain,
}
use Cell::{Is, Retain};

fn check_table(n: u32, m: u32, rows: &[(&str, [Cell; 4])]) {
    for (pattern, cells) in rows {
        for (treat, cell) in TREATMENTS.iter().zip(cells) {
            for current in STATES {
                let (got, reason) = evaluate(&spec(n, m, *treat), &points(pattern), current);
                let want = match cell {
                    Is(s) => *s,
                    Retain => current,
                };
                assert_eq!(got, want, "{m} of {n}, `{pattern}`, {treat}, from {current}: {}", reason.text);
                assert!(!reason.text.is_empty());
            }
        }
    }
}

#[test]
fn the_documented_table_for_3_out_of_3() {
    check_table(
        3,
        3,
        &[
            ("0 - X - X", [Is(Ok), Is(Ok), Is(Ok), Is(Ok)]),
            ("0 - - - -", [Is(Ok), Is(Ok), Is(Ok), Is(Ok)]),
            ("- - - - -", [Is(Insufficient), Retain, Is(Alarm), Is(Ok)]),
            ("0 X X - X", [Is(Alarm), Is(Alarm), Is(Alarm), Is(Alarm)]),
            ("- - - - X", [Is(Insufficient), Retain, Is(Alarm), Is(Ok)]),
            ("X - - - -", [Is(Alarm), Retain, Is(Alarm), Is(Ok)]),
        ],
    );
}

#[test]
fn the_documented_table_for_2_out_of_3() {
    check_table(
        3,
        2,
        &[
            ("0 - X - X", [Is(Alarm), Is(Alarm), Is(Alarm), Is(Alarm)]),
            ("0 0 X 0 X", [Is(Alarm), Is(Alarm), Is(Alarm), Is(Alarm)]),
            ("0 - X - -", [Is(Ok), Is(Ok), Is(Alarm), Is(Ok)]),
            ("- - - - 0", [Is(Ok), Is(Ok), Is(Alarm), Is(Ok)]),
            ("- - - - X", [Is(Insufficient), Retain, Is(Alarm), Is(Ok)]),
        ],
    );
}

/// The documentation's rules, written out one by one:
/// 1. With no missing datapoints, or enough real ones (at least N), the
///    most recent N real datapoints are evaluated.
/// 2. With fewer, every real datapoint of the range is evaluated and
///    missing ones fill in "as few times as possible", N in all: the
///    newest missing periods.
/// 3. breaching / notBreaching: filled-in points count as such; M
///    breaching of the N alarms.
/// 4. missing / ignore: the real points decide when they can (M breach:
///    ALARM; one within the threshold: OK). Otherwise ignore keeps the
///    state, and missing alarms only when the oldest evaluated datapoint
///    is a real (breaching) one, else INSUFFICIENT_DATA.
/// 5. Nothing real at all: missing → INSUFFICIENT_DATA, ignore → keep,
///    breaching → ALARM, notBreaching → OK.
fn reference(n: usize, m: usize, treat: TreatMissing, pattern: &[char], current: AlarmState) -> AlarmState {
    let real: Vec<(usize, bool)> =
        pattern.iter().enumerate().filter(|(_, c)| **c != '-').map(|(i, c)| (i, *c == 'X')).collect();
    if real.len() >= n {
        let breaching = real.iter().rev().take(n).filter(|(_, x)| *x).count();
        return if breaching >= m { Alarm } else { Ok };
    }
    if real.is_empty() {
        return match treat {
            TreatMissing::Missing => Insufficient,
            TreatMissing::Ignore => current,
            TreatMissing::Breaching => Alarm,
            TreatMissing::NotBreaching => Ok,
        };
    }
    let fill = n - real.len();
    let mut newest_gaps: Vec<usize> = Vec::new();
    for i in (0..pattern.len()).rev() {
        if pattern[i] == '-' && newest_gaps.len() < fill {
            newest_gaps.push(i);
        }
    }
    let oldest_real = real[0].0;
    let oldest_evaluated_is_real = newest_gaps.iter().all(|&g| g > oldest_real);
    let breaching = real.iter().filter(|(_, x)| *x).count();
    let within = real.len() - breaching;
    match treat {
        TreatMissing::Breaching => {
            if breaching + fill >= m {
                Alarm
            } else {
                Ok
            }
        }
        TreatMissing::NotBreaching => {
            if breaching >= m {
                Alarm
            } else {
                Ok
            }
        }
        TreatMissing::Missing | TreatMissing::Ignore => {
            if breaching >= m {
                Alarm
            } else if within > 0 {
                Ok
            } else if treat == TreatMissing::Ignore {
                current
            } else if oldest_evaluated_is_real {
                Alarm
            } else {
                Insufficient
            }
        }
    }
}

#[test]
fn every_pattern_up_to_5_periods_matches_the_reference() {
    let mut checked = 0u64;
    for n in 1..=5usize {
        let len = n + 2;
        let total = 3usize.pow(len as u32);
        for code in 0..total {
            let mut c = code;
            let pattern: Vec<char> = (0..len)
                .map(|_| {
                    let ch = ['0', 'X', '-'][c % 3];
                    c /= 3;
                    ch
                })
                .collect();
            let text: String = pattern.iter().collect();
            let datapoints = points(&text);
            for m in 1..=n {
                for treat in TREATMENTS {
                    for current in STATES {
                        let want = reference(n, m, treat, &pattern, current);
                        let (got, reason) = evaluate(&spec(n as u32, m as u32, treat), &datapoints, current);
                        assert_eq!(got, want, "{m} of {n}, `{text}`, {treat}, from {current}: {}", reason.text);
                        assert_eq!(reason.datapoints.len(), n, "{text}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 100_000, "{checked}");
}

#[test]
fn reasons_name_the_datapoints() {
    let (state, reason) = evaluate(
        &spec(3, 3, TreatMissing::Missing),
        &[Some(1.0), Some(2.0), Some(412.0), Some(530.0), Some(611.0)],
        Ok,
    );
    assert_eq!(state, Alarm);
    assert_eq!(reason.text, "3 of the last 3 datapoints (1 min each) were above 300: 412, 530, 611");
    assert_eq!(reason.datapoints, vec![Some(412.0), Some(530.0), Some(611.0)]);

    let (state, reason) = evaluate(&spec(3, 2, TreatMissing::Missing), &points("- - X 0 0"), Alarm);
    assert_eq!(state, Ok);
    assert!(
        reason.text.starts_with("1 of the last 3 datapoints (1 min each) were above 300, fewer than the 2"),
        "{}",
        reason.text
    );

    let (_, reason) = evaluate(&spec(1, 1, TreatMissing::Ignore), &points("- - -"), Alarm);
    assert!(
        reason.text.contains("no datapoint in the last 3 periods") && reason.text.contains("stays ALARM"),
        "{}",
        reason.text
    );

    let (state, reason) = evaluate(&spec(3, 3, TreatMissing::Missing), &points("X - - - -"), Insufficient);
    assert_eq!(state, Alarm);
    assert!(reason.text.contains("400, -, -"), "{}", reason.text);
}

#[test]
fn nan_infinities_and_short_ranges() {
    // NaN is a missing datapoint, not one within the threshold.
    let (state, _) = evaluate(&spec(1, 1, TreatMissing::Missing), &[Some(f64::NAN)], Ok);
    assert_eq!(state, Insufficient);
    let (state, reason) = evaluate(&spec(1, 1, TreatMissing::Missing), &[Some(f64::INFINITY)], Ok);
    assert_eq!(state, Alarm);
    assert!(reason.text.ends_with("+Inf"), "{}", reason.text);
    // A range shorter than N reads as preceded by missing periods.
    let (state, _) = evaluate(&spec(3, 3, TreatMissing::Breaching), &points("X"), Ok);
    assert_eq!(state, Alarm);
    let (state, _) = evaluate(&spec(3, 3, TreatMissing::Missing), &[], Alarm);
    assert_eq!(state, Insufficient);
    // Every comparison at its edge.
    let mut s = spec(1, 1, TreatMissing::Missing);
    for (c, at_threshold) in [
        (Comparison::GreaterThanThreshold, Ok),
        (Comparison::GreaterThanOrEqualToThreshold, Alarm),
        (Comparison::LessThanThreshold, Ok),
        (Comparison::LessThanOrEqualToThreshold, Alarm),
    ] {
        s.comparison = c;
        assert_eq!(evaluate(&s, &[Some(300.0)], Insufficient).0, at_threshold, "{c}");
    }
}
