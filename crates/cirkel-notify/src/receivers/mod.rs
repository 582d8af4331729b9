//! Receivers: for each kind, a function building the exact payload it
//! takes, and the sender that delivers it.
//!
//! Payloads are rendered when a message is queued and stored as they will
//! be sent, so a message retried after a restart is the same bytes; only
//! the address and credentials are added at send time, so no secret is
//! ever written to the store.

pub mod email;
pub mod pagerduty;
pub mod slack;
pub mod sms;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cirkel_config::Secret;
use serde::{Deserialize, Serialize};

use crate::store::{AlertRow, OutboxRow};

/// What a message says happened to its alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Trigger,
    Acknowledge,
    Resolve,
}

/// The alert a message is about, as the renderers see it.
#[derive(Clone, Debug)]
pub struct Notice<'a> {
    pub alert: &'a AlertRow,
    pub action: Action,
    /// The escalation level this message is for (0: the first notice).
    pub level: u32,
    pub at: DateTime<Utc>,
}

impl Notice<'_> {
    /// One line for chat, SMS and mail subjects.
    pub fn headline(&self) -> String {
        let a = self.alert;
        let what = match self.action {
            Action::Trigger if self.level > 0 => format!("ESCALATED (level {}, unacknowledged)", self.level),
            Action::Trigger => "FIRING".to_string(),
            Action::Acknowledge => format!("ACKNOWLEDGED by {}", a.acknowledged_by.as_deref().unwrap_or("someone")),
            Action::Resolve => "RESOLVED".to_string(),
        };
        format!("[{}] {what}: {} on {}", a.severity.as_str().to_uppercase(), a.name, a.source)
    }
}

/// A rendered message, exactly as it will be sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Payload {
    /// An HTTP POST of this JSON body.
    Json {
        body: serde_json::Value,
    },
    /// An HTTP POST of these form fields.
    Form {
        fields: Vec<(String, String)>,
    },
    Mail {
        subject: String,
        body: String,
    },
}

/// How to reach one receiver (`[notify.NAME]`).
#[derive(Clone, Debug)]
pub enum ReceiverKind {
    /// Alertmanager's webhook JSON. `external_url` is where people reach cirkel.
    Webhook { url: Secret, external_url: String },
    /// A Slack incoming webhook; its URL is the credential.
    Slack { url: Secret },
    /// PagerDuty Events API v2 (`url`: the enqueue endpoint).
    PagerDuty { url: String, routing_key: Secret },
    /// A Twilio-compatible SMS API: one message per recipient.
    Sms { base_url: String, account_sid: String, auth_token: Secret, from: String, to: Vec<String> },
    /// SMTP; `starttls = false` is refused unless `host` is a loopback address.
    Email {
        host: String,
        port: u16,
        starttls: bool,
        user: Option<String>,
        password: Option<Secret>,
        from: String,
        to: Vec<String>,
    },
}

/// PagerDuty's public endpoint.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// Twilio's public endpoint.
pub const TWILIO_URL: &str = "https://api.twilio.com";
/// How long one delivery may take before it counts as failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One named receiver.
#[derive(Clone, Debug)]
pub struct Receiver {
    pub name: String,
    pub kind: ReceiverKind,
    pub timeout: Duration,
}

impl Receiver {
    pub fn new(name: impl Into<String>, kind: ReceiverKind) -> Receiver {
        Receiver { name: name.into(), kind, timeout: DEFAULT_TIMEOUT }
    }

    /// The messages this receiver takes for `n`, each retried on its own:
    /// one per SMS recipient (so a retry never texts someone twice), one
    /// for every other kind, none where the kind has no such message
    /// (Alertmanager's webhook has no acknowledgement).
    pub fn render(&self, n: &Notice<'_>) -> Vec<Payload> {
        match &self.kind {
            ReceiverKind::Webhook { external_url, .. } => {
                webhook::render(&self.name, external_url, n).into_iter().collect()
            }
            ReceiverKind::Slack { .. } => vec![slack::render(n)],
            ReceiverKind::PagerDuty { routing_key, .. } => vec![pagerduty::render(routing_key, n)],
            ReceiverKind::Sms { from, to, .. } => to.iter().map(|number| sms::render(from, number, n)).collect(),
            ReceiverKind::Email { .. } => vec![email::render(n)],
        }
    }

    /// Delivers one message; `Err` says why, for the store and the operator.
    pub async fn send(&self, http: &reqwest::Client, m: &OutboxRow) -> Result<(), String> {
        let payload: Payload =
            serde_json::from_str(&m.payload).map_err(|e| format!("stored payload does not read: {e}"))?;
        let fut = async {
            match (&self.kind, &payload) {
                (ReceiverKind::Webhook { url, .. }, Payload::Json { body }) => {
                    post_json(http, url.expose(), body, &m.message_id).await
                }
                (ReceiverKind::Slack { url }, Payload::Json { body }) => {
                    post_json(http, url.expose(), body, &m.message_id).await
                }
                (ReceiverKind::PagerDuty { url, .. }, Payload::Json { body }) => {
                    post_json(http, url, body, &m.message_id).await
                }
                (ReceiverKind::Sms { base_url, account_sid, auth_token, .. }, Payload::Form { fields }) => {
                    sms::send(http, base_url, account_sid, auth_token, fields).await
                }
                (ReceiverKind::Email { .. }, Payload::Mail { subject, body }) => {
                    email::send(&self.kind, self.timeout, subject, body, &m.message_id).await
                }
                _ => Err(format!("message {} holds a payload this receiver's kind does not take", m.message_id)),
            }
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}", humantime::format_duration(self.timeout))),
        }
    }
}

/// Posts JSON; any 2xx is taken. The message id travels as an
/// idempotency key for receivers that deduplicate on it.
async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    message_id: &str,
) -> Result<(), String> {
    let resp = http.post(url).header("Idempotency-Key", message_id).json(body).send().await.map_err(describe)?;
    check_status(resp).await
}

pub(crate) async fn check_status(resp: reqwest::Response) -> Result<(), String> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    Err(format!("answered {status}: {text}"))
}

/// reqwest's errors without the URL, which may be a credential (Slack).
pub(crate) fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The receivers by name, with the HTTP client they share.
pub struct Receivers {
    pub(crate) by_name: BTreeMap<String, Receiver>,
    pub(crate) http: reqwest::Client,
    /// Rung when messages are queued, so an idle worker sends them at once
    /// instead of at its next poll.
    pub(crate) wake: tokio::sync::Notify,
}

impl Receivers {
    pub fn new(receivers: impl IntoIterator<Item = Receiver>) -> Receivers {
        // Redirects are not followed: a webhook that redirects elsewhere
        // would receive the payload at an address nobody configured.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Receivers {
            by_name: receivers.into_iter().map(|r| (r.name.clone(), r)).collect(),
            http,
            wake: tokio::sync::Notify::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Receiver> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}
