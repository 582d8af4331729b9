//! Slack's incoming-webhook JSON: `text` for notifications and clients
//! without blocks, `blocks` for the message itself.

use serde_json::json;

use super::Notice;
use crate::Payload;

pub fn render(n: &Notice<'_>) -> Payload {
    let a = n.alert;
    let headline = n.headline();
    let mut fields: Vec<serde_json::Value> = vec![
        json!({ "type": "mrkdwn", "text": format!("*Severity*\n{}", a.severity) }),
        json!({ "type": "mrkdwn", "text": format!("*Source*\n{}", a.source) }),
        json!({ "type": "mrkdwn", "text": format!("*Since*\n{}", super::webhook::rfc3339(a.started_at)) }),
        json!({ "type": "mrkdwn", "text": format!("*Alert*\n{}", a.id) }),
    ];
    if let Some(cluster) = a.labels.get("cluster") {
        fields.push(json!({ "type": "mrkdwn", "text": format!("*Cluster*\n{cluster}") }));
    }
    let body = json!({
        "text": format!("{headline}: {}", a.summary),
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": headline } },
            { "type": "section", "text": { "type": "mrkdwn", "text": a.summary } },
            { "type": "section", "fields": fields },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": format!("`cirkel alerts ack {}` stops escalation", a.id) }
            ] },
        ],
    });
    Payload::Json { body }
}
