//! Real services for cirkel's tests, started on free loopback ports in
//! temporary directories and stopped on drop: S3 (moto), PostgreSQL, Redis
//! and Sentinel, etcd; and hosts in network namespaces (`netns`) with etcd
//! and PostgreSQL members on them.
//!
//! A service that cannot be started makes the test fail with a message that
//! names the missing package: tests never skip silently.

pub mod etcd;
pub mod netns;
pub mod pg;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until something accepts connections on the port.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Finds a program on PATH or panics with an install hint.
pub fn require_program(name: &str, install_hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("required test service `{name}` is not installed: {install_hint} (see .ci/run)");
}

/// A child process killed (and reaped) on drop; its log is printed if the
/// test is failing.
pub struct Service {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Service {
    pub fn spawn(name: &str, mut cmd: Command) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let f2 = f.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Service { name: name.into(), child: Some(child), log, dir }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the process now (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- {} log ({}) ----\n{}", self.name, self.log.display(), self.log_text());
        }
    }
}

/// An S3-compatible server (moto, from PyPI `moto[server]`) with one bucket.
pub struct S3Server {
    pub service: Service,
    pub port: u16,
    pub bucket: String,
}

pub const S3_ACCESS_KEY: &str = "cirkeltest";
pub const S3_SECRET_KEY: &str = "cirkeltestsecret";

impl S3Server {
    pub fn start() -> S3Server {
        let bin = require_program("moto_server", "pip install 'moto[server]'");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let service = Service::spawn("moto_server", cmd);
        assert!(
            wait_for_port(port, Duration::from_secs(30)),
            "moto_server did not listen on {port}:\n{}",
            service.log_text()
        );
        let server = S3Server { service, port, bucket: "cirkel-test".into() };
        server.create_bucket(&server.bucket.clone());
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Environment that points the AWS SDK conventions at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
        ]
    }

    pub fn create_bucket(&self, bucket: &str) {
        let mut last = String::new();
        // The server may accept connections a moment before it answers them.
        for _ in 0..50 {
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
            let req = format!(
                "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.port
            );
            let mut resp = String::new();
            if s.write_all(req.as_bytes()).is_ok() && s.read_to_string(&mut resp).is_ok() && resp.contains(" 200 ") {
                return;
            }
            last = resp;
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("create bucket {bucket}: {last}\n{}", self.service.log_text());
    }

    pub fn stop(&mut self) {
        self.service.kill();
    }
}

/// Writes `len` deterministic pseudo-random (incompressible) bytes.
pub fn write_random_file(path: &Path, len: usize, seed: u64) {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        // xorshift64*: fast, deterministic, good enough to defeat compression.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, out).expect("write random file");
}

