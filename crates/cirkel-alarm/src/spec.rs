//! What an alarm is: the metric it watches, how samples become datapoints,
//! and when datapoints breach. Every enum here has one written form, used
//! by the configuration, the snapshot and the messages alike, so a name
//! read back always means what was written.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Selector;

/// How the samples of one period become one datapoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Statistic {
    Average,
    Sum,
    Minimum,
    Maximum,
    SampleCount,
    /// A percentile in (0, 100], written `p99` or `p99.9`.
    Percentile(f64),
}

impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statistic::Average => f.write_str("average"),
            Statistic::Sum => f.write_str("sum"),
            Statistic::Minimum => f.write_str("minimum"),
            Statistic::Maximum => f.write_str("maximum"),
            Statistic::SampleCount => f.write_str("sample_count"),
            Statistic::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl FromStr for Statistic {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "average" | "avg" => Statistic::Average,
            "sum" => Statistic::Sum,
            "minimum" | "min" => Statistic::Minimum,
            "maximum" | "max" => Statistic::Maximum,
            "sample_count" | "samplecount" | "count" => Statistic::SampleCount,
            _ => {
                let p = lower
                    .strip_prefix('p')
                    .and_then(|rest| rest.parse::<f64>().ok())
                    .filter(|p| p.is_finite() && *p > 0.0 && *p <= 100.0);
                match p {
                    Some(p) => Statistic::Percentile(p),
                    None => {
                        return Err(format!(
                            "unknown statistic `{s}`; expected average, sum, minimum, maximum, sample_count or a percentile such as p99"
                        ));
                    }
                }
            }
        })
    }
}

/// How a datapoint is compared with the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Comparison {
    GreaterThanThreshold,
    GreaterThanOrEqualToThreshold,
    LessThanThreshold,
    LessThanOrEqualToThreshold,
}

impl Comparison {
    /// Whether `value` breaches `threshold`. NaN never breaches.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterThanThreshold => value > threshold,
            Comparison::GreaterThanOrEqualToThreshold => value >= threshold,
            Comparison::LessThanThreshold => value < threshold,
            Comparison::LessThanOrEqualToThreshold => value <= threshold,
        }
    }

    /// The operator, as in `>=`.
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::GreaterThanThreshold => ">",
            Comparison::GreaterThanOrEqualToThreshold => ">=",
            Comparison::LessThanThreshold => "<",
            Comparison::LessThanOrEqualToThreshold => "<=",
        }
    }

    /// The comparison in words, for reasons: "above", "at or below".
    pub fn words(self) -> &'static str {
        match self {
            Comparison::GreaterThanThreshold => "above",
            Comparison::GreaterThanOrEqualToThreshold => "at or above",
            Comparison::LessThanThreshold => "below",
            Comparison::LessThanOrEqualToThreshold => "at or below",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Comparison::GreaterThanThreshold => "GreaterThanThreshold",
            Comparison::GreaterThanOrEqualToThreshold => "GreaterThanOrEqualToThreshold",
            Comparison::LessThanThreshold => "LessThanThreshold",
            Comparison::LessThanOrEqualToThreshold => "LessThanOrEqualToThreshold",
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Comparison {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            ">" | "GreaterThanThreshold" => Comparison::GreaterThanThreshold,
            ">=" | "GreaterThanOrEqualToThreshold" => Comparison::GreaterThanOrEqualToThreshold,
            "<" | "LessThanThreshold" => Comparison::LessThanThreshold,
            "<=" | "LessThanOrEqualToThreshold" => Comparison::LessThanOrEqualToThreshold,
            _ => {
                return Err(format!(
                    "unknown comparison `{s}`; expected >, >=, <, <= or GreaterThanThreshold, \
                     GreaterThanOrEqualToThreshold, LessThanThreshold, LessThanOrEqualToThreshold"
                ));
            }
        })
    }
}

/// What a period without a datapoint counts as (CloudWatch's
/// `TreatMissingData`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TreatMissing {
    /// Missing periods are not considered; all missing gives INSUFFICIENT_DATA.
    #[default]
    Missing,
    /// The alarm keeps its state when the real datapoints do not decide it.
    Ignore,
    Breaching,
    NotBreaching,
}

