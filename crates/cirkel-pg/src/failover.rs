//! The failover executor: the only code that changes a cluster's roles.
//! It promotes the standby the decision core chose, points the other
//! standbys at it, and brings a returning old primary back as a standby
//! with `pg_rewind` (never by deleting its data).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cirkel_config::{PgMemberConfig, PostgresConfig};

use crate::conn::PgConn;

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A libpq connection string to one member.
pub fn member_conninfo(c: &PostgresConfig, m: &PgMemberConfig, timeout: Duration) -> String {
    let mut s = format!("host={} port={} connect_timeout={}", quote(&m.host), m.port, timeout.as_secs().max(1));
    if let Some(u) = &c.user {
        s.push_str(&format!(" user={}", quote(u)));
    }
    if let Some(d) = &c.database {
        s.push_str(&format!(" dbname={}", quote(d)));
    }
    s
}

/// What a standby uses to stream from `primary`.
fn primary_conninfo(c: &PostgresConfig, primary: &PgMemberConfig, standby: &str) -> String {
    let mut s = format!("host={} port={} application_name={}", quote(&primary.host), primary.port, quote(standby));
    if let Some(u) = &c.user {
        s.push_str(&format!(" user={}", quote(u)));
    }
    s
}

fn member<'a>(c: &'a PostgresConfig, name: &str) -> anyhow::Result<&'a PgMemberConfig> {
    c.members.get(name).ok_or_else(|| anyhow::anyhow!("no member `{name}`"))
}

/// Promotes `name` and waits until it accepts writes. The request is
/// repeated every second: a standby whose WAL receiver just lost its
/// primary sometimes sits out `wal_retrieve_retry_interval` (5 s) before it
/// looks at a single request.
pub fn promote(c: &PostgresConfig, name: &str) -> anyhow::Result<()> {
    let m = member(c, name)?;
    let conn = PgConn::connect(Some(&member_conninfo(c, m, c.health.timeout)))?;
    let until = Instant::now() + Duration::from_secs(60);
    let mut asked: Option<Instant> = None;
    loop {
        let in_recovery: bool = conn.query_one("SELECT pg_is_in_recovery()")?.get(0);
        if !in_recovery {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "{name} did not finish promoting within 60 s");
        // Asked without waiting, and watched here: pg_promote's own wait
        // looks only every 100 ms, longer than a promotion usually takes,
        // and that wait is the clients' outage. Asked again each second;
        // an error (another request finished meanwhile) the loop then sees.
        if asked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let _ = conn.query_one("SELECT pg_promote(false)");
            asked = Some(Instant::now());
        }
        std::thread::sleep(PROMOTE_POLL);
    }
}

/// How often a promotion's end is looked for.
const PROMOTE_POLL: Duration = Duration::from_millis(5);

/// Points the standby `name` at `primary` (takes effect on reload).
pub fn follow(c: &PostgresConfig, name: &str, primary: &str) -> anyhow::Result<()> {
    let m = member(c, name)?;
    let p = member(c, primary)?;
    let conn = PgConn::connect(Some(&member_conninfo(c, m, c.health.timeout)))?;
    let info = primary_conninfo(c, p, name).replace('\'', "''");
    conn.execute(&format!("ALTER SYSTEM SET primary_conninfo = '{info}'"))?;
    conn.execute("SELECT pg_reload_conf()")?;
    Ok(())
}

