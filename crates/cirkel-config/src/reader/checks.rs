//! Reading `[checks.NAME]` and `[server]`: kept apart from the other tables
//! so each kind of setting reads in its own file.

use std::net::SocketAddr;
use std::time::Duration;

use super::Table;
use crate::checks::{
    CheckConfig, CheckKindConfig, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_INTERVAL, DEFAULT_TIMEOUT,
    DEFAULT_UNHEALTHY_THRESHOLD, ServerConfig,
};

pub(super) fn read_check(mut t: Table<'_, '_>) -> CheckConfig {
    let kind_span = t.value_span("kind");
    let kind = match t.string("kind").as_deref() {
        Some("http") => read_http(&mut t),
        Some("tcp") => read_tcp(&mut t),
        Some(other) => {
            t.cx.error(
                kind_span.unwrap_or(0..0),
                &t.key_path("kind"),
                format!("`{other}`: expected \"http\" or \"tcp\""),
            );
            CheckKindConfig::Tcp { address: String::new() }
        }
        None => {
            if !t.used.contains("kind") {
                t.cx.error(t.span.clone(), &t.key_path("kind"), "missing; expected kind = \"http\" or kind = \"tcp\"");
            }
            CheckKindConfig::Tcp { address: String::new() }
        }
    };
    let interval = positive(&mut t, "interval").unwrap_or(DEFAULT_INTERVAL);
    let timeout = positive(&mut t, "timeout").unwrap_or(DEFAULT_TIMEOUT);
    if timeout >= interval {
        let span = t.value_span("timeout").or_else(|| t.value_span("interval")).unwrap_or(t.span.clone());
        t.cx.error(
            span,
            &t.key_path("timeout"),
            format!(
                "a timeout of {} reaches the next probe (interval {}); make it shorter than the interval",
                crate::duration_to_string(timeout),
                crate::duration_to_string(interval)
            ),
        );
    }
    let cfg = CheckConfig {
        kind,
        interval,
        timeout,
        healthy_threshold: t.integer("healthy_threshold", 1..1001).map_or(DEFAULT_HEALTHY_THRESHOLD, |n| n as u32),
        unhealthy_threshold: t
            .integer("unhealthy_threshold", 1..1001)
            .map_or(DEFAULT_UNHEALTHY_THRESHOLD, |n| n as u32),
        restart_command: t.string("restart_command"),
    };
    t.finish();
    cfg
}

/// A duration that must not be zero.
fn positive(t: &mut Table<'_, '_>, key: &'static str) -> Option<Duration> {
    let d = t.duration(key)?;
    if d.is_zero() {
        let span = t.value_span(key).unwrap_or(0..0);
        t.cx.error(span, &t.key_path(key), "must be longer than 0; expected e.g. \"10s\" or \"500ms\"");
        return None;
    }
    Some(d)
}

fn read_http(t: &mut Table<'_, '_>) -> CheckKindConfig {
    let url = t.required_string("url", "\"http://127.0.0.1:8080/health\"");
    if let Some(span) = t.value_span("url")
        && let Err(e) = check_http_url(&url)
    {
        t.cx.error(span, &t.key_path("url"), e);
    }
    let expect_status = t.integer("expect_status", 100..600).map(|n| n as u16);
    let body_contains = t.string("body_contains");
    CheckKindConfig::Http { url, expect_status, body_contains }
}

fn read_tcp(t: &mut Table<'_, '_>) -> CheckKindConfig {
    let address = t.required_string("address", "\"10.0.0.1:5432\"");
    if let Some(span) = t.value_span("address") {
        let port = address.rsplit_once(':').and_then(|(host, p)| (!host.is_empty()).then_some(p));
        if port.and_then(|p| p.parse::<u16>().ok()).is_none_or(|p| p == 0) {
            t.cx.error(
                span,
                &t.key_path("address"),
                format!("`{address}` is not host:port; expected e.g. \"10.0.0.1:5432\""),
            );
        }
    }
    CheckKindConfig::Tcp { address }
}

/// Only plain HTTP is probed: a check of an https endpoint would fail every
/// time, so it is refused with the way out.
pub(crate) fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("`{url}` is not a URL ({e}); expected e.g. \"http://127.0.0.1:8080/health\""))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "`{url}`: https is not supported; probe the service's plain-http port (e.g. \"http://127.0.0.1:8080/health\") or use kind = \"tcp\""
            ));
        }
        other => return Err(format!("`{url}`: scheme `{other}` is not supported; expected an http:// URL")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host; expected e.g. \"http://127.0.0.1:8080/health\""));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{url}` contains credentials, which a health check never sends; remove them"));
    }
    Ok(())
}

pub(super) fn read_server(mut t: Table<'_, '_>) -> ServerConfig {
    let span = t.value_span("listen");
    let listen = t.string("listen").and_then(|s| match s.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            t.cx.error(
                span.unwrap_or(0..0),
                &t.key_path("listen"),
                format!("`{s}` is not an IP address and port; expected e.g. \"127.0.0.1:9187\""),
            );
            None
        }
    });
    let viewer_token = token(&mut t, "viewer_token", "viewer_token_file");
    let operator_token = token(&mut t, "operator_token", "operator_token_file");
    let tls_cert_file = t.string("tls_cert_file").map(|p| t.cx.resolve(&p));
    let tls_key_file = t.string("tls_key_file").map(|p| t.cx.resolve(&p));
    if tls_cert_file.is_some() != tls_key_file.is_some() {
        let key = if tls_cert_file.is_some() { "tls_key_file" } else { "tls_cert_file" };
        t.cx.error(
            t.span.clone(),
            &t.key_path(key),
            "missing: HTTPS needs both tls_cert_file (a PEM certificate chain) and tls_key_file (its PEM private key)",
        );
    }
    t.finish();
    ServerConfig { listen, viewer_token, operator_token, tls_cert_file, tls_key_file }
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

fn token(t: &mut Table<'_, '_>, key: &'static str, file_key: &'static str) -> Option<crate::Secret> {
    let (secret, _) = t.secret_file(key, file_key);
    let secret = secret?;
    if secret.expose().len() < MIN_TOKEN_LEN || secret.expose().chars().any(|c| c.is_whitespace() || c.is_control()) {
        let span = t.value_span(file_key).unwrap_or(0..0);
        t.cx.error(
            span,
            &t.key_path(file_key),
            format!(
                "the token must be at least {MIN_TOKEN_LEN} characters without spaces; make one with `head -c 32 /dev/urandom | base64 > FILE`"
            ),
        );
        return None;
    }
    Some(secret)
}
