//! Repository locks: how prune learns that someone may be writing.
//!
//! Writers (backup, copy) hold a shared lock; prune holds an exclusive one.
//! A lock is an object under `locks/`, refreshed while held. Both sides
//! write their lock first and then list the others, so at least one of two
//! racing operations sees the other: a writer that sees prune backs off; a
//! prune that sees a writer deletes no data. Locks of dead processes on this
//! host, and locks not refreshed for [`STALE_AFTER`], are stale and ignored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::hostname;
use crate::{Error, Id, Repository, Result};

pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub host: String,
    pub pid: u32,
    /// What holds it: `backup`, `copy`, `prune`, ...
    pub operation: String,
    pub exclusive: bool,
    pub time: DateTime<Utc>,
    /// The kernel's boot id: a lock from before a reboot of this host is stale.
    #[serde(default)]
    pub boot_id: String,
    /// The pid namespace: a pid means something only within its namespace.
    #[serde(default)]
    pub pid_ns: String,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default()
}

impl LockInfo {
    /// Whether the holder may still be running.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        if self.host == hostname() {
            if !self.boot_id.is_empty() && self.boot_id != boot_id() {
                return false; // this host rebooted since: the holder is gone
            }
            // Only a pid from our own namespace can be checked; otherwise
            // (a container sharing the host name) fall back to the age.
            if (self.pid_ns.is_empty() || self.pid_ns == pid_ns()) && !pid_alive(self.pid) {
                return false;
            }
        }
        now.signed_duration_since(self.time).to_std().map(|age| age < STALE_AFTER).unwrap_or(true)
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks whether the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A held lock; released on drop.
pub struct LockGuard {
    repo: Repository,
    key: Arc<std::sync::Mutex<String>>,
    refreshed: Arc<std::sync::Mutex<std::time::Instant>>,
    stop: Arc<AtomicBool>,
    refresher: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}

impl LockGuard {
    /// Fails when the lock has not been refreshed for so long that another
    /// process may have taken it for stale (and pruned what we wrote). A
    /// writer checks this before it makes its work visible.
    pub fn check_fresh(&self) -> Result<()> {
        let age = self.refreshed.lock().map(|t| t.elapsed()).unwrap_or(STALE_AFTER);
        if age > STALE_AFTER / 2 {
            return Err(Error::Locked(format!(
                "this process's lock was last refreshed {}s ago and may have been taken for stale; stopping before writing the index",
                age.as_secs()
            )));
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.refresher.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        if let Ok(key) = self.key.lock() {
            let _ = self.repo.block_on(self.repo.backend.delete(&key));
        }
    }
}

impl Repository {
    fn write_lock(&self, operation: &str, exclusive: bool) -> Result<String> {
        let info = LockInfo {
            host: hostname(),
            pid: std::process::id(),
            operation: operation.into(),
            exclusive,
            time: Utc::now(),
            boot_id: boot_id(),
            pid_ns: pid_ns(),
        };
        let bytes = serde_json::to_vec(&info).map_err(|e| Error::Other(e.to_string()))?;
        let key = format!("locks/{}", Id::random());
        self.block_on(self.backend.create(&key, Bytes::from(bytes)))?;
        Ok(key)
    }

