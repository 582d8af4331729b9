//! The client endpoint: a TCP proxy whose read-write port always leads to
//! the current primary. When the primary changes or is fenced, every
//! session to the old one is cut at once, and a connection still being made
//! to it goes to the new one instead (a host that stopped answering would
//! otherwise hold its client for the connect timeout); while no primary is
//! known, new connections are closed instead of being sent anywhere.
//!
//! Each session costs two threads and two sockets, so the endpoint carries
//! at most `max_connections` at once: beyond that a new connection is
//! closed at once and the refusal logged, and the sessions already open
//! keep working. A client flood thus cannot exhaust the daemon's threads
//! or file descriptors, which the watcher needs to fail over.

use cirkel_failover::{EpochGate, StaleEpoch};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the endpoint sends connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp(String, u16),
    /// A PostgreSQL socket directory and port: `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf, u16),
}

impl Target {
    /// A libpq-style host (a name, an address or a socket directory) and port.
    pub fn new(host: &str, port: u16) -> Target {
        if host.starts_with('/') {
            Target::Unix(PathBuf::from(host), port)
        } else {
            Target::Tcp(host.to_string(), port)
        }
    }

    /// Connects, giving up when `moved` says the route no longer leads
    /// here (`Ok(None)`): a client is not held for the connect timeout of a
    /// host that stopped answering once the route leads elsewhere.
    fn connect(&self, moved: &dyn Fn() -> bool) -> std::io::Result<Option<Stream>> {
        match self {
            Target::Tcp(h, p) => {
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), *p))?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))?;
                let Some(s) = connect_tcp(addr, moved)? else { return Ok(None) };
                s.set_nodelay(true)?;
                Ok(Some(Stream::Tcp(Arc::new(s))))
            }
            Target::Unix(dir, p) => {
                Ok(Some(Stream::Unix(Arc::new(UnixStream::connect(dir.join(format!(".s.PGSQL.{p}")))?))))
            }
        }
    }
}

/// How long a connection to the target may take before the client is let go.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a connection under way looks whether the route moved.
const CONNECT_LOOK: Duration = Duration::from_millis(10);

/// A TCP connection to `addr` within [`CONNECT_TIMEOUT`], or `None` as soon
/// as `moved` is true: connected without blocking and waited for in slices.
fn connect_tcp(addr: std::net::SocketAddr, moved: &dyn Fn() -> bool) -> std::io::Result<Option<TcpStream>> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::AsRawFd;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let until = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let mut fd = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
        let slice = CONNECT_LOOK.min(until.saturating_duration_since(Instant::now()));
        // SAFETY: poll reads and writes only the one pollfd it is given.
        let n = unsafe { libc::poll(&mut fd, 1, slice.as_millis() as libc::c_int) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else if n > 0 {
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
            socket.set_nonblocking(false)?;
            return Ok(Some(socket.into()));
        }
        if moved() {
            return Ok(None);
        }
        if Instant::now() >= until {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"));
        }
    }
}

enum Stream {
    // Shared, not duplicated: a session costs one descriptor per side.
    Tcp(Arc<TcpStream>),
    Unix(Arc<UnixStream>),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.clone()),
            Stream::Unix(s) => Stream::Unix(s.clone()),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&**s).read(buf),
            Stream::Unix(s) => (&**s).read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => (&**s).write(buf),
            Stream::Unix(s) => (&**s).write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => (&**s).flush(),
            Stream::Unix(s) => (&**s).flush(),
        }
    }
}

#[derive(Default)]
struct State {
    target: Option<Target>,
    generation: u64,
    /// The newest lease epoch a switch was made under.
    epochs: EpochGate,
    /// Open sessions: generation, client side, server side.
    sessions: HashMap<u64, (u64, Stream, Stream)>,
}

/// The routing table shared by the proxy and the failover executor.
#[derive(Default)]
pub struct Router {
    state: Mutex<State>,
    next_session: AtomicU64,
}

impl Router {
    pub fn new() -> Arc<Router> {
        Arc::new(Router::default())
    }

    /// Routes new connections to `target` (or nowhere) and, if it changed,
    /// cuts every session opened before.
    pub fn set(&self, target: Option<Target>) {
        let Ok(mut st) = self.state.lock() else { return };
        if st.target == target {
            return;
        }
        st.target = target;
        st.generation += 1;
        for (_, (_, client, server)) in st.sessions.drain() {
            client.shutdown();
            server.shutdown();
        }
    }

    /// Routes to `target` under the lease of epoch `epoch`, as [`Router::set`]
    /// does, unless a switch was already made under a newer epoch: a
    /// watcher that lost its lease cannot take the endpoint back.
    pub fn switch(&self, epoch: u64, target: Option<Target>) -> Result<(), StaleEpoch> {
        {
            let Ok(mut st) = self.state.lock() else { return Ok(()) };
            st.epochs.admit(epoch)?;
        }
        self.set(target);
        Ok(())
    }

    pub fn target(&self) -> Option<Target> {
        self.state.lock().ok().and_then(|s| s.target.clone())
    }

    /// Open sessions.
    pub fn sessions(&self) -> usize {
        self.state.lock().map(|s| s.sessions.len()).unwrap_or(0)
    }

