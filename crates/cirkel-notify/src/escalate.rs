//! Escalation, pure and clock-injected: an alert nobody acknowledges goes
//! to the next level of people, level by level (plan §8: on-call engineer,
//! then the lead, then the CTO).
//!
//! Each level is due `after` the alert started (cumulative, not after the
//! previous level), and one call raises an alert by at most one level, so
//! levels are taken in order and each is recorded once, even when the
//! daemon was down past several deadlines. The caller applies the returned
//! [`Step`]s to the store (queueing messages and recording the level) in
//! one transaction per step.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::Severity;

/// One level: due `after` the alert started, sent to `receivers` (empty:
/// the receivers the alert's route names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Level {
    pub after: Duration,
    pub receivers: Vec<String>,
}

/// `[escalation]`: the levels of each severity, in the order they fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub levels: BTreeMap<Severity, Vec<Level>>,
}

impl Default for Policy {
    /// The plan's response times: an unacknowledged critical alert is sent
    /// again after 5 minutes, a high one after 15, a medium one after 60,
    /// and once more at twice that; low alerts never escalate.
    fn default() -> Self {
        let levels = |minutes: u64| {
            vec![
                Level { after: Duration::from_secs(minutes * 60), receivers: Vec::new() },
                Level { after: Duration::from_secs(2 * minutes * 60), receivers: Vec::new() },
            ]
        };
        Policy {
            levels: BTreeMap::from([
                (Severity::Critical, levels(5)),
                (Severity::High, levels(15)),
                (Severity::Medium, levels(60)),
            ]),
        }
    }
}

/// What escalation needs of an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlertView {
    pub id: i64,
    pub severity: Severity,
    pub started_at: DateTime<Utc>,
    /// Levels already taken.
    pub level: u32,
    pub acknowledged: bool,
    pub resolved: bool,
}

/// One escalation to apply: `alert` reaches `level` (1-based) and
/// `receivers` hear of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub alert: i64,
    pub level: u32,
    pub receivers: Vec<String>,
}

/// The steps due at `now`, at most one per alert.
pub fn due(policy: &Policy, alerts: &[AlertView], now: DateTime<Utc>) -> Vec<Step> {
    alerts
        .iter()
        .filter(|a| !a.acknowledged && !a.resolved)
        .filter_map(|a| {
            let levels = policy.levels.get(&a.severity)?;
            let next = levels.get(a.level as usize)?;
            let after = chrono::Duration::from_std(next.after).ok()?;
            (now >= a.started_at + after).then(|| Step {
                alert: a.id,
                level: a.level + 1,
                receivers: next.receivers.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).single().unwrap()
    }

    fn alert(severity: Severity) -> AlertView {
        AlertView { id: 1, severity, started_at: t(0), level: 0, acknowledged: false, resolved: false }
    }

    #[test]
    fn the_plan_response_times() {
        let p = Policy::default();
        assert!(due(&p, &[alert(Severity::Critical)], t(299)).is_empty());
        assert_eq!(due(&p, &[alert(Severity::Critical)], t(300)), [Step { alert: 1, level: 1, receivers: vec![] }]);
        assert!(due(&p, &[alert(Severity::High)], t(899)).is_empty());
        assert_eq!(due(&p, &[alert(Severity::High)], t(900)).len(), 1);
        assert_eq!(due(&p, &[alert(Severity::Medium)], t(3600)).len(), 1);
        assert!(due(&p, &[alert(Severity::Low)], t(1_000_000)).is_empty());
    }

    #[test]
    fn acknowledged_and_resolved_alerts_stay_put() {
        let p = Policy::default();
        let acked = AlertView { acknowledged: true, ..alert(Severity::Critical) };
        let resolved = AlertView { resolved: true, ..alert(Severity::Critical) };
        assert!(due(&p, &[acked, resolved], t(10_000)).is_empty());
    }

    #[test]
    fn past_the_last_level_nothing_more() {
        let p = Policy::default();
        let done = AlertView { level: 2, ..alert(Severity::Critical) };
        assert!(due(&p, &[done], t(1_000_000)).is_empty());
    }

    fn severity() -> impl Strategy<Value = Severity> {
        prop_oneof![Just(Severity::Critical), Just(Severity::High), Just(Severity::Medium), Just(Severity::Low)]
    }

    proptest! {
        /// Driven by any sequence of clock ticks and acknowledgements, an
        /// alert takes levels in order, one step per level, and never
        /// escalates once acknowledged or resolved.
        #[test]
        fn escalation_model(
            sev in severity(),
            ticks in proptest::collection::vec((0i64..2000, 0u8..20), 1..100),
            afters in proptest::collection::vec(0u64..3000, 0..5),
        ) {
            let mut sorted = afters.clone();
            sorted.sort();
            let policy = Policy { levels: BTreeMap::from([(sev, sorted.iter().map(|s| Level {
                after: Duration::from_secs(*s), receivers: vec![format!("r{s}")] }).collect())]) };
            let mut a = alert(sev);
            let mut now = t(0);
            let mut taken = Vec::new();
            for (gap, event) in ticks {
                now += chrono::Duration::seconds(gap);
                let was_stopped = a.acknowledged || a.resolved;
                let steps = due(&policy, &[a], now);
                prop_assert!(steps.len() <= 1);
                if let Some(s) = steps.first() {
                    prop_assert!(!was_stopped);
                    prop_assert_eq!(s.level, a.level + 1);
                    let level = &policy.levels[&sev][a.level as usize];
                    prop_assert!(now >= a.started_at + chrono::Duration::from_std(level.after).unwrap());
                    taken.push(s.level);
                    a.level = s.level;
                }
                match event {
                    0 => a.acknowledged = true,
                    1 => a.resolved = true,
                    _ => {}
                }
            }
            let expected: Vec<u32> = (1..=taken.len() as u32).collect();
            prop_assert_eq!(taken, expected);
        }
    }
}
