//! Notification settings: receivers (`[notify.NAME]`), routing by severity
//! (`[routes]`, `[[routes.match]]`), escalation (`[escalation]`) and
//! maintenance windows (`[[maintenance]]`).
//!
//! Credentials (a PagerDuty routing key, an SMS auth token, an SMTP
//! password, a Slack webhook URL) come from `*_file` paths or `*_env`
//! variables and are [`Secret`]s, so `config show` never prints them.
//! Everything the notifier could never act on (a route or escalation
//! naming a receiver nobody defined, levels out of order, plain SMTP to a
//! remote host) is refused here with its line.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::Secret;

/// The plan's routes when `[routes]` says nothing.
pub const DEFAULT_MIN_RENOTIFY: Duration = Duration::from_secs(15 * 60);
/// How long one delivery may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
pub const TWILIO_URL: &str = "https://api.twilio.com";

/// Every notification setting.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct NotifyConfig {
    /// `[notify.NAME]`.
    #[serde(rename = "notify", skip_serializing_if = "BTreeMap::is_empty")]
    pub receivers: BTreeMap<String, ReceiverConfig>,
    /// `[routes]`; `None`: the plan's §5.2 over the receivers named
    /// `sms`, `slack` and `email` that exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<RoutesConfig>,
    /// `[escalation]` levels by severity; `None`: the plan's response times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<BTreeMap<String, Vec<EscalationLevelConfig>>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceConfig>,
}

/// One receiver.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReceiverConfig {
    #[serde(flatten)]
    pub kind: ReceiverKindConfig,
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub timeout: Duration,
}

/// What a receiver is.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ReceiverKindConfig {
    /// Alertmanager's webhook JSON.
    Webhook {
        url: Secret,
        external_url: Option<String>,
    },
    /// A Slack incoming webhook.
    Slack {
        url: Secret,
    },
    /// PagerDuty Events API v2.
    Pagerduty {
        url: String,
        routing_key: Secret,
    },
    /// A Twilio-compatible SMS API.
    Sms {
        base_url: String,
        account_sid: String,
        auth_token: Secret,
        from: String,
        to: Vec<String>,
    },
    Email {
        smtp: SmtpConfig,
        from: String,
        to: Vec<String>,
    },
}

/// `[notify.NAME.smtp]`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    /// Plain SMTP (`false`) is accepted only to a loopback host.
    pub starttls: bool,
    pub user: Option<String>,
    pub password: Option<Secret>,
}

/// `[routes]`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RoutesConfig {
    /// Receivers by severity (`critical`, `high`, `medium`, `low`).
    #[serde(flatten)]
    pub by_severity: BTreeMap<String, Vec<String>>,
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatchConfig>,
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub min_renotify: Duration,
}

/// `[[routes.match]]`: alerts whose labels match go to `receivers`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RouteMatchConfig {
    /// `label=value` or `label!=value`, from `source`, `cluster`, `tag` and `matchers`.
    pub matchers: Vec<String>,
    pub severity: Option<String>,
    pub receivers: Vec<String>,
}

/// One escalation level.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EscalationLevelConfig {
    /// From the alert's start.
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub after: Duration,
    /// Empty: the receivers the alert's route names.
    pub receivers: Vec<String>,
}

/// `[[maintenance]]`: matching alerts notify nobody while it is open.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MaintenanceConfig {
    pub matchers: Vec<String>,
    #[serde(flatten)]
    pub window: MaintenanceWindowConfig,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum MaintenanceWindowConfig {
    Between {
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
    },
    /// Opens at each minute `schedule` (five cron fields) names.
    Recurring {
        schedule: String,
        #[serde(serialize_with = "crate::reader::ser_duration")]
        duration: Duration,
    },
}
