//! One evaluation of one alarm instance, following Amazon CloudWatch's
//! documented semantics ("Evaluating an alarm", "Configuring how
//! CloudWatch alarms treat missing data"), so that an operator who knows
//! CloudWatch alarms can predict ours.
//!
//! The caller hands over an *evaluation range*: more periods than the
//! alarm's N ([`evaluation_range`]), oldest first, `None` for a period
//! without a datapoint. Then:
//!
//! - With N or more real datapoints in the range, the newest N real ones
//!   decide: M or more breaching is ALARM, fewer is OK. How missing data
//!   is treated does not matter.
//! - With none, the treatment alone decides: `missing` gives
//!   INSUFFICIENT_DATA, `ignore` keeps the state, `breaching` ALARM,
//!   `notBreaching` OK.
//! - With some but fewer than N, every real datapoint of the range is
//!   evaluated, together with the newest missing periods, as few as make
//!   N. `breaching` and `notBreaching` fill those in and count. Under
//!   `missing` and `ignore` the real datapoints alone decide when they
//!   can: M breaching is ALARM, any datapoint within the threshold is OK.
//!   When every real one breaches but there are fewer than M, `ignore`
//!   keeps the state, and `missing` gives ALARM when the oldest evaluated
//!   datapoint is a real one (the metric breached, then stopped) and
//!   INSUFFICIENT_DATA when the evaluation starts with missing periods.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::period_words;
use crate::{AlarmSpec, AlarmState, TreatMissing};

/// Why an evaluation gave its state, in words and in numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// For people: "3 of the last 3 datapoints (1 min each) were above 300: 412, 530, 611".
    pub text: String,
    /// The datapoints evaluated, oldest first; `None` for a missing period.
    pub datapoints: Vec<Option<f64>>,
}

impl Reason {
    pub fn new(text: impl Into<String>) -> Reason {
        Reason { text: text.into(), datapoints: Vec::new() }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How many periods an evaluation of an N-period alarm looks at: N plus
/// two, as in CloudWatch's examples (5 datapoints for a 3-period alarm),
/// so a real datapoint shortly before a gap still counts.
pub fn evaluation_range(evaluation_periods: u32) -> usize {
    evaluation_periods as usize + 2
}

/// Evaluates one instance of `spec` over `datapoints` (oldest first, one
/// per period, the newest being the last complete period) from state
/// `current`. A NaN datapoint counts as missing.
pub fn evaluate(spec: &AlarmSpec, datapoints: &[Option<f64>], current: AlarmState) -> (AlarmState, Reason) {
    let n = spec.evaluation_periods.max(1) as usize;
    let m = (spec.datapoints_to_alarm as usize).clamp(1, n);
    // A range shorter than N is read as preceded by missing periods.
    let mut points: Vec<Option<f64>> = vec![None; n.saturating_sub(datapoints.len())];
    points.extend(datapoints.iter().map(|d| d.filter(|v| !v.is_nan())));
    let breaches = |v: f64| spec.comparison.breaches(v, spec.threshold);
    let each = period_words(spec.period);
    let words = spec.comparison.words();
    let threshold = fmt_value(spec.threshold);

    let real: Vec<usize> = (0..points.len()).filter(|&i| points[i].is_some()).collect();
    if real.len() >= n {
        let chosen: Vec<Option<f64>> = real[real.len() - n..].iter().map(|&i| points[i]).collect();
        let b = chosen.iter().flatten().filter(|&&v| breaches(v)).count();
        let list = fmt_list(&chosen);
        let (state, text) = if b >= m {
            (
                AlarmState::Alarm,
                format!("{b} of the last {n} datapoints ({each} each) were {words} {threshold}: {list}"),
            )
        } else {
            (
                AlarmState::Ok,
                format!(
                    "{b} of the last {n} datapoints ({each} each) were {words} {threshold}, fewer than the {m} that alarm: {list}"
                ),
            )
        };
        return (state, Reason { text, datapoints: chosen });
    }

    let k = points.len();
    if real.is_empty() {
        let none = format!("no datapoint in the last {k} periods ({each} each)");
        let (state, text) = match spec.treat_missing_data {
            TreatMissing::Missing => (AlarmState::InsufficientData, none),
            TreatMissing::Ignore => (current, format!("{none}; missing data is ignored, so the state stays {current}")),
            TreatMissing::Breaching => {
                (AlarmState::Alarm, format!("{none}; missing data counts as {words} {threshold}"))
            }
            TreatMissing::NotBreaching => {
                (AlarmState::Ok, format!("{none}; missing data counts as within the threshold {threshold}"))
            }
        };
        return (state, Reason { text, datapoints: vec![None; n] });
    }

    // Fewer real datapoints than N: all of them, plus the newest missing
    // periods, as few as make N.
    let fills = n - real.len();
    let mut chosen_slots: Vec<usize> = (0..points.len()).filter(|&i| points[i].is_none()).rev().take(fills).collect();
    chosen_slots.extend(&real);
    chosen_slots.sort_unstable();
    let chosen: Vec<Option<f64>> = chosen_slots.iter().map(|&i| points[i]).collect();
    let b = chosen.iter().flatten().filter(|&&v| breaches(v)).count();
    let within = real.len() - b;
    let list = fmt_list(&chosen);
    let head = format!(
        "{b} of {n} datapoints ({each} each) were {words} {threshold}, {fills} missing ({})",
        spec.treat_missing_data
    );
    let (state, text) = match spec.treat_missing_data {
        TreatMissing::Breaching if b + fills >= m => {
            (AlarmState::Alarm, format!("{head}, counted as breaching: {list}"))
        }
        TreatMissing::Breaching => {
            (AlarmState::Ok, format!("{head}, counted as breaching, fewer than the {m} that alarm: {list}"))
        }
        TreatMissing::NotBreaching if b >= m => (AlarmState::Alarm, format!("{head}: {list}")),
        TreatMissing::NotBreaching => (AlarmState::Ok, format!("{head}, fewer than the {m} that alarm: {list}")),
        TreatMissing::Missing | TreatMissing::Ignore if b >= m => (AlarmState::Alarm, format!("{head}: {list}")),
        TreatMissing::Missing | TreatMissing::Ignore if within > 0 => {
            (AlarmState::Ok, format!("{head}, and {within} within the threshold: {list}"))
        }
        TreatMissing::Ignore => {
            (current, format!("{head}; not enough to decide, so the state stays {current}: {list}"))
        }
        TreatMissing::Missing if chosen.first().is_some_and(Option::is_some) => {
            (AlarmState::Alarm, format!("{head}; every datapoint since the oldest evaluated one breached: {list}"))
        }
        TreatMissing::Missing => {
            (AlarmState::InsufficientData, format!("{head}; not enough datapoints to decide: {list}"))
        }
    };
    (state, Reason { text, datapoints: chosen })
}

/// A value as reasons print it: `412`, `0.25`, `+Inf`.
pub fn fmt_value(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn fmt_list(points: &[Option<f64>]) -> String {
    points.iter().map(|p| p.map_or_else(|| "-".to_string(), fmt_value)).collect::<Vec<_>>().join(", ")
}
