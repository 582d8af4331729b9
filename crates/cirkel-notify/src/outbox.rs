//! The outbox worker: sends what the store holds, one task per receiver,
//! so a receiver that hangs or fails holds up only its own messages.
//!
//! A message is marked delivered only after its receiver took it; a crash
//! in between sends it again (with the same message id and dedup key),
//! which is the only repetition possible. Within a receiver messages go
//! out in the order they were queued: a failed one is retried with
//! exponential backoff before anything after it, until it is delivered or
//! expires.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::receivers::{Receiver, Receivers};
use crate::store::{OutboxRow, Store};
use crate::{Error, Result};

/// How the worker paces itself.
#[derive(Clone, Copy, Debug)]
pub struct WorkerOptions {
    /// How often an idle receiver looks for new messages.
    pub poll: Duration,
    /// The first retry's delay, doubled at each failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            poll: Duration::from_millis(500),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Deliveries, failed attempts and expired messages of one receiver.
#[derive(Debug, Default)]
pub struct ReceiverCounts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub expired: AtomicU64,
}

/// Counters per receiver, for the daemon's metrics.
#[derive(Debug, Default)]
pub struct Counters {
    by_receiver: BTreeMap<String, ReceiverCounts>,
}

impl Counters {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Counters {
        Counters { by_receiver: names.into_iter().map(|n| (n.to_string(), ReceiverCounts::default())).collect() }
    }

    pub fn get(&self, receiver: &str) -> Option<&ReceiverCounts> {
        self.by_receiver.get(receiver)
    }

    /// `(receiver, delivered, failed, expired)` for each receiver.
    pub fn snapshot(&self) -> Vec<(String, u64, u64, u64)> {
        self.by_receiver
            .iter()
            .map(|(n, c)| {
                (
                    n.clone(),
                    c.delivered.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                    c.expired.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Task(e.to_string()))?
}

/// Delivers due messages until `cancel` fires. Store errors are logged and
/// retried at the next poll: the worker outlives a full disk.
pub async fn run(
    store: Arc<Store>,
    receivers: Arc<Receivers>,
    counters: Arc<Counters>,
    options: WorkerOptions,
    cancel: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for name in receivers.names().map(str::to_string).collect::<Vec<_>>() {
        let (store, receivers, counters, cancel) = (store.clone(), receivers.clone(), counters.clone(), cancel.clone());
        tasks.spawn(async move {
            let Some(receiver) = receivers.get(&name) else { return };
            deliver_loop(&store, receiver, &receivers, counters.get(&name), options, &cancel).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn deliver_loop(
    store: &Arc<Store>,
    receiver: &Receiver,
    receivers: &Receivers,
    counts: Option<&ReceiverCounts>,
    options: WorkerOptions,
    cancel: &CancellationToken,
) {
    loop {
        let wait = match step(store, receiver, &receivers.http, counts, options, cancel).await {
            Ok(Some(wait)) => wait,
            Ok(None) => Duration::ZERO,
            Err(e) => {
                tracing::warn!(receiver = %receiver.name, error = %e, "notification outbox");
                options.poll
            }
        };
        if cancel.is_cancelled() {
            return;
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = receivers.wake.notified() => {}
            }
        }
    }
}

/// Handles the receiver's oldest pending message; returns how long to wait
/// before the next step (`None`: go on at once).
async fn step(
    store: &Arc<Store>,
    receiver: &Receiver,
    http: &reqwest::Client,
    counts: Option<&ReceiverCounts>,
    options: WorkerOptions,
    cancel: &CancellationToken,
) -> Result<Option<Duration>> {
    let name = receiver.name.clone();
    let s = store.clone();
    let Some(m) = blocking(move || s.next_pending(&name)).await? else { return Ok(Some(options.poll)) };
    let now = Utc::now();
    if now >= m.expires {
        let s = store.clone();
        let last = m.last_error.clone();
        blocking(move || s.mark_expired(m.id, last.as_deref())).await?;
        if let Some(c) = counts {
            c.expired.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(receiver = %receiver.name, message = %m.message_id, "notification expired undelivered");
        return Ok(None);
    }
    if m.next_attempt > now {
        let until = (m.next_attempt - now).to_std().unwrap_or(options.poll);
        return Ok(Some(until.min(options.poll.max(Duration::from_millis(10)) * 4)));
    }
    let sent = tokio::select! {
        _ = cancel.cancelled() => return Ok(Some(Duration::ZERO)),
        r = receiver.send(http, &m) => r,
    };
    let s = store.clone();
    match sent {
        Ok(()) => {
            blocking(move || s.mark_delivered(m.id, Utc::now())).await?;
            if let Some(c) = counts {
                c.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None)
        }
        Err(error) => {
            let delay = backoff(&m, options);
            tracing::warn!(receiver = %receiver.name, message = %m.message_id, attempt = m.attempts + 1, %error,
                "notification not delivered; retrying in {}", humantime::format_duration(delay));
            let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
            blocking(move || s.mark_failed(m.id, &error, next)).await?;
            if let Some(c) = counts {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None)
        }
    }
}

/// `backoff · 2^attempts`, capped.
fn backoff(m: &OutboxRow, o: WorkerOptions) -> Duration {
    let factor = 1u32.checked_shl(m.attempts.min(20)).unwrap_or(u32::MAX);
    o.backoff.saturating_mul(factor).min(o.max_backoff)
}