    /// Connects a new session to the current target. When the route moves
    /// while connecting, the session goes where it leads now: the client
    /// has sent nothing the new target could not take, and waits no longer
    /// for a host the route left.
    fn open(&self, client: &Stream) -> Option<(u64, Stream)> {
        loop {
            let (target, generation) = {
                let st = self.state.lock().ok()?;
                (st.target.clone()?, st.generation)
            };
            let moved = || self.state.lock().map_or(true, |st| st.generation != generation);
            let Some(server) = target.connect(&moved).ok()? else { continue };
            let id = self.next_session.fetch_add(1, Ordering::Relaxed);
            let mut st = self.state.lock().ok()?;
            if st.generation != generation {
                // The primary changed once connected: never hand out the old one.
                server.shutdown();
                continue;
            }
            let (c, s) = (client.try_clone().ok()?, server.try_clone().ok()?);
            st.sessions.insert(id, (generation, c, s));
            return Some((id, server));
        }
    }

    fn close(&self, id: u64) {
        if let Ok(mut st) = self.state.lock() {
            st.sessions.remove(&id);
        }
    }
}

/// Releases a session's place under the connection cap when it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Descriptors one session holds: its client side and its server side.
pub const FDS_PER_SESSION: u64 = 2;

/// Raises the soft limit on open files toward the hard one when the cap
/// needs more (the common soft default, 1,024, would otherwise run out
/// before the cap and starve the watcher's own probes), and says so when
/// even the hard limit is too low.
fn make_room(max_connections: usize) {
    let need = (max_connections as u64).saturating_mul(FDS_PER_SESSION).saturating_add(256);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur >= need {
        return;
    }
    let raised = libc::rlimit { rlim_cur: need.min(lim.rlim_max), rlim_max: lim.rlim_max };
    // SAFETY: setrlimit only reads the struct it is given.
    let ok = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0;
    if !ok || raised.rlim_cur < need {
        tracing::warn!(
            "proxy_max_connections = {max_connections} needs about {need} open files, but the limit is {}: raise it (ulimit -n, LimitNOFILE=) or lower the cap",
            if ok { raised.rlim_cur } else { lim.rlim_cur }
        );
    }
}

/// Accepts connections on `listener` until `stop`, each piped to the
/// router's current target, at most `max_connections` at once.
pub fn run(
    listener: TcpListener,
    router: Arc<Router>,
    stop: Arc<AtomicBool>,
    max_connections: usize,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    make_room(max_connections);
    let open = Arc::new(AtomicUsize::new(0));
    let (mut refused, mut last_warning): (u64, Option<Instant>) = (0, None);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, peer)) => {
                if open.load(Ordering::Relaxed) >= max_connections {
                    let _ = client.shutdown(Shutdown::Both);
                    refused += 1;
                    // One line per burst, not one per refused connection.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            "endpoint {}: {max_connections} sessions open (proxy_max_connections); refused {refused} connection(s), the last from {peer}",
                            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
                        );
                        (refused, last_warning) = (0, Some(Instant::now()));
                    }
                    continue;
                }
                open.fetch_add(1, Ordering::Relaxed);
                let slot = Slot(open.clone());
                let router = router.clone();
                let spawned = std::thread::Builder::new().name("cirkel-proxy".into()).spawn(move || {
                    let _slot = slot;
                    session(client, &router);
                });
                if let Err(e) = spawned {
                    tracing::warn!("proxy session thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                tracing::warn!("proxy accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    router.set(None);
    Ok(())
}

fn session(client: TcpStream, router: &Router) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_nodelay(true);
    let client = Stream::Tcp(Arc::new(client));
    let Some((id, server)) = router.open(&client) else {
        client.shutdown();
        return;
    };
    let (Ok(mut c_read), Ok(mut s_write)) = (client.try_clone(), server.try_clone()) else {
        router.close(id);
        return;
    };
    let mut s_read = server;
    let mut c_write = client;
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut s_write);
        s_write.shutdown();
    });
    let _ = std::io::copy(&mut s_read, &mut c_write);
    c_write.shutdown();
    let _ = upstream.join();
    router.close(id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirkel_failover::{Leadership, MemoryElection};

    #[test]
    fn a_stale_lease_epoch_stops_a_router_switch() {
        let election = MemoryElection::new();
        let (mut a, mut b) = (election.contender("a"), election.contender("b"));
        let router = Router::new();
        let la = a.acquire().unwrap().expect("a takes the free lease");
        router.switch(la.epoch, Some(Target::new("127.0.0.1", 5432))).unwrap();
        // a stalls past its lease; b is handed it and fails over.
        let lb = election.hand_to("b");
        assert!(b.still_held(&lb).unwrap());
        router.switch(lb.epoch, Some(Target::new("127.0.0.1", 5433))).unwrap();
        // a wakes and, before its next check, switches back: refused.
        let refused = router.switch(la.epoch, Some(Target::new("127.0.0.1", 5432)));
        assert_eq!(refused, Err(StaleEpoch { epoch: la.epoch, newest: lb.epoch }));
        assert_eq!(router.target(), Some(Target::new("127.0.0.1", 5433)));
        // Its next check sees the lease lost.
        assert!(!a.still_held(&la).unwrap());
    }
}
