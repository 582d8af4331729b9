//! Who may act on a cluster, and the fencing token that proves it.
//!
//! Several `cirkel serve` processes may watch one cluster; only the holder
//! of its lease feeds decisions to an executor. A lease can be lost at any
//! moment (a process paused past its lease, a store that hands it to
//! another contender), so a holder checks it at every round, and every
//! action it takes carries the lease's `epoch`: a fencing token that grows
//! with every new holder. An executor keeps the newest epoch it has seen
//! ([`EpochGate`]) and refuses an action that carries an older one, so a
//! holder that lost its lease without noticing cannot promote or reroute
//! behind the back of the new one.
//!
//! The trait is synchronous on purpose: the watchers are threads and
//! own no runtime, and building one per watcher to drive a future each
//! round is the pattern the daemon is growing out of. Its shape maps
//! one-to-one onto an async trait (`async fn acquire`, `async fn
//! still_held`, `async fn release`, each one round trip to the store, with
//! `&mut self` and an owned result), so a lease in a consensus store (etcd)
//! is written against the same calls, and a watcher on a runtime awaits
//! them where a thread calls them. The decision core never sees the lease,
//! only the epoch its executor is given.
//!
//! [`MemoryElection`] is the implementation for tests: several contenders
//! in one process, and a test can revoke the lease or hand it to another.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

/// Leadership of a cluster, held: `epoch` is the fencing token, greater
/// than the epoch of every earlier holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub epoch: u64,
    /// Who holds it, as the implementation names its contenders.
    pub holder: String,
}

/// Why the election could not be asked (the store is unreachable, the lock
/// file cannot be opened): not the same as "someone else holds it".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionError(pub String);

impl fmt::Display for ElectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ElectionError {}

/// Who may act on a cluster. The embedded default is a lock in the local
/// state directory; a lease in a consensus store fits the same calls.
pub trait Leadership {
    /// Takes leadership: a new lease with an epoch greater than any
    /// before, or `None` while another contender holds it.
    fn acquire(&mut self) -> Result<Option<Lease>, ElectionError>;
    /// Checks (and, where leases expire, renews) `lease`: false once it is
    /// lost, after which nothing may be done under it.
    fn still_held(&mut self, lease: &Lease) -> Result<bool, ElectionError>;
    /// Gives `lease` up (at a clean stop).
    fn release(&mut self, lease: Lease);
    /// Who holds it, when known.
    fn holder(&self) -> Option<String>;
}

impl<L: Leadership + ?Sized> Leadership for Box<L> {
    fn acquire(&mut self) -> Result<Option<Lease>, ElectionError> {
        (**self).acquire()
    }

    fn still_held(&mut self, lease: &Lease) -> Result<bool, ElectionError> {
        (**self).still_held(lease)
    }

    fn release(&mut self, lease: Lease) {
        (**self).release(lease)
    }

    fn holder(&self) -> Option<String> {
        (**self).holder()
    }
}

/// An action refused because it carries the epoch of a lease that a newer
/// holder has replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleEpoch {
    pub epoch: u64,
    pub newest: u64,
}

impl fmt::Display for StaleEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease epoch {} is older than epoch {}, already acted under", self.epoch, self.newest)
    }
}

impl std::error::Error for StaleEpoch {}

/// The executor's side of fencing: the newest epoch acted under. An action
/// under an older epoch is refused; one under the same or a newer epoch is
/// admitted and makes its epoch the newest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochGate {
    newest: u64,
}

impl EpochGate {
    /// A gate that has seen `newest` (as recorded before a restart).
    pub fn new(newest: u64) -> EpochGate {
        EpochGate { newest }
    }

    pub fn newest(&self) -> u64 {
        self.newest
    }

    /// Whether an action under `epoch` may go ahead, without admitting it.
    pub fn check(&self, epoch: u64) -> Result<(), StaleEpoch> {
        if epoch < self.newest { Err(StaleEpoch { epoch, newest: self.newest }) } else { Ok(()) }
    }

