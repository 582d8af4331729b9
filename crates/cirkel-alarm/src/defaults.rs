//! The alarms every installation has, following the disaster-recovery
//! plan: each is data, so the configuration can override or remove it by
//! name (`[alarms.rpo-exposure]`, `enabled = false`).

use std::time::Duration;

use crate::{AlarmSpec, Comparison, Selector, Severity, Statistic, TreatMissing};

fn spec(
    name: &str,
    metric: Selector,
    statistic: Statistic,
    comparison: Comparison,
    threshold: f64,
    severity: Severity,
    description: &str,
) -> AlarmSpec {
    AlarmSpec {
        name: name.to_string(),
        metric,
        statistic,
        period: Duration::from_secs(60),
        evaluation_periods: 1,
        datapoints_to_alarm: 1,
        comparison,
        threshold,
        treat_missing_data: TreatMissing::Missing,
        severity,
        description: description.to_string(),
        rate: false,
    }
}

fn metric(name: &str) -> Selector {
    Selector { name: name.to_string(), matchers: Vec::new() }
}

/// The built-in alarms.
pub fn defaults() -> Vec<AlarmSpec> {
    use Comparison::{GreaterThanThreshold as Above, LessThanThreshold as Below};
    use Severity::{Critical, High, Medium};
    use Statistic::{Maximum, Minimum};
    let base_backups = Selector {
        name: "cirkel_backup_age_seconds".into(),
        matchers: vec![crate::Matcher { label: "kind".into(), negated: false, value: "base".into() }],
    };
    // "Up" gauges are already debounced by their health thresholds, so the
    // minimum of a period alarms as soon as one sample in it says down.
    vec![
        spec(
            "rpo-exposure",
            metric("cirkel_rpo_exposure_seconds"),
            Maximum,
            Above,
            300.0,
            Critical,
            "More than 5 minutes of writes would be lost if this source failed now (RPO 5 min).",
        ),
        spec(
            "base-backup-age",
            base_backups,
            Maximum,
            Above,
            93_600.0,
            High,
            "The newest base backup is older than 26 hours: the daily backup did not run or failed.",
        ),
        spec(
            "standby-lag",
            metric("cirkel_replication_lag_seconds"),
            Maximum,
            Above,
            60.0,
            High,
            "A standby is more than a minute behind its primary; a failover to it would lose that much.",
        ),
        spec(
            "failover",
            metric("cirkel_failovers_recent"),
            Maximum,
            Above,
            0.0,
            Critical,
            "A failover happened in the last hour: check the new primary, the old one and the endpoint.",
        ),
        spec(
            "member-down",
            metric("cirkel_member_up"),
            Minimum,
            Below,
            1.0,
            Critical,
            "A database member does not answer its health checks.",
        ),
        spec("check-down", metric("cirkel_check_up"), Minimum, Below, 1.0, High, "A health check is failing."),
        spec(
            "schedule-missed",
            metric("cirkel_schedule_missed_recent"),
            Maximum,
            Above,
            0.0,
            Medium,
            "A scheduled job did not run at its time.",
        ),
        spec(
            "copy-lag",
            metric("cirkel_copy_lag_seconds"),
            Maximum,
            Above,
            300.0,
            High,
            "The second region lacks more than 5 minutes of backups and WAL: losing this region now would lose that much more.",
        ),
        spec(
            "verify-failed",
            metric("cirkel_repository_verify_ok"),
            Minimum,
            Below,
            1.0,
            Critical,
            "A repository verification found damaged or missing data: backups may not restore.",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_named_once() {
        let d = defaults();
        let mut names: Vec<&str> = d.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), d.len());
        for s in &d {
            s.validate().unwrap();
        }
        let rpo = d.iter().find(|s| s.name == "rpo-exposure").unwrap();
        assert_eq!((rpo.threshold, rpo.severity, rpo.statistic), (300.0, Severity::Critical, Statistic::Maximum));
        assert_eq!(rpo.period, Duration::from_secs(60));
        let age = d.iter().find(|s| s.name == "base-backup-age").unwrap();
        assert_eq!(age.metric.to_string(), "cirkel_backup_age_seconds{kind=\"base\"}");
    }
}
