//! Reading `[notify.NAME]`, `[routes]`, `[escalation]` and `[[maintenance]]`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use super::Table;
use crate::Secret;
use crate::notify::{
    DEFAULT_MIN_RENOTIFY, DEFAULT_TIMEOUT, EscalationLevelConfig, MaintenanceConfig, MaintenanceWindowConfig,
    NotifyConfig, PAGERDUTY_URL, ReceiverConfig, ReceiverKindConfig, RouteMatchConfig, RoutesConfig, SmtpConfig,
    TWILIO_URL,
};

const SEVERITIES: [&str; 4] = ["critical", "high", "medium", "low"];
const KINDS: &str = "\"webhook\", \"slack\", \"pagerduty\", \"sms\" or \"email\"";

pub(super) fn read(root: &mut Table<'_, '_>) -> NotifyConfig {
    let receivers: BTreeMap<String, ReceiverConfig> =
        root.named_tables("notify").into_iter().filter_map(|(n, t)| read_receiver(t).map(|r| (n, r))).collect();
    let routes_span = root.value_span("routes");
    let routes = root.table("routes").map(read_routes);
    let escalation_span = root.value_span("escalation");
    let escalation = root.table("escalation").map(read_escalation);
    let maintenance = tables_array(root, "maintenance").into_iter().filter_map(read_maintenance).collect();
    let cfg = NotifyConfig { receivers, routes, escalation, maintenance };
    let named = |names: &[String], span: &Option<Range<usize>>, key: &str| {
        for n in names {
            if !cfg.receivers.contains_key(n) {
                root.cx.error(
                    span.clone().unwrap_or(0..0),
                    key,
                    format!("names receiver `{n}`, which no [notify.{n}] table defines"),
                );
            }
        }
    };
    if let Some(r) = &cfg.routes {
        for names in r.by_severity.values() {
            named(names, &routes_span, "routes");
        }
        for m in &r.matches {
            named(&m.receivers, &routes_span, "routes.match");
        }
    }
    if let Some(e) = &cfg.escalation {
        for levels in e.values() {
            for l in levels {
                named(&l.receivers, &escalation_span, "escalation");
            }
        }
    }
    cfg
}

