//! The connection to etcd shared by a contender and the fences built from
//! it: one client on the process's shared runtime, every call bounded by a
//! timeout, and every failure turned into an error that names the
//! endpoints tried and what to check.

use std::future::Future;
use std::time::Duration;

use cirkel_config::CoordinationConfig;
use cirkel_failover::ElectionError;
use cirkel_repo::runtime::Shared;
use etcd_client::{Client, ConnectOptions};

/// A client of the etcd cluster `[coordination]` names.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) rt: Shared,
    pub(crate) client: Client,
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
            Client::connect(&endpoints, Some(options)).await
        });
        let client = connected.map_err(|e| unreachable_at(&endpoints, "connect to etcd", &e.to_string()))?;
        let store = Store { rt, client, endpoints, prefix: cfg.prefix.trim_end_matches('/').to_string(), op_timeout };
        let probe = store.key("", "");
        let mut kv = store.client.kv_client();
        store.block_on("reach etcd", store.op_timeout, kv.get(probe, None))?;
        Ok(store)
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
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.describe(what, &e)),
            Err(_) => Err(self.unreachable(what, &format!("no answer within {timeout:?}"))),
        }
    }

    fn describe(&self, what: &str, e: &etcd_client::Error) -> ElectionError {
        use etcd_client::Error as E;
        let unreachable = match e {
            E::TransportError(_) | E::IoError(_) => true,
            // Cancelled, deadline exceeded, unavailable: the request never
            // got an answer, as opposed to an answer that says no.
            E::GRpcStatus(s) => matches!(i32::from(s.code()), 1 | 4 | 14),
            _ => false,
        };
        if unreachable {
            self.unreachable(what, &e.to_string())
        } else {
            ElectionError(format!(
                "{what}: etcd at {} answered with an error: {e}; check etcd's log, and that it is version 3.4 or newer",
                self.endpoints.join(", ")
            ))
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
