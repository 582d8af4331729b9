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
