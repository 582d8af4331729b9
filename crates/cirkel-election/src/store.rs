//! The connection to etcd shared by a contender and the fences built from
//! it: one client on the process's shared runtime, every call bounded by a
//! timeout, and every failure turned into an error that names the
//! endpoints tried and what to check.
//!
//! The client balances over every endpoint, but an endpoint that refuses
//! connections (its host up, etcd dead) can keep failing requests sent
//! through it. So a request that finds etcd unreachable moves the store to
//! the next endpoint on its own, in turn, and back to the balanced client:
//! the next request goes elsewhere.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cirkel_config::CoordinationConfig;
use cirkel_failover::ElectionError;
use cirkel_repo::runtime::Shared;
use etcd_client::{Client, ConnectOptions};

/// A client of the etcd cluster `[coordination]` names.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) rt: Shared,
    /// The client requests go through now, and which: 0 the balanced one,
    /// `i` the `i`-th endpoint alone.
    current: Arc<Mutex<(usize, Client)>>,
    balanced: Client,
    options: ConnectOptions,
    endpoints: Vec<String>,
    prefix: String,
    /// The longest one request may take: half the TTL, so a check that
    /// times out still leaves time to see the lease lapse by the clock.
    pub(crate) op_timeout: Duration,
}

impl Store {
    /// Connects and asks etcd once, so a wrong or dead endpoint list is
    /// reported when the daemon starts rather than at its first election.
    pub(crate) fn connect(cfg: &CoordinationConfig) -> Result<Store, ElectionError> {
        if cfg.etcd.is_empty() {
            return Err(ElectionError(
                "no etcd endpoint: list etcd's client URLs in [coordination] etcd = [\"http://HOST:2379\"]".into(),
            ));
        }
        for url in &cfg.etcd {
            cirkel_config::coordination::check_etcd_url(url)
                .map_err(|e| ElectionError(format!("[coordination] etcd: {e}")))?;
        }
        let rt = Shared::get().map_err(|e| ElectionError(format!("cannot reach etcd: {e}")))?;
        let op_timeout = (cfg.ttl / 2).max(Duration::from_secs(1));
        let options = ConnectOptions::new()
            .with_connect_timeout(op_timeout)
            .with_keep_alive(op_timeout, op_timeout)
            .with_keep_alive_while_idle(true);
        let endpoints = cfg.etcd.clone();
        let connected = rt.block_on(async {
            // Building the channel spawns its workers on this runtime.
            Client::connect(&endpoints, Some(options.clone())).await
        });
        let client = connected.map_err(|e| unreachable_at(&endpoints, "connect to etcd", &e.to_string()))?;
        let store = Store {
            rt,
            current: Arc::new(Mutex::new((0, client.clone()))),
            balanced: client,
            options,
            endpoints,
            prefix: cfg.prefix.trim_end_matches('/').to_string(),
            op_timeout,
        };
        // Each failed try moves to another endpoint: one answering is enough.
        let probe = store.key("", "");
        let mut tries = store.endpoints.len() + 1;
        loop {
            let mut kv = store.client().kv_client();
            match store.block_on("reach etcd", store.op_timeout, kv.get(probe.clone(), None)) {
                Ok(_) => return Ok(store),
                Err(e) if tries <= 1 => return Err(e),
                Err(_) => tries -= 1,
            }
        }
    }

    /// The client to send the next request through.
    pub(crate) fn client(&self) -> Client {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    fn current_index(&self) -> usize {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// After a request sent through client `failed` found etcd unreachable:
    /// the next endpoint alone, or the balanced client after the last.
    /// Nothing when another request already moved on from it, so that
    /// requests failing together move the client once.
    async fn rotate(&self, failed: usize) {
        if self.current_index() != failed {
            return;
        }
        // The first endpoint after it that takes a connection, else the
        // balanced client again.
        let n = self.endpoints.len() + 1;
        let mut next = (failed + 1) % n;
        let mut chosen = (0, self.balanced.clone());
        while next != 0 {
            let url = [self.endpoints[next - 1].clone()];
            let connect = Client::connect(url, Some(self.options.clone()));
            let bound = self.op_timeout.max(Duration::from_secs(1));
            if let Ok(Ok(client)) = tokio::time::timeout(bound, connect).await {
                chosen = (next, client);
                break;
            }
            next = (next + 1) % n;
        }
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.0 == failed {
            *cur = chosen;
        }
    }

    /// `PREFIX/SCOPE/NAME`, or the prefix itself when both are empty.
    pub(crate) fn key(&self, scope: &str, name: &str) -> String {
        if scope.is_empty() { format!("{}/", self.prefix) } else { format!("{}/{scope}/{name}", self.prefix) }
    }

    /// Runs one etcd request on the shared runtime under `timeout`.
    pub(crate) fn block_on<T>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ElectionError> {
        self.rt.block_on(self.call(what, timeout, fut))
    }

    /// One etcd request under `timeout`, its failure described.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ElectionError> {
        let sent_through = self.current_index();
        let unreachable = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => match self.describe(what, &e) {
                (err, false) => return Err(err),
                (err, true) => err,
            },
            Err(_) => self.unreachable(what, &format!("no answer within {timeout:?}")),
        };
        self.rotate(sent_through).await;
        Err(unreachable)
    }

    /// The error, and whether it says etcd could not be reached.
    fn describe(&self, what: &str, e: &etcd_client::Error) -> (ElectionError, bool) {
        use etcd_client::Error as E;
        let unreachable = match e {
            E::TransportError(_) | E::IoError(_) => true,
            // Cancelled, deadline exceeded, unavailable: the request never
            // got an answer, as opposed to an answer that says no.
            E::GRpcStatus(s) => matches!(i32::from(s.code()), 1 | 4 | 14),
            _ => false,
        };
        if unreachable {
            (self.unreachable(what, &e.to_string()), true)
        } else {
            let err = ElectionError(format!(
                "{what}: etcd at {} answered with an error: {e}; check etcd's log, and that it is version 3.4 or newer",
                self.endpoints.join(", ")
            ));
            (err, false)
        }
    }

    pub(crate) fn unreachable(&self, what: &str, detail: &str) -> ElectionError {
        unreachable_at(&self.endpoints, what, detail)
    }
}

fn unreachable_at(endpoints: &[String], what: &str, detail: &str) -> ElectionError {
    ElectionError(format!(
        "{what}: etcd did not answer at {} ({detail}); check that etcd runs there and that [coordination] etcd lists its client URLs",
        endpoints.join(", ")
    ))
}

/// A scope names one cluster or group (`postgres-main`) inside the prefix:
/// one path component, so no scope reaches into another's keys.
pub(crate) fn check_component(kind: &str, s: &str) -> Result<(), ElectionError> {
    if s.is_empty()
        || s.len() > 200
        || !s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || s == "."
        || s == ".."
    {
        return Err(ElectionError(format!(
            "`{s}` is not a valid {kind}: use letters, digits, `-`, `_` or `.` (e.g. \"postgres-main\")"
        )));
    }
    Ok(())
}
