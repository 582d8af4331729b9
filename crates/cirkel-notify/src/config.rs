//! From the configuration's notification settings to the notifier's own
//! types: receivers, routes, the escalation policy and maintenance windows.
//! The configuration has already refused what cannot work, so what is left
//! here is a translation; a value it could still not use is reported, not
//! ignored.

use std::collections::BTreeMap;

use cirkel_config::notify::{MaintenanceWindowConfig, NotifyConfig, ReceiverKindConfig};

use crate::escalate::{Level, Policy};
use crate::receivers::{Receiver, ReceiverKind};
use crate::route::{Maintenance, Matcher, RouteMatch, Routes, Window};
use crate::{Notifier, Severity};

/// Everything the configuration says about notifications.
#[derive(Clone, Debug)]
pub struct Settings {
    pub receivers: Vec<Receiver>,
    pub routes: Routes,
    pub escalation: Policy,
    pub maintenance: Vec<Maintenance>,
}

impl Settings {
    /// Reads `cfg`; an error names the setting and what to write instead.
    pub fn from_config(cfg: &NotifyConfig) -> Result<Settings, String> {
        let receivers = cfg
            .receivers
            .iter()
            .map(|(name, r)| Receiver { name: name.clone(), kind: kind(&r.kind), timeout: r.timeout })
            .collect::<Vec<_>>();
        let mut routes = Routes::default();
        match &cfg.routes {
            Some(r) => {
                let mut by_severity = BTreeMap::new();
                for sev in Severity::ALL {
                    // A severity `[routes]` leaves out keeps the plan's
                    // receivers, those that exist.
                    let names = r.by_severity.get(sev.as_str()).cloned().unwrap_or_else(|| {
                        let mut plan = routes.by_severity.get(&sev).cloned().unwrap_or_default();
                        plan.retain(|n| cfg.receivers.contains_key(n));
                        plan
                    });
                    by_severity.insert(sev, names);
                }
                routes.by_severity = by_severity;
                routes.min_renotify = r.min_renotify;
                routes.matches = r
                    .matches
                    .iter()
                    .map(|m| {
                        Ok(RouteMatch {
                            matchers: matchers(&m.matchers)?,
                            severity: m.severity.as_deref().map(severity).transpose()?,
                            receivers: m.receivers.clone(),
                        })
                    })
                    .collect::<Result<_, String>>()?;
            }
            None => {
                // The plan's routes over the receivers that exist.
                for names in routes.by_severity.values_mut() {
                    names.retain(|n| cfg.receivers.contains_key(n));
                }
            }
        }
        let escalation = match &cfg.escalation {
            None => Policy::default(),
            Some(levels) => Policy {
                levels: levels
                    .iter()
                    .map(|(s, ls)| {
                        Ok((
                            severity(s)?,
                            ls.iter().map(|l| Level { after: l.after, receivers: l.receivers.clone() }).collect(),
                        ))
                    })
                    .collect::<Result<_, String>>()?,
            },
        };
        let maintenance = cfg
            .maintenance
            .iter()
            .map(|m| {
                let window = match &m.window {
                    MaintenanceWindowConfig::Between { start, end } => Window::Between { start: *start, end: *end },
                    MaintenanceWindowConfig::Recurring { schedule, duration } => Window::Recurring {
                        schedule: cirkel_config::cron::Schedule::parse(schedule)
                            .map_err(|e| format!("maintenance schedule `{schedule}`: {e}"))?,
                        duration: *duration,
                    },
                };
                Ok(Maintenance { matchers: matchers(&m.matchers)?, window })
            })
            .collect::<Result<_, String>>()?;
        Ok(Settings { receivers, routes, escalation, maintenance })
    }

    /// Applies the routes, escalation and windows to `notifier`.
    pub fn apply(&self, notifier: &mut Notifier) {
        notifier.routes = self.routes.clone();
        notifier.escalation = self.escalation.clone();
        notifier.maintenance = self.maintenance.clone();
    }
}

fn kind(k: &ReceiverKindConfig) -> ReceiverKind {
    match k.clone() {
        ReceiverKindConfig::Webhook { url, external_url } => {
            ReceiverKind::Webhook { url, external_url: external_url.unwrap_or_default() }
        }
        ReceiverKindConfig::Slack { url } => ReceiverKind::Slack { url },
        ReceiverKindConfig::Pagerduty { url, routing_key } => ReceiverKind::PagerDuty { url, routing_key },
        ReceiverKindConfig::Sms { base_url, account_sid, auth_token, from, to } => {
            ReceiverKind::Sms { base_url, account_sid, auth_token, from, to }
        }
        ReceiverKindConfig::Email { smtp, from, to } => ReceiverKind::Email {
            host: smtp.host,
            port: smtp.port,
            starttls: smtp.starttls,
            user: smtp.user,
            password: smtp.password,
            from,
            to,
        },
    }
}

fn matchers(list: &[String]) -> Result<Vec<Matcher>, String> {
    list.iter().map(|m| Matcher::parse(m)).collect()
}

fn severity(s: &str) -> Result<Severity, String> {
    Severity::parse(s).ok_or_else(|| format!("`{s}`: expected critical, high, medium or low"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pd.key"), "k").unwrap();
        let cfg = cirkel_config::Config::parse(text, "c.toml", Some(dir.path())).unwrap();
        Settings::from_config(&cfg.notifications).unwrap()
    }

    #[test]
    fn without_routes_the_plan_applies_to_the_receivers_that_exist() {
        let s = settings("[notify.slack]\nkind = \"slack\"\nurl = \"https://hooks.slack.com/x\"\n");
        assert_eq!(s.routes.by_severity[&Severity::Critical], ["slack"]);
        assert_eq!(s.routes.by_severity[&Severity::High], ["slack"]);
        assert!(s.routes.by_severity[&Severity::Medium].is_empty());
        assert_eq!(s.escalation, Policy::default());
        assert!(matches!(s.receivers[0].kind, ReceiverKind::Slack { .. }));
    }

    #[test]
    fn routes_escalation_and_windows_translate() {
        let s = settings(
            "[notify.pd]\nkind = \"pagerduty\"\nrouting_key_file = \"pd.key\"\ntimeout = \"2s\"\n\
             [routes]\ncritical = [\"pd\"]\nmin_renotify = \"1m\"\n\
             [[routes.match]]\ncluster = \"staging\"\nseverity = \"critical\"\nreceivers = []\n\
             [[escalation.critical]]\nafter = \"5m\"\nreceivers = [\"pd\"]\n\
             [[maintenance]]\nmatchers = [\"cluster=main\"]\nschedule = \"0 2 * * *\"\nduration = \"1h\"\n",
        );
        assert_eq!(s.receivers[0].timeout, std::time::Duration::from_secs(2));
        assert_eq!(s.routes.by_severity[&Severity::Critical], ["pd"]);
        // Left out of [routes]: the plan's, but no slack or email is defined.
        assert!(s.routes.by_severity[&Severity::High].is_empty());
        assert_eq!(s.routes.min_renotify, std::time::Duration::from_secs(60));
        let staging = [("cluster".to_string(), "staging".to_string())].into();
        assert!(s.routes.receivers(Severity::Critical, &staging).is_empty());
        assert_eq!(s.escalation.levels[&Severity::Critical][0].receivers, ["pd"]);
        assert!(!s.escalation.levels.contains_key(&Severity::High));
        assert!(matches!(s.maintenance[0].window, Window::Recurring { .. }));
    }
}
