//! Email through a real SMTP server (aiosmtpd on loopback): the mail
//! arrives with its subject and body; a server refusing authentication
//! makes the message retried with the refusal recorded.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use cirkel_config::Secret;
use cirkel_notify::{
    AlertInput, Counters, Labels, Notifier, Receiver, ReceiverKind, Receivers, Severity, Status, Store, WorkerOptions,
    alert_key, outbox,
};
use common::{SmtpServer, wait_for};
use tokio_util::sync::CancellationToken;

fn email(port: u16, user: Option<&str>, password: Option<&str>) -> Receiver {
    Receiver::new(
        "email",
        ReceiverKind::Email {
            host: "127.0.0.1".into(),
            port,
            starttls: false,
            user: user.map(str::to_string),
            password: password.map(Secret::new),
            from: "cirkel@example.org".into(),
            to: vec!["oncall@example.org".into(), "lead@example.org".into()],
        },
    )
}

fn firing(name: &str) -> AlertInput {
    let labels: Labels = BTreeMap::from([("alertname".into(), name.into()), ("cluster".into(), "main".into())]);
    AlertInput {
        key: alert_key(name, &labels),
        name: name.into(),
        source: "postgres/main".into(),
        severity: Severity::Medium,
        labels,
        summary: "WAL archiving has failed for 10 minutes".into(),
        status: Status::Firing,
        at: Utc::now(),
        details: serde_json::Value::Null,
    }
}

struct Run {
    notifier: Notifier,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    worker: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn run(receiver: Receiver) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_in(dir.path()).unwrap());
    let receivers = Arc::new(Receivers::new([receiver]));
    let counters = Arc::new(Counters::new(["email"]));
    let notifier = Notifier::new(store.clone(), receivers.clone());
    let cancel = CancellationToken::new();
    let options = WorkerOptions {
        poll: Duration::from_millis(20),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    let worker = tokio::spawn(outbox::run(store, receivers, counters.clone(), options, cancel.clone()));
    Run { notifier, counters, cancel, worker, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_arrives_with_its_subject_and_body() {
    let smtp = SmtpServer::start("accept");
    let r = run(email(smtp.port, Some("cirkel"), Some("s3cret")));
    let h = r.notifier.handle(&firing("wal-archive-failing")).unwrap();
    wait_for("the mail", || smtp.mails().len() == 1).await;
    r.cancel.cancel();
    r.worker.await.unwrap();
    let mail = &smtp.mails()[0];
    assert!(mail.contains("Subject: [MEDIUM] FIRING: wal-archive-failing on postgres/main"), "{mail}");
    assert!(mail.contains("WAL archiving has failed for 10 minutes"), "{mail}");
    assert!(mail.contains(&format!("cirkel alerts ack {}", h.alert.unwrap())), "{mail}");
    assert!(mail.contains("To: oncall@example.org, lead@example.org"), "{mail}");
    let id = &r.notifier.store.outbox(None).unwrap()[0].message_id;
    assert!(mail.contains(&format!("Message-ID: <{id}@cirkel>")), "{mail}");
    assert_eq!(r.counters.get("email").unwrap().delivered.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_refusing_auth_is_retried_and_the_refusal_recorded() {
    let smtp = SmtpServer::start("reject");
    let r = run(email(smtp.port, Some("cirkel"), Some("wrong")));
    r.notifier.handle(&firing("backup-late")).unwrap();
    wait_for("retries", || r.counters.get("email").unwrap().failed.load(Ordering::Relaxed) >= 2).await;
    r.cancel.cancel();
    r.worker.await.unwrap();
    assert!(smtp.mails().is_empty());
    let m = &r.notifier.store.outbox(None).unwrap()[0];
    assert!(m.attempts >= 2);
    let err = m.last_error.as_deref().unwrap();
    assert!(err.contains("535"), "{err}");
    assert!(!err.contains("wrong"), "the password never shows: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_smtp_to_a_remote_host_is_refused() {
    let mut receiver = email(25, None, None);
    if let ReceiverKind::Email { host, .. } = &mut receiver.kind {
        *host = "mail.example.org".into();
    }
    let r = run(receiver);
    r.notifier.handle(&firing("backup-late")).unwrap();
    wait_for("a failed attempt", || r.counters.get("email").unwrap().failed.load(Ordering::Relaxed) >= 1).await;
    r.cancel.cancel();
    r.worker.await.unwrap();
    let m = &r.notifier.store.outbox(None).unwrap()[0];
    assert!(m.last_error.as_deref().unwrap().contains("set starttls = true"), "{:?}", m.last_error);
}
