//! Leadership of a cluster or group through a lease in etcd, so `cirkel
//! serve` on several hosts can watch one cluster and only one acts.
//!
//! Each scope (`postgres-main`, `redis-cache`) has one key,
//! `PREFIX/SCOPE/leader`, whose value names the holder and which is
//! attached to the holder's etcd lease. A contender takes it with a
//! transaction that creates the key only if it is absent; the lease is kept
//! alive in the background (a task on the process's shared runtime) and
//! the key disappears with it when the holder stops renewing, dies or is
//! cut off, after at most the TTL.
//!
//! **The epoch is the leader key's `create_revision`.** etcd numbers every
//! change to its store with one revision counter that only grows, and
//! persists it with the data; the key is created afresh by each new holder
//! (after a release, an expiry or a restart of etcd), so each holder's
//! create revision is greater than that of every holder before it, across
//! processes, hosts and etcd restarts. No counter key is needed, and a
//! write can be fenced by comparing the leader key's create revision in the
//! same transaction ([`Fence::put_if_epoch`]). The one way it goes back is
//! an etcd cluster rebuilt from nothing; executors' [`EpochGate`]s, which
//! keep the newest epoch they acted under, then refuse the new small
//! epochs until their records are reset, which is the safe direction.
//!
//! A lease is trusted only until the TTL after the last keep-alive that
//! etcd answered, counted from when it was sent (see `session`): a holder
//! never acts after etcd could have handed the key to another, even while
//! etcd cannot be reached, and a paused process resumes without it.
//!
//! [`EpochGate`]: cirkel_failover::EpochGate

mod fence;
mod session;
mod store;

use std::time::Duration;

use cirkel_config::CoordinationConfig;
use cirkel_failover::{ElectionError, Leadership, Lease};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};

pub use fence::{Fence, FenceError};

use session::Session;
use store::{Store, check_component};

/// One contender for the leadership of one scope, over etcd.
///
/// Dropped without [`Leadership::release`], it stops renewing its lease,
/// which etcd expires after the TTL: a crash and a clean drop look alike
/// to the other contenders.
pub struct EtcdElection {
    store: Store,
    scope: String,
    key: String,
    node: String,
    ttl: Duration,
    /// The lease this contender campaigns with, kept between attempts so a
    /// waiting contender does not grant a lease every round.
    session: Option<Session>,
    /// The epoch this contender holds, if any.
    held: Option<u64>,
    /// The holder seen at the last request.
    holder: Option<String>,
    /// How long a try to take the lease waits for etcd.
    acquire_timeout: Duration,
}

impl std::fmt::Debug for EtcdElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdElection")
            .field("key", &self.key)
            .field("node", &self.node)
            .field("ttl", &self.ttl)
            .field("held", &self.held)
            .finish()
    }
}

impl EtcdElection {
    /// Connects to the etcd cluster `[coordination]` names to contend for
    /// `scope` (`postgres-NAME`, `redis-NAME`) as `cfg.node`. Fails when no
    /// node name is set or no endpoint answers.
    pub fn connect(cfg: &CoordinationConfig, scope: &str) -> Result<EtcdElection, ElectionError> {
        check_component("scope", scope)?;
        let node = cfg.node.clone().ok_or_else(|| {
            ElectionError("this agent has no name: set [coordination] node = \"NAME\" or pass --node NAME".into())
        })?;
        check_component("node name", &node)?;
        if cfg.ttl < cirkel_config::coordination::MIN_TTL || cfg.ttl.subsec_nanos() != 0 {
            return Err(ElectionError(format!(
                "a lease TTL of {:?} cannot be granted: set [coordination] ttl to whole seconds, at least \"2s\"",
                cfg.ttl
            )));
        }
        let store = Store::connect(cfg)?;
        let store_timeout = store.op_timeout;
        let key = store.key(scope, "leader");
        Ok(EtcdElection {
            store,
            scope: scope.to_string(),
            key,
            node,
            ttl: cfg.ttl,
            session: None,
            held: None,
            holder: None,
            acquire_timeout: store_timeout,
        })
    }

    /// Bounds each try to take the lease (by default half the TTL): a
    /// contender that tries every round waits at most this for etcd, and
    /// tries again at the next round.
    pub fn set_acquire_timeout(&mut self, timeout: Duration) {
        self.acquire_timeout = timeout;
    }