    /// Admits an action under `epoch`, or refuses it when it is stale.
    pub fn admit(&mut self, epoch: u64) -> Result<(), StaleEpoch> {
        self.check(epoch)?;
        self.newest = epoch;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Shared {
    epoch: u64,
    holder: Option<String>,
}

/// An election held in memory, for tests: contenders made with
/// [`MemoryElection::contender`] compete for one lease, and the test can
/// take it away ([`MemoryElection::revoke`]) or give it to a contender
/// ([`MemoryElection::hand_to`]), as an expiring lease in a store would.
#[derive(Clone, Debug, Default)]
pub struct MemoryElection {
    shared: Arc<Mutex<Shared>>,
}

impl MemoryElection {
    pub fn new() -> MemoryElection {
        MemoryElection::default()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A test that panicked while holding the lock leaves plain data.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A contender named `name`.
    pub fn contender(&self, name: &str) -> MemoryContender {
        MemoryContender { election: self.clone(), name: name.to_string() }
    }

    /// Takes the lease from whoever holds it: the next check fails.
    pub fn revoke(&self) {
        self.lock().holder = None;
    }

    /// Gives the lease to `name` under a new epoch, as if it had acquired
    /// it after the holder's lease expired.
    pub fn hand_to(&self, name: &str) -> Lease {
        let mut s = self.lock();
        s.epoch += 1;
        s.holder = Some(name.to_string());
        Lease { epoch: s.epoch, holder: name.to_string() }
    }

    /// The newest epoch handed out.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }
}

/// One contender of a [`MemoryElection`].
#[derive(Clone, Debug)]
pub struct MemoryContender {
    election: MemoryElection,
    name: String,
}

impl Leadership for MemoryContender {
    fn acquire(&mut self) -> Result<Option<Lease>, ElectionError> {
        let mut s = self.election.lock();
        if s.holder.is_some() {
            return Ok(None);
        }
        s.epoch += 1;
        s.holder = Some(self.name.clone());
        Ok(Some(Lease { epoch: s.epoch, holder: self.name.clone() }))
    }

    fn still_held(&mut self, lease: &Lease) -> Result<bool, ElectionError> {
        let s = self.election.lock();
        Ok(s.holder.as_deref() == Some(self.name.as_str()) && s.epoch == lease.epoch)
    }

    fn release(&mut self, lease: Lease) {
        let mut s = self.election.lock();
        if s.holder.as_deref() == Some(self.name.as_str()) && s.epoch == lease.epoch {
            s.holder = None;
        }
    }

    fn holder(&self) -> Option<String> {
        self.election.lock().holder.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_contender_holds_the_lease_and_epochs_grow() {
        let e = MemoryElection::new();
        let (mut a, mut b) = (e.contender("a"), e.contender("b"));
        let la = a.acquire().unwrap().expect("a takes the free lease");
        assert_eq!(b.acquire().unwrap(), None, "b waits while a holds it");
        assert!(a.still_held(&la).unwrap());
        a.release(la.clone());
        let lb = b.acquire().unwrap().expect("b takes it once released");
        assert!(lb.epoch > la.epoch);
        assert_eq!(b.holder().as_deref(), Some("b"));
        assert!(!a.still_held(&la).unwrap(), "an old lease is not held");
    }

    #[test]
    fn a_revoked_lease_is_seen_at_the_next_check() {
        let e = MemoryElection::new();
        let mut a = e.contender("a");
        let la = a.acquire().unwrap().unwrap();
        e.revoke();
        assert!(!a.still_held(&la).unwrap());
        let again = a.acquire().unwrap().expect("a free lease is taken again");
        assert!(again.epoch > la.epoch);
    }

    #[test]
    fn a_lease_handed_to_another_contender_is_lost_by_the_first() {
        let e = MemoryElection::new();
        let (mut a, mut b) = (e.contender("a"), e.contender("b"));
        let la = a.acquire().unwrap().unwrap();
        let lb = e.hand_to("b");
        assert!(!a.still_held(&la).unwrap());
        assert!(b.still_held(&lb).unwrap());
        assert!(lb.epoch > la.epoch);
        // Releasing a lost lease does not free the new holder's.
        a.release(la);
        assert_eq!(a.holder().as_deref(), Some("b"));
    }

    #[test]
    fn a_stale_lease_epoch_stops_a_promotion() {
        let e = MemoryElection::new();
        let (mut a, mut b) = (e.contender("a"), e.contender("b"));
        let la = a.acquire().unwrap().unwrap();
        let mut gate = EpochGate::new(0);
        gate.admit(la.epoch).expect("the first holder acts");
        // a stalls; its lease goes to b, which promotes.
        let lb = e.hand_to("b");
        assert!(b.still_held(&lb).unwrap());
        gate.admit(lb.epoch).expect("the new holder acts");
        // a wakes up and, before its next check, tries to promote.
        assert_eq!(gate.admit(la.epoch), Err(StaleEpoch { epoch: la.epoch, newest: lb.epoch }));
        assert_eq!(gate.check(la.epoch), Err(StaleEpoch { epoch: la.epoch, newest: lb.epoch }));
        assert_eq!(gate.newest(), lb.epoch, "a refused action changes nothing");
        // The same holder acts again under its epoch.
        assert_eq!(gate.admit(lb.epoch), Ok(()));
    }

    #[test]
    fn the_gate_admits_epochs_in_any_non_decreasing_order() {
        let mut gate = EpochGate::new(3);
        assert!(gate.admit(2).is_err());
        assert!(gate.admit(3).is_ok());
        assert!(gate.admit(7).is_ok());
        assert!(gate.check(6).is_err());
        assert_eq!(gate.newest(), 7);
    }
}
