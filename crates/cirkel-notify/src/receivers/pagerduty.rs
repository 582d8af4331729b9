//! PagerDuty Events API v2: trigger, acknowledge and resolve share the
//! alert's key as `dedup_key`, so PagerDuty keeps one incident per alert.

use cirkel_config::Secret;
use serde_json::json;

use super::{Action, Notice};
use crate::{Payload, Severity};

pub fn render(routing_key: &Secret, n: &Notice<'_>) -> Payload {
    let a = n.alert;
    let action = match n.action {
        Action::Trigger => "trigger",
        Action::Acknowledge => "acknowledge",
        Action::Resolve => "resolve",
    };
    let mut body = json!({
        "routing_key": routing_key.expose(),
        "event_action": action,
        "dedup_key": a.key,
    });
    if n.action == Action::Trigger {
        body["payload"] = json!({
            "summary": n.headline().chars().take(1024).collect::<String>(),
            "source": a.source,
            "severity": severity(a.severity),
            "timestamp": super::webhook::rfc3339(a.started_at),
            "component": a.labels.get("cluster"),
            "custom_details": {
                "summary": a.summary,
                "labels": a.labels,
                "alert_id": a.id,
                "escalation_level": n.level,
            },
        });
    }
    Payload::Json { body }
}

/// PagerDuty's four severities, mapped from the plan's.
pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "info",
    }
}
