//! Where the agents of several hosts agree on who leads (`[coordination]`).
//!
//! Without this table one `cirkel serve` leads through a lock in its state
//! directory. With it, leadership of each cluster and group is a lease in
//! etcd, so an agent on any host can take over when the leader's host dies.
//! Everything that could never work (an https endpoint this build cannot
//! speak, a TTL shorter than etcd grants, an empty endpoint list) is
//! refused here, with its line, rather than when the daemon first campaigns.

use std::time::Duration;

use serde::Serialize;

/// The lease TTL when `ttl` is not set: the time a dead leader's lease
/// takes to lapse, so the longest a failover waits for leadership.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// etcd grants no lease shorter than its election timeout allows (about
/// 2 s with its defaults); a shorter TTL would be silently lengthened.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// etcd's own ceiling on a lease's TTL.
pub const MAX_TTL: Duration = Duration::from_secs(9_000_000);
pub const DEFAULT_PREFIX: &str = "/cirkel";

/// `[coordination]`: the etcd cluster that holds the leader keys.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CoordinationConfig {
    /// Client URLs of etcd members (`http://host:2379`), at least one.
    pub etcd: Vec<String>,
    /// The lease's time to live, whole seconds, at least [`MIN_TTL`].
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub ttl: Duration,
    /// This agent's name, as other agents see it holding a lease; the
    /// daemon's `--node` takes precedence.
    pub node: Option<String>,
    /// Where cirkel's keys live in etcd: `PREFIX/SCOPE/leader`.
    pub prefix: String,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig { etcd: Vec::new(), ttl: DEFAULT_TTL, node: None, prefix: DEFAULT_PREFIX.to_string() }
    }
}

/// Checks one etcd client URL: only plain http (this build has no TLS for
/// etcd), a host and a port, no credentials, no path.
pub fn check_etcd_url(url: &str) -> Result<(), String> {
    let example = "e.g. \"http://10.0.0.1:2379\"";
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL ({e}); expected {example}"))?;
    match parsed.scheme() {
        "http" => {}
        "https" => {
            return Err(format!(
                "`{url}`: https is not supported, this build of cirkel has no TLS support for etcd; \
                 use its plain http:// client URL on a trusted network, or a TLS-terminating proxy on loopback"
            ));
        }
        other => return Err(format!("`{url}`: scheme `{other}` is not supported; expected {example}")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` names no host; expected {example}"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("`{url}` contains credentials; remove them (etcd authentication is not supported yet)"));
    }
    if parsed.port().is_none() {
        return Err(format!("`{url}` names no port (etcd's client port is usually 2379); expected {example}"));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("`{url}`: an etcd endpoint has no path or query; expected {example}"));
    }
    Ok(())
}

/// Checks an agent's name: shown to operators and stored in etcd as the
/// holder of a lease, so one key component.
pub fn check_node_name(n: &str) -> Result<(), String> {
    if n.is_empty() || n.len() > 253 || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!(
            "`{n}` is not a node name; expected letters, digits, `-`, `_` or `.` (e.g. the host's name, \"db-1\")"
        ));
    }
    Ok(())
}
