//! Patroni-compatible health endpoints, one HTTP port per member, so an
//! existing HAProxy configuration (`option httpchk OPTIONS /primary`,
//! `check port <member's api port>`) routes by cirkel's view of the cluster.
//!
//! `/primary` (also `/`, `/master`, `/leader`, `/read-write`): 200 when the
//! member is the primary cirkel routes to. `/replica[?lag=N]`: 200 for a
//! streaming standby at most N behind (bytes, or `16MB`, `1kB`). `/read-only`:
//! either. `/health`: the member answers. `/patroni`: the member's state as
//! JSON. Anything else is 404; every check that fails is 503.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::members::ClusterStatus;

/// What the watcher last saw, shared with the endpoints.
#[derive(Default)]
pub struct View {
    pub status: Option<ClusterStatus>,
    /// The primary cirkel routes to (none while failing over).
    pub primary: Option<String>,
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

/// Serves `member`'s endpoints on `listener` until `stop`.
pub fn run(listener: TcpListener, member: String, view: SharedView, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = handle(conn, &member, &view);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                tracing::warn!("health endpoint accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

fn handle(conn: TcpStream, member: &str, view: &SharedView) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // Read (and ignore) the headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("/");
    let (code, body) = match view.lock() {
        Ok(v) => answer(&v, member, path),
        Err(_) => (503, "{}".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let body = if method == "HEAD" || method == "OPTIONS" { String::new() } else { body };
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
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
