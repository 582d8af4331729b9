//! Fencing through etcd itself: a write that lands only while a given
//! epoch still holds the scope.
//!
//! An executor's [`cirkel_failover::EpochGate`] refuses stale epochs it has
//! seen superseded; a record in etcd goes one better, because etcd decides
//! the comparison and the write in one transaction. The leader key's
//! `create_revision` is the epoch, so "the leader key was created at
//! revision `epoch` and still exists" is exactly "the lease of `epoch` is
//! still held": a holder paused past its TTL, whose key expired and was
//! created again by another, has its write refused however late it wakes.

use std::fmt;

use cirkel_config::CoordinationConfig;
use cirkel_failover::{ElectionError, Lease};
use etcd_client::{Compare, CompareOp, GetResponse, Txn, TxnOp, TxnOpResponse};

use crate::store::{Store, check_component};

/// A write refused, or not attempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceError {
    /// The scope is no longer held under `epoch`: `current` holds it now,
    /// or nobody (`None`). Nothing was written; the caller has lost its
    /// lease and must stop acting.
    Stale { epoch: u64, current: Option<u64> },
    /// etcd could not be asked; nothing is known to have been written.
    Store(ElectionError),
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceError::Stale { epoch, current: Some(c) } => write!(
                f,
                "refused: lease epoch {epoch} is stale, epoch {c} holds the scope now; this process must stop acting"
            ),
            FenceError::Stale { epoch, current: None } => write!(
                f,
                "refused: lease epoch {epoch} has lapsed and nobody holds the scope; take the lease again before acting"
            ),
            FenceError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FenceError {}

impl From<ElectionError> for FenceError {
    fn from(e: ElectionError) -> Self {
        FenceError::Store(e)
    }
}

/// Reads the epoch of each scope and writes records under it; cheap to
/// clone, usable from any thread.
#[derive(Clone)]
pub struct Fence {
    pub(crate) store: Store,
}

impl fmt::Debug for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fence").field("prefix", &self.store.key("", "")).finish()
    }
}

impl Fence {
    /// Connects to the etcd cluster `[coordination]` names (an executor or
    /// proxy that does not campaign itself).
    pub fn connect(cfg: &CoordinationConfig) -> Result<Fence, ElectionError> {
        Ok(Fence { store: Store::connect(cfg)? })
    }

    /// The same connection with another bound on each request: reads an
    /// agent makes every round, which must not hold the round up while
    /// etcd does not answer.
    pub fn with_timeout(&self, timeout: std::time::Duration) -> Fence {
        let mut store = self.store.clone();
        store.op_timeout = timeout;
        Fence { store }
    }

    /// The epoch that holds `scope` now, 0 when nobody does (epochs start
    /// at 1, so 0 is older than every lease).
    pub fn current_epoch(&self, scope: &str) -> Result<u64, ElectionError> {
        Ok(self.current(scope)?.map_or(0, |l| l.epoch))
    }

    /// Who holds `scope` now, and under which epoch.
    pub fn current(&self, scope: &str) -> Result<Option<Lease>, ElectionError> {
        check_component("scope", scope)?;
        let mut kv = self.store.client.kv_client();
        let key = self.store.key(scope, "leader");
        let resp = self.store.block_on("read the leader key", self.store.op_timeout, kv.get(key, None))?;
        Ok(leader_of(&resp))
    }

    /// Writes `PREFIX/SCOPE/NAME = value` only if `epoch` still holds
    /// `scope`, in one etcd transaction.
    pub fn put_if_epoch(&self, scope: &str, epoch: u64, name: &str, value: &[u8]) -> Result<(), FenceError> {
        check_component("scope", scope)?;
        check_component("record name", name)?;
        if name == "leader" {
            return Err(FenceError::Store(ElectionError(
                "the leader key is written by the election only; choose another record name".into(),
            )));
        }
        let leader = self.store.key(scope, "leader");
        let txn = Txn::new()
            .when([Compare::create_revision(leader.clone(), CompareOp::Equal, epoch as i64)])
            .and_then([TxnOp::put(self.store.key(scope, name), value.to_vec(), None)])
            .or_else([TxnOp::get(leader, None)]);
        let mut kv = self.store.client.kv_client();
        let resp = self.store.block_on("write under the lease epoch", self.store.op_timeout, kv.txn(txn))?;
        if resp.succeeded() {
            return Ok(());
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(leader_of(&g).map(|l| l.epoch)),
            _ => None,
        });
        Err(FenceError::Stale { epoch, current: current.flatten() })
    }

    /// Reads back a record written with [`Fence::put_if_epoch`].
    pub fn get(&self, scope: &str, name: &str) -> Result<Option<Vec<u8>>, ElectionError> {
        check_component("scope", scope)?;
        check_component("record name", name)?;
        let mut kv = self.store.client.kv_client();
        let resp =
            self.store.block_on("read a record", self.store.op_timeout, kv.get(self.store.key(scope, name), None))?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }
}

impl Fence {
    /// Writes `PREFIX/SCOPE/NAME = value` whoever leads: for what an agent
    /// reports about itself or its own host (a member's postmaster gone,
    /// the agent alive), never for a decision.
    pub fn put(&self, scope: &str, name: &str, value: &[u8]) -> Result<(), ElectionError> {
        check_component("scope", scope)?;
        check_component("record name", name)?;
        if name == "leader" {
            return Err(ElectionError("the leader key is written by the election only".into()));
        }
        let mut kv = self.store.client.kv_client();
        let key = self.store.key(scope, name);
        self.store.block_on("write a report", self.store.op_timeout, kv.put(key, value.to_vec(), None))?;
        Ok(())
    }

    /// Deletes a report written with [`Fence::put`].
    pub fn delete(&self, scope: &str, name: &str) -> Result<(), ElectionError> {
        check_component("scope", scope)?;
        check_component("record name", name)?;
        if name == "leader" {
            return Err(ElectionError("the leader key is written by the election only".into()));
        }
        let mut kv = self.store.client.kv_client();
        let key = self.store.key(scope, name);
        self.store.block_on("delete a report", self.store.op_timeout, kv.delete(key, None))?;
        Ok(())
    }

    /// Every record of `scope`, by name.
    pub fn list(&self, scope: &str) -> Result<Vec<(String, Vec<u8>)>, ElectionError> {
        check_component("scope", scope)?;
        let mut kv = self.store.client.kv_client();
        let prefix = self.store.key(scope, "");
        let opts = etcd_client::GetOptions::new().with_prefix();
        let resp = self.store.block_on("list records", self.store.op_timeout, kv.get(prefix.clone(), Some(opts)))?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                (key.strip_prefix(&prefix).unwrap_or(&key).to_string(), kv.value().to_vec())
            })
            .collect())
    }
}

/// The lease a leader key stands for: its create revision and its value.
pub(crate) fn leader_of(resp: &GetResponse) -> Option<Lease> {
    let kv = resp.kvs().first()?;
    Some(Lease { epoch: kv.create_revision() as u64, holder: String::from_utf8_lossy(kv.value()).into_owned() })
}
