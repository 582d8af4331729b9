//! A scrape target that answers, then answers garbage, then an error, then
//! nothing: its series come and go, `cirkel_scrape_up` says which, and the
//! scraper keeps running.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cirkel_server::metrics::{Metrics, labels};
use cirkel_server::monitor::{Scraped, scrape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Serves `answers[i]` to the i-th connection (the last one from then on).
async fn target(answers: Vec<&'static str>) -> (String, Arc<AtomicUsize>, CancellationToken) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let served = Arc::new(AtomicUsize::new(0));
    let (n, stop) = (served.clone(), CancellationToken::new());
    let cancel = stop.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                a = l.accept() => a.unwrap(),
                _ = cancel.cancelled() => return,
            };
            let i = n.fetch_add(1, Ordering::SeqCst);
            let answer = answers[i.min(answers.len() - 1)];
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    (addr, served, stop)
}

fn ok(body: &str) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_leaves_missing_data_and_the_scraper_running() {
    let good: &'static str = Box::leak(ok("# TYPE node_load1 gauge\nnode_load1 0.5\n").into_boxed_str());
    let garbage: &'static str = Box::leak(ok("node_load1 {{{ not a number\n").into_boxed_str());
    let error = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (addr, served, stop_target) = target(vec![good, garbage, error, good]).await;
    let cfg = cirkel_config::ScrapeConfig {
        url: format!("http://{addr}/metrics"),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
    };
    let (scraped, metrics, cancel) = (Scraped::default(), Arc::new(Metrics::default()), CancellationToken::new());
    let task = tokio::spawn(scrape("node".into(), cfg, scraped.clone(), metrics.clone(), cancel.clone()));
    let series = |s: &Scraped| s.lock().unwrap().get("node").map(|v| v.len()).unwrap_or(usize::MAX);
    let up = || metrics.get("cirkel_scrape_up", &labels(&[("scrape", "node")]));
    // Each answer in turn: a series, none (garbage), none (500), a series again.
    let mut seen = Vec::new();
    for _ in 0..200 {
        let i = served.load(Ordering::SeqCst);
        if i >= 4 && seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = (series(&scraped), up());
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    }
    assert!(seen.contains(&(1, Some(1.0))), "{seen:?}");
    assert!(seen.contains(&(0, Some(0.0))), "{seen:?}");
    // The target disappears: scrapes fail, the scraper goes on.
    stop_target.cancel();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!((series(&scraped), up()), (0, Some(0.0)));
    assert!(!task.is_finished(), "the scraper keeps running");
    cancel.cancel();
    task.await.unwrap().unwrap();
}
