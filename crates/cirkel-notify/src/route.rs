//! Routing, pure: which receivers hear of an alert, and whether anyone does.
//!
//! Severity picks the receivers (the plan's §5.2 by default: critical to
//! SMS, Slack and email; high to Slack and email; medium to email; low to
//! the dashboard only), `[[routes.match]]` entries override that for the
//! alerts whose labels they match, silences and maintenance windows
//! suppress, and a minimum re-notify interval per alert key bounds what a
//! flapping source can send. No I/O and no clock: the caller passes what
//! the store holds and the time.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Labels, Severity, Status};

/// One label condition: `cluster=main`, `tag!=test`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub label: String,
    pub value: String,
    /// `!=` instead of `=`.
    #[serde(default)]
    pub negate: bool,
}

impl Matcher {
    /// Parses `label=value` or `label!=value`.
    pub fn parse(s: &str) -> Result<Matcher, String> {
        let (label, value, negate) = if let Some((l, v)) = s.split_once("!=") {
            (l, v, true)
        } else if let Some((l, v)) = s.split_once('=') {
            (l, v, false)
        } else {
            return Err(format!("`{s}` is not a matcher; expected label=value, e.g. cluster=main"));
        };
        let label = label.trim();
        if label.is_empty() {
            return Err(format!("`{s}` names no label; expected label=value, e.g. cluster=main"));
        }
        Ok(Matcher { label: label.to_string(), value: value.trim().to_string(), negate })
    }

    /// A missing label reads as empty, as in Alertmanager.
    pub fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.label).map_or("", String::as_str);
        (v == self.value) != self.negate
    }
}

/// True when every matcher matches (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// An override: alerts matching `matchers` (and `severity`, when set) go to
/// `receivers` instead of their severity's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteMatch {
    pub matchers: Vec<Matcher>,
    pub severity: Option<Severity>,
    pub receivers: Vec<String>,
}

/// `[routes]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routes {
    pub by_severity: BTreeMap<Severity, Vec<String>>,
    /// Tried in order; the first that matches wins.
    pub matches: Vec<RouteMatch>,
    /// After an alert key notified, a new firing of the same key within this
    /// interval is recorded but sent to nobody.
    pub min_renotify: Duration,
}

impl Default for Routes {
    /// The plan's §5.2, naming receivers `sms`, `slack` and `email`.
    fn default() -> Self {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Routes {
            by_severity: BTreeMap::from([
                (Severity::Critical, names(&["sms", "slack", "email"])),
                (Severity::High, names(&["slack", "email"])),
                (Severity::Medium, names(&["email"])),
                (Severity::Low, Vec::new()),
            ]),
            matches: Vec::new(),
            min_renotify: Duration::from_secs(15 * 60),
        }
    }
}

impl Routes {
    /// The receivers an alert of `severity` with `labels` goes to.
    pub fn receivers(&self, severity: Severity, labels: &Labels) -> Vec<String> {
        for m in &self.matches {
            if m.severity.is_none_or(|s| s == severity) && all_match(&m.matchers, labels) {
                return m.receivers.clone();
            }
        }
        self.by_severity.get(&severity).cloned().unwrap_or_default()
    }
}

/// A recurring or one-off maintenance window (`[[maintenance]]`).
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    Between {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// Opens at each minute the schedule names, for `duration`.
    Recurring {
        schedule: cirkel_config::cron::Schedule,
        duration: Duration,
    },
}

/// A window during which matching alerts notify nobody.
#[derive(Clone, Debug, PartialEq)]
pub struct Maintenance {
    pub matchers: Vec<Matcher>,
    pub window: Window,
}

/// Windows longer than this are checked only over their last day: a
/// recurring window is meant for hours, not weeks.
const MAX_RECURRING_LOOKBACK_MINUTES: i64 = 7 * 24 * 60;