/// Whether a read-write session through `endpoint` (host:port) works now.
pub fn endpoint_writable(c: &PostgresConfig, endpoint: &str) -> bool {
    let Some((host, port)) = endpoint.rsplit_once(':') else { return false };
    let Ok(port) = port.parse::<u16>() else { return false };
    let m = PgMemberConfig { host: host.to_string(), port, ..Default::default() };
    let Ok(conn) = PgConn::connect(Some(&member_conninfo(c, &m, Duration::from_secs(1)))) else { return false };
    conn.query_one("SELECT pg_is_in_recovery()").map(|r| !r.get::<_, bool>(0)).unwrap_or(false)
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().map_err(|e| anyhow::anyhow!("run {:?}: {e}", cmd.get_program()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "{:?} failed: {}", cmd.get_program(), text.trim());
    Ok(text)
}

/// Turns the old primary `name`, running again on this host, into a
/// standby of `primary`: a clean stop, `pg_rewind` from the new primary
/// (which also writes the standby settings), and a start. When rewind is
/// impossible the member is left stopped, with its data, and the error
/// says how to rebuild it.
pub fn rejoin(c: &PostgresConfig, name: &str, primary: &str, log_dir: &Path) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let m = member(c, name)?;
    let p = member(c, primary)?;
    let pgdata = m
        .pgdata
        .clone()
        .ok_or_else(|| anyhow::anyhow!("`{name}` has no pgdata in the configuration, so it cannot be rewound here"))?;
    let bindir = c.bindir.clone().unwrap_or_else(crate::stream::find_bindir);
    let pg_ctl = bindir.join("pg_ctl");
    // pg_rewind reads the new timeline from the source's control file, which
    // a freshly promoted primary updates only at its next checkpoint.
    PgConn::connect(Some(&member_conninfo(c, p, c.health.timeout)))?.execute("CHECKPOINT")?;
    // A postmaster that was killed leaves its pid file; pg_rewind finishes
    // its crash recovery itself.
    if crate::keeper::postmaster_alive(&pgdata) {
        run(Command::new(&pg_ctl).arg("-D").arg(&pgdata).args(["-m", "fast", "-w", "-t", "60", "stop"]))?;
    }
    let source = primary_conninfo(c, p, name);
    let source = match &c.database {
        Some(d) => format!("{source} dbname={}", quote(d)),
        None => source,
    };
    // pg_rewind copies the source's configuration files over the target's;
    // the member keeps its own (port, listen_addresses, memory, access).
    let saved = save_config(&pgdata)?;
    let mut rewind = Command::new(bindir.join("pg_rewind"));
    rewind.arg("--target-pgdata").arg(&pgdata).arg(format!("--source-server={source}")).arg("--write-recovery-conf");
    // WAL the target recycled since the fork comes from the archive when it
    // has a restore_command (`cirkel wal-fetch %f %p`).
    let restore_command =
        Command::new(bindir.join("postgres")).arg("-D").arg(&pgdata).args(["-C", "restore_command"]).output();
    if restore_command.is_ok_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty()) {
        rewind.arg("--restore-target-wal");
    }
    let rewound = run(&mut rewind);
    restore_config(&pgdata, &saved)?;
    if let Err(e) = rewound {
        anyhow::bail!(
            "{e:#}; {name} stays stopped with its data. If WAL was missing, keep more (wal_keep_size) or give it a restore_command; else rebuild it with `pg_basebackup -R` from {primary} into a new directory"
        );
    }
    // pg_rewind wrote standby.signal; the member's own postgresql.auto.conf
    // is back, so the standby settings go after it.
    std::fs::write(pgdata.join("standby.signal"), b"")?;
    let auto = pgdata.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&format!("primary_conninfo = '{}'\n", primary_conninfo(c, p, name).replace('\'', "''")));
    std::fs::write(&auto, conf)?;
    std::fs::create_dir_all(log_dir)?;
    start_member(c, m, &pgdata, &log_dir.join(format!("rejoin-{name}.log")), true)?;
    Ok(start.elapsed())
}

/// The configuration files a member keeps across `pg_rewind`.
const OWN_CONFIG: [&str; 4] = ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"];