impl fmt::Display for TreatMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TreatMissing::Missing => "missing",
            TreatMissing::Ignore => "ignore",
            TreatMissing::Breaching => "breaching",
            TreatMissing::NotBreaching => "notBreaching",
        })
    }
}

impl FromStr for TreatMissing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "missing" => TreatMissing::Missing,
            "ignore" => TreatMissing::Ignore,
            "breaching" => TreatMissing::Breaching,
            "notBreaching" | "not_breaching" => TreatMissing::NotBreaching,
            _ => {
                return Err(format!(
                    "unknown treatment of missing data `{s}`; expected missing, ignore, breaching or notBreaching"
                ));
            }
        })
    }
}

/// The state of one alarm instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AlarmState {
    Ok,
    Alarm,
    #[default]
    InsufficientData,
}

impl fmt::Display for AlarmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AlarmState::Ok => "OK",
            AlarmState::Alarm => "ALARM",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        })
    }
}

impl FromStr for AlarmState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "OK" => AlarmState::Ok,
            "ALARM" => AlarmState::Alarm,
            "INSUFFICIENT_DATA" => AlarmState::InsufficientData,
            _ => return Err(format!("unknown alarm state `{s}`; expected OK, ALARM or INSUFFICIENT_DATA")),
        })
    }
}

/// Who hears of an alarm, on the plan's four levels: critical pages,
/// high goes to chat or SMS, medium to email, low to the dashboard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Critical,
    #[default]
    High,
    Medium,
    Low,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        })
    }
}

impl FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "critical" => Severity::Critical,
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            _ => return Err(format!("unknown severity `{s}`; expected critical, high, medium or low")),
        })
    }
}

// The enums travel as their written form, so a snapshot or a rendered
// configuration reads like the file a person wrote.
macro_rules! serde_as_str {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_str!(Statistic, Comparison, TreatMissing, AlarmState, Severity);

/// How far back an alarm may look (evaluation periods × period), as in
/// CloudWatch: samples are kept for that long per instance.
pub const MAX_WINDOW_SECS: u64 = 24 * 3600;

/// One alarm: CloudWatch's `PutMetricAlarm` over a metric selector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlarmSpec {
    pub name: String,
    /// The series watched; each series it matches is its own instance.
    pub metric: Selector,
    pub statistic: Statistic,
    /// The length of one datapoint, a whole number of seconds.
    #[serde(with = "period_serde")]
    pub period: Duration,
    /// N: the datapoints looked at.
    pub evaluation_periods: u32,
    /// M: how many of them must breach to alarm.
    pub datapoints_to_alarm: u32,
    pub comparison: Comparison,
    pub threshold: f64,
    pub treat_missing_data: TreatMissing,
    pub severity: Severity,
    pub description: String,
    /// The series is a counter: alarm on its per-second rate between
    /// samples (a counter that went down was reset, and its value is the
    /// increase since), as PromQL's `rate()` does. With `average` over a
    /// period, rate × period is the increase in it.
    #[serde(default)]
    pub rate: bool,
}

impl AlarmSpec {
    /// Checks what the evaluation relies on: a period of whole seconds (at
    /// least one), 1 ≤ M ≤ N, N periods within a day, a finite threshold.
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |message: String| Err(crate::Error::Spec { name: self.name.clone(), message });
        if self.period.as_secs() == 0 || self.period.subsec_nanos() != 0 {
            return bad(format!("period {:?} is not a whole number of seconds; write e.g. \"60s\"", self.period));
        }
        if self.evaluation_periods == 0 {
            return bad("evaluation_periods is 0; an alarm looks at 1 datapoint or more".into());
        }
        if self.datapoints_to_alarm == 0 || self.datapoints_to_alarm > self.evaluation_periods {
            return bad(format!(
                "datapoints_to_alarm is {} with evaluation_periods {}; it must be between 1 and evaluation_periods",
                self.datapoints_to_alarm, self.evaluation_periods
            ));
        }
        if self.period.as_secs().saturating_mul(u64::from(self.evaluation_periods)) > MAX_WINDOW_SECS {
            return bad(format!(
                "{} periods of {}s look back more than a day; use fewer or shorter periods",
                self.evaluation_periods,
                self.period.as_secs()
            ));
        }
        if !self.threshold.is_finite() {
            return bad(format!("threshold {} is not a finite number", self.threshold));
        }
        Ok(())
    }
}

