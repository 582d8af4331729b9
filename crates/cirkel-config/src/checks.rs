//! Health checks of any service (`[checks.NAME]`) and the daemon's own
//! HTTP server (`[server]`).
//!
//! These are the settings the health-check engine runs: the plan's
//! application check (`GET /health` every 10 s, 5 s timeout, healthy after
//! 2 good probes, unhealthy after 3 bad ones) is the default shape, so a
//! check usually names only its target. Everything a probe could never
//! satisfy (an https URL, a timeout that reaches the next probe, a
//! threshold of 0) is refused here, with its line, instead of at run time.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

/// The plan's probe interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// The plan's probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;

/// One health check (`[checks.NAME]`).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CheckConfig {
    #[serde(flatten)]
    pub kind: CheckKindConfig,
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub interval: Duration,
    /// Always shorter than `interval`, so a probe ends before the next is due.
    #[serde(serialize_with = "crate::reader::ser_duration")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// How a drill brings the checked service back after killing it
    /// (`cirkel drill scenario app-instance`): a shell command that starts
    /// it, in the foreground or as a daemon.
    pub restart_command: Option<String>,
}

/// What a check probes.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKindConfig {
    /// `GET url`; healthy when the status matches and the body holds `body_contains`.
    Http {
        /// An `http://` URL (checked when read).
        url: String,
        /// One exact status; when absent any 2xx or 3xx answer is good.
        expect_status: Option<u16>,
        body_contains: Option<String>,
    },
    /// A TCP connection that opens.
    Tcp {
        /// `host:port`.
        address: String,
    },
}

/// The daemon's HTTP server (`[server]`): metrics and check states.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where it listens, e.g. `127.0.0.1:9187`; no server when absent.
    pub listen: Option<SocketAddr>,
    /// The token that reads the API and the dashboard (`viewer_token_file`).
    pub viewer_token: Option<crate::Secret>,
    /// The token that also acts through the API (`operator_token_file`).
    pub operator_token: Option<crate::Secret>,
    /// HTTPS: a PEM certificate chain and its PEM private key
    /// (`tls_cert_file`, `tls_key_file`); plain HTTP without them.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
}
