//! PostgreSQL 15 clusters for tests, run as the unprivileged `postgres`
//! user when the tests run as root (PostgreSQL refuses to run as root).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::free_port;
use crate::netns::Net;

/// Where PostgreSQL's server programs are.
pub fn pg_bindir() -> PathBuf {
    if let Ok(d) = std::env::var("PG_BINDIR") {
        return PathBuf::from(d);
    }
    let p = PathBuf::from("/usr/lib/postgresql/15/bin");
    assert!(
        p.join("initdb").is_file(),
        "PostgreSQL 15 is not installed: apt-get install postgresql-15 (see .ci/run), or set PG_BINDIR"
    );
    p
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The (uid, gid) of the `postgres` user.
pub fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id").args(["-u", "postgres"]).output().expect("id");
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("postgres user exists");
    let out = Command::new("id").args(["-g", "postgres"]).output().expect("id");
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().expect("postgres group");
    (uid, gid)
}

/// A command that runs as `postgres` when we are root. `setpriv` execs the
/// program in place, so the child's pid is the program's own (signals reach it).
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Hands a path (recursively) to the postgres user.
pub fn chown_postgres(path: &Path) {
    if is_root() {
        let st = Command::new("chown").arg("-R").arg("postgres:postgres").arg(path).status().expect("chown");
        assert!(st.success());
    }
}

/// One PostgreSQL cluster in a temp dir on a free port.
pub struct PgCluster {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
    /// The network namespace the server runs in (see [`crate::netns`]).
    pub netns: Option<String>,
    /// `listen_addresses`.
    pub listen: String,
}

impl PgCluster {
    /// `initdb` with data checksums, then `conf` lines appended to postgresql.conf.
    pub fn init(conf: &[&str]) -> PgCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).expect("mkdir");
        chown_postgres(dir.path());
        let out = as_postgres(pg_bindir().join("initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--data-checksums", "-E", "UTF8", "--locale=C"])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let mut lines = vec![
            format!("port = {port}"),
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            "fsync = off".to_string(),
            "wal_level = replica".to_string(),
            "max_wal_senders = 10".to_string(),
            "max_replication_slots = 10".to_string(),
            "shared_buffers = 32MB".to_string(),
        ];
        lines.extend(conf.iter().map(|s| s.to_string()));
        append_conf(&data, &lines);
        let log = dir.path().join("postgres.log");
        PgCluster { dir, data, socket_dir, port, log, running: false, netns: None, listen: "127.0.0.1".into() }
    }

    /// A cluster over an existing data directory (a restore), on a new port.
    pub fn adopt(dir: tempfile::TempDir, data: PathBuf) -> PgCluster {
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).expect("mkdir");
        chown_postgres(dir.path());
        let port = free_port();
        let log = dir.path().join("postgres.log");
        PgCluster { dir, data, socket_dir, port, log, running: false, netns: None, listen: "127.0.0.1".into() }
    }

    /// A streaming standby of `primary`, cloned with `pg_basebackup -R`.
    pub fn standby_of(primary: &PgCluster) -> PgCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let out = as_postgres(pg_bindir().join("pg_basebackup"))
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "-h"])
            .arg(&primary.socket_dir)
            .args(["-p", &primary.port.to_string(), "-U", "postgres"])
            .output()
            .expect("run pg_basebackup");
        assert!(out.status.success(), "pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
        // The clone carries the primary's archive settings; a standby does not archive.
        append_conf(&data, &["archive_mode = off".to_string()]);
        PgCluster::adopt(dir, data)
    }

    /// A server program as postgres, in the cluster's namespace if it has one.
    pub fn pg_cmd(&self, program: &str) -> Command {
        let bin = pg_bindir().join(program);
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                if is_root() {
                    c.args(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]);
                }
                c.arg(bin);
                c
            }
            None => as_postgres(bin),
        }
    }

    fn pg_ctl_start(&self, wait: &[&str]) -> Output {
        self.pg_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .arg("-o")
            .arg(format!("-p {} -k {} -c listen_addresses='{}'", self.port, self.socket_dir.display(), self.listen))
            .args(wait)
            .arg("start")
            .output()
            .expect("pg_ctl start")
    }

    pub fn start(&mut self) {
        let out = self.pg_ctl_start(&["-w", "-t", "120"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        self.running = true;
    }

    /// Starts the server without waiting for it (something else may stop it
    /// again at once, as a failover daemon does with a returning old primary).
    pub fn start_nowait(&mut self) {
        let out = self.pg_ctl_start(&["-W"]);
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
        self.running = true;
    }

    /// Starts the server without waiting and without asserting: a host
    /// coming back, whose agent may have started it first. Whether pg_ctl
    /// started it.
    pub fn try_start_nowait(&mut self) -> bool {
        let ok = self.pg_ctl_start(&["-W"]).status.success();
        self.running = true;
        ok
    }

    /// Starts a restored cluster and waits until recovery is over and it accepts writes.
    pub fn start_and_wait_promoted(&mut self, timeout: Duration) {
        self.start();
        let start = Instant::now();
        loop {
            let out = self.try_sql("SELECT pg_is_in_recovery()");
            if out.as_deref() == Ok("f") {
                return;
            }
            assert!(start.elapsed() < timeout, "recovery did not finish: {out:?}\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = self.pg_cmd("pg_ctl").arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]).output();
            self.running = false;
        }
    }

    /// kill -9 of the postmaster; then waits until its children, which exit
    /// on their own once they notice, are gone too, so that the cluster can
    /// be started again at once.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            let children = children_of(pid);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let start = Instant::now();
            let alive = |p: &u32| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p);
            while (alive(&pid) || children.iter().any(alive)) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Where nothing reaps orphans (some sandboxes' init), the dead
            // postmaster stays a zombie and its pid still "exists": its lock
            // files would keep a new postmaster from starting.
            if is_zombie(pid) {
                let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
                let _ = std::fs::remove_file(self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)));
            }
        }
        self.running = false;
    }

    /// After the postmaster was killed from outside (its whole host died):
    /// where nothing reaps orphans, a dead postmaster stays a zombie whose
    /// pid still "exists", and its lock files would keep a new one from
    /// starting; they are removed then. Whether a postmaster is running.
    pub fn forget_dead_postmaster(&mut self) -> bool {
        match self.postmaster_pid() {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) => true,
            Some(_) => {
                let _ = std::fs::remove_file(self.data.join("postmaster.pid"));
                let _ = std::fs::remove_file(self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port)));
                self.running = false;
                false
            }
            None => {
                self.running = false;
                false
            }
        }
    }

    pub fn postmaster_pid(&self) -> Option<u32> {
        let s = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// libpq environment for this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.socket_dir.display().to_string()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
            ("PGDATA".into(), self.data.display().to_string()),
        ]
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        psql(&self.socket_dir.display().to_string(), self.port, sql)
    }

    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("SQL failed: {sql}\n{e}\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The port every member listens on in its own namespace.
pub const NET_PORT: u16 = 5432;

impl PgCluster {
    /// A primary on host `i` of `net`, named `name` (its `cluster_name`):
    /// it listens on every address of the host on port 5432 and on its own
    /// socket directory (reachable from the test process whatever the
    /// network does), and trusts the net's subnet for connections and
    /// replication. Not started.
    pub fn init_on(net: &Net, i: usize, name: &str, conf: &[&str]) -> PgCluster {
        let mut pg = PgCluster::init(conf);
        pg.place_on(net, i, name);
        let mut hba =
            std::fs::OpenOptions::new().append(true).open(pg.data.join("pg_hba.conf")).expect("open pg_hba.conf");
        use std::io::Write;
        writeln!(hba, "host all all {} trust\nhost replication all {} trust", net.cidr(), net.cidr())
            .expect("write pg_hba.conf");
        pg
    }

    /// A streaming standby on host `i` named `name`, cloned over the net
    /// with `pg_basebackup -R` from the primary on host `primary_host`
    /// (which must be running); its `application_name` is its name. Not
    /// started.
    pub fn standby_on(net: &Net, i: usize, name: &str, primary_host: usize) -> PgCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let conninfo =
            format!("host={} port={NET_PORT} user=postgres application_name={name}", net.host(primary_host).ip());
        let out = net
            .cmd_as_postgres(i, pg_bindir().join("pg_basebackup"))
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "-d", &conninfo])
            .output()
            .expect("run pg_basebackup");
        assert!(out.status.success(), "pg_basebackup failed: {}", String::from_utf8_lossy(&out.stderr));
        append_conf(&data, &["archive_mode = off".to_string()]);
        let mut pg = PgCluster::adopt(dir, data);
        pg.place_on(net, i, name);
        pg
    }

    fn place_on(&mut self, net: &Net, i: usize, name: &str) {
        self.port = NET_PORT;
        self.listen = "*".into();
        self.netns = Some(net.host(i).ns.clone());
        append_conf(
            &self.data,
            &[
                format!("port = {NET_PORT}"),
                "listen_addresses = '*'".to_string(),
                format!("unix_socket_directories = '{}'", self.socket_dir.display()),
                format!("cluster_name = '{name}'"),
            ],
        );
    }
}

