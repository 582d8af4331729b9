//! A one-member etcd cluster for tests of leadership through etcd.
//!
//! The data directory outlives the process, so a test can kill etcd and
//! start it again on the same ports and data, as an operator restarting a
//! member would: revisions (cirkel's fencing epochs) carry on from where
//! they were.

use std::process::Command;
use std::time::Duration;

use crate::{Service, free_port, require_program, wait_for_port};

/// etcd on free loopback ports in a temp dir, killed on drop; the logs of
/// every run are printed when the test fails.
pub struct EtcdServer {
    pub client_port: u16,
    pub peer_port: u16,
    data: tempfile::TempDir,
    current: Option<Service>,
    /// Earlier runs, kept so their logs are printed with the rest.
    past: Vec<Service>,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let data = tempfile::tempdir().expect("tempdir");
        let mut server =
            EtcdServer { client_port: free_port(), peer_port: free_port(), data, current: None, past: Vec::new() };
        server.restart();
        server
    }

    /// The client URL, as `[coordination] etcd` lists it.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.current.as_ref().and_then(Service::pid)
    }

    /// Kills etcd now (SIGKILL); its data stays for [`EtcdServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut s) = self.current.take() {
            s.kill();
            self.past.push(s);
        }
    }

    /// Starts etcd (again) on the same ports and data directory and waits
    /// until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let bin = require_program("etcd", "apt-get install etcd-server");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(bin);
        cmd.arg("--name")
            .arg("t")
            .arg("--data-dir")
            .arg(self.data.path().join("member"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}"), "--initial-cluster-state", "new"])
            .env_remove("ETCDCTL_API");
        let service = Service::spawn("etcd", cmd);
        let up = wait_for_port(self.client_port, Duration::from_secs(30));
        let log = service.log_text();
        self.current = Some(service);
        assert!(up, "etcd did not listen on {}:\n{log}", self.client_port);
        self.wait_until_healthy();
    }

    /// Waits until etcd has a leader and serves requests: it listens a
    /// moment before its single member elects itself.
    fn wait_until_healthy(&self) {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) {
                let req = format!(
                    "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                    self.client_port
                );
                let mut resp = String::new();
                if s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut resp).is_ok() {
                    if resp.contains("\"health\":\"true\"") {
                        return;
                    }
                    last = resp;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd on {} did not become healthy: {last}", self.client_port);
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // Services print their own logs on a failing test when dropped.
        self.kill();
        self.past.clear();
    }
}

/// An etcd cluster with one member on each of some hosts of a
/// [`Net`](crate::netns::Net), on the hosts' addresses (client port 2379,
/// peer port 2380); members can be killed and started again on their data.
pub struct EtcdCluster {
    hosts: Vec<usize>,
    ips: Vec<std::net::Ipv4Addr>,
    namespaces: Vec<String>,
    data: tempfile::TempDir,
    current: Vec<Option<Service>>,
    past: Vec<Service>,
    initial_cluster: String,
    started: Vec<bool>,
}

pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

