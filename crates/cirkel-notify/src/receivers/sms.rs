//! SMS through a Twilio-compatible API: a form POST of `To`, `From` and
//! `Body` to `{base}/2010-04-01/Accounts/{sid}/Messages.json`, with the
//! account SID and auth token as basic auth.

use cirkel_config::Secret;

use super::{Action, Notice, check_status, describe};
use crate::Payload;

/// One SMS segment holds 160 GSM characters; longer bodies cost several.
const MAX_BODY: usize = 320;

pub fn render(from: &str, to: &str, n: &Notice<'_>) -> Payload {
    let mut body = n.headline();
    if n.action == Action::Trigger {
        body.push_str(&format!(". {} Ack: cirkel alerts ack {}", n.alert.summary, n.alert.id));
    }
    let body: String = body.chars().take(MAX_BODY).collect();
    Payload::Form {
        fields: vec![
            ("To".to_string(), to.to_string()),
            ("From".to_string(), from.to_string()),
            ("Body".to_string(), body),
        ],
    }
}

/// Posts one message.
pub(super) async fn send(
    http: &reqwest::Client,
    base_url: &str,
    account_sid: &str,
    auth_token: &Secret,
    fields: &[(String, String)],
) -> Result<(), String> {
    let url = format!("{}/2010-04-01/Accounts/{account_sid}/Messages.json", base_url.trim_end_matches('/'));
    let resp = http
        .post(&url)
        .basic_auth(account_sid, Some(auth_token.expose()))
        .form(fields)
        .send()
        .await
        .map_err(describe)?;
    check_status(resp).await
}