/// A Redis server on a free port in a temp dir, without persistence of its own.
pub struct RedisServer {
    pub service: Service,
    pub port: u16,
    _data: Option<tempfile::TempDir>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_in(None)
    }

    /// Starts on `dir` (which may hold a `dump.rdb` to load) or a fresh temp dir.
    pub fn start_in(dir: Option<&Path>) -> RedisServer {
        let bin = require_program("redis-server", "apt-get install redis-server");
        let own = match dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().expect("tempdir")),
        };
        let data: PathBuf = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| own.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default());
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&data)
            .args(["--dbfilename", "dump.rdb"]);
        let service = Service::spawn("redis-server", cmd);
        assert!(wait_for_port(port, Duration::from_secs(20)), "redis-server did not listen:\n{}", service.log_text());
        let server = RedisServer { service, port, _data: own };
        // Loading a large RDB happens after the port opens: wait for PONG.
        let start = Instant::now();
        while server.cli(&["PING"]) != "PONG" {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "redis-server not ready:\n{}",
                server.service.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Runs one redis-cli command and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_with(None, args)
    }

    /// Runs one redis-cli command, authenticated with `password` (passed
    /// in `REDISCLI_AUTH`, never as an argument), and returns its output.
    pub fn cli_with(&self, password: Option<&str>, args: &[&str]) -> String {
        let mut cmd = Command::new(require_program("redis-cli", "apt-get install redis-tools"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]).args(args);
        if let Some(p) = password {
            cmd.env("REDISCLI_AUTH", p);
        }
        let out = cmd.output().expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A Redis replication group: a master and two replicas, and three
/// Sentinels that monitor nothing until cirkel configures them. Every
/// process runs daemonized from a config file with a pid file, so a
/// drill's `restart_command` can start a killed member again; all of them
/// are killed on drop.
pub struct RedisGroup {
    pub dir: tempfile::TempDir,
    /// Data node ports; the first starts as the master.
    pub ports: Vec<u16>,
    pub sentinel_ports: Vec<u16>,
}

impl RedisGroup {
    pub fn start() -> RedisGroup {
        let server = require_program("redis-server", "apt-get install redis-server");
        let sentinel = require_program("redis-sentinel", "apt-get install redis-sentinel");
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let sentinel_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let group = RedisGroup { dir, ports: ports.clone(), sentinel_ports: sentinel_ports.clone() };
        for (i, port) in ports.iter().enumerate() {
            let data = group.dir.path().join(format!("data-{port}"));
            std::fs::create_dir_all(&data).expect("mkdir");
            let mut conf = format!(
                "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize yes\ndir {}\npidfile {}\nlogfile {}\n",
                data.display(),
                group.pidfile(*port).display(),
                group.dir.path().join(format!("redis-{port}.log")).display()
            );
            if i > 0 {
                conf.push_str(&format!("replicaof 127.0.0.1 {}\n", ports[0]));
            }
            std::fs::write(group.conf(*port), conf).expect("write redis conf");
            group.spawn(&server, &group.conf(*port));
        }
        for port in &sentinel_ports {
            let conf = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize yes\ndir {}\npidfile {}\nlogfile {}\n",
                group.dir.path().display(),
                group.pidfile(*port).display(),
                group.dir.path().join(format!("sentinel-{port}.log")).display()
            );
            std::fs::write(group.conf(*port), conf).expect("write sentinel conf");
            group.spawn(&sentinel, &group.conf(*port));
        }
        for port in ports.iter().chain(&sentinel_ports) {
            assert!(wait_for_port(*port, Duration::from_secs(20)), "port {port} did not open:\n{}", group.logs());
        }
        let start = Instant::now();
        while ports[1..].iter().any(|p| !group.cli(*p, &["INFO", "replication"]).contains("master_link_status:up")) {
            assert!(start.elapsed() < Duration::from_secs(30), "replicas did not connect:\n{}", group.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        group
    }

    pub fn conf(&self, port: u16) -> PathBuf {
        self.dir.path().join(format!("node-{port}.conf"))
    }

    fn pidfile(&self, port: u16) -> PathBuf {
        self.dir.path().join(format!("node-{port}.pid"))
    }

    fn spawn(&self, bin: &Path, conf: &Path) {
        let out = Command::new(bin).arg(conf).output().expect("start redis");
        assert!(out.status.success(), "{} {}: {}", bin.display(), conf.display(), String::from_utf8_lossy(&out.stderr));
    }

    /// The command that starts a data node again (for `restart_command`).
    pub fn restart_command(&self) -> String {
        format!("redis-server {}/node-{{port}}.conf", self.dir.path().display())
    }

    /// The pid of the process on `port`, from its pid file.
    pub fn pid(&self, port: u16) -> Option<i32> {
        std::fs::read_to_string(self.pidfile(port)).ok()?.trim().parse().ok()
    }

    pub fn signal(&self, port: u16, sig: i32) {
        let pid = self.pid(port).unwrap_or_else(|| panic!("no pid for port {port}"));
        // SAFETY: sending a signal to a process this group started.
        unsafe { libc::kill(pid, sig) };
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new(require_program("redis-cli", "apt-get install redis-tools"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A `[redis.NAME]` configuration table for this group.
    pub fn config_table(&self, name: &str, extra: &str) -> String {
        let list = |ports: &[u16]| ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect::<Vec<_>>().join(", ");
        format!(
            "[redis.{name}]\nmembers = [{}]\nsentinels = [{}]\nrestart_command = \"{}\"\n{extra}\n",
            list(&self.ports),
            list(&self.sentinel_ports),
            self.restart_command()
        )
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            for e in rd.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    out.push_str(&format!("---- {} ----\n", e.path().display()));
                    let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
        }
        out
    }
}

impl Drop for RedisGroup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for port in self.ports.clone().into_iter().chain(self.sentinel_ports.clone()) {
            if let Some(pid) = self.pid(port) {
                // SAFETY: killing a process this group started (a stopped one too).
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}
