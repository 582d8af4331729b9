//! `[notify.NAME]`, `[routes]`, `[escalation]` and `[[maintenance]]`: every
//! receiver kind read, secrets from files and the environment and never
//! shown, and each setting the notifier could not act on refused with its
//! line.

use std::time::Duration;

use cirkel_config::Config;
use cirkel_config::notify::{MaintenanceWindowConfig, ReceiverKindConfig};

fn parse(text: &str, dir: &std::path::Path) -> Result<Config, String> {
    Config::parse(text, "c.toml", Some(dir)).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    match parse(text, dir.path()) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn every_receiver_kind_routes_escalation_and_maintenance_are_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pd.key"), "R0UT1NG\n").unwrap();
    std::fs::write(dir.path().join("twilio.token"), "t0ken\n").unwrap();
    std::fs::write(dir.path().join("smtp.pw"), "s3cret\n").unwrap();
    std::fs::write(dir.path().join("slack.url"), "https://hooks.slack.com/services/T0/B0/XYZ\n").unwrap();
    let text = r#"
[notify.hook]
kind = "webhook"
url = "https://alerts.example.com/hook"
external_url = "https://cirkel.example.com"
timeout = "3s"

[notify.slack]
kind = "slack"
url_file = "slack.url"

[notify.pagerduty]
kind = "pagerduty"
routing_key_file = "pd.key"

[notify.sms]
kind = "sms"
base_url = "http://127.0.0.1:8080"
account_sid = "AC123"
auth_token_file = "twilio.token"
from = "+15550001"
to = ["+15550002", "+15550003"]

[notify.email]
kind = "email"
from = "cirkel@example.org"
to = ["oncall@example.org"]
[notify.email.smtp]
host = "smtp.example.org"
user = "cirkel"
password_file = "smtp.pw"

[routes]
critical = ["pagerduty", "sms", "slack", "email"]
high = ["slack", "email"]
medium = ["email"]
low = []
min_renotify = "30m"

[[routes.match]]
cluster = "staging"
receivers = ["slack"]

[[routes.match]]
source = "redis/cache"
matchers = ["tag!=prod"]
severity = "critical"
receivers = ["email"]

[[escalation.critical]]
after = "5m"
receivers = ["pagerduty"]

[[escalation.critical]]
after = "15m"
receivers = ["sms"]

[[maintenance]]
matchers = ["cluster=main"]
schedule = "0 2 * * 0"
duration = "2h"
reason = "weekly patching"

[[maintenance]]
start = "2027-03-01T02:00:00Z"
end = "2027-03-01T04:00:00+00:00"
"#;
    let cfg = parse(text, dir.path()).unwrap();
    let n = &cfg.notifications;
    assert_eq!(n.receivers.len(), 5);
    match &n.receivers["hook"].kind {
        ReceiverKindConfig::Webhook { url, external_url } => {
            assert_eq!(url.expose(), "https://alerts.example.com/hook");
            assert_eq!(external_url.as_deref(), Some("https://cirkel.example.com"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(n.receivers["hook"].timeout, Duration::from_secs(3));
    assert_eq!(n.receivers["slack"].timeout, Duration::from_secs(10));
    match &n.receivers["slack"].kind {
        ReceiverKindConfig::Slack { url } => assert_eq!(url.expose(), "https://hooks.slack.com/services/T0/B0/XYZ"),
        other => panic!("{other:?}"),
    }
    match &n.receivers["pagerduty"].kind {
        ReceiverKindConfig::Pagerduty { url, routing_key } => {
            assert_eq!(url, "https://events.pagerduty.com/v2/enqueue");
            assert_eq!(routing_key.expose(), "R0UT1NG");
        }
        other => panic!("{other:?}"),
    }
    match &n.receivers["sms"].kind {
        ReceiverKindConfig::Sms { base_url, account_sid, auth_token, from, to } => {
            assert_eq!(
                (base_url.as_str(), account_sid.as_str(), from.as_str()),
                ("http://127.0.0.1:8080", "AC123", "+15550001")
            );
            assert_eq!(auth_token.expose(), "t0ken");
            assert_eq!(to.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    match &n.receivers["email"].kind {
        ReceiverKindConfig::Email { smtp, from, to } => {
            assert_eq!((smtp.host.as_str(), smtp.port, smtp.starttls), ("smtp.example.org", 587, true));
            assert_eq!(smtp.password.as_ref().unwrap().expose(), "s3cret");
            assert_eq!(from, "cirkel@example.org");
            assert_eq!(to, &["oncall@example.org"]);
        }
        other => panic!("{other:?}"),
    }
    let routes = n.routes.as_ref().unwrap();
    assert_eq!(routes.by_severity["critical"], ["pagerduty", "sms", "slack", "email"]);
    assert!(routes.by_severity["low"].is_empty());
    assert_eq!(routes.min_renotify, Duration::from_secs(1800));
    assert_eq!(routes.matches[0].matchers, ["cluster=staging"]);
    assert_eq!(routes.matches[1].matchers, ["source=redis/cache", "tag!=prod"]);
    assert_eq!(routes.matches[1].severity.as_deref(), Some("critical"));
    let esc = n.escalation.as_ref().unwrap();
    assert_eq!(esc["critical"].len(), 2);
    assert_eq!(esc["critical"][1].after, Duration::from_secs(900));
    assert!(matches!(&n.maintenance[0].window, MaintenanceWindowConfig::Recurring { schedule, duration }
        if schedule == "0 2 * * 0" && *duration == Duration::from_secs(7200)));
    assert!(matches!(n.maintenance[1].window, MaintenanceWindowConfig::Between { .. }));

    // `config show` never prints a credential.
    let shown = serde_json::to_string(&cfg).unwrap();
    for secret in ["R0UT1NG", "t0ken", "s3cret", "XYZ"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    assert!(shown.contains("\"kind\":\"pagerduty\""), "{shown}");
    assert!(!format!("{cfg:?}").contains("R0UT1NG"));
    let toml = cfg.to_toml();
    assert!(!toml.starts_with("# cannot render"), "{toml}");
    for secret in ["R0UT1NG", "t0ken", "s3cret", "XYZ"] {
        assert!(!toml.contains(secret), "{secret} shown: {toml}");
    }
    assert!(toml.contains("[notify.pagerduty]"), "{toml}");
    assert!(toml.contains("critical = [\n    \"pagerduty\"") || toml.contains("critical = [\"pagerduty\""), "{toml}");
    assert!(toml.contains("[[maintenance]]"), "{toml}");
}

#[test]
fn secrets_come_from_the_environment_too() {
    // SAFETY: this test alone reads the variable.
    unsafe { std::env::set_var("CIRKEL_TEST_PD_KEY", "from-env") };
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        parse("[notify.pd]\nkind = \"pagerduty\"\nrouting_key_env = \"CIRKEL_TEST_PD_KEY\"\n", dir.path()).unwrap();
    match &cfg.notifications.receivers["pd"].kind {
        ReceiverKindConfig::Pagerduty { routing_key, .. } => assert_eq!(routing_key.expose(), "from-env"),
        other => panic!("{other:?}"),
    }
    let e = err("[notify.pd]\nkind = \"pagerduty\"\nrouting_key_env = \"CIRKEL_TEST_UNSET_VARIABLE\"\n");
    assert!(
        e.contains(
            "c.toml:3:19: `notify.pd.routing_key_env`: the environment variable CIRKEL_TEST_UNSET_VARIABLE is not set"
        ),
        "{e}"
    );
}

#[test]
fn a_secret_written_in_the_file_is_refused() {
    let e = err("[notify.pd]\nkind = \"pagerduty\"\nrouting_key = \"R0UT1NG\"\n");
    assert!(
        e.contains(
            "c.toml:3:1: `notify.pd.routing_key`: secrets are not written in the configuration; use routing_key_file"
        ),
        "{e}"
    );
    assert!(!e.contains("R0UT1NG"), "{e}");
    let e = err("[notify.sms]\nkind = \"sms\"\naccount_sid = \"AC1\"\nfrom = \"+1\"\nto = [\"+2\"]\n");
    assert!(e.contains("c.toml:1:1: `notify.sms.auth_token_file`: missing; expected auth_token_file"), "{e}");
    let e = err("[notify.pd]\nkind = \"pagerduty\"\nrouting_key_file = \"/nonexistent/pd.key\"\n");
    assert!(e.contains("c.toml:3:20: `notify.pd.routing_key_file`: cannot read /nonexistent/pd.key"), "{e}");
}

#[test]
fn what_the_notifier_could_not_act_on_is_refused_with_its_line() {
    let e = err("[notify.x]\nkind = \"carrier-pigeon\"\n");
    assert!(e.contains("c.toml:2:8: `notify.x.kind`: `carrier-pigeon`: expected \"webhook\", \"slack\""), "{e}");
    let e = err("[notify.x]\nurl = \"https://a.example\"\n");
    assert!(e.contains("`notify.x.kind`: missing; expected kind = "), "{e}");
    let e = err("[notify.x]\nkind = \"webhook\"\nurl = \"ftp://a.example\"\n");
    assert!(e.contains("c.toml:3:7: `notify.x.url`: scheme `ftp` is not supported"), "{e}");
    let e = err("[notify.x]\nkind = \"webhook\"\nurl = \"https://a.example\"\ncolour = \"red\"\n");
    assert!(e.contains("c.toml:4:1: `notify.x.colour`: unknown key"), "{e}");
    let e = err(
        "[notify.m]\nkind = \"email\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n[notify.m.smtp]\nhost = \"smtp.example.org\"\nstarttls = false\n",
    );
    assert!(e.contains("c.toml:7:12: `notify.m.smtp.starttls`: plain SMTP to smtp.example.org would send alerts and the password in clear"), "{e}");
    let e = err(
        "[notify.m]\nkind = \"email\"\nfrom = \"a@b.c\"\nto = []\n[notify.m.smtp]\nhost = \"127.0.0.1\"\nstarttls = false\n",
    );
    assert!(e.contains("c.toml:4:6: `notify.m.to`: is empty"), "{e}");
    let e = err("[routes]\ncritical = [\"pager\"]\n");
    assert!(e.contains("c.toml:1:1: `routes`: names receiver `pager`, which no [notify.pager] table defines"), "{e}");
    let e = err("[routes]\nurgent = []\n");
    assert!(e.contains("c.toml:2:1: `routes.urgent`: unknown key"), "{e}");
    let e = err("[[routes.match]]\nreceivers = []\n");
    assert!(e.contains("`routes.match[0]`: matches everything; add source, cluster, tag or matchers"), "{e}");
    let e = err("[[routes.match]]\nmatchers = [\"cluster\"]\nseverity = \"urgent\"\nreceivers = []\n");
    assert!(e.contains("c.toml:2:12: `routes.match[0].matchers`: `cluster` is not a matcher"), "{e}");
    assert!(
        e.contains("c.toml:3:12: `routes.match[0].severity`: `urgent`: expected critical, high, medium or low"),
        "{e}"
    );
    let e = err("[[escalation.critical]]\nafter = \"15m\"\n[[escalation.critical]]\nafter = \"5m\"\n");
    assert!(e.contains("c.toml:4:9: `escalation.critical[1].after`: levels go in order"), "{e}");
    let e = err("[[escalation.high]]\nreceivers = []\n");
    assert!(e.contains("`escalation.high[0].after`: missing; expected e.g. after = \"5m\""), "{e}");
    let e = err("[[maintenance]]\nstart = \"2027-03-01T04:00:00Z\"\nend = \"2027-03-01T02:00:00Z\"\n");
    assert!(e.contains("c.toml:3:7: `maintenance[0].end`: ends before it starts"), "{e}");
    let e = err("[[maintenance]]\nmatchers = [\"cluster=main\"]\n");
    assert!(e.contains("`maintenance[0]`: expected either start and end"), "{e}");
    let e = err("[[maintenance]]\nschedule = \"61 * * * *\"\nduration = \"1h\"\n");
    assert!(e.contains("c.toml:2:12: `maintenance[0].schedule`"), "{e}");
    let e = err("[[maintenance]]\nstart = \"tomorrow\"\nend = \"2027-03-01T02:00:00Z\"\n");
    assert!(e.contains("c.toml:2:9: `maintenance[0].start`: `tomorrow` is not a time"), "{e}");
    assert!(!e.contains("expected either"), "{e}");
}

#[test]
fn nothing_configured_is_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = parse("", dir.path()).unwrap();
    assert!(cfg.notifications.receivers.is_empty());
    assert!(cfg.notifications.routes.is_none() && cfg.notifications.escalation.is_none());
    assert!(cfg.notifications.maintenance.is_empty());
}
