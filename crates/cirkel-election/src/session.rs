//! An etcd lease kept alive in the background, and how long it can be
//! trusted by the local clock.
//!
//! etcd expires a lease TTL after the last keep-alive it *received*; the
//! holder only knows when it *sent* one. Counting the TTL from the send of
//! the last answered keep-alive gives a deadline that is never later than
//! etcd's, so a holder that trusts its lease only until then never acts
//! after etcd could have handed the key to another contender, even when
//! etcd cannot be reached to say so. A process paused past that deadline
//! (stopped, swapped out, a VM frozen) finds the lease lapsed when it
//! resumes, whatever its keep-alive task does next: a lapse is final, and
//! a new lease is taken for the next acquisition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cirkel_failover::ElectionError;
use etcd_client::LeaseClient;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// What the holder and the keep-alive task both see of the lease.
#[derive(Debug)]
struct Life {
    /// The instant after which the lease may have expired in etcd.
    deadline: Mutex<Instant>,
    /// Set once the lease is known lapsed or revoked; never cleared.
    lost: AtomicBool,
}

impl Life {
    fn deadline(&self) -> MutexGuard<'_, Instant> {
        // Plain data: a panic while holding it leaves a valid instant.
        self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the lease is still good now; a lapse seen here is final.
    fn alive(&self) -> bool {
        if self.lost.load(Ordering::SeqCst) {
            return false;
        }
        if Instant::now() >= *self.deadline() {
            self.lost.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Extends the deadline after a keep-alive sent at `sent` was answered
    /// with `ttl`; refuses (and marks the lease lost) when it had lapsed
    /// before, since something may have acted in the gap.
    fn renewed(&self, sent: Instant, ttl: Duration) -> bool {
        let mut deadline = self.deadline();
        if self.lost.load(Ordering::SeqCst) || sent >= *deadline || Instant::now() >= *deadline || ttl.is_zero() {
            self.lost.store(true, Ordering::SeqCst);
            return false;
        }
        *deadline = (*deadline).max(sent + ttl);
        true
    }
}

/// One granted lease and its keep-alive task, stopped on drop.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: i64,
    life: Arc<Life>,
    cancel: CancellationToken,
}

impl Session {
    /// Grants a lease of `ttl` and starts keeping it alive on the shared
    /// runtime, every third of the TTL.
    pub(crate) async fn grant(store: &Store, ttl: Duration, timeout: Duration) -> Result<Session, ElectionError> {
        let sent = Instant::now();
        let mut lease = store.client().lease_client();
        let resp = store.call("grant a lease", timeout, lease.grant(ttl.as_secs() as i64, None)).await?;
        // etcd may lengthen a short TTL; the shorter of the two is trusted.
        let granted = Duration::from_secs(resp.ttl().max(0) as u64).min(ttl);
        let life = Arc::new(Life { deadline: Mutex::new(sent + granted), lost: AtomicBool::new(false) });
        let cancel = CancellationToken::new();
        let task = keep_alive(store.client().lease_client(), resp.id(), ttl, life.clone(), cancel.clone());
        store.rt.handle().spawn(task);
        Ok(Session { id: resp.id(), life, cancel })
    }

    pub(crate) fn alive(&self) -> bool {
        self.life.alive()
    }

    /// How long the lease can still be trusted by the local clock.
    pub(crate) fn remaining(&self) -> Option<Duration> {
        if !self.alive() {
            return None;
        }
        Some(self.life.deadline().saturating_duration_since(Instant::now()))
    }

    /// Stops the keep-alive and marks the lease lost (before a revoke).
    pub(crate) fn end(&self) {
        self.life.lost.store(true, Ordering::SeqCst);
        self.cancel.cancel();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Keeps lease `id` alive until `cancel` or until it lapses. A broken
/// stream (etcd restarted, a member down) is reopened; while none answers
/// the deadline stands still and the lease lapses by the clock.
async fn keep_alive(mut client: LeaseClient, id: i64, ttl: Duration, life: Arc<Life>, cancel: CancellationToken) {
    let period = ttl / 3;
    let retry = Duration::from_millis(200).min(period);
    'stream: loop {
        if !life.alive() {
            return;
        }
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(period, client.keep_alive(id)) => r,
        };
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                tracing::debug!(lease = id, "cannot open the lease keep-alive stream: {e}");
                tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(retry) => {} }
                continue 'stream;
            }
            Err(_) => continue 'stream,
        };
        loop {
            let sent = Instant::now();
            if keeper.keep_alive().await.is_err() {
                continue 'stream;
            }
            let answer = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(period, stream.message()) => r,
            };
            match answer {
                Ok(Ok(Some(resp))) => {
                    let left = Duration::from_secs(resp.ttl().max(0) as u64).min(ttl);
                    if !life.renewed(sent, left) {
                        tracing::debug!(lease = id, "the lease lapsed before it was renewed");
                        return;
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(retry) => {} }
                    continue 'stream;
                }
            }
            tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(period) => {} }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(deadline: Instant) -> Life {
        Life { deadline: Mutex::new(deadline), lost: AtomicBool::new(false) }
    }

    #[test]
    fn a_renewal_extends_from_its_send_never_shortens() {
        let now = Instant::now();
        let l = life(now + Duration::from_secs(60));
        assert!(l.renewed(now, Duration::from_secs(10)));
        assert!(*l.deadline() >= now + Duration::from_secs(60), "a renewal never shortens the deadline");
        assert!(l.renewed(now + Duration::from_secs(1), Duration::from_secs(100)));
        assert_eq!(*l.deadline(), now + Duration::from_secs(101));
        assert!(l.alive());
    }

    #[test]
    fn a_lapse_is_final() {
        let now = Instant::now();
        let l = life(now);
        assert!(!l.alive(), "a deadline reached is a lapse");
        assert!(!l.renewed(now, Duration::from_secs(10)), "a late answer does not revive it");
        assert!(!l.alive());
    }

    #[test]
    fn a_keep_alive_sent_after_the_deadline_or_answered_with_no_ttl_loses_the_lease() {
        let now = Instant::now();
        let l = life(now + Duration::from_secs(60));
        assert!(!l.renewed(now + Duration::from_secs(61), Duration::from_secs(10)));
        assert!(!l.alive());
        let l = life(now + Duration::from_secs(60));
        assert!(!l.renewed(now, Duration::ZERO), "etcd answers ttl 0 for a lease it no longer has");
        assert!(!l.alive());
    }
}
