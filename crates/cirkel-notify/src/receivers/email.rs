//! Email over SMTP (lettre): STARTTLS and authentication for real servers;
//! plain SMTP only to a loopback address (a local relay, tests).

use std::net::IpAddr;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Notice, ReceiverKind};
use crate::Payload;

pub fn render(n: &Notice<'_>) -> Payload {
    let a = n.alert;
    let mut body = format!("{}\n\n{}\n\n", n.headline(), a.summary);
    body.push_str(&format!(
        "Alert:    {}\nSeverity: {}\nSource:   {}\nSince:    {}\n",
        a.id, a.severity, a.source, a.started_at
    ));
    if let Some(t) = a.resolved_at {
        body.push_str(&format!("Resolved: {t}\n"));
    }
    for (k, v) in &a.labels {
        body.push_str(&format!("Label:    {k}={v}\n"));
    }
    body.push_str(&format!("\nAcknowledge to stop escalation: cirkel alerts ack {}\n", a.id));
    Payload::Mail { subject: n.headline(), body }
}

/// Whether plain SMTP is acceptable for `host`.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub(super) async fn send(
    kind: &ReceiverKind,
    timeout: Duration,
    subject: &str,
    body: &str,
    message_id: &str,
) -> Result<(), String> {
    let ReceiverKind::Email { host, port, starttls, user, password, from, to } = kind else {
        return Err("not an email receiver".to_string());
    };
    let mut builder = Message::builder()
        .from(from.parse().map_err(|e| format!("from address `{from}`: {e}"))?)
        .subject(subject)
        .message_id(Some(format!("<{message_id}@cirkel>")))
        .header(ContentType::TEXT_PLAIN);
    for rcpt in to {
        builder = builder.to(rcpt.parse().map_err(|e| format!("to address `{rcpt}`: {e}"))?);
    }
    let message = builder.body(body.to_string()).map_err(|e| format!("build the mail: {e}"))?;
    let mut transport = if *starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(|e| format!("{host}: {e}"))?
    } else if is_loopback(host) {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
    } else {
        return Err(format!("plain SMTP to {host} would send credentials and alerts in clear; set starttls = true"));
    };
    transport = transport.port(*port).timeout(Some(timeout));
    if let (Some(u), Some(p)) = (user, password) {
        transport = transport.credentials(Credentials::new(u.clone(), p.expose().to_string()));
    }
    transport.build().send(message).await.map(|_| ()).map_err(|e| format!("SMTP {host}:{port}: {e}"))
}
