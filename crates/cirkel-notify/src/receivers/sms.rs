//! SMS through a Twilio-compatible API: a form POST of `To`, `From` and
//! `Body` to `{base}/2010-04-01/Accounts/{sid}/Messages.json`, with the
//! account SID and auth token as basic auth.

use cirkel_config::Secret;

use super::{Action, Notice, check_status, describe};
use crate::Payload;

/// One SMS segment holds 160 GSM characters; longer bodies cost several.
const MAX_BODY: usize = 320;

pub fn render(n: &Notice<'_>) -> Payload {
    let mut body = n.headline();
    if n.action == Action::Trigger {
        body.push_str(&format!(". {} Ack: cirkel alerts ack {}", n.alert.summary, n.alert.id));
    }
    let body: String = body.chars().take(MAX_BODY).collect();
    Payload::Form { fields: vec![("Body".to_string(), body)] }
}

/// Sends to each recipient in turn; a failure stops there, and the retry
/// sends to every recipient again.
pub(super) async fn send(
    http: &reqwest::Client,
    base_url: &str,
    account_sid: &str,
    auth_token: &Secret,
    from: &str,
    to: &[String],
    fields: &[(String, String)],
) -> Result<(), String> {
    let url = format!("{}/2010-04-01/Accounts/{account_sid}/Messages.json", base_url.trim_end_matches('/'));
    for number in to {
        let mut form: Vec<(&str, &str)> = vec![("To", number), ("From", from)];
        form.extend(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let resp = http
            .post(&url)
            .basic_auth(account_sid, Some(auth_token.expose()))
            .form(&form)
            .send()
            .await
            .map_err(describe)?;
        check_status(resp).await.map_err(|e| format!("to {number}: {e}"))?;
    }
    Ok(())
}
