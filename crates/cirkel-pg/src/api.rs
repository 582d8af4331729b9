//! Patroni-compatible health endpoints, one HTTP port per member, so an
//! existing HAProxy configuration (`option httpchk OPTIONS /primary`,
//! `check port <member's api port>`) routes by cirkel's view of the cluster.
//!
//! `/primary` (also `/`, `/master`, `/leader`, `/read-write`): 200 when the
//! member is the primary cirkel routes to. `/replica[?lag=N]`: 200 for a
//! streaming standby at most N behind (bytes, or `16MB`, `1kB`). `/read-only`:
//! either. `/health`: the member answers. `/patroni`: the member's state as
//! JSON. Anything else is 404; every check that fails is 503.
//!
//! A load balancer marks a member down when its check does not answer in
//! time, so no client may hold the endpoints up for others: connections are
//! served concurrently by hyper on a small runtime of the API's own, each
//! with a deadline for its request head and for the whole connection, a
//! bound on the size of the head (431 beyond it) and of a request body
//! (413; bodies are never read), and at most `max_connections` connections
//! at once (more are closed at once).

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;

use crate::members::ClusterStatus;

/// What the watcher last saw, shared with the endpoints.
#[derive(Default)]
pub struct View {
    pub status: Option<ClusterStatus>,
    /// The primary cirkel routes to (none while failing over).
    pub primary: Option<String>,
    /// When `status` was probed.
    pub seen: Option<std::time::Instant>,
}

pub type SharedView = Arc<Mutex<View>>;

/// Parses `10`, `16MB`, `1kB`, `1GB` (Patroni's lag units, powers of 1024).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The status code and body for `path` about `member`.
pub fn answer(view: &View, member: &str, path: &str) -> (u16, String) {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let m = view.status.as_ref().and_then(|s| s.members.iter().find(|m| m.name == member));
    let running = m.is_some_and(|m| m.reachable);
    let is_primary =
        running && view.primary.as_deref() == Some(member) && m.and_then(|m| m.role.as_deref()) == Some("primary");
    let lag_limit = query.split('&').find_map(|kv| kv.strip_prefix("lag=")).and_then(parse_size);
    let is_replica = m.is_some_and(|m| {
        m.reachable
            && m.role.as_deref() == Some("standby")
            && m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming"))
            && lag_limit.is_none_or(|l| m.lag_bytes.is_some_and(|lag| lag <= l))
    });
    let ok = match route.trim_end_matches('/') {
        "" | "/primary" | "/master" | "/leader" | "/read-write" => is_primary,
        "/replica" => is_replica,
        "/read-only" => is_primary || is_replica,
        "/health" | "/liveness" => running,
        "/patroni" => true,
        _ => return (404, json!({ "error": "no such endpoint" }).to_string()),
    };
    let body = json!({
        "state": if running { "running" } else { "stopped" },
        "role": if is_primary { "primary" } else if m.and_then(|m| m.role.as_deref()) == Some("standby") { "replica" } else { "unknown" },
        "member": member,
        "timeline": m.and_then(|m| m.timeline),
        "xlog": { "location": m.and_then(|m| m.lsn.clone()), "replayed_location": m.and_then(|m| m.replay_lsn.clone()) },
        "lag": m.and_then(|m| m.lag_bytes),
    });
    (if ok { 200 } else { 503 }, body.to_string())
}

/// Bounds on what one client may cost the endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time to send the request line and headers.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open in all.
    pub connection_timeout: Duration,
    /// Bytes of request line and headers (hyper's read buffer; at least 8 KiB).
    pub max_head_bytes: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// Largest request body announced with `Content-Length` (never read).
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(15),
            max_head_bytes: 16 << 10,
            max_headers: 64,
            max_body_bytes: 64 << 10,
        }
    }
}

/// Serves `member`'s endpoints on `listener` until `stop`, with the default
/// [`Limits`].
pub fn run(listener: TcpListener, member: String, view: SharedView, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    run_with(listener, member, view, stop, Limits::default())
}

/// Serves `member`'s endpoints on `listener` until `stop`, on the process's
/// shared runtime; the calling thread waits until it is done.
pub fn run_with(
    listener: TcpListener,
    member: String,
    view: SharedView,
    stop: Arc<AtomicBool>,
    limits: Limits,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    cirkel_repo::runtime::block_on(serve(listener, member, view, stop, limits))?
}

async fn serve(
    listener: TcpListener,
    member: String,
    view: SharedView,
    stop: Arc<AtomicBool>,
    limits: Limits,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let member: Arc<str> = member.into();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("health endpoint accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tick.tick() => continue,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                "health endpoint of {member}: {} connections open, closing one from {peer}",
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        let (member, view) = (member.clone(), view.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &member, &view, &limits);
                async move { Ok::<_, Infallible>(response) }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_head_bytes.max(8192))
                .max_headers(limits.max_headers)
                .keep_alive(false)
                // A checker may shut its side down once its request is sent.
                .half_close(true);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(limits.connection_timeout, connection).await {
                tracing::debug!("health endpoint connection from {peer}: {e}");
            }
            drop(slot);
        });
    }
    Ok(())
}

/// The response to one request: [`answer`] as JSON, no body for `HEAD` and
/// `OPTIONS`, 413 for a body announced larger than the limit.
fn respond(req: &Request<Incoming>, member: &str, view: &SharedView, limits: &Limits) -> Response<Full<Bytes>> {
    let too_large = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > limits.max_body_bytes);
    let (code, body) = if too_large {
        (413, json!({ "error": "request body too large" }).to_string())
    } else {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        match view.lock() {
            Ok(v) => answer(&v, member, path),
            Err(_) => (503, "{}".to_string()),
        }
    };
    let body = if req.method() == hyper::Method::HEAD || req.method() == hyper::Method::OPTIONS {
        String::new()
    } else {
        body
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::MemberState;

    fn view() -> View {
        let m = |name: &str, role: &str, lag: Option<u64>| MemberState {
            name: name.into(),
            reachable: true,
            role: Some(role.into()),
            lag_bytes: lag,
            receiver: (role == "standby").then(|| "streaming from x:1".to_string()),
            ..Default::default()
        };
        View {
            status: Some(ClusterStatus {
                cluster: "main".into(),
                primary: Some("a".into()),
                healthy: true,
                problems: vec![],
                members: vec![m("a", "primary", None), m("b", "standby", Some(100)), m("c", "standby", Some(5 << 20))],
            }),
            primary: Some("a".into()),
            seen: None,
        }
    }

    #[test]
    fn endpoints_answer_like_patroni() {
        let v = view();
        assert_eq!(answer(&v, "a", "/primary").0, 200);
        assert_eq!(answer(&v, "a", "/").0, 200);
        assert_eq!(answer(&v, "b", "/primary").0, 503);
        assert_eq!(answer(&v, "b", "/replica").0, 200);
        assert_eq!(answer(&v, "a", "/replica").0, 503);
        assert_eq!(answer(&v, "c", "/replica?lag=1MB").0, 503);
        assert_eq!(answer(&v, "c", "/replica?lag=16MB").0, 200);
        assert_eq!(answer(&v, "b", "/read-only").0, 200);
        assert_eq!(answer(&v, "a", "/health").0, 200);
        assert_eq!(answer(&v, "a", "/nope").0, 404);
        // While failing over nobody is the primary.
        let mut v = view();
        v.primary = None;
        assert_eq!(answer(&v, "a", "/primary").0, 503);
        assert!(answer(&v, "a", "/patroni").1.contains("\"member\":\"a\""));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1xB"), None);
    }
}
