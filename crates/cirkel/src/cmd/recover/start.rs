//! The rebuilt estate brought back up: each restored PostgreSQL data
//! directory started (as its owner, on a port of this host, its sockets in a
//! private directory beside it) until it has replayed the second region's WAL
//! and promoted, its standbys cloned from it with `pg_basebackup` and started
//! until they stream; each Redis RDB served by a `redis-server` of its own.
//! Every service is left running and reported with its address and the
//! command that stops it.

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cirkel_pg::conn::PgConn;
use serde::Serialize;

/// Where and how long to start services.
pub struct StartOptions {
    /// Address PostgreSQL and Redis listen on.
    pub listen: String,
    /// How long PostgreSQL may take to replay and promote, a standby to stream, Redis to load.
    pub timeout: Duration,
    /// The database user that clones standbys (`[postgres.NAME] user`, else `postgres`).
    pub pg_user: String,
    /// Networks (CIDR) whose hosts may clone standbys from a recovered
    /// primary: `--allow`, opened in its pg_hba.conf once it is promoted.
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Primary,
    Standby,
    Redis,
}

/// One started service, as the report and the user see it.
#[derive(Debug, Serialize)]
pub struct Service {
    /// The step's source (`postgres/SYSTEM`, `redis/GROUP`).
    pub source: String,
    pub role: Role,
    /// The configured member a standby stands in for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// `HOST:PORT` to connect to.
    pub address: String,
    pub port: u16,
    /// PostgreSQL's socket directory (`psql -h DIR -p PORT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_dir: Option<PathBuf>,
    /// Its data directory (PostgreSQL) or the directory of its RDB (Redis).
    pub data: PathBuf,
    pub log: PathBuf,
    /// The command that stops it.
    pub stop: String,
    /// A standby or replica of a primary on another host: the `HOST:PORT` it copies from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// A standby or replica: whether it was seen streaming from its primary
    /// (PostgreSQL's `pg_stat_wal_receiver`, Redis's link status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// Redis: keys loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    /// PostgreSQL's primary: when the newest transaction it replayed was
    /// committed, which dates the data better than the copy's objects do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_commit: Option<chrono::DateTime<chrono::Utc>>,
    pub seconds: f64,
    /// Why it did not start (it may still be running: `stop` stops it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub(super) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A program run as the data directory's owner (PostgreSQL refuses root).
/// `setpriv` execs in place, as `cirkel lab` and the restore drills do.
pub(super) fn as_owner(program: &Path, uid: u32, gid: u32) -> Command {
    if is_root() && uid != 0 {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups").arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The uid and gid of a system user, if it exists.
pub(super) fn system_user(name: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, name]).output().ok().filter(|o| o.status.success())?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// The user name of `uid`, for the stop command a person types.
pub(super) fn user_name(uid: u32) -> String {
    Command::new("id")
        .args(["-nu", &uid.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| uid.to_string())
}

/// A free port on `listen`, or `wanted` when it is free.
pub fn port(listen: &str, wanted: Option<u16>) -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((listen, wanted.unwrap_or(0))).map_err(|e| match wanted {
        Some(p) => {
            anyhow::anyhow!("port {p} on {listen} is taken ({e}); pass another, or leave it out to get a free one")
        }
        None => anyhow::anyhow!("no free port on {listen}: {e}; check --listen"),
    })?;
    Ok(l.local_addr()?.port())
}

fn append(path: &Path, lines: &[String]) -> anyhow::Result<()> {
    // Appending keeps the file's owner and mode.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    Ok(())
}

pub(super) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A directory made by root for the cluster's owner, 0700.
pub(super) fn private_dir(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::fs::create_dir(dir).map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if is_root() {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// The last lines of a log worth showing: FATAL and PANIC, else its tail.
pub(super) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let important: Vec<&str> = text.lines().filter(|l| l.contains("FATAL") || l.contains("PANIC")).collect();
    let shown: Vec<&str> = if important.is_empty() { text.lines().rev().take(3).collect() } else { important };
    shown.join(" | ")
}

/// Starts a restored primary and clones a standby from it per member.
pub struct Postgres<'a> {
    pub source: &'a str,
    /// The restored data directory.
    pub data: &'a Path,
    /// Sockets and logs of the primary and its standbys.
    pub run_dir: &'a Path,
    /// Standbys to create: (member name, data directory).
    pub standbys: &'a [(String, PathBuf)],
    pub port: Option<u16>,
}

impl Postgres<'_> {
    pub fn start(&self, opts: &StartOptions) -> Vec<Service> {
        let t = Instant::now();
        let bindir = cirkel_pg::stream::find_bindir();
        let meta = match std::fs::metadata(self.data) {
            Ok(m) => m,
            Err(e) => {
                return vec![self.failed(Role::Primary, None, self.data, t, format!("{}: {e}", self.data.display()))];
            }
        };
        let (uid, gid) = (meta.uid(), meta.gid());
        let stop = |data: &Path| {
            let pg_ctl = format!("{} -D {} stop", bindir.join("pg_ctl").display(), data.display());
            if is_root() && uid != 0 { format!("runuser -u {} -- {pg_ctl}", user_name(uid)) } else { pg_ctl }
        };
        let log = self.run_dir.join("primary.log");
        let mut primary = Service {
            source: self.source.to_string(),
            role: Role::Primary,
            member: None,
            address: String::new(),
            port: 0,
            socket_dir: Some(self.run_dir.to_path_buf()),
            data: self.data.to_path_buf(),
            log: log.clone(),
            stop: stop(self.data),
            upstream: None,
            streaming: None,
            keys: None,
            last_commit: None,
            seconds: 0.0,
            error: None,
        };
        let started = (|| -> anyhow::Result<PgConn> {
            reachable(self.data, uid, gid)?;
            private_dir(self.run_dir, uid, gid)?;
            let port = port(&opts.listen, self.port)?;
            primary.port = port;
            primary.address = format!("{}:{port}", opts.listen);
            self.configure(
                self.data,
                port,
                &opts.listen,
                &[
                    // The old primary's synchronous standbys are gone: a commit
                    // must not wait for them.
                    "synchronous_standby_names = ''".to_string(),
                ],
            )?;
            pg_ctl_start(&bindir, self.data, &log, uid, gid, opts.timeout)?;
            let conn = self.wait_promoted(port, opts)?;
            if !opts.allow.is_empty() {
                // Only now: a standby cloned from another host follows a primary, not a replay.
                super::standby::allow_replication(self.data, &opts.allow, &opts.pg_user)?;
                conn.execute("SELECT pg_reload_conf()")?;
            }
            Ok(conn)
        })();
        primary.seconds = t.elapsed().as_secs_f64();
        let conn = match started {
            Ok(c) => c,
            Err(e) => {
                primary.error = Some(format!("{e:#}"));
                return vec![primary];
            }
        };
        // It stays at the last transaction recovery applied.
        primary.last_commit = conn
            .query_one("SELECT extract(epoch FROM pg_last_xact_replay_timestamp())::float8")
            .ok()
            .and_then(|r| r.get::<_, Option<f64>>(0))
            .and_then(|s| chrono::DateTime::from_timestamp_millis((s * 1000.0) as i64));
        let mut services = vec![];
        let primary_port = primary.port;
        services.push(primary);
        for (member, data) in self.standbys {
            let t = Instant::now();
            let log =
                self.run_dir.join(format!("{}.log", data.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
            let mut s = Service {
                source: self.source.to_string(),
                role: Role::Standby,
                member: Some(member.clone()),
                address: String::new(),
                port: 0,
                socket_dir: Some(self.run_dir.to_path_buf()),
                data: data.clone(),
                log: log.clone(),
                stop: stop(data),
                upstream: None,
                streaming: None,
                keys: None,
                last_commit: None,
                seconds: 0.0,
                error: None,
            };
            let r = (|| -> anyhow::Result<()> {
                private_dir(data, uid, gid)?;
                let out = as_owner(&bindir.join("pg_basebackup"), uid, gid)
                    .arg("-D")
                    .arg(data)
                    .args(["-R", "-X", "stream", "-c", "fast", "-h"])
                    .arg(self.run_dir)
                    .args(["-p", &primary_port.to_string(), "-U", &opts.pg_user])
                    .output()
                    .map_err(|e| anyhow::anyhow!("run pg_basebackup: {e}; install PostgreSQL's client programs"))?;
                if !out.status.success() {
                    anyhow::bail!(
                        "pg_basebackup from the recovered primary failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                let port = port(&opts.listen, None)?;
                s.port = port;
                s.address = format!("{}:{port}", opts.listen);
                // The clone carries the primary's recovery target: a standby follows to the end.
                let mut extra: Vec<String> =
                    ["", "_time", "_lsn", "_xid", "_name"].iter().map(|k| format!("recovery_target{k} = ''")).collect();
                extra.push(format!("cluster_name = {}", quote(member)));
                self.configure(data, port, &opts.listen, &extra)?;
                pg_ctl_start(&bindir, data, &log, uid, gid, opts.timeout)?;
                wait_streaming(&conn, member, opts.timeout)
            })();
            s.seconds = t.elapsed().as_secs_f64();
            s.streaming = Some(r.is_ok());
            s.error = r.err().map(|e| format!("{e:#}"));
            services.push(s);
        }
        services
    }

    fn failed(&self, role: Role, member: Option<String>, data: &Path, t: Instant, error: String) -> Service {
        Service {
            source: self.source.to_string(),
            role,
            member,
            address: String::new(),
            port: 0,
            socket_dir: None,
            data: data.to_path_buf(),
            log: PathBuf::new(),
            stop: String::new(),
            upstream: None,
            streaming: None,
            keys: None,
            last_commit: None,
            seconds: t.elapsed().as_secs_f64(),
            error: Some(error),
        }
    }

    fn configure(&self, data: &Path, port: u16, listen: &str, extra: &[String]) -> anyhow::Result<()> {
        configure(data, self.run_dir, port, listen, extra)
    }

    fn wait_promoted(&self, port: u16, opts: &StartOptions) -> anyhow::Result<PgConn> {
        let conninfo = format!("host={} port={port} user={} dbname=postgres", self.run_dir.display(), opts.pg_user);
        let deadline = Instant::now() + opts.timeout;
        loop {
            if let Ok(c) = PgConn::connect(Some(&conninfo))
                && let Ok(row) = c.query_one("SELECT pg_is_in_recovery()")
                && !row.get::<_, bool>(0)
            {
                return Ok(c);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "PostgreSQL did not finish replaying the WAL within {} (pass a longer --timeout): {}",
                    humantime::format_duration(opts.timeout),
                    log_tail(&self.run_dir.join("primary.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// This host's settings for a recovered server: its port and address,
/// its sockets only in the private run directory, no archiving, and
/// local connections trusted (that directory is 0700 and the owner's,
/// so only the owner and root reach them) so that the owner can clone
/// standbys and cirkel can watch the recovery whatever the old
/// `pg_hba.conf` asked of local connections.
pub(super) fn configure(data: &Path, run_dir: &Path, port: u16, listen: &str, extra: &[String]) -> anyhow::Result<()> {
    let mut lines = vec![
        String::new(),
        "# cirkel recover: this host's settings".to_string(),
        format!("port = {port}"),
        format!("listen_addresses = {}", quote(listen)),
        format!("unix_socket_directories = {}", quote(&run_dir.display().to_string())),
        "archive_mode = off".to_string(),
        "hot_standby = on".to_string(),
    ];
    lines.extend(extra.iter().cloned());
    append(&data.join("postgresql.auto.conf"), &lines)?;
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).map_err(|e| anyhow::anyhow!("read {}: {e}", hba.display()))?;
    if !old.starts_with("# cirkel recover") {
        let new = format!(
            "# cirkel recover: the sockets are in {} (0700)\nlocal all all trust\nlocal replication all trust\n{old}",
            run_dir.display()
        );
        // Written in place: the file keeps its owner and mode.
        std::fs::write(&hba, new).map_err(|e| anyhow::anyhow!("write {}: {e}", hba.display()))?;
    }
    Ok(())
}

pub(super) fn pg_ctl_start(
    bindir: &Path,
    data: &Path,
    log: &Path,
    uid: u32,
    gid: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let out = as_owner(&bindir.join("pg_ctl"), uid, gid)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", &timeout.as_secs().max(1).to_string(), "start"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| anyhow::anyhow!("run pg_ctl: {e}; install PostgreSQL 15 or set PG_BINDIR"))?;
    if !out.status.success() {
        let mut why = log_tail(log);
        if why.is_empty() {
            why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
        anyhow::bail!("PostgreSQL did not start on {}: {why} (log {})", data.display(), log.display());
    }
    Ok(())
}

/// PostgreSQL runs as the data directory's owner, who must be able to
/// reach it: every directory above it searchable by that user.
pub(super) fn reachable(data: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    if !is_root() || uid == 0 {
        return Ok(());
    }
    for dir in data.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(dir) else { continue };
        let mode = m.permissions().mode();
        let ok = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            anyhow::bail!(
                "{} (mode {:o}) keeps out {}, who runs the service; the data is restored: `chmod o+x {}` and \
                 recover again into a new directory, or choose a --to that user can reach",
                dir.display(),
                mode & 0o7777,
                user_name(uid),
                dir.display()
            );
        }
    }
    Ok(())
}

fn wait_streaming(primary: &PgConn, member: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let n: i64 = primary
            .query_one_text(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = $1 AND state = 'streaming'",
                member,
            )?
            .get(0);
        if n > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("standby {member} started but does not stream from the recovered primary; see its log");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Serves the RDB in `dir` with a daemonized `redis-server` of its own, or,
/// with `replica_of`, a replica of the Redis recovered on another host,
/// waited for until its link is up. With `REDISCLI_AUTH` set, the server
/// requires that password (and a replica gives it to its master); its
/// configuration reaches it on stdin, never on a command line. On an
/// address other than loopback it also listens on 127.0.0.1, where cirkel
/// checks it: Redis's protected mode answers nothing else without a password.
pub fn start_redis(
    source: &str,
    dir: &Path,
    wanted: Option<u16>,
    opts: &StartOptions,
    replica_of: Option<&super::standby::StandbyOf>,
) -> Service {
    let t = Instant::now();
    let log = dir.join("redis.log");
    let mut s = Service {
        source: source.to_string(),
        role: Role::Redis,
        member: None,
        address: String::new(),
        port: 0,
        socket_dir: None,
        data: dir.to_path_buf(),
        log: log.clone(),
        stop: String::new(),
        upstream: replica_of.map(|u| u.address()),
        streaming: None,
        keys: None,
        last_commit: None,
        seconds: 0.0,
        error: None,
    };
    let password = std::env::var("REDISCLI_AUTH").ok().filter(|p| !p.is_empty());
    let r = (|| -> anyhow::Result<i64> {
        let port = port(&opts.listen, wanted)?;
        s.port = port;
        s.address = format!("{}:{port}", opts.listen);
        let local = match opts.listen.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_loopback() => opts.listen.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let bind = if local == opts.listen { local.clone() } else { format!("{} {local}", opts.listen) };
        s.stop = format!(
            "redis-cli -h {local} -p {port}{} shutdown",
            if password.is_some() { " --no-auth-warning" } else { "" }
        );
        if replica_of.is_some() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("create {}: {e}", dir.display()))?;
        }
        // Redis is not run as root: as its packages' `redis` user when there is one.
        let (uid, gid) = match system_user("redis").filter(|_| is_root()) {
            Some((uid, gid)) => {
                reachable(dir, uid, gid)?;
                for entry in std::fs::read_dir(dir)? {
                    std::os::unix::fs::lchown(entry?.path(), Some(uid), Some(gid))?;
                }
                std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
                (uid, gid)
            }
            None => (0, 0),
        };
        let q = |p: &Path| redis_quote(&p.display().to_string());
        let mut conf = format!(
            "port {port}\nbind {bind}\ndaemonize yes\ndir {}\ndbfilename dump.rdb\npidfile {}\nlogfile {}\n\
             repl-diskless-sync-delay 0\n",
            q(dir),
            q(&dir.join("redis.pid")),
            q(&log)
        );
        if let Some(p) = &password {
            conf.push_str(&format!("requirepass {}\n", redis_quote(p)));
        }
        if let Some(up) = replica_of {
            conf.push_str(&format!("replicaof {} {}\n", redis_quote(&up.host), up.port));
            if let Some(p) = &password {
                conf.push_str(&format!("masterauth {}\n", redis_quote(p)));
            }
        }
        let mut child = as_owner(Path::new("redis-server"), uid, gid)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("run redis-server: {e}; install redis-server"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(conf.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            let mut why = format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
            // A configuration error quotes the line: never the password.
            if let Some(p) = &password {
                why = why.replace(p.as_str(), "***");
            }
            anyhow::bail!("redis-server did not start: {}", why.trim());
        }
        let deadline = Instant::now() + opts.timeout;
        loop {
            let ready = match replica_of {
                Some(_) => resp(&local, port, password.as_deref(), &["INFO", "replication"])
                    .and_then(|info| match info.contains("master_link_status:up") {
                        true => Ok(()),
                        false => Err(anyhow::anyhow!("its link to the master is not up")),
                    })
                    .and_then(|()| resp(&local, port, password.as_deref(), &["DBSIZE"])),
                None => resp(&local, port, password.as_deref(), &["DBSIZE"]),
            };
            match ready.and_then(|n| {
                n.strip_prefix(':').and_then(|n| n.parse().ok()).ok_or_else(|| anyhow::anyhow!("DBSIZE answered {n}"))
            }) {
                Ok(n) => return Ok(n),
                Err(e) if Instant::now() > deadline => match replica_of {
                    Some(up) => anyhow::bail!(
                        "the Redis replica on port {port} did not sync from {} within {}: {e} (log {}); the master \
                         accepts other hosts only with a password: export the same REDISCLI_AUTH for recover on \
                         both hosts",
                        up.address(),
                        humantime::format_duration(opts.timeout),
                        log.display()
                    ),
                    None => anyhow::bail!(
                        "redis-server on port {port} did not load the RDB within {}: {e} (log {})",
                        humantime::format_duration(opts.timeout),
                        log.display()
                    ),
                },
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })();
    s.seconds = t.elapsed().as_secs_f64();
    if replica_of.is_some() {
        s.streaming = Some(r.is_ok());
    }
    match r {
        Ok(n) => s.keys = Some(n),
        Err(e) => s.error = Some(format!("{e:#}")),
    }
    s
}

/// A value in a Redis configuration file.
fn redis_quote(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

/// One command, after `AUTH` when there is a password; the reply's first
/// line (`:5`, `+OK`, `-ERR …`), or a bulk reply's text. An error reply
/// (`-LOADING`, `-NOAUTH`) is an error here.
fn resp(host: &str, port: u16, password: Option<&str>, args: &[&str]) -> anyhow::Result<String> {
    let mut c = std::net::TcpStream::connect((host, port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let encode = |args: &[&str]| {
        let mut b = format!("*{}\r\n", args.len());
        for a in args {
            b.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        b
    };
    let mut reader = std::io::BufReader::new(c.try_clone()?);
    let mut reply = || -> anyhow::Result<String> {
        use std::io::BufRead;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end().to_string();
        if line.starts_with('-') || line.is_empty() {
            anyhow::bail!("{}", if line.is_empty() { "the connection closed" } else { line.as_str() });
        }
        if let Some(n) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            let mut body = vec![0u8; n + 2];
            reader.read_exact(&mut body)?;
            return Ok(String::from_utf8_lossy(&body[..n]).into_owned());
        }
        Ok(line)
    };
    if let Some(p) = password {
        c.write_all(encode(&["AUTH", p]).as_bytes())?;
        reply()?;
    }
    c.write_all(encode(args).as_bytes())?;
    reply()
}