/// Formats a period the way reasons speak of it: "1 min", "30 s", "2 h".
pub fn period_words(period: Duration) -> String {
    let s = period.as_secs();
    if s != 0 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Periods are written as seconds with a unit ("60s", "5m", "1h").
pub mod period_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}s", d.as_secs()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// Parses "90s", "5m", "1h".
    pub fn parse(s: &str) -> Result<Duration, String> {
        let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let n: u64 =
            number.parse().map_err(|_| format!("`{s}` is not a period; expected e.g. \"60s\", \"5m\", \"1h\""))?;
        let mul = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(format!("`{s}` is not a period; expected e.g. \"60s\", \"5m\", \"1h\"")),
        };
        n.checked_mul(mul).map(Duration::from_secs).ok_or_else(|| format!("`{s}` is too long a period"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_forms_read_back() {
        for s in ["average", "sum", "minimum", "maximum", "sample_count", "p99", "p99.9", "p50"] {
            let st: Statistic = s.parse().unwrap();
            assert_eq!(st.to_string(), s);
        }
        assert!("p0".parse::<Statistic>().is_err());
        assert!("p101".parse::<Statistic>().is_err());
        assert!("pNaN".parse::<Statistic>().is_err());
        let err = "median".parse::<Statistic>().unwrap_err();
        assert!(err.contains("p99"), "{err}");
        for (s, c) in [
            (">", Comparison::GreaterThanThreshold),
            (">=", Comparison::GreaterThanOrEqualToThreshold),
            ("<", Comparison::LessThanThreshold),
            ("<=", Comparison::LessThanOrEqualToThreshold),
        ] {
            assert_eq!(s.parse::<Comparison>().unwrap(), c);
            assert_eq!(c.to_string().parse::<Comparison>().unwrap(), c);
            assert_eq!(c.symbol(), s);
        }
        assert!("=>".parse::<Comparison>().is_err());
        for t in [TreatMissing::Missing, TreatMissing::Ignore, TreatMissing::Breaching, TreatMissing::NotBreaching] {
            assert_eq!(t.to_string().parse::<TreatMissing>().unwrap(), t);
        }
        assert!("zero".parse::<TreatMissing>().is_err());
        for a in [AlarmState::Ok, AlarmState::Alarm, AlarmState::InsufficientData] {
            assert_eq!(a.to_string().parse::<AlarmState>().unwrap(), a);
        }
        assert_eq!(AlarmState::InsufficientData.to_string(), "INSUFFICIENT_DATA");
        assert!("ok".parse::<AlarmState>().is_err());
        for s in [Severity::Critical, Severity::High, Severity::Medium, Severity::Low] {
            assert_eq!(s.to_string().parse::<Severity>().unwrap(), s);
        }
        assert!("page".parse::<Severity>().is_err());
    }

    #[test]
    fn nan_never_breaches() {
        for c in [
            Comparison::GreaterThanThreshold,
            Comparison::GreaterThanOrEqualToThreshold,
            Comparison::LessThanThreshold,
            Comparison::LessThanOrEqualToThreshold,
        ] {
            assert!(!c.breaches(f64::NAN, 0.0));
        }
    }

    #[test]
    fn periods_parse_and_refuse() {
        assert_eq!(period_serde::parse("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(period_serde::parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(period_serde::parse("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "s", "60", "1.5m", "1d", "99999999999999999999h"] {
            assert!(period_serde::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(period_words(Duration::from_secs(60)), "1 min");
        assert_eq!(period_words(Duration::from_secs(90)), "90 s");
        assert_eq!(period_words(Duration::from_secs(7200)), "2 h");
    }
}
