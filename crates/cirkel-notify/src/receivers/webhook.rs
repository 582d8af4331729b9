//! Alertmanager's webhook payload (version 4), so receivers written for
//! Alertmanager take cirkel's messages unchanged.

use serde_json::json;

use super::{Action, Notice};
use crate::Payload;

/// Alertmanager has no acknowledgement, so an acknowledgement sends nothing.
pub fn render(receiver: &str, external_url: &str, n: &Notice<'_>) -> Option<Payload> {
    let a = n.alert;
    let status = match n.action {
        Action::Trigger => "firing",
        Action::Resolve => "resolved",
        Action::Acknowledge => return None,
    };
    let ends_at = match (n.action, a.resolved_at) {
        (Action::Resolve, Some(t)) => rfc3339(t),
        (Action::Resolve, None) => rfc3339(n.at),
        // Alertmanager's zero time: still firing.
        _ => "0001-01-01T00:00:00Z".to_string(),
    };
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), json!(a.summary));
    if n.level > 0 {
        annotations.insert("escalation_level".into(), json!(n.level.to_string()));
    }
    let group_labels = json!({ "alertname": a.name });
    let body = json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{}\"}}", a.name),
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": a.labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [{
            "status": status,
            "labels": a.labels,
            "annotations": annotations,
            "startsAt": rfc3339(a.started_at),
            "endsAt": ends_at,
            "generatorURL": format!("{}/alerts/{}", external_url.trim_end_matches('/'), a.id),
            "fingerprint": a.key,
        }],
    });
    Some(Payload::Json { body })
}

pub(crate) fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