impl Maintenance {
    pub fn active(&self, now: DateTime<Utc>) -> bool {
        match &self.window {
            Window::Between { start, end } => *start <= now && now < *end,
            Window::Recurring { schedule, duration } => {
                let minutes = (duration.as_secs().div_ceil(60) as i64).min(MAX_RECURRING_LOOKBACK_MINUTES);
                let Ok(dur) = chrono::Duration::from_std(*duration) else { return false };
                let start_minute = now - chrono::Duration::seconds(now.timestamp() % 60);
                (0..minutes.max(1)).any(|back| {
                    let opened = start_minute - chrono::Duration::minutes(back);
                    schedule.matches(opened) && now < opened + dur
                })
            }
        }
    }
}

/// What the store knows of an alert key when a change arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prior {
    /// An open (firing) alert of this key exists.
    pub open: bool,
    /// That open alert's firing was sent.
    pub open_notified: bool,
    /// When any alert of this key last notified.
    pub last_notified: Option<DateTime<Utc>>,
}

/// Why nobody hears of a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quiet {
    /// Already firing: one message per transition, not per check.
    Duplicate,
    /// A resolution of nothing open.
    NothingOpen,
    /// A resolution of an alert whose firing was never sent.
    FiringNotSent,
    Silenced(String),
    /// Within the re-notify interval of the key's last message.
    Flapping,
    /// No receiver for this severity (LOW: the dashboard only).
    NoReceiver,
}

/// What to do with a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Notify(Vec<String>),
    Quiet(Quiet),
}

