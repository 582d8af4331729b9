//! Hosts in network namespaces, joined by a bridge, for tests of several
//! cirkel agents that must survive the loss of a host, a partition or a
//! slow link. Needs root and iproute2 (`ip`, `tc`).
//!
//! A [`Net`] owns one bridge in the root namespace and one namespace per
//! host. Each host has a veth pair: one end (`eth0`) inside its namespace
//! with `10.X.Y.N/24`, the other end a port of the bridge. The bridge has
//! `10.X.Y.254`, so the test process reaches every host. The subnet and
//! every name derive from a small id that the bridge itself reserves (an
//! `ip link add` of an existing name fails), so tests running side by side
//! in separate processes never collide.
//!
//! Everything is removed on drop, panics included: the processes left in
//! the namespaces are killed, the namespaces deleted (which deletes the
//! veths), then the bridge. A run killed before it could clean up leaves a
//! bridge whose alias names a dead pid; the next run that comes across it
//! removes it with its namespaces and processes and takes the id over.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How many nets can exist at once on one machine (ids 0..IDS).
const IDS: u16 = 4096;
/// Marks bridges made by this module, with the owning pid after it.
const ALIAS: &str = "cirkel-testkit-net pid=";

/// One host of a [`Net`].
#[derive(Clone, Debug)]
pub struct Host {
    pub index: usize,
    /// The network namespace (`ip netns exec NAME ...`).
    pub ns: String,
    /// The bridge-side end of the host's veth pair, in the root namespace.
    pub port: String,
    ip: Ipv4Addr,
}

impl Host {
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `ip:port` as a string, as configuration files want it.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.ip)
    }
}

/// A bridge and one network namespace per host; see the module docs.
pub struct Net {
    id: u16,
    bridge: String,
    hosts: Vec<Host>,
}