/// A primary on host 0 and a streaming standby on each other host of
/// `net`, named `names[i]`, all started; `conf` goes into every member's
/// postgresql.conf. Waits until both standbys stream.
pub fn streaming_cluster(net: &Net, names: &[&str], conf: &[&str]) -> Vec<PgCluster> {
    assert_eq!(names.len(), net.len(), "one member per host");
    let mut primary = PgCluster::init_on(net, 0, names[0], conf);
    primary.start();
    let mut members = vec![primary];
    for (i, name) in names.iter().enumerate().skip(1) {
        let mut s = PgCluster::standby_on(net, i, name, 0);
        s.start();
        members.push(s);
    }
    let start = Instant::now();
    loop {
        let streaming = members[0].try_sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
        if streaming.as_deref() == Ok(&(names.len() - 1).to_string()) {
            return members;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "standbys do not stream: {streaming:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one statement with psql from inside host `from` of `net`, to
/// `host`:`port` over TCP; the output, or the error text.
pub fn psql_from(net: &Net, from: usize, host: &str, port: u16, sql: &str) -> Result<String, String> {
    run_psql(net.cmd(from, pg_bindir().join("psql")), host, port, sql)
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- postgres log ({}) ----\n{}", self.log.display(), self.log_text());
        }
        self.stop();
        if self.postmaster_pid().is_some() {
            self.kill9();
        }
    }
}

pub fn append_conf(data: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f =
        std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).expect("open postgresql.conf");
    for l in lines {
        writeln!(f, "{l}").expect("write conf");
    }
}

/// Processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| {
                s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            }) == Some(pid)
        })
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Runs one statement as `postgres` through `host` (an address or a socket
/// directory) and `port`; the output, or the error text.
pub fn psql(host: &str, port: u16, sql: &str) -> Result<String, String> {
    run_psql(Command::new(pg_bindir().join("psql")), host, port, sql)
}

/// Runs `psql` (`cmd`, wherever it runs) as `postgres` against `host` and
/// `port` with a 2 s connect timeout; the output, or the error text.
fn run_psql(mut cmd: Command, host: &str, port: u16, sql: &str) -> Result<String, String> {
    let out: Output = cmd
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
