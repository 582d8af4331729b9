//! systemd's service notification protocol, so a unit with `Type=notify`
//! and `WatchdogSec=` knows when `cirkel serve` is up, that it is still
//! alive, and that it is stopping. Notices are datagrams to the socket in
//! `NOTIFY_SOCKET` (a path, or an abstract name starting with `@`); without
//! that variable every call does nothing.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notices go, if anywhere.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The notifier the service manager asks for through the environment.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|p| match Notifier::connect(&p) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("cannot use NOTIFY_SOCKET {p:?}: {e}");
                None
            }
        });
        Notifier { target }
    }

    fn connect(path: &OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let addr = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(path)?,
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// Sends one notice (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, …); a
    /// manager that cannot be reached is logged, never fatal.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(state.as_bytes(), addr)
        {
            tracing::warn!("cannot notify the service manager ({state}): {e}");
        }
    }

    /// How often to send `WATCHDOG=1`: half the `WATCHDOG_USEC` the manager
    /// set for this process, or never.
    pub fn watchdog_interval() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID")
            && pid.parse::<u32>().ok()? != std::process::id()
        {
            return None;
        }
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { target: Some(Notifier::connect(path.as_os_str()).unwrap()) };
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");

        let name = format!("cirkel-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let n = Notifier { target: Some(Notifier::connect(OsStr::new(&format!("@{name}"))).unwrap()) };
        n.notify("WATCHDOG=1");
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        // No socket: nothing happens.
        Notifier { target: None }.notify("STOPPING=1");
    }
}
