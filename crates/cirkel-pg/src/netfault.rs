//! Network faults a drill injects between one member and everyone else:
//! cut off (`partition`), packets dropped at random (`loss=PCT%`), or every
//! byte held back (`latency=DURATION`).
//!
//! Partition and loss are rules in an nftables table of the drill's own
//! (`inet cirkel_drill_PID`), matching the member's address and port in both
//! directions: on the member's host they cut clients, standbys and the
//! watcher alike, whether they run there or elsewhere. Each packet is judged
//! once: locally sent ones on the way out, others on the way in.
//!
//! Latency is a relay: new connections to the member are redirected (nat)
//! to a listener of the drill's, which forwards each chunk after the delay,
//! in both directions, to the member over a marked connection the redirect
//! lets through. It needs no `sch_netem` (many kernels lack it) and works
//! the same everywhere; connections made before the fault are not slowed,
//! so the drill ends them (see [`crate::drill`]).
//!
//! Deleting the table undoes every rule at once; a drill killed in the
//! middle leaves the table's name on record for the next start to delete
//! (a latency fault then stops connections to the member until it is).

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The mark on the relay's own connections to the member, which the
/// redirect lets through ("cirk").
const RELAY_MARK: u32 = 0x6369_726b;

pub use cirkel_config::NetFault;

/// Where a member listens, as a network fault matches it.
#[derive(Clone, Debug)]
pub struct Target {
    pub addrs: Vec<IpAddr>,
    pub port: u16,
}

impl Target {
    /// The member at `host`:`port`; a Unix socket directory has no network
    /// to fault.
    pub fn resolve(member: &str, host: &str, port: u16) -> anyhow::Result<Target> {
        if host.starts_with('/') || host.is_empty() {
            anyhow::bail!(
                "member {member} is reached over a Unix socket (host = \"{host}\"): a network fault needs members \
                 reached over TCP; give it its address (host = \"10.0.0.5\")"
            );
        }
        let mut addrs: Vec<IpAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| anyhow::anyhow!("cannot resolve member {member}'s host `{host}`: {e}"))?
            .map(|a| a.ip())
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            anyhow::bail!("member {member}'s host `{host}` has no address");
        }
        Ok(Target { addrs, port })
    }
}

/// The table a drill's process keeps its rules in.
pub fn table_name(pid: u32) -> String {
    format!("cirkel_drill_{pid}")
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ip" } else { "ip6" }
}

/// The nftables script that installs `fault` for `t` in `table` (a relay
/// on `relay_port` for latency).
fn script(table: &str, fault: NetFault, t: &Target, relay_port: Option<u16>) -> String {
    let mut s = format!("table inet {table} {{\n");
    let port = t.port;
    match (fault, relay_port) {
        (NetFault::Latency(_), Some(relay)) => {
            s.push_str("  chain out {\n    type nat hook output priority -100; policy accept;\n");
            s.push_str(&format!("    meta mark {RELAY_MARK:#x} return\n"));
            for a in &t.addrs {
                s.push_str(&format!("    {} daddr {a} tcp dport {port} redirect to :{relay}\n", family(a)));
            }
            s.push_str("  }\n  chain pre {\n    type nat hook prerouting priority -100; policy accept;\n");
            for a in &t.addrs {
                s.push_str(&format!("    {} daddr {a} tcp dport {port} redirect to :{relay}\n", family(a)));
            }
            s.push_str("  }\n");
        }
        _ => {
            let verdict = match fault {
                NetFault::Loss(p) => format!("numgen random mod 100 < {p} drop"),
                _ => "drop".to_string(),
            };
            // Locally sent packets are judged on the way out; packets from
            // other hosts on the way in (loopback ones pass both hooks).
            for (chain, hook, only) in [("out", "output", ""), ("in", "input", "iifname != \"lo\" ")] {
                s.push_str(&format!("  chain {chain} {{\n    type filter hook {hook} priority -10; policy accept;\n"));
                for a in &t.addrs {
                    let f = family(a);
                    s.push_str(&format!("    {only}{f} daddr {a} tcp dport {port} {verdict}\n"));
                    s.push_str(&format!("    {only}{f} saddr {a} tcp sport {port} {verdict}\n"));
                }
                s.push_str("  }\n");
            }
        }
    }
    s.push_str("}\n");
    s
}

fn nft(script: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("cannot run nft ({e}): network faults need nftables (apt-get install nftables) and root")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "nft refused the fault's rules: {} (network faults need root and a kernel with nf_tables)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes a drill's table: every rule of its fault. `false` when there
/// was none.
pub fn remove_table(table: &str) -> anyhow::Result<bool> {
    let out = std::process::Command::new("nft")
        .args(["delete", "table", "inet", table])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run nft ({e}): delete the table with `nft delete table inet {table}`"))?;
    if out.status.success() {
        return Ok(true);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file") {
        return Ok(false);
    }
    anyhow::bail!("nft could not delete table inet {table}: {}", err.trim())
}

/// Whether a drill's table is in place.
pub fn table_exists(table: &str) -> bool {
    std::process::Command::new("nft").args(["list", "table", "inet", table]).output().is_ok_and(|o| o.status.success())
}

/// A fault in place, until [`Injected::undo`] (or drop) removes it.
pub struct Injected {
    pub table: String,
    relay: Option<Relay>,
    undone: bool,
}

impl Injected {
    /// Stops the relay, then removes the rules.
    pub fn undo(mut self) -> anyhow::Result<()> {
        self.undo_now()
    }

    fn undo_now(&mut self) -> anyhow::Result<()> {
        if self.undone {
            return Ok(());
        }
        self.undone = true;
        // The relay's connections end while the redirect still translates
        // their packets: removed first, their clients would wait forever
        // for a peer whose answers no longer reach them.
        if let Some(r) = self.relay.take() {
            r.stop();
            std::thread::sleep(Duration::from_millis(100));
        }
        remove_table(&self.table).map(|_| ())
    }
}

impl Drop for Injected {
    fn drop(&mut self) {
        let _ = self.undo_now();
    }
}

/// Installs `fault` between the member at `t` and everyone else, in the
/// table `table` (which must not exist yet).
pub fn inject(fault: NetFault, t: &Target, table: &str) -> anyhow::Result<Injected> {
    let relay = match fault {
        NetFault::Latency(d) => Some(Relay::start(SocketAddr::new(t.addrs[0], t.port), d)?),
        _ => None,
    };
    let rules = script(table, fault, t, relay.as_ref().map(|r| r.port));
    if let Err(e) = nft(&rules) {
        if let Some(r) = relay {
            r.stop();
        }
        return Err(e);
    }
    Ok(Injected { table: table.to_string(), relay, undone: false })
}

/// The latency relay: a listener whose every connection is forwarded to
/// the member, each chunk after the delay.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Both ends of every relayed connection, shut at the end.
    open: Arc<Mutex<Vec<TcpStream>>>,
    accept: std::thread::JoinHandle<()>,
}