impl EtcdCluster {
    /// One member on each host in `hosts`, named `e<host index + 1>`;
    /// waits until every member answers and the cluster has a leader.
    pub fn start(net: &crate::netns::Net, hosts: &[usize]) -> EtcdCluster {
        let data = tempfile::tempdir().expect("tempdir");
        let ips: Vec<_> = hosts.iter().map(|&h| net.host(h).ip()).collect();
        let initial_cluster = hosts
            .iter()
            .zip(&ips)
            .map(|(h, ip)| format!("e{}=http://{ip}:{PEER_PORT}", h + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            hosts: hosts.to_vec(),
            ips,
            namespaces: hosts.iter().map(|&h| net.host(h).ns.clone()).collect(),
            data,
            current: hosts.iter().map(|_| None).collect(),
            past: Vec::new(),
            initial_cluster,
            started: vec![false; hosts.len()],
        };
        for m in 0..hosts.len() {
            cluster.spawn(m);
        }
        for m in 0..hosts.len() {
            cluster.wait_until_healthy(m);
        }
        cluster
    }

    /// The client URLs, as `[coordination] etcd` lists them.
    pub fn endpoints(&self) -> Vec<String> {
        self.ips.iter().map(|ip| format!("http://{ip}:{CLIENT_PORT}")).collect()
    }

    /// The client address of member `m` (the m-th of the hosts given to start).
    pub fn client_addr(&self, m: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from((self.ips[m], CLIENT_PORT))
    }

    /// The host a member runs on.
    pub fn host_of(&self, m: usize) -> usize {
        self.hosts[m]
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn pid(&self, m: usize) -> Option<u32> {
        self.current[m].as_ref().and_then(Service::pid)
    }

    fn spawn(&mut self, m: usize) {
        let bin = require_program("etcd", "apt-get install etcd-server");
        let name = format!("e{}", self.hosts[m] + 1);
        let ip = self.ips[m];
        let client = format!("http://{ip}:{CLIENT_PORT}");
        let peer = format!("http://{ip}:{PEER_PORT}");
        let state = if self.started[m] { "existing" } else { "new" };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.namespaces[m]])
            .arg(bin)
            .arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(self.data.path().join(&name))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster, "--initial-cluster-state", state])
            .args(["--initial-cluster-token", "cirkel-test"])
            .env_remove("ETCDCTL_API");
        self.current[m] = Some(Service::spawn(&name, cmd));
        self.started[m] = true;
    }

    /// Kills member `m` now (SIGKILL); its data stays for [`EtcdCluster::restart`].
    pub fn kill(&mut self, m: usize) {
        if let Some(mut s) = self.current[m].take() {
            s.kill();
            self.past.push(s);
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) member `m`.
    pub fn signal(&self, m: usize, sig: i32) {
        if let Some(pid) = self.pid(m) {
            // SAFETY: a signal to a process this cluster started.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Starts member `m` again on its data and waits until it answers.
    pub fn restart(&mut self, m: usize) {
        self.kill(m);
        self.spawn(m);
        self.wait_until_healthy(m);
    }

    /// Starts the given members again on their data (together: one alone
    /// may have no quorum) and waits until they answer.
    pub fn restart_members(&mut self, members: &[usize]) {
        for &m in members {
            self.kill(m);
            self.spawn(m);
        }
        for &m in members {
            self.wait_until_healthy(m);
        }
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for m in 0..self.hosts.len() {
            self.kill(m);
        }
    }

    /// Starts every killed member again and waits until all answer.
    pub fn restart_all(&mut self) {
        for m in 0..self.hosts.len() {
            if self.current[m].is_none() {
                self.spawn(m);
            }
        }
        for m in 0..self.hosts.len() {
            self.wait_until_healthy(m);
        }
    }

    /// `GET /health` of member `m` from the test process.
    pub fn healthy(&self, m: usize) -> bool {
        crate::netns::http(self.client_addr(m), "GET", "/health", "", Duration::from_secs(3))
            .is_ok_and(|(status, body)| status == 200 && body.contains("\"health\":\"true\""))
    }

    fn wait_until_healthy(&self, m: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if self.healthy(m) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = self.current[m].as_ref().map(Service::log_text).unwrap_or_default();
        panic!("etcd member {m} did not become healthy:\n{log}");
    }

    /// The member id of the cluster's leader as member `m` sees it
    /// (`/v3/maintenance/status`), or None when it knows of none.
    pub fn leader_seen_by(&self, m: usize) -> Option<String> {
        let (_, body) =
            crate::netns::http(self.client_addr(m), "POST", "/v3/maintenance/status", "{}", Duration::from_secs(3))
                .ok()?;
        let leader = json_field(&body, "leader")?;
        (leader != "0").then_some(leader)
    }

    /// A linearizable read of `key` sent to the member at `addr` from the
    /// calling thread (call it inside [`Net::run_in`](crate::netns::Net::run_in)
    /// to send it from a host): Ok with the response body, or why it failed.
    pub fn linearizable_read(addr: std::net::SocketAddr, key: &str, timeout: Duration) -> Result<String, String> {
        let body = format!("{{\"key\":\"{}\"}}", base64(key.as_bytes()));
        match crate::netns::http(addr, "POST", "/v3/kv/range", &body, timeout)? {
            (200, b) if b.contains("\"header\"") => Ok(b),
            (status, b) => Err(format!("{status}: {b}")),
        }
    }

    /// The logs of every run of every member.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in self.past.iter().chain(self.current.iter().flatten()) {
            out.push_str(&format!("---- {} ----\n{}\n", s.name, s.log_text()));
        }
        out
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in 0..self.hosts.len() {
            self.signal(m, libc::SIGCONT);
        }
        self.kill_all();
        self.past.clear();
    }
}

/// The string or number value of `"name":` in a flat JSON text.
fn json_field(body: &str, name: &str) -> Option<String> {
    let rest = &body[body.find(&format!("\"{name}\":"))? + name.len() + 3..];
    let rest = rest.trim_start().trim_start_matches('"');
    let end = rest.find(['"', ',', '}'])?;
    Some(rest[..end].to_string())
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
