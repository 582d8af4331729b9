//! The estate rebuilt onto several hosts, `cirkel recover` run on each. The
//! primary's host restores its PostgreSQL system from the repository as on
//! one host, listening on its own address (`--listen`), and once promoted
//! lets the networks named by `--allow` clone standbys from it. Each other
//! host runs `recover --standby-of [SYSTEM=]HOST:PORT`: instead of
//! restoring that system from the repository it clones a standby from the
//! recovered primary with `pg_basebackup`, starts it and waits until it
//! streams; `--replica-of HOST:PORT` does the same for a Redis group with
//! a `replicaof` server. `--only` keeps a host to its part of the estate.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use cirkel_pg::conn::PgConn;

use super::Step;
use super::start::{
    Role, Service, StartOptions, as_owner, configure, is_root, log_tail, pg_ctl_start, port, private_dir, quote,
    reachable, system_user, user_name,
};
use crate::output::user_error;

/// One `--standby-of`: the system (its id or its `[postgres.NAME]`), if
/// named, and the primary's `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyOf {
    pub system: Option<String>,
    pub host: String,
    pub port: u16,
}

/// Reported as the primary's address.
impl serde::Serialize for StandbyOf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.address())
    }
}

impl StandbyOf {
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Parses `HOST:PORT` or `SYSTEM=HOST:PORT` (an IPv6 host in brackets).
pub fn parse_standby_of(s: &str) -> Result<StandbyOf, String> {
    let (system, addr) = match s.split_once('=') {
        Some((sys, addr)) if !sys.is_empty() => (Some(sys.to_string()), addr),
        Some(_) => return Err("SYSTEM before `=` is empty: give SYSTEM=HOST:PORT or HOST:PORT".into()),
        None => (None, s),
    };
    let bad = || format!("`{addr}` is not HOST:PORT (e.g. 10.0.0.5:5432, or SYSTEM=10.0.0.5:5432)");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(StandbyOf { system, host: host.to_string(), port })
}

/// Parses `--allow`: an IPv4 or IPv6 network in CIDR notation, or one
/// address (a network of one).
pub fn parse_cidr(s: &str) -> Result<String, String> {
    let bad = || format!("`{s}` is not a network: give CIDR notation (10.0.1.0/24) or one address");
    let (ip, bits) = match s.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits: u8 = match bits {
        Some(b) => b.parse().ok().filter(|b| *b <= max).ok_or_else(bad)?,
        None => max,
    };
    Ok(format!("{ip}/{bits}"))
}

/// What `--only` names: a kind (`postgres`, `redis`, `files`), or a kind
/// and a name (`postgres/SYSTEM` or `postgres/CLUSTER`, `redis/GROUP`,
/// `files/PATHS`).
fn selects(s: &Step, only: &str) -> bool {
    let (kind, name) = s.source.split_once('/').unwrap_or((s.source.as_str(), ""));
    match only.split_once('/') {
        None => only == kind,
        Some((k, n)) => k == kind && (n == name || s.cluster.as_deref() == Some(n)),
    }
}

/// Keeps the steps `--only` names (all without it); every `--only` must
/// name something the repository holds.
pub(super) fn select(steps: &mut Vec<Step>, only: &[String]) -> anyhow::Result<()> {
    if only.is_empty() {
        return Ok(());
    }
    for o in only {
        if !steps.iter().any(|s| selects(s, o)) {
            let held: Vec<String> = steps
                .iter()
                .map(|s| match &s.cluster {
                    Some(c) => format!("{} ({c})", s.source),
                    None => s.source.clone(),
                })
                .collect();
            return Err(user_error(
                format!("--only {o} names nothing the repository holds"),
                format!(
                    "give postgres, redis, files, bucket or one of: {}; `recover --dry-run` lists them",
                    held.join(", ")
                ),
            ));
        }
    }
    steps.retain(|s| only.iter().any(|o| selects(s, o)));
    Ok(())
}

/// What a `--standby-of` (PostgreSQL) or `--replica-of` (Redis) applies to.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Postgres,
    Redis,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres/",
            Kind::Redis => "redis/",
        }
    }
    fn flag(self) -> &'static str {
        match self {
            Kind::Postgres => "--standby-of",
            Kind::Redis => "--replica-of",
        }
    }
    fn what(self) -> &'static str {
        match self {
            Kind::Postgres => "PostgreSQL system",
            Kind::Redis => "Redis group",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Kind::Postgres => "SYSTEM",
            Kind::Redis => "GROUP",
        }
    }
}

