//! The embedded election: a lock on a file in the state directory, so one
//! `cirkel serve` per state directory acts on a cluster or a group.
//!
//! The lock (`lock-SCOPE`) goes with the process however it ends; the
//! fencing epoch (`epoch-SCOPE`) is a counter incremented at every
//! acquisition and replaced atomically and durably before the lease is
//! handed out, so an epoch is never handed out twice, across restarts
//! and crashes. A lease is lost when the lock file is no longer the file
//! locked (removed or replaced behind the holder's back) or when the
//! counter has moved past the lease's epoch: both mean another process may
//! have acquired it since.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use cirkel_failover::{ElectionError, Leadership, Lease};

use crate::StateDir;

/// Takes `election`'s lease for the watcher of `source`, waiting while
/// another process holds it: says once that this one stands by, runs
/// `idle` at every `interval` meanwhile, and returns `None` once `stop` is set.
pub fn acquire_or_stand_by(
    election: &mut dyn Leadership,
    state: &StateDir,
    source: &str,
    interval: std::time::Duration,
    stop: &std::sync::atomic::AtomicBool,
    mut idle: impl FnMut(),
) -> anyhow::Result<Option<Lease>> {
    let mut waiting = false;
    loop {
        if let Some(l) = election.acquire()? {
            return Ok(Some(l));
        }
        if !waiting {
            let holder = election.holder().unwrap_or_else(|| "another process".into());
            let what = source.split_once('/').map_or(source, |(_, name)| name);
            let msg = format!("another cirkel serve ({holder}) acts on {what}; this one waits until it stops");
            state.record(&crate::Event::new(source, crate::EventKind::StandingBy, msg))?;
            waiting = true;
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
        idle();
        std::thread::sleep(interval);
    }
}

/// Leadership of one scope (`postgres-NAME`, `redis-NAME`) through a lock
/// file in the local state directory.
pub struct LocalLock {
    state: StateDir,
    lock_name: String,
    epoch_name: String,
    path: PathBuf,
    file: Option<File>,
}

impl LocalLock {
    pub fn new(state: &StateDir, scope: &str) -> LocalLock {
        let lock_name = format!("lock-{scope}");
        LocalLock {
            state: state.clone(),
            path: state.root().join(&lock_name),
            lock_name,
            epoch_name: format!("epoch-{scope}"),
            file: None,
        }
    }

    /// The newest epoch handed out for this scope (0 before any).
    pub fn recorded_epoch(&self) -> Result<u64, ElectionError> {
        let path = self.state.root().join(&self.epoch_name);
        match std::fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|e| ElectionError(format!("{} is damaged ({e}); it holds a lease epoch", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(ElectionError(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Whether the file locked is still the one at the lock's path.
    fn lock_file_is_ours(&self, f: &File) -> bool {
        match (f.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(ours), Ok(there)) => ours.dev() == there.dev() && ours.ino() == there.ino(),
            _ => false,
        }
    }
}

impl Leadership for LocalLock {
    fn acquire(&mut self) -> Result<Option<Lease>, ElectionError> {
        // A lock still open from an earlier lease is given up first, so
        // that every lease handed out has an epoch of its own.
        if let Some(f) = self.file.take() {
            let _ = f.unlock();
        }
        let mut f = self.state.open_private(&self.lock_name, false).map_err(|e| ElectionError(format!("{e:#}")))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(ElectionError(format!("cannot lock {}: {e}", self.path.display())));
            }
        }
        let epoch = self.recorded_epoch()? + 1;
        self.state
            .replace(&self.epoch_name, format!("{epoch}\n").as_bytes(), true)
            .map_err(|e| ElectionError(format!("cannot record lease epoch {epoch}: {e:#}")))?;
        let holder = format!("pid {}", std::process::id());
        let _ = f.set_len(0).and_then(|_| write!(f, "{holder} epoch {epoch}"));
        self.file = Some(f);
        Ok(Some(Lease { epoch, holder }))
    }

    fn still_held(&mut self, lease: &Lease) -> Result<bool, ElectionError> {
        let Some(f) = &self.file else { return Ok(false) };
        if !self.lock_file_is_ours(f) {
            return Ok(false);
        }
        Ok(self.recorded_epoch()? == lease.epoch)
    }

    fn release(&mut self, lease: Lease) {
        let _ = lease;
        if let Some(f) = self.file.take() {
            let _ = f.unlock();
        }
    }

    fn holder(&self) -> Option<String> {
        std::fs::read_to_string(&self.path).ok().filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirkel_failover::EpochGate;

    fn dir() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::new(t.path().join("state"));
        (t, s)
    }

    #[test]
    fn a_second_watcher_stands_by_says_so_once_and_stops_when_asked() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (_t, state) = dir();
        let election = cirkel_failover::MemoryElection::new();
        let (mut a, mut b) = (election.contender("a"), election.contender("b"));
        let held = a.acquire().unwrap().unwrap();
        let stop = AtomicBool::new(false);
        let mut idle = 0;
        let got = acquire_or_stand_by(&mut b, &state, "postgres/main", std::time::Duration::ZERO, &stop, || {
            idle += 1;
            if idle == 3 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
        assert!(got.is_none(), "stopped while another holds the lease");
        let events = state.events().unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, crate::EventKind::StandingBy);
        assert!(events[0].message.contains("acts on main"), "{}", events[0].message);
        a.release(held);
        stop.store(false, Ordering::Relaxed);
        let got =
            acquire_or_stand_by(&mut b, &state, "postgres/main", std::time::Duration::ZERO, &stop, || {}).unwrap();
        assert!(got.is_some(), "the lease is free again");
    }

    #[test]
    fn epochs_grow_with_every_acquisition_and_survive_a_restart() {
        let (_t, s) = dir();
        let mut a = LocalLock::new(&s, "postgres-main");
        let first = a.acquire().unwrap().expect("a free lock is taken");
        assert_eq!(first.epoch, 1);
        a.release(first);
        // A new process (a new LocalLock) continues the counter.
        let mut b = LocalLock::new(&s, "postgres-main");
        let second = b.acquire().unwrap().unwrap();
        assert_eq!(second.epoch, 2);
        assert!(b.holder().unwrap().contains("epoch 2"));
        assert_eq!(std::fs::read_to_string(s.root().join("epoch-postgres-main")).unwrap().trim(), "2");
        // Another scope has its own counter.
        let mut other = LocalLock::new(&s, "redis-cache");
        assert_eq!(other.acquire().unwrap().unwrap().epoch, 1);
    }

    #[test]
    fn a_held_lock_keeps_others_out() {
        let (_t, s) = dir();
        let mut a = LocalLock::new(&s, "postgres-main");
        let mut b = LocalLock::new(&s, "postgres-main");
        let la = a.acquire().unwrap().unwrap();
        assert_eq!(b.acquire().unwrap(), None);
        assert!(a.still_held(&la).unwrap());
        a.release(la);
        assert!(b.acquire().unwrap().is_some());
    }

    #[test]
    fn a_lost_lease_is_seen_at_the_next_check() {
        let (_t, s) = dir();
        let mut a = LocalLock::new(&s, "postgres-main");
        let la = a.acquire().unwrap().unwrap();
        // The lock file is removed behind a's back, and b takes a new one.
        std::fs::remove_file(s.root().join("lock-postgres-main")).unwrap();
        let mut b = LocalLock::new(&s, "postgres-main");
        let lb = b.acquire().unwrap().expect("b locks the new file");
        assert!(lb.epoch > la.epoch);
        assert!(!a.still_held(&la).unwrap());
        assert!(b.still_held(&lb).unwrap());
        // An epoch counter moved past the lease also means it is lost.
        s.replace("epoch-postgres-main", b"9\n", true).unwrap();
        assert!(!b.still_held(&lb).unwrap());
    }

    #[test]
    fn a_stale_epoch_is_refused() {
        let (_t, s) = dir();
        let mut a = LocalLock::new(&s, "postgres-main");
        let la = a.acquire().unwrap().unwrap();
        std::fs::remove_file(s.root().join("lock-postgres-main")).unwrap();
        let lb = LocalLock::new(&s, "postgres-main").acquire().unwrap().unwrap();
        let mut gate = EpochGate::new(0);
        gate.admit(lb.epoch).unwrap();
        assert!(gate.admit(la.epoch).is_err());
    }
}