    /// Every lock object, with its key.
    pub fn locks(&self) -> Result<Vec<(String, LockInfo)>> {
        let objs = self.block_on(self.backend.list("locks/"))?;
        let mut out = Vec::new();
        for o in objs {
            match self.block_on(self.backend.read(&o.key)) {
                Ok(b) => {
                    if let Ok(info) = serde_json::from_slice::<LockInfo>(&b) {
                        out.push((o.key, info));
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    /// Removes stale locks; returns how many.
    pub fn remove_stale_locks(&self) -> Result<usize> {
        let now = Utc::now();
        let mut n = 0;
        for (key, info) in self.locks()? {
            if !info.is_live(now) {
                self.block_on(self.backend.delete(&key))?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn guard(&self, key: String, operation: &str, exclusive: bool) -> LockGuard {
        let key = Arc::new(std::sync::Mutex::new(key));
        let stop = Arc::new(AtomicBool::new(false));
        let refreshed = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
        let r = refreshed.clone();
        let (repo, k, s, op) = (self.clone(), key.clone(), stop.clone(), operation.to_string());
        let refresher = std::thread::spawn(move || {
            loop {
                std::thread::park_timeout(REFRESH_EVERY);
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(new_key) = repo.write_lock(&op, exclusive)
                    && let Ok(mut cur) = k.lock()
                {
                    let old = std::mem::replace(&mut *cur, new_key);
                    let _ = repo.block_on(repo.backend.delete(&old));
                    if let Ok(mut t) = r.lock() {
                        *t = std::time::Instant::now();
                    }
                }
            }
        });
        LockGuard { repo: self.clone(), key, refreshed, stop, refresher: Some(refresher) }
    }

    /// Takes a shared lock for a reader (verify, restore, copy source), so
    /// prune does not delete data under it. Storage that cannot be written
    /// (a read-only mount or bucket policy) is read without a lock.
    pub fn lock_reader(&self, operation: &str) -> Result<Option<LockGuard>> {
        match self.lock_shared(operation) {
            Ok(g) => Ok(Some(g)),
            Err(Error::Backend(crate::BackendError::Fatal { detail, .. })) => {
                tracing::warn!("reading without a lock ({detail}); a concurrent prune could disturb this {operation}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes a shared (writer) lock. Fails when an exclusive lock is live.
    pub fn lock_shared(&self, operation: &str) -> Result<LockGuard> {
        let key = self.write_lock(operation, false)?;
        let now = Utc::now();
        let conflict = self.locks()?.into_iter().find(|(k, l)| *k != key && l.exclusive && l.is_live(now));
        if let Some((_, l)) = conflict {
            let _ = self.block_on(self.backend.delete(&key));
            return Err(Error::Locked(format!("{} by pid {} on {} since {}", l.operation, l.pid, l.host, l.time)));
        }
        Ok(self.guard(key, operation, false))
    }

    /// Takes an exclusive lock. Fails when another exclusive lock is live;
    /// returns the live shared locks, whose holders may be writing.
    pub fn lock_exclusive(&self, operation: &str) -> Result<(LockGuard, Vec<LockInfo>)> {
        let key = self.write_lock(operation, true)?;
        let now = Utc::now();
        let mut writers = Vec::new();
        for (k, l) in self.locks()? {
            if k == key || !l.is_live(now) {
                continue;
            }
            if l.exclusive {
                let _ = self.block_on(self.backend.delete(&key));
                return Err(Error::Locked(format!("{} by pid {} on {} since {}", l.operation, l.pid, l.host, l.time)));
            }
            writers.push(l);
        }
        Ok((self.guard(key, operation, true), writers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(pid: u32) -> LockInfo {
        LockInfo {
            host: hostname(),
            pid,
            operation: "backup".into(),
            exclusive: false,
            time: Utc::now(),
            boot_id: boot_id(),
            pid_ns: pid_ns(),
        }
    }

    #[test]
    fn staleness() {
        let now = Utc::now();
        assert!(lock(std::process::id()).is_live(now), "our own process holds it");
        assert!(!lock(u32::MAX - 7).is_live(now), "a dead pid on this host");
        let mut rebooted = lock(std::process::id());
        rebooted.boot_id = "another boot".into();
        assert!(!rebooted.is_live(now), "from before a reboot");
        let mut elsewhere = lock(u32::MAX - 7);
        elsewhere.pid_ns = "pid:[1]".into();
        assert!(elsewhere.is_live(now), "another pid namespace: judged by age only");
        let mut old = lock(std::process::id());
        old.host = "other-host".into();
        old.time = now - chrono::Duration::hours(1);
        assert!(!old.is_live(now), "not refreshed for an hour");
    }
}
