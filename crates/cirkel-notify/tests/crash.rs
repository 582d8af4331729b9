//! `kill -9` of a process holding the outbox: once between writing
//! messages and sending them, once while the receiver holds a request
//! (between sending and recording the delivery). The process is this test
//! binary run again as a child (`crash_child`), so the kill is real.
//! After it, a worker on the same store delivers every message; only the
//! one in flight can arrive twice, with the same message id and dedup key.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use cirkel_config::Secret;
use cirkel_notify::{
    AlertInput, Counters, Labels, Notifier, Receiver, ReceiverKind, Receivers, Severity, Status, Store, WorkerOptions,
    alert_key, outbox,
};
use common::{HttpReceiver, Mode, wait_for};
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "CIRKEL_NOTIFY_CRASH_CHILD";

fn receivers(url: &str) -> Arc<Receivers> {
    Arc::new(Receivers::new([Receiver::new(
        "hook",
        ReceiverKind::Webhook { url: Secret::new(url.to_string()), external_url: String::new() },
    )]))
}

fn options() -> WorkerOptions {
    WorkerOptions {
        poll: Duration::from_millis(20),
        backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

/// Run as a child only: queues three messages, prints `queued`, then
/// either sleeps (`idle`) or delivers (`deliver`) until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.splitn(3, '|');
    let (dir, url, mode) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let store = Arc::new(Store::open_in(std::path::Path::new(dir)).unwrap());
    let mut n = Notifier::new(store.clone(), receivers(url));
    n.routes.by_severity.insert(Severity::High, vec!["hook".into()]);
    for i in 0..3 {
        let name = format!("a{i}");
        let labels: Labels = BTreeMap::from([("alertname".to_string(), name.clone())]);
        n.handle(&AlertInput {
            key: alert_key(&name, &labels),
            name,
            source: "postgres/main".into(),
            severity: Severity::High,
            labels,
            summary: "s".into(),
            status: Status::Firing,
            at: Utc::now(),
            details: serde_json::Value::Null,
        })
        .unwrap();
    }
    println!("queued");
    if mode == "deliver" {
        let counters = Arc::new(Counters::new(["hook"]));
        outbox::run(store, n.receivers.clone(), counters, options(), CancellationToken::new()).await;
    }
    std::thread::sleep(Duration::from_secs(3600));
}

fn spawn_child(dir: &std::path::Path, url: &str, mode: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}|{url}|{mode}", dir.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    use std::io::Read;
    while !seen.contains("queued") {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "the child ended before queueing: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Keep reading so the child never blocks on a full pipe.
    std::thread::spawn(move || while out.read(&mut buf).is_ok_and(|n| n > 0) {});
    child
}

fn kill9(child: &mut Child) {
    // SAFETY: plain kill(2) of our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0);
    child.wait().unwrap();
}

async fn deliver_rest(dir: &std::path::Path, url: &str, expect: u64) {
    let store = Arc::new(Store::open_in(dir).unwrap());
    let counters = Arc::new(Counters::new(["hook"]));
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(outbox::run(store, receivers(url), counters.clone(), options(), cancel.clone()));
    wait_for("delivery after the restart", || {
        counters.get("hook").unwrap().delivered.load(Ordering::Relaxed) == expect
    })
    .await;
    cancel.cancel();
    worker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_writing_and_sending_loses_nothing() {
    let http = HttpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = http.url("/");
    let mut child = spawn_child(dir.path(), &url, "idle");
    kill9(&mut child);
    assert!(http.requests().is_empty());
    deliver_rest(dir.path(), &url, 3).await;
    let reqs = http.requests();
    assert_eq!(reqs.len(), 3, "each message once");
    let mut ids: Vec<&str> = reqs.iter().map(|r| r.headers["idempotency-key"].as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_sending_and_recording_repeats_only_the_message_in_flight() {
    let http = HttpReceiver::start().await;
    http.set(Mode::Hang);
    let dir = tempfile::tempdir().unwrap();
    let url = http.url("/");
    let mut child = spawn_child(dir.path(), &url, "deliver");
    wait_for("the first message in flight", || http.requests().len() == 1).await;
    kill9(&mut child);
    http.set(Mode::Ok);
    deliver_rest(dir.path(), &url, 3).await;
    let reqs = http.requests();
    assert_eq!(reqs.len(), 4, "three messages, the one in flight twice");
    let ids: Vec<&str> = reqs.iter().map(|r| r.headers["idempotency-key"].as_str()).collect();
    assert_eq!(ids[0], ids[1]);
    assert!(ids[1] != ids[2] && ids[2] != ids[3] && ids[1] != ids[3]);
    let fingerprint = |i: usize| reqs[i].json()["alerts"][0]["fingerprint"].clone();
    assert_eq!(fingerprint(0), fingerprint(1), "the same dedup key");
    let store = Store::open_in(dir.path()).unwrap();
    assert!(store.outbox(None).unwrap().iter().all(|m| m.delivered_at.is_some()));
}