fn ip_cmd(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn ip_ok(args: &[&str]) {
    if let Err(e) = ip_cmd(args) {
        panic!("{e} (network namespaces need root and iproute2: apt-get install iproute2)");
    }
}

fn bridge_name(id: u16) -> String {
    format!("ckbr{id:03x}")
}

fn ns_prefix(id: u16) -> String {
    format!("cirkel-{id:03x}-")
}

/// Namespaces whose name starts with `prefix`.
fn namespaces_with(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/var/run/netns") else { return Vec::new() };
    rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter(|n| n.starts_with(prefix)).collect()
}

/// The pids of the processes in namespace `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    ip_cmd(&["netns", "pids", ns])
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_all_in(ns: &str) {
    // Repeat: a process may fork while its siblings are being killed.
    for _ in 0..20 {
        let pids = pids_in(ns);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: signals to processes in a namespace this module made.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGCONT);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Our veths' bridge-side ends for id `id` in the root namespace.
fn ports_of(id: u16) -> Vec<String> {
    let prefix = format!("ckv{id:03x}h");
    let Ok(text) = ip_cmd(&["-o", "link", "show"]) else { return Vec::new() };
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn remove_id(id: u16) {
    remove_id_but_bridge(id);
    let _ = ip_cmd(&["link", "del", &bridge_name(id)]);
}

fn remove_id_but_bridge(id: u16) {
    for ns in namespaces_with(&ns_prefix(id)) {
        kill_all_in(&ns);
        let _ = ip_cmd(&["netns", "del", &ns]);
    }
    // A namespace outlives its deletion while anything still refers to it
    // (a socket, a process); deleting the root-side end removes the veth.
    for port in ports_of(id) {
        let _ = ip_cmd(&["link", "del", &port]);
    }
}

/// The pid in a bridge's alias, if the bridge is one of ours.
fn owner_of(bridge: &str) -> Option<Option<i32>> {
    let text = ip_cmd(&["-d", "link", "show", "dev", bridge]).ok()?;
    let alias = text.lines().find_map(|l| l.trim().strip_prefix("alias "))?;
    Some(alias.strip_prefix(ALIAS).and_then(|p| p.trim().parse().ok()))
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what runs killed before they could clean up left behind: every
/// bridge of ours whose owner is dead, with its namespaces and processes.
pub fn reclaim_stale() {
    let Ok(text) = ip_cmd(&["-o", "link", "show", "type", "bridge"]) else { return };
    for line in text.lines() {
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        let Some(hex) = name.strip_prefix("ckbr") else { continue };
        let Ok(id) = u16::from_str_radix(hex, 16) else { continue };
        if let Some(Some(owner)) = owner_of(name)
            && !alive(owner)
        {
            remove_id(id);
        }
    }
}

/// Reserves an id by creating its bridge; reclaims ids of dead owners.
fn reserve() -> u16 {
    reclaim_stale();
    let pid = std::process::id();
    let start = (pid.wrapping_mul(2_654_435_761) >> 8) as u16 % IDS;
    for k in 0..IDS {
        let id = (start + k) % IDS;
        let bridge = bridge_name(id);
        let alias = format!("{ALIAS}{pid}");
        if ip_cmd(&["link", "add", "name", &bridge, "type", "bridge"]).is_ok() {
            ip_ok(&["link", "set", "dev", &bridge, "alias", &alias]);
            // The bridge goes last on drop, so nothing of this id should be
            // left; a run killed half-way through its drop may have left
            // veths or namespaces all the same.
            remove_id_but_bridge(id);
            return id;
        }
        if let Some(Some(owner)) = owner_of(&bridge)
            && !alive(owner)
        {
            remove_id(id);
            if ip_cmd(&["link", "add", "name", &bridge, "type", "bridge"]).is_ok() {
                ip_ok(&["link", "set", "dev", &bridge, "alias", &alias]);
                return id;
            }
        }
    }
    panic!("no free test network id: too many bridges named ckbr*");
}

impl Net {
    /// A bridge and `hosts` namespaces, each host reachable from the others
    /// and from the test process.
    pub fn new(hosts: usize) -> Net {
        assert!((1..=250).contains(&hosts), "a net has 1 to 250 hosts");
        crate::require_program("ip", "apt-get install iproute2");
        let id = reserve();
        let bridge = bridge_name(id);
        let mut net = Net { id, bridge: bridge.clone(), hosts: Vec::new() };
        let prefix = net.prefix();
        ip_ok(&["addr", "add", &format!("{prefix}.254/24"), "dev", &bridge]);
        ip_ok(&["link", "set", "dev", &bridge, "up"]);
        for i in 0..hosts {
            let ns = format!("{}{}", ns_prefix(id), i + 1);
            let port = format!("ckv{id:03x}h{}", i + 1);
            let peer = format!("ckv{id:03x}p{}", i + 1);
            let ip: Ipv4Addr = format!("{prefix}.{}", i + 1).parse().expect("an IPv4 address");
            ip_ok(&["netns", "add", &ns]);
            // Pushed at once so that drop removes it whatever fails next.
            net.hosts.push(Host { index: i, ns: ns.clone(), port: port.clone(), ip });
            ip_ok(&["link", "add", "name", &port, "type", "veth", "peer", "name", &peer]);
            ip_ok(&["link", "set", "dev", &peer, "netns", &ns]);
            ip_ok(&["link", "set", "dev", &port, "master", &bridge, "up"]);
            let inside = |args: &[&str]| {
                let mut a = vec!["-n", ns.as_str()];
                a.extend_from_slice(args);
                ip_ok(&a);
            };
            inside(&["link", "set", "dev", &peer, "name", "eth0"]);
            inside(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            inside(&["link", "set", "dev", "eth0", "up"]);
            inside(&["link", "set", "dev", "lo", "up"]);
        }
        net
    }

    /// `10.X.Y`, the first three octets of this net's subnet.
    pub fn prefix(&self) -> String {
        format!("10.{}.{}", 64 + self.id / 256, self.id % 256)
    }

    /// The subnet in CIDR notation, as pg_hba.conf wants it.
    pub fn cidr(&self) -> String {
        format!("{}.0/24", self.prefix())
    }

    /// The bridge's address: the test process, as the hosts see it.
    pub fn gateway(&self) -> Ipv4Addr {
        format!("{}.254", self.prefix()).parse().expect("an IPv4 address")
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// `program` run inside host `i`'s namespace (`ip netns exec`, which
    /// execs it: the child's pid is the program's own).
    pub fn cmd(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }

    /// `program` run inside host `i`'s namespace as the `postgres` user
    /// when the tests run as root (see [`crate::pg::as_postgres`]).
    pub fn cmd_as_postgres(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        if crate::pg::is_root() {
            let mut c = self.cmd(i, "setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
            c
        } else {
            self.cmd(i, program)
        }
    }

    /// Runs `f` on a thread that has entered host `i`'s network namespace
    /// (sockets it opens belong to that host), and returns its result.
    pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.hosts[i].ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns on this thread only, with a namespace file
                // that stays open for the call.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Whether a TCP connection from host `from` to `addr` succeeds within
    /// `timeout`.
    pub fn can_connect(&self, from: usize, addr: SocketAddr, timeout: Duration) -> bool {
        self.run_in(from, || TcpStream::connect_timeout(&addr, timeout).is_ok())
    }

    /// Cuts host `i` off from every other host and from the test process:
    /// the bridge side of its veth goes down. Connections hang (no reset),
    /// as when a host or its switch port dies.
    pub fn isolate(&self, i: usize) {
        ip_ok(&["link", "set", "dev", &self.hosts[i].port, "down"]);
    }

    /// Undoes [`Net::isolate`].
    pub fn heal(&self, i: usize) {
        ip_ok(&["link", "set", "dev", &self.hosts[i].port, "up"]);
    }

    /// Whether host `i` is cut off by [`Net::isolate`].
    pub fn is_isolated(&self, i: usize) -> bool {
        ip_cmd(&["link", "show", "dev", &self.hosts[i].port]).map(|s| !s.contains(",UP")).unwrap_or(false)
    }

    /// Splits the hosts into groups that reach each other but no host of
    /// another group (a host in no group is alone); the test process still
    /// reaches every host. Made of blackhole routes inside each namespace:
    /// packets to another group are dropped silently, both ways. Replaces
    /// any earlier partition.
    pub fn partition(&self, groups: &[&[usize]]) {
        let group_of = |h: usize| groups.iter().position(|g| g.contains(&h));
        for i in 0..self.hosts.len() {
            self.flush_partition(i);
            for j in 0..self.hosts.len() {
                if i == j || (group_of(i).is_some() && group_of(i) == group_of(j)) {
                    continue;
                }
                let to = format!("{}/32", self.hosts[j].ip);
                ip_ok(&["-n", &self.hosts[i].ns, "route", "add", "blackhole", &to]);
            }
        }
    }

    fn flush_partition(&self, i: usize) {
        let _ = ip_cmd(&["-n", &self.hosts[i].ns, "route", "flush", "type", "blackhole"]);
    }

    /// Host `i`'s outgoing packets are delayed by `ms` (tc netem). Fails
    /// on a kernel without the `sch_netem` qdisc.
    pub fn delay(&self, i: usize, ms: u32) -> Result<(), String> {
        self.netem(i, &["delay", &format!("{ms}ms")])
    }

    /// Host `i` drops `pct` % of its outgoing packets (tc netem).
    pub fn loss(&self, i: usize, pct: f32) -> Result<(), String> {
        self.netem(i, &["loss", &format!("{pct}%")])
    }

    fn netem(&self, i: usize, args: &[&str]) -> Result<(), String> {
        let mut c = self.cmd(i, "tc");
        c.args(["qdisc", "replace", "dev", "eth0", "root", "netem"]).args(args);
        let out = c.output().map_err(|e| format!("run tc: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc netem on {}: {} (the kernel needs sch_netem)",
                self.hosts[i].ns,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Undoes every fault: links up, no partition, no netem.
    pub fn heal_all(&self) {
        for i in 0..self.hosts.len() {
            self.heal(i);
            self.flush_partition(i);
            let _ = self.cmd(i, "tc").args(["qdisc", "del", "dev", "eth0", "root"]).output();
        }
    }

    /// The pids of every process in host `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<i32> {
        pids_in(&self.hosts[i].ns)
    }

    /// The whole host dies: SIGKILL to every process in its namespace.
    pub fn kill_host(&self, i: usize) {
        kill_all_in(&self.hosts[i].ns);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_all_in(&h.ns);
            let _ = ip_cmd(&["netns", "del", &h.ns]);
            let _ = ip_cmd(&["link", "del", &h.port]);
        }
        // The bridge last: while it exists, its id stays reserved.
        let _ = ip_cmd(&["link", "del", &self.bridge]);
    }
}

/// One HTTP/1.0 request to `addr` from the calling thread (call it inside
/// [`Net::run_in`] to send it from a host); the status and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("send to {addr}: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("read from {addr}: {e}"))?;
    let status =
        out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status: {out}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
