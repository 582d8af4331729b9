//! Supervised workers: every long-running part of the daemon (a watcher per
//! PostgreSQL cluster and Redis group, a scheduled job, the control socket)
//! runs as a worker under one cancellation tree. A worker that returns an
//! error, panics or ends on its own while the daemon runs is restarted
//! after a pause that doubles with each failure in a row (from `initial` up
//! to `max`, back to `initial` after a run of `reset_after`), and each
//! failure and restart is reported, so the daemon's log says what broke.
//! Cancelling the tree stops every worker; [`Supervisor::shutdown`] waits
//! for them.

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a failed worker waits before it starts again.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long resets the pause to `initial`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(60), reset_after: Duration::from_secs(60) }
    }
}

impl Backoff {
    /// The pause after `failures` failures in a row (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doubled = self.initial.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        doubled.min(self.max)
    }
}

/// What the supervisor reports about a worker.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// The worker failed; it starts again after `backoff`.
    Failed { worker: String, error: String, failures: u32, backoff: Duration },
    /// The worker was started again after a failure.
    Restarted { worker: String, failures: u32 },
}

type Reporter = Arc<dyn Fn(Report) + Send + Sync>;

/// Starts workers and keeps them running until the tree is cancelled.
#[derive(Clone)]
pub struct Supervisor {
    cancel: CancellationToken,
    tracker: TaskTracker,
    backoff: Backoff,
    report: Reporter,
}

impl Supervisor {
    /// Must be called inside a multi-threaded tokio runtime.
    pub fn new(cancel: CancellationToken, backoff: Backoff, report: impl Fn(Report) + Send + Sync + 'static) -> Self {
        Supervisor { cancel, tracker: TaskTracker::new(), backoff, report: Arc::new(report) }
    }

    /// The token whose cancellation stops every worker.
    pub fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs an async worker: `make` builds its future for each (re)start,
    /// given a token that is cancelled when the worker must stop.
    pub fn spawn<F, Fut>(&self, name: impl Into<String>, cancel: &CancellationToken, mut make: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        let cancel = cancel.clone();
        let this = self.clone();
        self.tracker.spawn(async move {
            let mut failures = 0u32;
            loop {
                let started = tokio::time::Instant::now();
                let outcome = tokio::spawn(make(cancel.clone())).await;
                if cancel.is_cancelled() {
                    return;
                }
                if started.elapsed() >= this.backoff.reset_after {
                    failures = 0;
                }
                failures += 1;
                let backoff = this.backoff.delay(failures);
                let error = describe(outcome);
                (this.report)(Report::Failed { worker: name.clone(), error, failures, backoff });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return,
                }
                (this.report)(Report::Restarted { worker: name.clone(), failures });
            }
        });
    }

    /// Runs blocking code as a worker on the runtime's blocking threads: `make`
    /// is called for each (re)start with a flag that turns true when the
    /// worker must stop, and must return soon after it does.
    pub fn spawn_blocking<F>(&self, name: impl Into<String>, cancel: &CancellationToken, make: F)
    where
        F: Fn(Arc<AtomicBool>) -> anyhow::Result<()> + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        self.spawn(name, cancel, move |token| {
            let make = make.clone();
            async move {
                let stop = Arc::new(AtomicBool::new(false));
                let flag = stop.clone();
                let watch = tokio::spawn(async move {
                    token.cancelled().await;
                    flag.store(true, Ordering::Relaxed);
                });
                let result = tokio::task::spawn_blocking(move || make(stop)).await;
                watch.abort();
                match result {
                    Ok(r) => r,
                    Err(e) => Err(anyhow::anyhow!(describe_join(e))),
                }
            }
        });
    }

    /// Cancels every worker and waits at most `grace` for them to end.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

fn describe(outcome: Result<anyhow::Result<()>, JoinError>) -> String {
    match outcome {
        Ok(Ok(())) => "it ended without being asked to stop".to_string(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => describe_join(e),
    }
}

fn describe_join(e: JoinError) -> String {
    if e.is_panic() { format!("it panicked: {}", panic_message(e.into_panic())) } else { e.to_string() }
}

fn panic_message(p: Box<dyn Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => p.downcast::<&str>().map(|s| s.to_string()).unwrap_or_else(|_| "(no message)".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU32;

    fn quick() -> Backoff {
        Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            reset_after: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_pause_doubles_up_to_its_limit() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=9).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.delay(u32::MAX), b.max);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_panics_is_restarted_and_recorded() {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r = reports.clone();
        let sup = Supervisor::new(CancellationToken::new(), quick(), move |rep| r.lock().unwrap().push(rep));
        let runs = Arc::new(AtomicU32::new(0));
        let (n, done) = (runs.clone(), CancellationToken::new());
        let third = done.clone();
        sup.spawn_blocking("flaky", sup.token(), move |stop| {
            // Panics twice, then runs until told to stop.
            if n.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("probe exploded");
            }
            third.cancel();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        tokio::time::timeout(Duration::from_secs(30), done.cancelled()).await.unwrap();
        assert!(sup.shutdown(Duration::from_secs(10)).await, "the worker stops when cancelled");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let reports = reports.lock().unwrap().clone();
        assert_eq!(reports.len(), 4, "{reports:?}");
        match &reports[0] {
            Report::Failed { worker, error, failures, backoff } => {
                assert_eq!(worker, "flaky");
                assert!(error.contains("panicked: probe exploded"), "{error}");
                assert_eq!((*failures, *backoff), (1, Duration::from_millis(10)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(reports[1], Report::Restarted { worker: "flaky".into(), failures: 1 });
        assert!(
            matches!(&reports[2], Report::Failed { failures: 2, backoff, .. } if *backoff == Duration::from_millis(20))
        );
        assert_eq!(reports[3], Report::Restarted { worker: "flaky".into(), failures: 2 });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn errors_and_early_ends_restart_and_cancellation_stops_without_a_report() {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let r = reports.clone();
        let sup = Supervisor::new(CancellationToken::new(), quick(), move |rep| r.lock().unwrap().push(rep));
        let runs = Arc::new(AtomicU32::new(0));
        let n = runs.clone();
        sup.spawn("erring", sup.token(), move |cancel| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            async move {
                match k {
                    0 => anyhow::bail!("the cluster is unreachable"),
                    1 => Ok(()),
                    _ => {
                        cancel.cancelled().await;
                        Ok(())
                    }
                }
            }
        });
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(sup.shutdown(Duration::from_secs(10)).await);
        let errors: Vec<String> = reports
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| match r {
                Report::Failed { error, .. } => Some(error.clone()),
                Report::Restarted { .. } => None,
            })
            .collect();
        assert_eq!(errors, ["the cluster is unreachable", "it ended without being asked to stop"]);
    }
}