    /// A fence on the same connection, for the executors acting under
    /// this contender's leases.
    pub fn fence(&self) -> Fence {
        Fence { store: self.store.clone() }
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The leader key, `PREFIX/SCOPE/leader`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How long the held lease can still be trusted by the local clock
    /// without another answered keep-alive: an action longer than this
    /// must be fenced ([`Fence::put_if_epoch`]) rather than trusted.
    pub fn valid_for(&self) -> Option<Duration> {
        self.held?;
        self.session.as_ref()?.remaining()
    }

    /// A lease that can still be used, or a new one: a lapsed one is
    /// revoked (so its key goes at once, if etcd still has it) and replaced.
    async fn live_session(&mut self) -> Result<&Session, ElectionError> {
        if let Some(old) = self.session.take_if(|s| !s.alive()) {
            old.end();
            self.held = None;
            let mut lease = self.store.client().lease_client();
            if let Err(e) = self.store.call("revoke a lapsed lease", self.store.op_timeout, lease.revoke(old.id)).await
            {
                // It expires on its own within the TTL.
                tracing::debug!(scope = %self.scope, "{e}");
            }
        }
        match self.session {
            Some(ref s) => Ok(s),
            None => Ok(self.session.insert(Session::grant(&self.store, self.ttl, self.acquire_timeout).await?)),
        }
    }

    async fn acquire_async(&mut self) -> Result<Option<Lease>, ElectionError> {
        let id = self.live_session().await?.id;
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(self.key.clone(), self.node.clone(), Some(PutOptions::new().with_lease(id)))])
            .or_else([TxnOp::get(self.key.clone(), None)]);
        let mut kv = self.store.client().kv_client();
        let resp = self.store.call("take the leader key", self.acquire_timeout, kv.txn(txn)).await?;
        let alive = self.session.as_ref().is_some_and(Session::alive);
        let lease = if resp.succeeded() {
            // The transaction's revision is the one the key was created at.
            resp.header().map(|h| Lease { epoch: h.revision() as u64, holder: self.node.clone() })
        } else {
            let found = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.lease(), kv.create_revision())),
                _ => None,
            });
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => fence::leader_of(&g),
                _ => None,
            });
            self.holder = current.map(|l| l.holder);
            // Our own key, from an attempt whose answer was lost.
            match found {
                Some((lease, rev)) if lease == id => Some(Lease { epoch: rev as u64, holder: self.node.clone() }),
                _ => None,
            }
        };
        match lease {
            // A lease that lapsed during the request is not handed out: it
            // may already belong to another.
            Some(l) if alive => {
                self.held = Some(l.epoch);
                self.holder = Some(self.node.clone());
                Ok(Some(l))
            }
            _ => Ok(None),
        }
    }

    async fn still_held_async(&mut self, lease: &Lease) -> Result<bool, ElectionError> {
        if self.held != Some(lease.epoch) || lease.holder != self.node {
            return Ok(false);
        }
        let Some(remaining) = self.session.as_ref().and_then(Session::remaining) else {
            self.held = None;
            return Ok(false);
        };
        let Some(id) = self.session.as_ref().map(|s| s.id) else {
            return Ok(false);
        };
        let mut kv = self.store.client().kv_client();
        let timeout = self.store.op_timeout.min(remaining);
        match self.store.call("check the leader key", timeout, kv.get(self.key.clone(), None)).await {
            Ok(resp) => {
                let kv = resp.kvs().first();
                self.holder = kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                let ours = kv.is_some_and(|kv| kv.lease() == id && kv.create_revision() as u64 == lease.epoch);
                // Checked again after the request: the answer may have
                // come after the lease lapsed.
                if ours && self.session.as_ref().is_some_and(Session::alive) {
                    return Ok(true);
                }
                self.held = None;
                Ok(false)
            }
            Err(e) => {
                // Until the local deadline nobody else can have the key,
                // even if etcd is unreachable; after it, the lease is gone.
                if self.session.as_ref().is_some_and(Session::alive) {
                    tracing::warn!(scope = %self.scope, "the lease is held until its TTL runs out: {e}");
                    Ok(true)
                } else {
                    self.held = None;
                    Ok(false)
                }
            }
        }
    }

    async fn release_async(&mut self, lease: Lease) {
        if self.held != Some(lease.epoch) {
            return;
        }
        self.held = None;
        let Some(session) = self.session.take() else {
            return;
        };
        session.end();
        let mut client = self.store.client().lease_client();
        // Revoking deletes the key at once, so a successor need not wait
        // for the TTL.
        match self.store.call("revoke the lease", self.store.op_timeout, client.revoke(session.id)).await {
            Ok(_) => self.holder = None,
            Err(e) => tracing::warn!(scope = %self.scope, "the leader key goes when its TTL runs out: {e}"),
        }
    }
}

impl Leadership for EtcdElection {
    fn acquire(&mut self) -> Result<Option<Lease>, ElectionError> {
        let rt = self.store.rt.clone();
        rt.block_on(self.acquire_async())
    }

    fn still_held(&mut self, lease: &Lease) -> Result<bool, ElectionError> {
        let rt = self.store.rt.clone();
        rt.block_on(self.still_held_async(lease))
    }

    fn release(&mut self, lease: Lease) {
        let rt = self.store.rt.clone();
        rt.block_on(self.release_async(lease));
    }

    fn holder(&self) -> Option<String> {
        self.holder.clone()
    }
}
