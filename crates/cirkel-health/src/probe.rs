//! One probe of one target. A probe only reports what went wrong; the
//! engine puts the timeout around it, so nothing here waits on its own.
//!
//! Each HTTP probe opens a fresh connection, as a client arriving after an
//! outage would, and asks the server to close it. Host names are resolved
//! at every probe (a moved service is followed) by tokio on its blocking
//! pool; IP literals need no resolution.

use std::ops::RangeInclusive;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::spec::{Kind, split_host_port};

/// How much of a body is searched for `body_contains`: a health page is
/// small, and a target answering with an endless body must not hold memory.
const BODY_MAX: usize = 1 << 20;

/// A check's target, resolved once from its spec.
pub(crate) enum Target {
    Http(HttpTarget),
    Tcp { host: String, port: u16 },
}

pub(crate) struct HttpTarget {
    host: String,
    port: u16,
    host_header: String,
    path: String,
    expect_status: RangeInclusive<u16>,
    body_contains: Option<String>,
}

impl Target {
    /// Specs are validated before this runs; anything missing falls back to
    /// values whose probes fail with a readable error.
    pub(crate) fn new(kind: &Kind) -> Target {
        match kind {
            Kind::Http { url, expect_status, body_contains } => {
                let host = match url.host() {
                    Some(url::Host::Ipv6(a)) => a.to_string(),
                    Some(h) => h.to_string(),
                    None => String::new(),
                };
                let port = url.port_or_known_default().unwrap_or(80);
                let host_header = match url.port() {
                    Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
                    None => url.host_str().unwrap_or_default().to_string(),
                };
                let path = match url.query() {
                    Some(q) => format!("{}?{q}", url.path()),
                    None => url.path().to_string(),
                };
                Target::Http(HttpTarget {
                    host,
                    port,
                    host_header,
                    path,
                    expect_status: expect_status.clone(),
                    body_contains: body_contains.clone(),
                })
            }
            Kind::Tcp { address } => {
                let (host, port) = split_host_port(address).unwrap_or((address.as_str(), 0));
                Target::Tcp { host: host.to_string(), port }
            }
        }
    }

    pub(crate) async fn probe(&self) -> Result<(), String> {
        match self {
            Target::Http(t) => t.probe().await,
            Target::Tcp { host, port } => {
                TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
                Ok(())
            }
        }
    }
}

/// Stops a probe's connection task when the probe ends, also when its
/// timeout drops it half-way.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HttpTarget {
    async fn probe(&self) -> Result<(), String> {
        let (host, port) = (&self.host, self.port);
        let stream =
            TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        // Probes are one small request each; waiting for Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {host}:{port}: {e}"))?;
        let _conn = AbortOnDrop(tokio::spawn(conn));
        let request = hyper::Request::get(self.path.as_str())
            .header(HOST, self.host_header.as_str())
            .header(USER_AGENT, "cirkel-health")
            .header(CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| format!("cannot build a request for {}: {e}", self.path))?;
        let response = sender.send_request(request).await.map_err(|e| format!("GET {}: {e}", self.path))?;
        let status = response.status().as_u16();
        if !self.expect_status.contains(&status) {
            let (lo, hi) = (self.expect_status.start(), self.expect_status.end());
            let expected = if lo == hi { format!("{lo}") } else { format!("{lo}..={hi}") };
            return Err(format!("GET {} answered {status}, expected {expected}", self.path));
        }
        let Some(needle) = &self.body_contains else {
            return Ok(());
        };
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while seen.len() < BODY_MAX {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        // Only the new bytes, and a needle's length before them, can hold a new match.
                        let from = seen.len().saturating_sub(needle.len());
                        seen.extend_from_slice(&data[..data.len().min(BODY_MAX - seen.len())]);
                        if contains(&seen[from..], needle.as_bytes()) {
                            return Ok(());
                        }
                    }
                }
                Some(Err(e)) => return Err(format!("GET {}: reading the body: {e}", self.path)),
                None => break,
            }
        }
        Err(format!("GET {}: the body does not contain `{needle}`", self.path))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