impl Relay {
    fn start(upstream: SocketAddr, delay: Duration) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind((std::net::Ipv6Addr::UNSPECIFIED, 0))
            .or_else(|_| TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)))
            .map_err(|e| anyhow::anyhow!("cannot open the latency relay's listener: {e}"))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Default::default();
        let accept = {
            let (stop, open) = (stop.clone(), open.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            match connect_marked(upstream) {
                                Ok(server) => relay_pair(client, server, delay, &open),
                                Err(e) => {
                                    tracing::debug!("latency relay: cannot reach {upstream}: {e}");
                                    let _ = client.shutdown(Shutdown::Both);
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        Ok(Relay { port, stop, open, accept })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.accept.join();
        if let Ok(open) = self.open.lock() {
            for s in open.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// A connection to `to` carrying the relay's mark.
fn connect_marked(to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::AsRawFd;
    let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
    let mark = RELAY_MARK;
    // SAFETY: setsockopt(2) with SO_MARK and a pointer to a u32 that lives
    // across the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let stream: TcpStream = sock.into();
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn relay_pair(client: TcpStream, server: TcpStream, delay: Duration, open: &Mutex<Vec<TcpStream>>) {
    let _ = client.set_nodelay(true);
    let clones = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = clones else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if let Ok(mut o) = open.lock() {
        o.retain(|s| s.peer_addr().is_ok());
        o.push(c3);
        o.push(s3);
    }
    delayed_pipe(client, s2, delay);
    delayed_pipe(server, c2, delay);
}

/// Forwards what `from` sends to `to`, each chunk `delay` after it arrived;
/// the end of `from` ends `to`'s writing side after the last chunk.
fn delayed_pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((due, chunk)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_member_has_no_network_to_fault() {
        let e = Target::resolve("a", "/run/postgresql", 5432).unwrap_err().to_string();
        assert!(e.contains("Unix socket") && e.contains("over TCP"), "{e}");
        let t = Target::resolve("a", "127.0.0.1", 5432).unwrap();
        assert_eq!(t.addrs, vec![IpAddr::from([127, 0, 0, 1])]);
    }

    #[test]
    fn the_rules_match_the_member_both_ways_and_judge_each_packet_once() {
        let t = Target { addrs: vec![IpAddr::from([10, 0, 0, 5])], port: 5432 };
        let s = script("cirkel_drill_7", NetFault::Loss(30), &t, None);
        assert!(s.contains("table inet cirkel_drill_7"), "{s}");
        assert!(s.contains("ip daddr 10.0.0.5 tcp dport 5432 numgen random mod 100 < 30 drop"), "{s}");
        assert!(s.contains("ip saddr 10.0.0.5 tcp sport 5432 numgen random mod 100 < 30 drop"), "{s}");
        assert!(s.contains("iifname != \"lo\" ip daddr"), "loopback packets are judged once: {s}");
        let s = script("x", NetFault::Partition, &t, None);
        assert!(s.contains("tcp dport 5432 drop") && !s.contains("numgen"), "{s}");
        let s = script("x", NetFault::Latency(Duration::from_millis(50)), &t, Some(40000));
        assert!(s.contains("meta mark 0x6369726b return"), "{s}");
        assert!(s.contains("ip daddr 10.0.0.5 tcp dport 5432 redirect to :40000"), "{s}");
        let t6 = Target { addrs: vec!["::1".parse().unwrap()], port: 5432 };
        assert!(script("x", NetFault::Partition, &t6, None).contains("ip6 daddr ::1 tcp dport 5432 drop"));
    }

    /// The relay on its own (no redirect): what goes through it arrives,
    /// in order, no sooner than the delay each way.
    #[test]
    fn the_relay_delays_each_direction_and_keeps_the_bytes() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in echo.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let delay = Duration::from_millis(100);
        // SO_MARK needs CAP_NET_ADMIN, as the drills do: the tests run as root.
        let relay = Relay::start(addr, delay).unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", relay.port)).unwrap();
        let t = Instant::now();
        c.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert!(t.elapsed() >= delay * 2, "a round trip through the relay took {:?}", t.elapsed());
        relay.stop();
        let mut rest = Vec::new();
        assert_eq!(c.read_to_end(&mut rest).map(|_| rest.len()).unwrap_or(0), 0, "the relay ends its connections");
    }
}
