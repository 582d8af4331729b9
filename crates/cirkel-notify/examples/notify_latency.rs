//! Measures the time from a change handed to the notifier to its message
//! arriving at a real HTTP receiver on loopback, with the worker's default
//! pacing. Run: `cargo run -p cirkel-notify --example notify_latency`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_config::Secret;
use cirkel_notify::{
    AlertInput, Counters, Labels, Notifier, Receiver, ReceiverKind, Receivers, Severity, Status, Store, alert_key,
    outbox,
};
use http_body_util::Full;
use hyper::body::Bytes;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    seen.lock().map(|mut v| v.push(Instant::now())).ok();
                    async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("ok")))) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open_in(dir.path())?);
    let url = format!("http://{addr}/");
    let receivers = Arc::new(Receivers::new([Receiver::new(
        "hook",
        ReceiverKind::Webhook { url: Secret::new(url), external_url: String::new() },
    )]));
    let mut notifier = Notifier::new(store.clone(), receivers.clone());
    notifier.routes.by_severity.insert(Severity::Critical, vec!["hook".into()]);
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(outbox::run(
        store,
        receivers,
        Arc::new(Counters::new(["hook"])),
        Default::default(),
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::new();
    for i in 0..50 {
        let name = format!("alarm-{i}");
        let labels: Labels = BTreeMap::from([("alertname".to_string(), name.clone())]);
        let input = AlertInput {
            key: alert_key(&name, &labels),
            name,
            source: "postgres/main".into(),
            severity: Severity::Critical,
            labels,
            summary: "primary down".into(),
            status: Status::Firing,
            at: Utc::now(),
            details: serde_json::Value::Null,
        };
        let before = arrivals.lock().map(|v| v.len()).unwrap_or(0);
        let start = Instant::now();
        notifier.handle(&input)?;
        while arrivals.lock().map(|v| v.len()).unwrap_or(0) == before {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(start.elapsed());
        // Let the worker go idle again, as between real alarms.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let _ = worker.await;
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "handle → message received, 50 alerts: median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(latencies[25]),
        ms(latencies[45]),
        ms(latencies[49])
    );
    Ok(())
}