/// Marks each step of `kind` a `--standby-of` or `--replica-of` names: it
/// is copied from that primary instead of restored.
pub(super) fn assign(steps: &mut [Step], specs: &[StandbyOf], kind: Kind) -> anyhow::Result<()> {
    let (prefix, flag, what, key) = (kind.prefix(), kind.flag(), kind.what(), kind.key());
    let names = |steps: &[Step]| -> String {
        steps
            .iter()
            .filter(|s| s.source.starts_with(prefix))
            .map(|s| match &s.cluster {
                Some(c) => format!("{} ({c})", s.source.trim_start_matches(prefix)),
                None => s.source.trim_start_matches(prefix).to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for spec in specs {
        let ours: Vec<usize> = (0..steps.len()).filter(|&i| steps[i].source.starts_with(prefix)).collect();
        let i = match &spec.system {
            None if ours.len() == 1 => ours[0],
            None if ours.is_empty() => {
                return Err(user_error(
                    format!("{flag}: no {what} to recover here"),
                    "the repository holds no backup of one, or --only left it out",
                ));
            }
            None => {
                return Err(user_error(
                    format!("{flag} {}: which {what}? there are {}", spec.address(), ours.len()),
                    format!("name it: {flag} {key}={} with {key} one of {}", spec.address(), names(steps)),
                ));
            }
            Some(sys) => *ours
                .iter()
                .find(|&&i| {
                    steps[i].source.trim_start_matches(prefix) == sys || steps[i].cluster.as_deref() == Some(sys)
                })
                .ok_or_else(|| {
                    user_error(
                        format!("{flag} {sys}=…: the repository holds no such {what}"),
                        format!("name one of {}", names(steps)),
                    )
                })?,
        };
        if steps[i].standby_of.is_some() {
            return Err(user_error(
                format!("{} is named by {flag} twice", steps[i].source),
                format!("give one primary per {what}"),
            ));
        }
        steps[i].standby_of = Some(spec.clone());
    }
    Ok(())
}

/// Waits until every primary a `--standby-of` or `--replica-of` names
/// accepts TCP connections, within `timeout` (it may still be replaying):
/// nothing is restored on this host before. How long it waited, if it did.
pub(super) fn wait_reachable(steps: &[Step], timeout: Duration) -> anyhow::Result<Option<Duration>> {
    let start = Instant::now();
    let deadline = start + timeout;
    for s in steps {
        let Some(up) = &s.standby_of else { continue };
        let mut last = String::new();
        loop {
            let addrs: Vec<SocketAddr> = match (up.host.as_str(), up.port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    last = format!("cannot resolve {}: {e}", up.host);
                    Vec::new()
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.clamp(Duration::from_millis(100), Duration::from_secs(2));
            let mut reached = false;
            for a in &addrs {
                match TcpStream::connect_timeout(a, wait) {
                    Ok(_) => {
                        reached = true;
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if reached {
                break;
            }
            if Instant::now() >= deadline {
                return Err(user_error(
                    format!(
                        "the primary of {} at {} did not answer within {} ({last}); nothing was recovered on this host",
                        s.source,
                        up.address(),
                        humantime::format_duration(timeout)
                    ),
                    {
                        let (with, also) = match s.source.starts_with("redis/") {
                            true => ("--redis-port PORT", ", with the same REDISCLI_AUTH"),
                            false => ("--allow CIDR", ", CIDR covering this host"),
                        };
                        format!(
                            "run `cirkel recover --from REPO --to DIR --listen ADDR {with}` on the primary's host \
                             first (ADDR its address{also}), check that {} is that address and port and that no \
                             firewall stands between, or pass a longer --timeout",
                            up.address()
                        )
                    },
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(steps.iter().any(|s| s.standby_of.is_some()).then(|| start.elapsed()))
}

/// Lets hosts in `networks` connect for replication as `user`, with a
/// password (SCRAM): the lines go first, below cirkel's own local ones.
pub(super) fn allow_replication(data: &Path, networks: &[String], user: &str) -> anyhow::Result<()> {
    let hba = data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).map_err(|e| anyhow::anyhow!("read {}: {e}", hba.display()))?;
    let ours: String =
        networks.iter().map(|n| format!("host replication {} {n} scram-sha-256\n", hba_word(user))).collect();
    let anchor = "local replication all trust\n";
    let new = match old.find(anchor) {
        Some(i) if old.starts_with("# cirkel recover") => {
            let at = i + anchor.len();
            format!("{}# cirkel recover --allow: standbys on other hosts\n{ours}{}", &old[..at], &old[at..])
        }
        _ => format!("# cirkel recover --allow: standbys on other hosts\n{ours}{old}"),
    };
    // Written in place: the file keeps its owner and mode.
    std::fs::write(&hba, new).map_err(|e| anyhow::anyhow!("write {}: {e}", hba.display()))
}

/// A user name as one pg_hba.conf word.
fn hba_word(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// This host's name, the default name of its standby on the primary.
pub(super) fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    if name.is_empty() { "standby".into() } else { name }
}

/// A standby of `up` in `data`: cloned with `pg_basebackup -R` (retried
/// until the primary lets it in, within the timeout), started on this
/// host and watched until it streams.
pub(super) struct StandbyClone<'a> {
    pub source: &'a str,
    pub up: &'a StandbyOf,
    /// Its `application_name` on the primary.
    pub member: &'a str,
    pub data: &'a Path,
    /// Its sockets and log.
    pub run_dir: &'a Path,
    pub port: Option<u16>,
}

impl StandbyClone<'_> {
    pub fn start(&self, opts: &StartOptions) -> Service {
        let t = Instant::now();
        let bindir = cirkel_pg::stream::find_bindir();
        let log = self.run_dir.join("standby.log");
        let mut s = Service {
            source: self.source.to_string(),
            role: Role::Standby,
            member: Some(self.member.to_string()),
            address: String::new(),
            port: 0,
            socket_dir: Some(self.run_dir.to_path_buf()),
            data: self.data.to_path_buf(),
            log: log.clone(),
            stop: String::new(),
            upstream: Some(self.up.address()),
            streaming: None,
            keys: None,
            last_commit: None,
            seconds: 0.0,
            error: None,
        };
        let r = (|| -> anyhow::Result<()> {
            // PostgreSQL refuses root: as root, the clone is the postgres user's.
            let (uid, gid) = if is_root() {
                system_user("postgres").ok_or_else(|| {
                    anyhow::anyhow!("no `postgres` user on this host to run the standby; install PostgreSQL")
                })?
            } else {
                // SAFETY: getuid and getgid have no preconditions.
                unsafe { (libc::getuid(), libc::getgid()) }
            };
            let pg_ctl = format!("{} -D {} stop", bindir.join("pg_ctl").display(), self.data.display());
            s.stop = if is_root() { format!("runuser -u {} -- {pg_ctl}", user_name(uid)) } else { pg_ctl };
            if let Some(parent) = self.data.parent() {
                std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("create {}: {e}", parent.display()))?;
            }
            private_dir(self.run_dir, uid, gid)?;
            reachable(self.run_dir, uid, gid)?;
            private_dir(self.data, uid, gid)?;
            self.base_backup(&bindir, uid, gid, opts.timeout.saturating_sub(t.elapsed()), &opts.pg_user)?;
            let port = port(&opts.listen, self.port)?;
            s.port = port;
            s.address = format!("{}:{port}", opts.listen);
            // A standby follows its primary to the end, over the network
            // only: the primary's recovery target and its restore_command
            // (the repository, as the primary's host reached it) are not
            // this standby's.
            let mut extra: Vec<String> =
                ["", "_time", "_lsn", "_xid", "_name"].iter().map(|k| format!("recovery_target{k} = ''")).collect();
            extra.push("restore_command = ''".into());
            extra.push("recovery_target_timeline = 'latest'".into());
            extra.push(format!("cluster_name = {}", quote(self.member)));
            configure(self.data, self.run_dir, port, &opts.listen, &extra)?;
            pg_ctl_start(&bindir, self.data, &log, uid, gid, opts.timeout)?;
            self.wait_streaming(port, opts, t)
        })();
        s.seconds = t.elapsed().as_secs_f64();
        s.streaming = Some(r.is_ok());
        s.error = r.err().map(|e| format!("{e:#}"));
        s
    }

    fn base_backup(&self, bindir: &Path, uid: u32, gid: u32, left: Duration, user: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + left;
        let conninfo = format!(
            "host={} port={} user={} application_name={} connect_timeout=5",
            conninfo_word(&self.up.host),
            self.up.port,
            conninfo_word(user),
            conninfo_word(self.member)
        );
        let log = self.run_dir.join("pg_basebackup.log");
        loop {
            // -w: never ask for a password on a terminal (there may be none).
            let mut child = as_owner(&bindir.join("pg_basebackup"), uid, gid)
                .arg("-D")
                .arg(self.data)
                .args(["-R", "-X", "stream", "-c", "fast", "-w", "-d", &conninfo])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).map_err(|e| anyhow::anyhow!("create {}: {e}", log.display()))?)
                .spawn()
                .map_err(|e| anyhow::anyhow!("run pg_basebackup: {e}; install PostgreSQL's client programs"))?;
            let status = loop {
                if let Some(status) = child.try_wait()? {
                    break Some(status);
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let err = std::fs::read_to_string(&log).unwrap_or_default().trim().replace('\n', " ");
            match status {
                Some(s) if s.success() => return Ok(()),
                Some(_) => {}
                None => anyhow::bail!(
                    "pg_basebackup from the primary at {} did not finish within {} ({err}); pass a longer --timeout",
                    self.up.address(),
                    humantime::format_duration(left)
                ),
            }
            let auth = err.contains("password") || err.contains("authentication");
            if auth || Instant::now() >= deadline {
                let hint = if auth {
                    "set PGPASSWORD (or PGPASSFILE) for recover to the replication user's password"
                } else if err.contains("pg_hba.conf") {
                    "on the primary's host pass --allow with a network that holds this host"
                } else {
                    "check the primary's recover report and log, or pass a longer --timeout"
                };
                anyhow::bail!("pg_basebackup from the primary at {} failed: {err}; {hint}", self.up.address());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn wait_streaming(&self, port: u16, opts: &StartOptions, t: Instant) -> anyhow::Result<()> {
        let conninfo = format!(
            "host={} port={port} user={} dbname=postgres",
            conninfo_word(&self.run_dir.display().to_string()),
            conninfo_word(&opts.pg_user)
        );
        let deadline = t + opts.timeout;
        loop {
            if let Ok(c) = PgConn::connect(Some(&conninfo))
                && let Ok(rows) = c.query("SELECT status FROM pg_stat_wal_receiver")
                && rows.iter().any(|r| r.get::<_, String>(0) == "streaming")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "the standby started but does not stream from {} within {}: {}",
                    self.up.address(),
                    humantime::format_duration(opts.timeout),
                    log_tail(&self.run_dir.join("standby.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The first standby of another host's primary that did not come up, as
/// the command's error.
pub(super) fn failed(services: &[Service]) -> Option<anyhow::Error> {
    let s = services.iter().find(|s| s.upstream.is_some() && s.error.is_some())?;
    Some(user_error(
        format!(
            "the {} of {} at {} did not come up: {}",
            if s.role == Role::Redis { "replica" } else { "standby" },
            s.source,
            s.upstream.as_deref().unwrap_or_default(),
            s.error.as_deref().unwrap_or_default()
        ),
        format!(
            "fix the cause, then recover this host again into a new --to directory (this one's {} holds the \
             failed clone; stop it first if it runs: {})",
            s.data.display(),
            if s.stop.is_empty() { "nothing runs" } else { s.stop.as_str() }
        ),
    ))
}

/// A value in a libpq connection string.
fn conninfo_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_of_takes_an_address_or_a_system_and_an_address() {
        let p = parse_standby_of("10.0.0.5:5432").unwrap();
        assert_eq!((p.system, p.host.as_str(), p.port), (None, "10.0.0.5", 5432));
        let p = parse_standby_of("main=db1.example:6543").unwrap();
        assert_eq!((p.system.as_deref(), p.host.as_str(), p.port), (Some("main"), "db1.example", 6543));
        let p = parse_standby_of("[fd00::1]:5432").unwrap();
        assert_eq!((p.host.as_str(), p.address()), ("fd00::1", "[fd00::1]:5432".to_string()));
        for bad in ["10.0.0.5", "10.0.0.5:x", ":5432", "=1.2.3.4:5", "h:0"] {
            assert!(parse_standby_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_takes_networks_and_single_addresses() {
        assert_eq!(parse_cidr("10.0.1.0/24").unwrap(), "10.0.1.0/24");
        assert_eq!(parse_cidr("10.0.1.7").unwrap(), "10.0.1.7/32");
        assert_eq!(parse_cidr("fd00::/64").unwrap(), "fd00::/64");
        for bad in ["10.0.1.0/33", "all", "0.0.0.0/x", ""] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    fn step(source: &str, cluster: Option<&str>) -> Step {
        Step {
            source: source.into(),
            snapshot: cirkel_repo::Id([0; 32]),
            data_time: chrono::Utc::now(),
            rpo_s: 0.0,
            bytes: 0,
            predicted_s: 0.0,
            dir: String::new(),
            target: None,
            standbys: Vec::new(),
            pg_user: String::new(),
            cluster: cluster.map(String::from),
            primary_member: None,
            standby_of: None,
            argv: Vec::new(),
            seconds: None,
            error: None,
        }
    }

    fn estate() -> Vec<Step> {
        vec![
            step("postgres/7001", Some("main")),
            step("postgres/7002", Some("billing")),
            step("redis/cache", None),
            step("files/srv/uploads", None),
        ]
    }

    #[test]
    fn only_keeps_kinds_and_sources_and_refuses_what_is_not_held() {
        let mut steps = estate();
        select(&mut steps, &["postgres/billing".into(), "files".into()]).unwrap();
        let kept: Vec<&str> = steps.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(kept, ["postgres/7002", "files/srv/uploads"]);
        let mut steps = estate();
        select(&mut steps, &["postgres/7001".into(), "redis/cache".into()]).unwrap();
        assert_eq!(steps.len(), 2);
        let err = select(&mut estate(), &["redis/sessions".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("--only redis/sessions names nothing"), "{err:#}");
    }

    #[test]
    fn standby_of_names_a_system_when_there_are_several() {
        let up = |s: &str| parse_standby_of(s).unwrap();
        let err = assign(&mut estate(), &[up("10.0.0.1:5432")], Kind::Postgres).unwrap_err();
        assert!(format!("{err:#}").contains("which PostgreSQL system? there are 2"), "{err:#}");
        let mut steps = estate();
        assign(&mut steps, &[up("billing=10.0.0.1:5432"), up("7001=10.0.0.2:5433")], Kind::Postgres).unwrap();
        assert_eq!(steps[0].standby_of.as_ref().map(|u| u.address()).as_deref(), Some("10.0.0.2:5433"));
        assert_eq!(steps[1].standby_of.as_ref().map(|u| u.address()).as_deref(), Some("10.0.0.1:5432"));
        let err = assign(&mut estate(), &[up("crm=10.0.0.1:5432")], Kind::Postgres).unwrap_err();
        assert!(format!("{err:#}").contains("no such PostgreSQL system"), "{err:#}");
        let err = assign(&mut estate(), &[up("main=h:1"), up("7001=h:2")], Kind::Postgres).unwrap_err();
        assert!(format!("{err:#}").contains("named by --standby-of twice"), "{err:#}");
        // The only Redis group needs no name.
        let mut steps = estate();
        assign(&mut steps, &[up("10.0.0.3:6379")], Kind::Redis).unwrap();
        assert!(steps[2].standby_of.is_some() && steps[0].standby_of.is_none());
    }

    #[test]
    fn allowed_networks_go_first_below_the_local_lines() {
        let dir = tempfile::tempdir().unwrap();
        let hba = dir.path().join("pg_hba.conf");
        std::fs::write(
            &hba,
            "# cirkel recover: the sockets are in /r (0700)\nlocal all all trust\nlocal replication all trust\nhost all all 0.0.0.0/0 reject\n",
        )
        .unwrap();
        allow_replication(dir.path(), &["10.0.1.0/24".into()], "postgres").unwrap();
        let text = std::fs::read_to_string(&hba).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[4], "host replication postgres 10.0.1.0/24 scram-sha-256", "{text}");
        assert_eq!(lines[5], "host all all 0.0.0.0/0 reject");
    }
}
