//! Delivery against real receivers: HTTP servers standing in for a webhook,
//! Slack, PagerDuty and a Twilio-compatible SMS API, asserting the exact
//! payloads; receivers that are down, answer 500 or hang; and the outbox
//! surviving a store dropped mid-delivery.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use cirkel_config::Secret;
use cirkel_notify::route::Routes;
use cirkel_notify::{
    Counters, Notifier, Receiver, ReceiverKind, Receivers, Severity, Status, Store, WorkerOptions, outbox,
};
use common::{HttpReceiver, Mode, input, wait_for};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn fast() -> WorkerOptions {
    WorkerOptions {
        poll: Duration::from_millis(20),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

struct Setup {
    notifier: Notifier,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    worker: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new(receivers: Vec<Receiver>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open_in(dir.path()).unwrap());
        let names: Vec<String> = receivers.iter().map(|r| r.name.clone()).collect();
        let receivers = Arc::new(Receivers::new(receivers));
        let counters = Arc::new(Counters::new(names.iter().map(String::as_str)));
        let mut notifier = Notifier::new(store, receivers);
        let mut routes = Routes::default();
        for sev in Severity::ALL {
            routes.by_severity.insert(sev, names.clone());
        }
        routes.min_renotify = Duration::ZERO;
        notifier.routes = routes;
        Setup { notifier, counters, cancel: CancellationToken::new(), worker: None, _dir: dir }
    }

    fn start(&mut self, options: WorkerOptions) {
        self.cancel = CancellationToken::new();
        let (s, r, c, cancel) =
            (self.notifier.store.clone(), self.notifier.receivers.clone(), self.counters.clone(), self.cancel.clone());
        self.worker = Some(tokio::spawn(outbox::run(s, r, c, options, cancel)));
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(w) = self.worker.take() {
            w.await.unwrap();
        }
    }

    fn delivered(&self, name: &str) -> u64 {
        self.counters.get(name).unwrap().delivered.load(Ordering::Relaxed)
    }

    fn failed(&self, name: &str) -> u64 {
        self.counters.get(name).unwrap().failed.load(Ordering::Relaxed)
    }
}

fn webhook(name: &str, url: String) -> Receiver {
    Receiver::new(
        name,
        ReceiverKind::Webhook { url: Secret::new(url), external_url: "http://cirkel.example:9187".into() },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiver_gets_its_exact_payload() {
    let http = HttpReceiver::start().await;
    let mut s = Setup::new(vec![
        webhook("webhook", http.url("/hook")),
        Receiver::new("slack", ReceiverKind::Slack { url: Secret::new(http.url("/slack/T0/B0/XYZ")) }),
        Receiver::new(
            "pagerduty",
            ReceiverKind::PagerDuty { url: http.url("/v2/enqueue"), routing_key: Secret::new("R0UT1NG") },
        ),
        Receiver::new(
            "sms",
            ReceiverKind::Sms {
                base_url: http.url(""),
                account_sid: "AC123".into(),
                auth_token: Secret::new("t0ken"),
                from: "+15550001".into(),
                to: vec!["+15550002".into(), "+15550003".into()],
            },
        ),
    ]);
    let t0 = Utc::now();
    let fire = input("primary-down", "main", Severity::Critical, Status::Firing, t0);
    let h = s.notifier.handle(&fire).unwrap();
    assert_eq!(h.messages.len(), 5, "one per receiver, one per SMS recipient");
    s.start(fast());
    wait_for("the five firing messages", || http.requests().len() == 5).await;
    let t1 = t0 + chrono::Duration::seconds(90);
    s.notifier.handle(&input("primary-down", "main", Severity::Critical, Status::Resolved, t1)).unwrap();
    wait_for("the five resolutions", || http.requests().len() == 10).await;
    s.stop().await;
    assert!(s.notifier.store.failing().unwrap().is_empty());

    let reqs = http.requests();
    let by_path = |p: &str| reqs.iter().filter(|r| r.path.starts_with(p)).cloned().collect::<Vec<_>>();
    let alert_id = h.alert.unwrap();
    let starts = t0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ends = t1.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    // Alertmanager's webhook shape, field for field.
    let hook = by_path("/hook");
    assert_eq!(hook.len(), 2);
    let labels = json!({"alertname": "primary-down", "cluster": "main", "source": "postgres/main"});
    let expected = |status: &str, ends_at: &str| {
        json!({
            "version": "4",
            "groupKey": "{}:{alertname=\"primary-down\"}",
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "webhook",
            "groupLabels": {"alertname": "primary-down"},
            "commonLabels": labels,
            "commonAnnotations": {"summary": "primary-down on main"},
            "externalURL": "http://cirkel.example:9187",
            "alerts": [{
                "status": status,
                "labels": labels,
                "annotations": {"summary": "primary-down on main"},
                "startsAt": starts,
                "endsAt": ends_at,
                "generatorURL": format!("http://cirkel.example:9187/alerts/{alert_id}"),
                "fingerprint": fire.key,
            }],
        })
    };
    assert_eq!(hook[0].json(), expected("firing", "0001-01-01T00:00:00Z"));
    assert_eq!(hook[1].json(), expected("resolved", &ends));
    assert_eq!(hook[0].headers["content-type"], "application/json");
    assert_ne!(hook[0].headers["idempotency-key"], hook[1].headers["idempotency-key"]);

    // Slack: text for notifications, blocks for the message.
    let slack = by_path("/slack/T0/B0/XYZ");
    assert_eq!(slack.len(), 2);
    let body = slack[0].json();
    assert_eq!(body["text"], "[CRITICAL] FIRING: primary-down on postgres/main: primary-down on main");
    assert_eq!(
        body["blocks"][0],
        json!({"type": "header", "text": {"type": "plain_text", "text": "[CRITICAL] FIRING: primary-down on postgres/main"}})
    );
    assert_eq!(body["blocks"][1]["text"]["text"], "primary-down on main");
    assert!(body["blocks"][2]["fields"].as_array().unwrap().iter().any(|f| f["text"] == "*Cluster*\nmain"));
    assert!(slack[1].json()["text"].as_str().unwrap().starts_with("[CRITICAL] RESOLVED: primary-down"));

    // PagerDuty: trigger then resolve under the same dedup_key.
    let pd = by_path("/v2/enqueue");
    assert_eq!(pd.len(), 2);
    assert_eq!(
        pd[0].json(),
        json!({
            "routing_key": "R0UT1NG",
            "event_action": "trigger",
            "dedup_key": fire.key,
            "payload": {
                "summary": "[CRITICAL] FIRING: primary-down on postgres/main",
                "source": "postgres/main",
                "severity": "critical",
                "timestamp": starts,
                "component": "main",
                "custom_details": {
                    "summary": "primary-down on main",
                    "labels": labels,
                    "alert_id": alert_id,
                    "escalation_level": 0,
                },
            },
        })
    );
    assert_eq!(pd[1].json(), json!({"routing_key": "R0UT1NG", "event_action": "resolve", "dedup_key": fire.key}));

    // SMS: Twilio's form, path and basic auth.
    let sms = by_path("/2010-04-01/Accounts/AC123/Messages.json");
    assert_eq!(sms.len(), 4);
    assert_eq!(sms[1].form()[0], ("To".to_string(), "+15550003".to_string()));
    assert_eq!(
        sms[0].form(),
        vec![
            ("To".to_string(), "+15550002".to_string()),
            ("From".to_string(), "+15550001".to_string()),
            (
                "Body".to_string(),
                format!(
                    "[CRITICAL] FIRING: primary-down on postgres/main. primary-down on main Ack: cirkel alerts ack {alert_id}"
                )
            ),
        ]
    );
    // base64("AC123:t0ken")
    assert_eq!(sms[0].headers["authorization"], "Basic QUMxMjM6dDBrZW4=");
    assert_eq!(sms[0].headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(sms[2].form()[2].1, "[CRITICAL] RESOLVED: primary-down on postgres/main");

    assert_eq!(s.delivered("sms"), 4);
    for name in ["webhook", "slack", "pagerduty"] {
        assert_eq!(s.delivered(name), 2, "{name}");
        assert_eq!(s.failed(name), 0, "{name}");
    }
    assert!(s.notifier.store.outbox(None).unwrap().iter().all(|m| m.delivered_at.is_some() && m.attempts == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_every_message_once_when_back() {
    let mut http = HttpReceiver::start().await;
    let mut s = Setup::new(vec![webhook("hook", http.url("/hook"))]);
    http.stop();
    s.start(fast());
    let now = Utc::now();
    for i in 0..5 {
        s.notifier.handle(&input(&format!("alarm-{i}"), "main", Severity::High, Status::Firing, now)).unwrap();
    }
    wait_for("failed attempts while the receiver is down", || s.failed("hook") >= 3).await;
    assert!(http.requests().is_empty());
    let pending = s.notifier.store.outbox(Some("hook")).unwrap();
    assert!(pending[0].last_error.as_deref().unwrap().contains("error sending request"), "{:?}", pending[0].last_error);
    http.restart().await;
    wait_for("the backlog", || s.delivered("hook") == 5).await;
    s.stop().await;
    let reqs = http.requests();
    assert_eq!(reqs.len(), 5, "each message once");
    // In the order they were queued.
    let names: Vec<String> =
        reqs.iter().map(|r| r.json()["alerts"][0]["labels"]["alertname"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["alarm-0", "alarm-1", "alarm-2", "alarm-3", "alarm-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_receiver_never_holds_up_another() {
    let failing = HttpReceiver::start().await;
    failing.set(Mode::Status(500));
    let hanging = HttpReceiver::start().await;
    hanging.set(Mode::Hang);
    let good = HttpReceiver::start().await;
    let mut hang = webhook("hanging", hanging.url("/"));
    hang.timeout = Duration::from_millis(300);
    let mut s = Setup::new(vec![webhook("failing", failing.url("/")), hang, webhook("good", good.url("/"))]);
    s.start(fast());
    let now = Utc::now();
    for i in 0..3 {
        s.notifier.handle(&input(&format!("a{i}"), "main", Severity::High, Status::Firing, now)).unwrap();
    }
    wait_for("the good receiver's messages", || s.delivered("good") == 3).await;
    wait_for("retries of the failing and hanging receivers", || s.failed("failing") >= 2 && s.failed("hanging") >= 2)
        .await;
    s.stop().await;
    assert_eq!(s.delivered("failing"), 0);
    assert_eq!(s.delivered("hanging"), 0);
    let store = &s.notifier.store;
    let failing_msgs = store.outbox(Some("failing")).unwrap();
    assert!(failing_msgs[0].attempts >= 2);
    assert!(failing_msgs[0].last_error.as_deref().unwrap().contains("500"), "{:?}", failing_msgs[0].last_error);
    let hanging_msgs = store.outbox(Some("hanging")).unwrap();
    assert!(
        hanging_msgs[0].last_error.as_deref().unwrap().contains("no answer within 300ms"),
        "{:?}",
        hanging_msgs[0].last_error
    );
    // Retried in order: only the oldest message was tried.
    assert!(failing_msgs[1..].iter().all(|m| m.attempts == 0));
    // What `cirkel alerts` reports: the two stuck messages, with their errors.
    let problems = store.failing().unwrap();
    assert_eq!(problems.iter().map(|m| m.receiver.as_str()).collect::<Vec<_>>(), ["failing", "hanging"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_expiry_is_given_up_and_says_why() {
    let http = HttpReceiver::start().await;
    http.set(Mode::Status(503));
    let mut s = Setup::new(vec![webhook("hook", http.url("/"))]);
    s.notifier.message_ttl = Duration::from_millis(300);
    s.start(fast());
    s.notifier.handle(&input("a", "main", Severity::High, Status::Firing, Utc::now())).unwrap();
    wait_for("the expiry", || s.counters.get("hook").unwrap().expired.load(Ordering::Relaxed) == 1).await;
    s.stop().await;
    let m = &s.notifier.store.outbox(None).unwrap()[0];
    assert!(m.delivered_at.is_none());
    assert!(m.last_error.as_deref().unwrap().starts_with("expired: answered 503"), "{:?}", m.last_error);
    // Pruning keeps it until it is older than the cut, then removes it.
    assert_eq!(s.notifier.store.prune_outbox(m.expires).unwrap(), 0);
    assert_eq!(s.notifier.store.prune_outbox(m.expires + chrono::Duration::seconds(1)).unwrap(), 1);
    assert!(s.notifier.store.outbox(None).unwrap().is_empty());
}

/// A crash between sending and recording the delivery: the store is
/// dropped while the receiver holds the first request, then reopened from
/// its file. Every message arrives; only the one in flight twice, with the
/// same message id and dedup key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_dropped_mid_delivery_repeats_at_most_the_message_in_flight() {
    let http = HttpReceiver::start().await;
    http.set(Mode::Hang);
    let dir = tempfile::tempdir().unwrap();
    let receivers = || Arc::new(Receivers::new([webhook("hook", http.url("/"))]));
    let keys = {
        let store = Arc::new(Store::open_in(dir.path()).unwrap());
        let mut n = Notifier::new(store.clone(), receivers());
        n.routes.by_severity.insert(Severity::High, vec!["hook".into()]);
        let now = Utc::now();
        for i in 0..3 {
            n.handle(&input(&format!("a{i}"), "main", Severity::High, Status::Firing, now)).unwrap();
        }
        let counters = Arc::new(Counters::new(["hook"]));
        let cancel = CancellationToken::new();
        let worker = tokio::spawn(outbox::run(store.clone(), n.receivers.clone(), counters, fast(), cancel.clone()));
        wait_for("the first request in flight", || http.requests().len() == 1).await;
        cancel.cancel();
        worker.await.unwrap();
        store.outbox(None).unwrap().into_iter().map(|m| (m.message_id, m.dedup_key)).collect::<Vec<_>>()
    };
    http.set(Mode::Ok);
    let store = Arc::new(Store::open_in(dir.path()).unwrap());
    assert!(store.outbox(None).unwrap().iter().all(|m| m.delivered_at.is_none()));
    let counters = Arc::new(Counters::new(["hook"]));
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(outbox::run(store.clone(), receivers(), counters.clone(), fast(), cancel.clone()));
    wait_for("the rest", || counters.get("hook").unwrap().delivered.load(Ordering::Relaxed) == 3).await;
    cancel.cancel();
    worker.await.unwrap();
    let reqs = http.requests();
    assert_eq!(reqs.len(), 4, "three messages, the one in flight twice");
    let ids: Vec<&str> = reqs.iter().map(|r| r.headers["idempotency-key"].as_str()).collect();
    assert_eq!(ids[0], ids[1], "the repeat carries the same message id");
    assert_eq!(ids[1..], keys.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>()[..]);
    assert_eq!(reqs[0].json()["alerts"][0]["fingerprint"], reqs[1].json()["alerts"][0]["fingerprint"]);
    assert_eq!(reqs[0].json()["alerts"][0]["fingerprint"].as_str().unwrap(), keys[0].1);
}

/// A crash between writing a message and sending it: the messages are in
/// the file, and a worker started on the reopened store sends each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_written_before_a_crash_are_sent_after_it() {
    let http = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let receivers = || Arc::new(Receivers::new([webhook("hook", http.url("/"))]));
    {
        let store = Arc::new(Store::open_in(dir.path()).unwrap());
        let mut n = Notifier::new(store, receivers());
        n.routes.by_severity.insert(Severity::Medium, vec!["hook".into()]);
        for i in 0..4 {
            n.handle(&input(&format!("a{i}"), "main", Severity::Medium, Status::Firing, Utc::now())).unwrap();
        }
    }
    let store = Arc::new(Store::open_in(dir.path()).unwrap());
    let counters = Arc::new(Counters::new(["hook"]));
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(outbox::run(store.clone(), receivers(), counters.clone(), fast(), cancel.clone()));
    wait_for("the four messages", || counters.get("hook").unwrap().delivered.load(Ordering::Relaxed) == 4).await;
    cancel.cancel();
    worker.await.unwrap();
    assert_eq!(http.requests().len(), 4);
}

/// From the configuration file to a message received: `[notify.NAME]`,
/// `[routes]` and `[[maintenance]]` read by cirkel-config and applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_receiver_and_route_deliver() {
    let http = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook.url"), http.url("/configured")).unwrap();
    let text = "[notify.hook]\nkind = \"webhook\"\nurl_file = \"hook.url\"\ntimeout = \"2s\"\n\
                [routes]\nhigh = [\"hook\"]\n\
                [[maintenance]]\nmatchers = [\"cluster=staging\"]\nstart = \"2000-01-01T00:00:00Z\"\nend = \"2999-01-01T00:00:00Z\"\n";
    let cfg = cirkel_config::Config::parse(text, "c.toml", Some(dir.path())).unwrap();
    let settings = cirkel_notify::Settings::from_config(&cfg.notifications).unwrap();
    let store = Arc::new(Store::open_in(dir.path()).unwrap());
    let receivers = Arc::new(Receivers::new(settings.receivers.clone()));
    let mut notifier = Notifier::new(store.clone(), receivers.clone());
    settings.apply(&mut notifier);
    let counters = Arc::new(Counters::new(["hook"]));
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(outbox::run(store, receivers, counters.clone(), fast(), cancel.clone()));
    let now = Utc::now();
    notifier.handle(&input("lag", "main", Severity::High, Status::Firing, now)).unwrap();
    // In the maintenance window: nobody hears of it.
    notifier.handle(&input("lag", "staging", Severity::High, Status::Firing, now)).unwrap();
    // Medium goes to email by default, which is not configured: nothing.
    notifier.handle(&input("disk", "main", Severity::Medium, Status::Firing, now)).unwrap();
    assert_eq!(notifier.store.outbox(None).unwrap().len(), 1, "one message queued");
    wait_for("the configured delivery", || counters.get("hook").unwrap().delivered.load(Ordering::Relaxed) == 1).await;
    cancel.cancel();
    worker.await.unwrap();
    let reqs = http.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/configured");
    assert_eq!(reqs[0].json()["commonLabels"]["cluster"], "main");
}