/// Whether and to whom a change notifies. `silenced_by` names the silence
/// or window in force for the alert's labels, if any.
pub fn decide(
    routes: &Routes,
    severity: Severity,
    labels: &Labels,
    status: Status,
    prior: Prior,
    silenced_by: Option<String>,
    now: DateTime<Utc>,
) -> Decision {
    match status {
        Status::Firing if prior.open => return Decision::Quiet(Quiet::Duplicate),
        Status::Resolved if !prior.open => return Decision::Quiet(Quiet::NothingOpen),
        // A resolution goes to whoever heard the firing, silence or not, so
        // nobody is left with an alert that never clears.
        Status::Resolved if !prior.open_notified => return Decision::Quiet(Quiet::FiringNotSent),
        Status::Resolved => {}
        Status::Firing => {
            if let Some(by) = silenced_by {
                return Decision::Quiet(Quiet::Silenced(by));
            }
            let interval = chrono::Duration::from_std(routes.min_renotify).unwrap_or(chrono::Duration::MAX);
            if prior.last_notified.is_some_and(|t| now < t + interval) {
                return Decision::Quiet(Quiet::Flapping);
            }
        }
    }
    let receivers = routes.receivers(severity, labels);
    if receivers.is_empty() { Decision::Quiet(Quiet::NoReceiver) } else { Decision::Notify(receivers) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
    }

    const NEW: Prior = Prior { open: false, open_notified: false, last_notified: None };

    #[test]
    fn the_plan_routes_by_severity() {
        let r = Routes::default();
        let l = Labels::new();
        assert_eq!(r.receivers(Severity::Critical, &l), ["sms", "slack", "email"]);
        assert_eq!(r.receivers(Severity::High, &l), ["slack", "email"]);
        assert_eq!(r.receivers(Severity::Medium, &l), ["email"]);
        assert!(r.receivers(Severity::Low, &l).is_empty());
        assert_eq!(decide(&r, Severity::Low, &l, Status::Firing, NEW, None, t(0)), Decision::Quiet(Quiet::NoReceiver));
    }

    #[test]
    fn a_match_overrides_its_severity_and_labels_only() {
        let mut r = Routes::default();
        r.matches.push(RouteMatch {
            matchers: vec![Matcher::parse("cluster=staging").unwrap()],
            severity: Some(Severity::Critical),
            receivers: vec!["slack".into()],
        });
        assert_eq!(r.receivers(Severity::Critical, &labels(&[("cluster", "staging")])), ["slack"]);
        assert_eq!(r.receivers(Severity::Critical, &labels(&[("cluster", "main")])), ["sms", "slack", "email"]);
        assert_eq!(r.receivers(Severity::High, &labels(&[("cluster", "staging")])), ["slack", "email"]);
    }

    #[test]
    fn matchers_parse_and_refuse() {
        assert_eq!(
            Matcher::parse("tag!=test").unwrap(),
            Matcher { label: "tag".into(), value: "test".into(), negate: true }
        );
        assert!(Matcher::parse("cluster").unwrap_err().contains("label=value"));
        assert!(Matcher::parse("=x").unwrap_err().contains("names no label"));
        assert!(Matcher::parse("tag!=test").unwrap().matches(&Labels::new()));
    }

    #[test]
    fn duplicates_silences_and_resolutions() {
        let r = Routes::default();
        let l = Labels::new();
        let open = Prior { open: true, open_notified: true, last_notified: Some(t(0)) };
        assert_eq!(decide(&r, Severity::High, &l, Status::Firing, open, None, t(1)), Decision::Quiet(Quiet::Duplicate));
        assert_eq!(
            decide(&r, Severity::High, &l, Status::Resolved, NEW, None, t(1)),
            Decision::Quiet(Quiet::NothingOpen)
        );
        assert_eq!(
            decide(&r, Severity::High, &l, Status::Firing, NEW, Some("silence 3".into()), t(1)),
            Decision::Quiet(Quiet::Silenced("silence 3".into()))
        );
        // Silenced later: the resolution still reaches those who were paged.
        assert_eq!(
            decide(&r, Severity::High, &l, Status::Resolved, open, Some("silence 3".into()), t(1)),
            Decision::Notify(vec!["slack".into(), "email".into()])
        );
        let unsent = Prior { open: true, open_notified: false, last_notified: None };
        assert_eq!(
            decide(&r, Severity::High, &l, Status::Resolved, unsent, None, t(1)),
            Decision::Quiet(Quiet::FiringNotSent)
        );
    }

    #[test]
    fn maintenance_windows_open_and_close() {
        let once = Maintenance { matchers: vec![], window: Window::Between { start: t(0), end: t(3600) } };
        assert!(!once.active(t(-1)));
        assert!(once.active(t(0)));
        assert!(!once.active(t(3600)));
        let nightly = Maintenance {
            matchers: vec![],
            window: Window::Recurring {
                schedule: cirkel_config::cron::Schedule::parse("0 2 * * *").unwrap(),
                duration: Duration::from_secs(3600),
            },
        };
        let day = Utc.with_ymd_and_hms(2027, 3, 4, 0, 0, 0).single().unwrap();
        assert!(!nightly.active(day + chrono::Duration::minutes(119)));
        assert!(nightly.active(day + chrono::Duration::minutes(120)));
        assert!(nightly.active(day + chrono::Duration::minutes(179)));
        assert!(!nightly.active(day + chrono::Duration::minutes(180)));
    }

    proptest! {
        /// A source that fires and clears at any rhythm sends at most two
        /// messages (a firing and its resolution) per receiver per interval.
        #[test]
        fn flapping_is_bounded(gaps in proptest::collection::vec(1i64..600, 1..200)) {
            let r = Routes::default();
            let l = Labels::new();
            let mut prior = NEW;
            let mut now = t(0);
            let mut sent: Vec<DateTime<Utc>> = Vec::new();
            for (i, gap) in gaps.iter().enumerate() {
                now += chrono::Duration::seconds(*gap);
                let status = if i % 2 == 0 { Status::Firing } else { Status::Resolved };
                let d = decide(&r, Severity::Medium, &l, status, prior, None, now);
                let notified = matches!(d, Decision::Notify(_));
                if notified { sent.push(now); }
                prior = match status {
                    Status::Firing => Prior {
                        open: true,
                        open_notified: notified,
                        last_notified: if notified { Some(now) } else { prior.last_notified },
                    },
                    Status::Resolved => Prior {
                        open: false,
                        open_notified: false,
                        last_notified: if notified { Some(now) } else { prior.last_notified },
                    },
                };
            }
            let window = chrono::Duration::from_std(r.min_renotify).unwrap();
            for (i, start) in sent.iter().enumerate() {
                let within = sent[i..].iter().filter(|s| **s < *start + window).count();
                prop_assert!(within <= 2, "{within} messages within one interval");
            }
        }
    }
}