/// `[[key]]`: an array of tables.
fn tables_array<'a, 'i>(t: &mut Table<'a, 'i>, key: &'static str) -> Vec<Table<'a, 'i>> {
    let Some(v) = t.get(key) else { return Vec::new() };
    let Some(arr) = v.get_ref().as_array() else {
        t.wrong(key, v, "an array of tables ([[...]])");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in arr.iter().enumerate() {
        match item.get_ref().as_table() {
            Some(table) => out.push(Table::new(t.cx, format!("{}[{i}]", t.key_path(key)), item.span(), table)),
            None => t.wrong(key, item, "a table"),
        }
    }
    out
}

/// A credential from `<key>_file` or the variable `<key>_env` names.
fn secret(t: &mut Table<'_, '_>, key: &'static str, file_key: &'static str, env_key: &'static str) -> Option<Secret> {
    let (from_file, _) = t.secret_file(key, file_key);
    let env_span = t.value_span(env_key);
    let from_env = t.string(env_key).and_then(|var| match std::env::var(&var) {
        Ok(v) if !v.is_empty() => Some(Secret::new(v)),
        _ => {
            t.cx.error(
                env_span.unwrap_or(0..0),
                &t.key_path(env_key),
                format!("the environment variable {var} is not set; export it or use {file_key}"),
            );
            None
        }
    });
    if from_file.is_some() && from_env.is_some() {
        t.cx.error(t.span.clone(), &t.key_path(file_key), format!("both {file_key} and {env_key} are set; keep one"));
    }
    from_file.or(from_env)
}

fn required_secret(t: &mut Table<'_, '_>, key: &'static str, file_key: &'static str, env_key: &'static str) -> Secret {
    let had = t.value_span(file_key).is_some() || t.value_span(env_key).is_some() || t.value_span(key).is_some();
    match secret(t, key, file_key, env_key) {
        Some(s) => s,
        None => {
            if !had {
                t.cx.error(
                    t.span.clone(),
                    &t.key_path(file_key),
                    format!("missing; expected {file_key} = \"/etc/cirkel/{key}\" or {env_key} = \"VARIABLE\""),
                );
            }
            Secret::new("")
        }
    }
}

/// A URL that may be written (`url`) or kept secret (`url_file`, `url_env`).
fn url(t: &mut Table<'_, '_>, example: &str) -> Secret {
    let span = t.value_span("url");
    let literal = t.string("url");
    let secret_url = secret_no_literal(t, "url_file", "url_env");
    let url = match (literal, secret_url) {
        (Some(_), Some(s)) => {
            t.cx.error(
                span.clone().unwrap_or(0..0),
                &t.key_path("url"),
                "both url and url_file/url_env are set; keep one",
            );
            s
        }
        (Some(u), None) => Secret::new(u),
        (None, Some(s)) => s,
        (None, None) => {
            t.cx.error(t.span.clone(), &t.key_path("url"), format!("missing; expected url = {example} or url_file"));
            return Secret::new("");
        }
    };
    if let Err(e) = check_url(url.expose()) {
        t.cx.error(span.unwrap_or(t.span.clone()), &t.key_path("url"), e);
    }
    url
}

fn secret_no_literal(t: &mut Table<'_, '_>, file_key: &'static str, env_key: &'static str) -> Option<Secret> {
    let span = t.value_span(file_key);
    let file = t.string(file_key).and_then(|p| {
        let path = t.cx.resolve(&p);
        match crate::read_bounded(&path, crate::SECRET_FILE_MAX) {
            Ok(s) => Some(Secret::new(s.trim().to_string())),
            Err(e) => {
                t.cx.error(
                    span.clone().unwrap_or(0..0),
                    &t.key_path(file_key),
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    let env_span = t.value_span(env_key);
    let env = t.string(env_key).and_then(|var| match std::env::var(&var) {
        Ok(v) if !v.is_empty() => Some(Secret::new(v)),
        _ => {
            t.cx.error(
                env_span.unwrap_or(0..0),
                &t.key_path(env_key),
                format!("the environment variable {var} is not set"),
            );
            None
        }
    });
    file.or(env)
}

/// Without printing the URL: it may be a credential.
fn check_url(u: &str) -> Result<(), String> {
    let parsed =
        url::Url::parse(u).map_err(|e| format!("not a URL ({e}); expected e.g. \"https://hooks.example.com/…\""))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not supported; expected an https:// URL", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("names no host; expected e.g. \"https://hooks.example.com/…\"".into());
    }
    Ok(())
}

fn read_receiver(mut t: Table<'_, '_>) -> Option<ReceiverConfig> {
    let kind_span = t.value_span("kind");
    let kind = match t.string("kind").as_deref() {
        Some("webhook") => {
            let url = url(&mut t, "\"https://alerts.example.com/hook\"");
            ReceiverKindConfig::Webhook { url, external_url: t.string("external_url") }
        }
        Some("slack") => ReceiverKindConfig::Slack { url: url(&mut t, "\"https://hooks.slack.com/services/…\"") },
        Some("pagerduty") => {
            let routing_key = required_secret(&mut t, "routing_key", "routing_key_file", "routing_key_env");
            let url = t.string("url").unwrap_or_else(|| PAGERDUTY_URL.to_string());
            if let Err(e) = check_url(&url) {
                t.cx.error(t.value_span("url").unwrap_or(0..0), &t.key_path("url"), e);
            }
            ReceiverKindConfig::Pagerduty { url, routing_key }
        }
        Some("sms") => {
            let base_url = t.string("base_url").unwrap_or_else(|| TWILIO_URL.to_string());
            if let Err(e) = check_url(&base_url) {
                t.cx.error(t.value_span("base_url").unwrap_or(0..0), &t.key_path("base_url"), e);
            }
            let account_sid = t.required_string("account_sid", "\"AC0123…\"");
            let auth_token = required_secret(&mut t, "auth_token", "auth_token_file", "auth_token_env");
            let from = t.required_string("from", "\"+15550100\"");
            let to = recipients(&mut t, "[\"+15550101\"]");
            ReceiverKindConfig::Sms { base_url, account_sid, auth_token, from, to }
        }
        Some("email") => {
            let smtp = match t.table("smtp") {
                Some(s) => read_smtp(s),
                None => {
                    t.cx.error(
                        t.span.clone(),
                        &t.key_path("smtp"),
                        "missing; expected a [notify.NAME.smtp] table with host",
                    );
                    SmtpConfig { host: String::new(), port: 587, starttls: true, user: None, password: None }
                }
            };
            let from = t.required_string("from", "\"cirkel@example.org\"");
            let to = recipients(&mut t, "[\"oncall@example.org\"]");
            ReceiverKindConfig::Email { smtp, from, to }
        }
        Some(other) => {
            t.cx.error(kind_span.unwrap_or(0..0), &t.key_path("kind"), format!("`{other}`: expected {KINDS}"));
            t.finish();
            return None;
        }
        None => {
            if !t.used.contains("kind") {
                t.cx.error(t.span.clone(), &t.key_path("kind"), format!("missing; expected kind = {KINDS}"));
            }
            t.finish();
            return None;
        }
    };
    let timeout = t.duration("timeout").unwrap_or(DEFAULT_TIMEOUT);
    if timeout.is_zero() {
        t.cx.error(
            t.value_span("timeout").unwrap_or(0..0),
            &t.key_path("timeout"),
            "must be longer than 0; expected e.g. \"10s\"",
        );
    }
    t.finish();
    Some(ReceiverConfig { kind, timeout })
}

fn recipients(t: &mut Table<'_, '_>, example: &str) -> Vec<String> {
    let present = t.value_span("to").is_some();
    let to = t.strings("to");
    if to.is_empty() {
        let span = t.value_span("to").unwrap_or(t.span.clone());
        let what = if present { "is empty" } else { "missing" };
        t.cx.error(span, &t.key_path("to"), format!("{what}; expected e.g. to = {example}"));
    }
    to
}

fn read_smtp(mut t: Table<'_, '_>) -> SmtpConfig {
    let host = t.required_string("host", "\"smtp.example.org\"");
    let starttls_span = t.value_span("starttls");
    let starttls = t.boolean("starttls").unwrap_or(true);
    let port = t.integer("port", 1..65536).map(|p| p as u16).unwrap_or(if starttls { 587 } else { 25 });
    let user = t.string("user");
    let password = secret(&mut t, "password", "password_file", "password_env");
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !starttls && !loopback && !host.is_empty() {
        t.cx.error(
            starttls_span.unwrap_or(0..0),
            &t.key_path("starttls"),
            format!("plain SMTP to {host} would send alerts and the password in clear; set starttls = true"),
        );
    }
    if password.is_some() != user.is_some() {
        t.cx.error(
            t.span.clone(),
            &t.key_path("user"),
            "user and password_file (or password_env) go together; set both or neither",
        );
    }
    t.finish();
    SmtpConfig { host, port, starttls, user, password }
}

fn check_matcher(t: &Table<'_, '_>, key: &str, span: Option<Range<usize>>, m: &str) {
    let ok = m.split_once('=').is_some_and(|(l, _)| !l.trim_end_matches('!').trim().is_empty());
    if !ok {
        t.cx.error(
            span.unwrap_or(0..0),
            &t.key_path(key),
            format!("`{m}` is not a matcher; expected label=value, e.g. \"cluster=main\""),
        );
    }
}

fn matchers(t: &mut Table<'_, '_>) -> Vec<String> {
    let span = t.value_span("matchers");
    let list = t.strings("matchers");
    for m in &list {
        check_matcher(t, "matchers", span.clone(), m);
    }
    list
}

fn severity(t: &mut Table<'_, '_>) -> Option<String> {
    let span = t.value_span("severity");
    let s = t.string("severity")?;
    if !SEVERITIES.contains(&s.as_str()) {
        t.cx.error(
            span.unwrap_or(0..0),
            &t.key_path("severity"),
            format!("`{s}`: expected critical, high, medium or low"),
        );
        return None;
    }
    Some(s)
}

fn read_routes(mut t: Table<'_, '_>) -> RoutesConfig {
    let mut by_severity = BTreeMap::new();
    for s in SEVERITIES {
        if t.value_span(s).is_some() {
            by_severity.insert(s.to_string(), t.strings(s));
        }
    }
    let matches = tables_array(&mut t, "match")
        .into_iter()
        .map(|mut m| {
            let mut list = Vec::new();
            for label in ["source", "cluster", "tag"] {
                if let Some(v) = m.string(label) {
                    list.push(format!("{label}={v}"));
                }
            }
            list.extend(matchers(&mut m));
            if list.is_empty() {
                m.cx.error(m.span.clone(), &m.path, "matches everything; add source, cluster, tag or matchers");
            }
            let severity = severity(&mut m);
            let receivers = m.strings("receivers");
            let present = m.value_span("receivers").is_some();
            if !present {
                m.cx.error(m.span.clone(), &m.key_path("receivers"), "missing; expected e.g. receivers = [\"slack\"]");
            }
            m.finish();
            RouteMatchConfig { matchers: list, severity, receivers }
        })
        .collect();
    let min_renotify = t.duration("min_renotify").unwrap_or(DEFAULT_MIN_RENOTIFY);
    t.finish();
    RoutesConfig { by_severity, matches, min_renotify }
}

fn read_escalation(mut t: Table<'_, '_>) -> BTreeMap<String, Vec<EscalationLevelConfig>> {
    let mut out = BTreeMap::new();
    for s in SEVERITIES {
        if t.value_span(s).is_none() {
            t.known.push(s);
            continue;
        }
        let mut previous: Option<Duration> = None;
        let levels: Vec<EscalationLevelConfig> = tables_array(&mut t, s)
            .into_iter()
            .filter_map(|mut l| {
                let span = l.value_span("after");
                let after = l.duration("after");
                if after.is_none() && span.is_none() {
                    l.cx.error(l.span.clone(), &l.key_path("after"), "missing; expected e.g. after = \"5m\"");
                }
                let receivers = l.strings("receivers");
                let path = l.key_path("after");
                let cx = l.cx;
                l.finish();
                let after = after?;
                if previous.is_some_and(|p| after <= p) {
                    cx.error(
                        span.unwrap_or(0..0),
                        &path,
                        "levels go in order: each after is longer than the one before",
                    );
                }
                previous = Some(after);
                Some(EscalationLevelConfig { after, receivers })
            })
            .collect();
        out.insert(s.to_string(), levels);
    }
    t.finish();
    out
}

fn read_maintenance(mut t: Table<'_, '_>) -> Option<MaintenanceConfig> {
    let matchers = matchers(&mut t);
    let reason = t.string("reason");
    let time = |t: &mut Table<'_, '_>, key: &'static str| {
        let span = t.value_span(key);
        let s = t.string(key)?;
        match s.parse::<chrono::DateTime<chrono::FixedOffset>>() {
            Ok(d) => Some(d.with_timezone(&chrono::Utc)),
            Err(e) => {
                t.cx.error(
                    span.unwrap_or(0..0),
                    &t.key_path(key),
                    format!("`{s}` is not a time ({e}); expected e.g. \"2027-03-01T02:00:00Z\""),
                );
                None
            }
        }
    };
    let errors_before = t.cx.errors.borrow().len();
    let start = time(&mut t, "start");
    let end = time(&mut t, "end");
    let schedule = t.schedule("schedule");
    let duration = t.duration("duration");
    let window = match (start, end, schedule, duration) {
        (Some(start), Some(end), None, None) if start < end => Some(MaintenanceWindowConfig::Between { start, end }),
        (Some(_), Some(_), None, None) => {
            t.cx.error(
                t.value_span("end").unwrap_or(0..0),
                &t.key_path("end"),
                "ends before it starts; expected end after start",
            );
            None
        }
        (None, None, Some(schedule), Some(duration)) if !duration.is_zero() => {
            Some(MaintenanceWindowConfig::Recurring { schedule, duration })
        }
        _ => {
            // A value already refused has its own message.
            if t.cx.errors.borrow().len() == errors_before {
                t.cx.error(
                    t.span.clone(),
                    &t.path,
                    "expected either start and end (\"2027-03-01T02:00:00Z\") or schedule (\"0 2 * * 0\") and a duration (\"2h\")",
                );
            }
            None
        }
    };
    t.finish();
    Some(MaintenanceConfig { matchers, window: window?, reason })
}
