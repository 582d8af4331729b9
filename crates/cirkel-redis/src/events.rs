//! Following the Sentinels' event channels (`+sdown`, `+switch-master`, …).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::resp::{Addr, Conn, RespError, Value};

/// The channels cirkel follows.
pub const CHANNELS: &[&str] = &[
    "+sdown",
    "-sdown",
    "+odown",
    "-odown",
    "+try-failover",
    "+elected-leader",
    "+selected-slave",
    "+promoted-slave",
    "+failover-end",
    "+switch-master",
    "-failover-abort-no-good-slave",
    "+convert-to-slave",
    "+tilt",
];

/// One event published by one Sentinel.
#[derive(Clone, Debug)]
pub struct SentinelEvent {
    pub time: DateTime<Utc>,
    pub sentinel: Addr,
    pub channel: String,
    pub payload: String,
}

impl SentinelEvent {
    /// Whether the event concerns the master named `name` (or one of its replicas).
    pub fn concerns(&self, name: &str) -> bool {
        let parts: Vec<&str> = self.payload.split(' ').collect();
        if self.channel == "+switch-master" {
            return parts.first() == Some(&name);
        }
        match parts.iter().position(|p| *p == "@") {
            Some(at) => parts.get(at + 1) == Some(&name),
            None => parts.first() == Some(&"master") && parts.get(1) == Some(&name),
        }
    }

    /// Whether the event is about the master itself (not a replica or Sentinel).
    pub fn is_master(&self) -> bool {
        self.payload.starts_with("master ")
    }

    /// The instance address an instance event names (`<type> <name> <ip> <port> …`).
    pub fn instance(&self) -> Option<Addr> {
        let parts: Vec<&str> = self.payload.split(' ').collect();
        Some(Addr::new(parts.get(2)?, parts.get(3)?.parse().ok()?))
    }

    /// For `+switch-master`: (old, new).
    pub fn switch(&self) -> Option<(Addr, Addr)> {
        let p: Vec<&str> = self.payload.split(' ').collect();
        Some((Addr::new(p.get(1)?, p.get(2)?.parse().ok()?), Addr::new(p.get(3)?, p.get(4)?.parse().ok()?)))
    }
}

/// Follows one Sentinel's channels until `stop`, reconnecting as needed,
/// and sends every event to `tx`.
pub fn follow(sentinel: Addr, tx: Sender<SentinelEvent>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = follow_once(&sentinel, &tx, &stop) {
            tracing::debug!("sentinel {sentinel} events: {e}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn follow_once(sentinel: &Addr, tx: &Sender<SentinelEvent>, stop: &AtomicBool) -> Result<(), RespError> {
    let mut c = Conn::connect(sentinel, Duration::from_secs(1), None)?;
    let mut args = vec!["SUBSCRIBE"];
    args.extend_from_slice(CHANNELS);
    c.send(&args)?;
    c.set_timeout(Some(Duration::from_millis(200)))?;
    while !stop.load(Ordering::Relaxed) {
        match c.read() {
            Ok(Value::Array(parts)) => {
                let kind = parts.first().and_then(Value::text).unwrap_or_default();
                if kind != "message" {
                    continue;
                }
                let event = SentinelEvent {
                    time: Utc::now(),
                    sentinel: sentinel.clone(),
                    channel: parts.get(1).and_then(Value::text).unwrap_or_default(),
                    payload: parts.get(2).and_then(Value::text).unwrap_or_default(),
                };
                if tx.send(event).is_err() {
                    return Ok(());
                }
            }
            Ok(_) => {}
            Err(RespError::Io { source, .. })
                if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(channel: &str, payload: &str) -> SentinelEvent {
        SentinelEvent {
            time: Utc::now(),
            sentinel: Addr::new("s", 1),
            channel: channel.into(),
            payload: payload.into(),
        }
    }

    #[test]
    fn payloads_are_understood() {
        let e = ev("+sdown", "master cache 127.0.0.1 6379");
        assert!(e.concerns("cache") && e.is_master() && !e.concerns("other"));
        assert_eq!(e.instance(), Some(Addr::new("127.0.0.1", 6379)));
        let r = ev("+selected-slave", "slave 127.0.0.1:6380 127.0.0.1 6380 @ cache 127.0.0.1 6379");
        assert!(r.concerns("cache") && !r.is_master());
        assert_eq!(r.instance(), Some(Addr::new("127.0.0.1", 6380)));
        let s = ev("+switch-master", "cache 127.0.0.1 6379 127.0.0.1 6380");
        assert!(s.concerns("cache"));
        assert_eq!(s.switch(), Some((Addr::new("127.0.0.1", 6379), Addr::new("127.0.0.1", 6380))));
    }
}