/// The member's configuration files, as they are before a rewind.
fn save_config(pgdata: &Path) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let mut saved = Vec::new();
    for f in OWN_CONFIG {
        match std::fs::read(pgdata.join(f)) {
            Ok(bytes) => saved.push((f, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("save {} before pg_rewind: {e}", pgdata.join(f).display()),
        }
    }
    Ok(saved)
}

fn restore_config(pgdata: &Path, saved: &[(&'static str, Vec<u8>)]) -> anyhow::Result<()> {
    for (f, bytes) in saved {
        std::fs::write(pgdata.join(f), bytes)
            .map_err(|e| anyhow::anyhow!("put back {} after pg_rewind: {e}", pgdata.join(f).display()))?;
    }
    Ok(())
}

/// Starts a member on this host on its configured port (and socket
/// directory, when its host is one), waiting for it or not.
pub fn start_member(
    c: &PostgresConfig,
    m: &PgMemberConfig,
    pgdata: &Path,
    log: &Path,
    wait: bool,
) -> anyhow::Result<()> {
    let bindir = c.bindir.clone().unwrap_or_else(crate::stream::find_bindir);
    let mut opts = format!("-p {}", m.port);
    if m.host.starts_with('/') {
        opts.push_str(&format!(" -k {}", m.host));
    }
    let wait: &[&str] = if wait { &["-w", "-t", "120"] } else { &["-W"] };
    run(Command::new(bindir.join("pg_ctl"))
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log)
        .arg("-o")
        .arg(opts)
        .args(wait)
        .arg("start"))?;
    Ok(())
}

/// A finished planned switchover.
#[derive(Clone, Debug)]
pub struct Switched {
    pub old: String,
    pub new: String,
    pub fenced: chrono::DateTime<chrono::Utc>,
    pub stopped: chrono::DateTime<chrono::Utc>,
    pub promoted: chrono::DateTime<chrono::Utc>,
    /// WAL position of the old primary's shutdown checkpoint.
    pub final_lsn: String,
}

/// Waits until the standby `new` (connected as `standby`) has replayed
/// past the old primary's shutdown checkpoint at `end` (`final_lsn`), then
/// promotes it: no acknowledged commit of `old` is left behind.
pub fn promote_past(
    c: &PostgresConfig,
    standby: &PgConn,
    new: &str,
    old: &str,
    final_lsn: &str,
    end: u64,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let replayed = standby
            .query_one("SELECT pg_last_wal_replay_lsn()::text")
            .ok()
            .and_then(|r| r.get::<_, Option<String>>(0))
            .and_then(|l| crate::conn::parse_lsn(&l));
        if replayed.is_some_and(|r| r > end) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "{new} did not replay {old}'s shutdown checkpoint at {final_lsn} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    if c.synchronous {
        crate::ha::set_sync_names(c, new, "")?;
    }
    promote(c, new)
}

/// The location of the last checkpoint of a stopped data directory, from
/// `pg_controldata`, which must say it was shut down cleanly.
pub fn shutdown_checkpoint(c: &PostgresConfig, pgdata: &Path) -> anyhow::Result<(String, u64)> {
    let bindir = c.bindir.clone().unwrap_or_else(crate::stream::find_bindir);
    let out = run(Command::new(bindir.join("pg_controldata")).arg("-D").arg(pgdata))?;
    let field = |name: &str| {
        out.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
    };
    let state = field("Database cluster state").unwrap_or_default();
    anyhow::ensure!(state == "shut down", "{} was not shut down cleanly (state: {state})", pgdata.display());
    let lsn =
        field("Latest checkpoint location").ok_or_else(|| anyhow::anyhow!("pg_controldata gave no checkpoint"))?;
    let bytes = crate::conn::parse_lsn(&lsn).ok_or_else(|| anyhow::anyhow!("bad LSN {lsn}"))?;
    Ok((lsn, bytes))
}

/// A planned switchover from the primary `old` (on this host) to the
/// streaming standby `new`, with no acknowledged commit lost: `fence`
/// stops routing clients (it is called with `None`), `old` is stopped
/// cleanly so that its shutdown checkpoint reaches the standbys, `new` is
/// promoted once it has replayed that far, and `fence(Some(new))` routes
/// clients to it. Until the promotion every failure rolls back: `old` is
/// started again and clients are routed to it. The caller points the other
/// standbys at `new` and rejoins `old` afterwards.
pub fn switchover(
    c: &PostgresConfig,
    old: &str,
    new: &str,
    fence: &dyn Fn(Option<&str>),
    log_dir: &Path,
) -> anyhow::Result<Switched> {
    let o = member(c, old)?;
    let n = member(c, new)?;
    let pgdata = o.pgdata.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "a switchover stops the primary cleanly, so `{old}` needs its `pgdata` in the configuration, on this host"
        )
    })?;
    let bindir = c.bindir.clone().unwrap_or_else(crate::stream::find_bindir);
    std::fs::create_dir_all(log_dir)?;
    let log = log_dir.join(format!("switchover-{old}.log"));
    let standby = PgConn::connect(Some(&member_conninfo(c, n, c.health.timeout)))?;
    let rollback = |why: anyhow::Error| -> anyhow::Error {
        match start_member(c, o, &pgdata, &log, true) {
            Ok(()) => {
                fence(Some(old));
                why.context(format!("switchover rolled back: {old} is the primary again"))
            }
            Err(e) => {
                why.context(format!("switchover failed, and {old} did not start again ({e:#}); start it by hand"))
            }
        }
    };
    let fenced = chrono::Utc::now();
    fence(None);
    if let Err(e) =
        run(Command::new(bindir.join("pg_ctl")).arg("-D").arg(&pgdata).args(["-m", "fast", "-w", "-t", "60", "stop"]))
    {
        fence(Some(old));
        return Err(e.context(format!("could not stop {old}; nothing changed")));
    }
    let stopped = chrono::Utc::now();
    let (final_lsn, end) = match shutdown_checkpoint(c, &pgdata) {
        Ok(v) => v,
        Err(e) => return Err(rollback(e)),
    };
    if let Err(e) = promote_past(c, &standby, new, old, &final_lsn, end) {
        return Err(rollback(e));
    }
    let promoted = chrono::Utc::now();
    fence(Some(new));
    Ok(Switched { old: old.into(), new: new.into(), fenced, stopped, promoted, final_lsn })
}
