//! The plan's failover drill made real: a canary writer through the
//! read-write endpoint, the primary killed with SIGKILL, RTO (kill → first
//! acknowledged write through the endpoint) and RPO (acknowledged canary
//! writes missing afterwards) measured, the old primary started again and
//! left to `cirkel serve` to rejoin, and the cluster checked healthy.
//!
//! The same canary measures a planned switchover (`cirkel drill
//! switchover`): the longest gap between acknowledged writes is the write
//! pause clients saw.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_config::{PgMemberConfig, PostgresConfig};
use cirkel_state::DrillReport;
use serde::Serialize;

use crate::conn::PgConn;
use crate::failover::member_conninfo;
use crate::members::status;

pub mod network;

/// What a failover or switchover drill measured.
pub type FailoverReport = DrillReport<PgDrill>;

/// What only a PostgreSQL drill knows, beside [`DrillReport`]'s measures.
#[derive(Clone, Debug, Serialize)]
pub struct PgDrill {
    pub cluster: String,
    /// The primary when the drill began.
    pub old_primary: String,
    /// The member killed with SIGKILL (failover drills only; a switchover kills nobody).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed: Option<String>,
    /// The member stopped with SIGSTOP and continued at the end (`--fault stop`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// The zone cut off (`--fault zone`): every member in it frozen, its
    /// postmaster and all its processes, and continued at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cut_off: Vec<String>,
    /// The member whose WAL volume was filled (`--fault disk-full`), and
    /// by how much.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filled: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon_bytes: Option<u64>,
    /// The member cut off from the network (`--fault partition`): every
    /// packet to and from its address and port dropped, until the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitioned: Option<String>,
    pub new_primary: Option<String>,
    /// The longest gap between two acknowledged canary writes across the
    /// fault: what a client saw of the outage, at the canary's 10 ms pace.
    pub write_pause_s: Option<f64>,
}

fn endpoint(c: &PostgresConfig) -> anyhow::Result<PgMemberConfig> {
    let ep = c.proxy_listen.as_deref().ok_or_else(|| {
        anyhow::anyhow!("the cluster has no proxy_listen endpoint; a drill writes through it as clients do")
    })?;
    let (host, port) = ep.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("proxy_listen `{ep}` is not host:port"))?;
    Ok(PgMemberConfig { host: host.to_string(), port: port.parse()?, ..Default::default() })
}

/// Whether `pid` is a process that has exited but was not reaped.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// A fault a drill injected and has not undone yet, kept in the state
/// directory (`drill-fault.json`) from just before it is injected until it
/// is undone: a drill killed meanwhile leaves it for the next start of
/// `cirkel serve` (or the next drill) to undo.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Leftover {
    /// The drill's process.
    pub pid: u32,
    /// The drill's name in the history (`--name`), when given.
    #[serde(default)]
    pub name: Option<String>,
    pub cluster: String,
    /// The member whose postmaster was killed (or stopped).
    pub member: String,
    /// `kill` (SIGKILL: started again) or `stop` (SIGSTOP of `postmaster`:
    /// continued).
    #[serde(default = "default_fault")]
    pub fault: String,
    #[serde(default)]
    pub postmaster: Option<u32>,
    /// `zone`: every process frozen, to continue.
    #[serde(default)]
    pub frozen: Vec<u32>,
    /// `disk-full`: the file that fills the WAL volume, to remove.
    #[serde(default)]
    pub balloon: Option<std::path::PathBuf>,
    /// `partition`, `loss`, `latency`: the nftables table holding the
    /// fault's rules, to delete.
    #[serde(default)]
    pub nft_table: Option<String>,
    pub started: chrono::DateTime<Utc>,
}

pub const LEFTOVER_FILE: &str = "drill-fault.json";

fn default_fault() -> String {
    "kill".into()
}

/// Undoes the fault of a drill that was killed before it could: the
/// member it killed is started again (its `cirkel serve` rejoins it).
/// Returns what was done, for the caller to record; nothing while the
/// drill that wrote it still runs.
pub fn undo_leftover(
    state: &cirkel_state::StateDir,
    clusters: &std::collections::BTreeMap<String, PostgresConfig>,
) -> anyhow::Result<Option<(Leftover, String)>> {
    let Some(left) = state.load_json::<Leftover>(LEFTOVER_FILE)? else { return Ok(None) };
    let alive = std::fs::read_to_string(format!("/proc/{}/cmdline", left.pid))
        .is_ok_and(|c| c.contains("drill") && !is_zombie(left.pid));
    if alive {
        return Ok(None);
    }
    if let Some(table) = &left.nft_table {
        // Kept on record while it cannot be removed (removing needs
        // CAP_NET_ADMIN): the next drill, which has it, removes it.
        let done = match crate::netfault::remove_table(table) {
            Ok(true) => format!("the network fault on {} was removed (nft table inet {table})", left.member),
            Ok(false) => format!("the network fault on {} was already gone", left.member),
            Err(e) => anyhow::bail!(
                "the network fault a killed drill left on {} is still in place: {e:#}; it is removed by the next \
                 network drill, by `cirkel serve` with CAP_NET_ADMIN, or by hand: `nft delete table inet {table}`",
                left.member
            ),
        };
        let _ = std::fs::remove_file(state.root().join(LEFTOVER_FILE));
        return Ok(Some((left, done)));
    }
    if left.fault == "zone" {
        let continued = continue_all(&left.frozen);
        let _ = std::fs::remove_file(state.root().join(LEFTOVER_FILE));
        let done = format!("{} ({continued} of {} processes) continued", left.member, left.frozen.len());
        return Ok(Some((left, done)));
    }
    let freed = match &left.balloon {
        Some(b) => match std::fs::remove_file(b) {
            Ok(()) => format!("{} removed; ", b.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => format!("{} could not be removed ({e}): remove it by hand; ", b.display()),
        },
        None => String::new(),
    };
    let done = match clusters.get(&left.cluster).and_then(|c| c.members.get(&left.member).map(|m| (c, m))) {
        Some(_) if left.fault == "stop" => match left.postmaster {
            // SAFETY: kill(2) with SIGCONT on the pid the drill stopped.
            Some(pid) if unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) } == 0 => {
                format!("{} (pid {pid}) was continued", left.member)
            }
            _ => format!("{} was no longer stopped", left.member),
        },
        Some((c, m)) => match &m.pgdata {
            Some(pgdata) if crate::keeper::postmaster_alive(pgdata) => format!("{} already runs again", left.member),
            Some(pgdata) => {
                clear_dead_locks(pgdata, m);
                let log = std::env::temp_dir().join(format!("cirkel-drill-{}-{}.log", left.cluster, left.member));
                match crate::failover::start_member(c, m, pgdata, &log, true) {
                    Ok(()) => format!("{} was started again", left.member),
                    Err(e) => format!("{} could not be started again: {e:#}; start it by hand", left.member),
                }
            }
            None => format!("{} has no pgdata here; start it on its host", left.member),
        },
        None => format!("cluster {} or member {} is no longer configured", left.cluster, left.member),
    };
    let _ = std::fs::remove_file(state.root().join(LEFTOVER_FILE));
    Ok(Some((left, format!("{freed}{done}"))))
}

/// The largest free space the disk-full fault fills: more means the WAL
/// shares a large disk with everything else on the host, which a drill
/// must not take down.
pub const DISK_FULL_LIMIT: u64 = 4 << 30;

/// Free bytes for an unprivileged writer on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statvfs(3) writes into the zeroed struct we pass.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Fills the file system with one file at `balloon`: allocated at once
/// where it can be, then written until the file system refuses more.
fn fill(balloon: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    let free = free_bytes(balloon.parent().unwrap_or(balloon))?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(balloon)?;
    // SAFETY: posix_fallocate(3) on the file just opened.
    let _ = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, free as libc::off_t) };
    let mut written = f.metadata()?.len();
    let chunk = vec![0u8; 1 << 16];
    use std::io::Seek;
    f.seek(std::io::SeekFrom::End(0))?;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = f.sync_all();
    Ok(written)
}

/// SIGCONT to each pid; how many were continued.
fn continue_all(pids: &[u32]) -> usize {
    // SAFETY: kill(2) with SIGCONT on pids this drill froze.
    pids.iter().filter(|p| unsafe { libc::kill(**p as libc::pid_t, libc::SIGCONT) } == 0).count()
}

/// A postmaster and every process it started (backends, walsenders,
/// background workers), from `/proc`: what freezing a host freezes.
fn process_tree(postmaster: u32) -> Vec<u32> {
    let mut out = vec![postmaster];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| {
                let (_, rest) = s.rsplit_once(')')?;
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
            if parent == Some(postmaster) {
                out.push(pid);
            }
        }
    }
    out
}

/// The postmaster's pid from `postmaster.pid`.
fn postmaster_pid(pgdata: &std::path::Path) -> anyhow::Result<u32> {
    std::fs::read_to_string(pgdata.join("postmaster.pid"))?
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read the postmaster's pid in {}", pgdata.display()))
}

/// Where nothing reaps orphans, a killed postmaster stays a zombie, and
/// its lock files (naming a pid that still exists) would keep a new one
/// from starting: they are removed.
fn clear_dead_locks(pgdata: &std::path::Path, m: &PgMemberConfig) {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else { return };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    if !lines.first().and_then(|l| l.parse::<u32>().ok()).is_some_and(is_zombie) {
        return;
    }
    let _ = std::fs::remove_file(pgdata.join("postmaster.pid"));
    // postmaster.pid names the port (line 4) and the socket directory
    // (line 5) the server used, wherever the member is reached from.
    let port = lines.get(3).and_then(|l| l.parse::<u16>().ok()).unwrap_or(m.port);
    let mut dirs: Vec<&str> = lines.get(4).filter(|d| d.starts_with('/')).into_iter().copied().collect();
    if m.host.starts_with('/') {
        dirs.push(&m.host);
    }
    for dir in dirs {
        let _ = std::fs::remove_file(std::path::Path::new(dir).join(format!(".s.PGSQL.{port}.lock")));
    }
}

/// One write the canary had acknowledged.
#[derive(Clone, Debug)]
pub struct Ack {
    pub seq: u64,
    /// When it was acknowledged.
    pub at: Instant,
    /// How long it took, from the statement sent to its answer.
    pub took: Duration,
    /// The port of the server that acknowledged it (a member's, on the
    /// endpoint's far side).
    pub port: String,
}

/// A writer that inserts one row through the endpoint every 10 ms, as a
/// client would, and keeps what was acknowledged: what a drill measures
/// the outage and the data lost with.
pub struct Canary {
    pub run: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Ack>>>,
    failed: Arc<Mutex<usize>>,
    writer: std::thread::JoinHandle<()>,
}

impl Canary {
    /// Creates the canary's table through the endpoint `ep` and starts
    /// writing.
    pub fn start(c: &PostgresConfig, ep: &PgMemberConfig) -> anyhow::Result<Canary> {
        let setup = PgConn::connect(Some(&member_conninfo(c, ep, Duration::from_secs(2))))?;
        setup
            .execute("CREATE TABLE IF NOT EXISTS cirkel_drill_canary (run text, seq bigint, PRIMARY KEY (run, seq))")?;
        drop(setup);
        let run = format!("{:08x}", rand::random::<u32>());
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Ack>>> = Default::default();
        let failed = Arc::new(Mutex::new(0usize));
        let writer = {
            let (c, ep, stop, acked, failed, run) =
                (c.clone(), ep.clone(), stop.clone(), acked.clone(), failed.clone(), run.clone());
            std::thread::spawn(move || {
                let mut conn: Option<PgConn> = None;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    if conn.is_none() {
                        conn = PgConn::connect(Some(&member_conninfo(&c, &ep, Duration::from_secs(1)))).ok();
                    }
                    let sql = format!(
                        "INSERT INTO cirkel_drill_canary VALUES ('{run}', {seq}) RETURNING current_setting('port')"
                    );
                    let sent = Instant::now();
                    match conn.as_ref().map(|k| k.query_one(&sql)) {
                        Some(Ok(row)) => {
                            let port: String = row.get(0);
                            let at = Instant::now();
                            if let Ok(mut a) = acked.lock() {
                                a.push(Ack { seq, at, took: at - sent, port });
                            }
                        }
                        _ => {
                            conn = None;
                            if let Ok(mut f) = failed.lock() {
                                *f += 1;
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Ok(Canary { run, stop, acked, failed, writer })
    }

    /// When the first acknowledged write matching `f` was acknowledged.
    pub fn first_ack(&self, f: impl Fn(&Ack) -> bool) -> Option<Instant> {
        self.acked.lock().ok()?.iter().find(|a| f(a)).map(|a| a.at)
    }

    /// Stops writing: every acknowledged write, and how many failed.
    pub fn stop(self) -> anyhow::Result<(Vec<Ack>, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.writer.join();
        let acked = std::mem::take(&mut *self.acked.lock().map_err(|_| anyhow::anyhow!("canary panicked"))?);
        let failed = *self.failed.lock().map_err(|_| anyhow::anyhow!("canary panicked"))?;
        Ok((acked, failed))
    }
}

/// The longest gap between two acknowledged writes across `from`..`to`:
/// what a client saw of an outage, at the canary's 10 ms pace.
pub fn longest_pause(acked: &[Ack], from: Instant, to: Instant) -> Option<f64> {
    acked
        .windows(2)
        .filter(|w| w[1].at > from && w[0].at <= to)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .reduce(f64::max)
}

/// How many acknowledged writes of run `run` are missing on `conn`'s
/// server; the run's rows are removed.
pub fn count_lost(conn: &PgConn, run: &str, acked: &[Ack]) -> anyhow::Result<usize> {
    let present: HashSet<i64> = conn
        .query(&format!("SELECT seq FROM cirkel_drill_canary WHERE run = '{run}'"))?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect();
    conn.execute(&format!("DELETE FROM cirkel_drill_canary WHERE run = '{run}'"))?;
    Ok(acked.iter().filter(|a| !present.contains(&(a.seq as i64))).count())
}

/// The fault a drill injects.
pub enum Fault<'a> {
    /// SIGKILL of the primary's postmaster.
    Kill,
    /// SIGSTOP of the primary's postmaster: a hung server, alive but
    /// silent; SIGCONT at the end (it comes back as an old primary, which
    /// `cirkel serve` rewinds).
    Stop,
    /// A planned switchover asked of the watcher (to a member, or the best).
    Switchover { state: &'a cirkel_state::StateDir, to: Option<String> },
    /// The primary's WAL volume filled to the last byte, and WAL segments
    /// switched on it until PostgreSQL needs a new one and stops; the file
    /// is removed at the end and the old primary started again.
    DiskFull,
    /// A zone cut off (the primary's, when `None`): every member whose
    /// `zone` it is frozen with SIGSTOP, the postmaster and every process
    /// it started, so nothing there answers or sends; SIGCONT at the end.
    Zone(Option<String>),
    /// The primary cut off from the network (its address and port, both
    /// directions, with nftables), alive and still a primary for itself;
    /// reconnected at the end, it comes back as an old primary, which
    /// `cirkel serve` rewinds.
    Partition,
}

/// Runs the drill. `cirkel serve` must be watching the cluster: it is what
/// fails over and rejoins; the drill only injects the fault and measures.
pub fn drill(cluster: &str, c: &PostgresConfig, timeout: Duration) -> anyhow::Result<FailoverReport> {
    run_drill(cluster, c, timeout, Fault::Kill, &AtomicBool::new(false), None)
}

/// Runs the drill; `abort` turning true stops the waiting at once: the
/// fault is undone (a killed primary is started again, for `cirkel serve`
/// to rejoin) and the report says the drill was aborted. With
/// `leftovers`, the fault is recorded there (with the drill's name) until
/// it is undone, for [`undo_leftover`] after a crash.
pub fn run_drill(
    cluster: &str,
    c: &PostgresConfig,
    timeout: Duration,
    fault: Fault,
    abort: &AtomicBool,
    leftovers: Option<(&cirkel_state::StateDir, Option<String>)>,
) -> anyhow::Result<FailoverReport> {
    let ep = endpoint(c)?;
    let before = status(cluster, c);
    if !before.healthy {
        anyhow::bail!("the cluster is not healthy, so a drill would prove nothing: {}", before.problems.join("; "));
    }
    let old = before.primary.clone().ok_or_else(|| anyhow::anyhow!("no primary"))?;
    let old_cfg = c.members.get(&old).cloned().unwrap_or_default();
    let pgdata = old_cfg.pgdata.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "the primary {old} has no pgdata in the configuration: a drill stops it and must run on its host"
        )
    })?;
    let mut client = None;
    if let Fault::Switchover { state, .. } = &fault {
        client = cirkel_state::control::Client::connect(state)?;
        if client.is_none() {
            anyhow::bail!(
                "no cirkel serve answers on this state directory's control socket; the switchover drill asks it"
            );
        }
    }
    let pid = postmaster_pid(&pgdata)?;
    // A zone: its members, each with a data directory here.
    let zone = match &fault {
        Fault::Zone(z) => Some(z.clone().unwrap_or_else(|| old_cfg.zone.clone())),
        _ => None,
    };
    let partition = match &fault {
        Fault::Partition => Some(crate::netfault::Target::resolve(&old, &old_cfg.host, old_cfg.port)?),
        _ => None,
    };
    let table = crate::netfault::table_name(std::process::id());
    let mut cut_off = Vec::new();
    let mut postmasters = Vec::new();
    let balloon = match &fault {
        Fault::DiskFull => {
            let wal = std::fs::canonicalize(pgdata.join("pg_wal"))?;
            let free = free_bytes(&wal)?;
            if free > DISK_FULL_LIMIT {
                anyhow::bail!(
                    "the WAL volume of {old} ({}) has {} MiB free: the disk-full fault fills only a volume with at most {} MiB \
                     free, so that no drill fills a disk the whole host shares; put pg_wal on its own volume (initdb --waldir)",
                    wal.display(),
                    free >> 20,
                    DISK_FULL_LIMIT >> 20
                );
            }
            Some(wal.join("cirkel-drill-balloon"))
        }
        _ => None,
    };
    if let Some(z) = &zone {
        for (n, m) in c.members.iter().filter(|(_, m)| m.zone == *z) {
            let data = m.pgdata.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "member {n} in zone {z} has no pgdata in the configuration: a zone drill runs on its host"
                )
            })?;
            postmasters.push(postmaster_pid(data)?);
            cut_off.push(n.clone());
        }
        if !cut_off.contains(&old) {
            anyhow::bail!(
                "the primary {old} is not in zone `{z}` (members there: {}); cutting it off would fail nothing over",
                if cut_off.is_empty() { "none".to_string() } else { cut_off.join(", ") }
            );
        }
    }
    let started = Utc::now();
    let stop = Arc::new(AtomicBool::new(false));
    let canary = Canary::start(c, &ep)?;
    std::thread::sleep(Duration::from_secs(1));
    let kind = match &fault {
        Fault::Kill | Fault::Stop | Fault::Zone(_) | Fault::DiskFull | Fault::Partition => "postgres-failover",
        Fault::Switchover { .. } => "postgres-switchover",
    };
    let mut asked = None;
    let mut pressure = None;
    let mut balloon_bytes = None;
    // Frozen, in order: each postmaster first (so it starts nothing new),
    // then what it had started.
    let frozen: Vec<u32> = postmasters.iter().flat_map(|p| process_tree(*p)).collect();
    if let (Fault::Kill | Fault::Stop | Fault::Zone(_) | Fault::DiskFull | Fault::Partition, Some((state, name))) =
        (&fault, &leftovers)
    {
        let left = Leftover {
            pid: std::process::id(),
            name: name.clone(),
            cluster: cluster.to_string(),
            member: if zone.is_some() { cut_off.join(",") } else { old.clone() },
            fault: match fault {
                Fault::Stop => "stop",
                Fault::Zone(_) => "zone",
                Fault::DiskFull => "disk-full",
                Fault::Partition => "partition",
                _ => "kill",
            }
            .into(),
            postmaster: Some(pid),
            frozen: frozen.clone(),
            balloon: balloon.clone(),
            nft_table: partition.is_some().then(|| table.clone()),
            started,
        };
        state.save_json(LEFTOVER_FILE, &left)?;
    }
    let mut cut = None;
    let injected = match &fault {
        Fault::Partition => match &partition {
            Some(t) => crate::netfault::inject(crate::netfault::NetFault::Partition, t, &table).map(|i| {
                cut = Some(i);
            }),
            None => Err(anyhow::anyhow!("no address to cut off")),
        },
        // SAFETY: kill(2) on the pid PostgreSQL wrote for its postmaster.
        Fault::Kill => match unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!("cannot kill {old} (pid {pid}): {}", std::io::Error::last_os_error())),
        },
        // SAFETY: as above, with SIGSTOP.
        Fault::Stop => match unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) } {
            0 => Ok(()),
            _ => Err(anyhow::anyhow!("cannot stop {old} (pid {pid}): {}", std::io::Error::last_os_error())),
        },
        Fault::DiskFull => match balloon.as_deref().map(fill) {
            Some(Ok(bytes)) => {
                balloon_bytes = Some(bytes);
                // Segment switches on the old primary until it needs a new
                // segment: the canary alone would take minutes to fill one.
                let (c, m, stop) = (c.clone(), old_cfg.clone(), stop.clone());
                pressure = Some(std::thread::spawn(move || {
                    let mut conn: Option<PgConn> = None;
                    while !stop.load(Ordering::Relaxed) {
                        if conn.is_none() {
                            conn = PgConn::connect(Some(&member_conninfo(&c, &m, Duration::from_secs(1)))).ok();
                        }
                        if conn.as_ref().is_some_and(|k| k.query_one("SELECT pg_switch_wal()").is_err()) {
                            conn = None;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }));
                Ok(())
            }
            Some(Err(e)) => {
                if let Some(b) = &balloon {
                    let _ = std::fs::remove_file(b);
                }
                Err(anyhow::anyhow!("cannot fill the WAL volume of {old}: {e:#}"))
            }
            None => Err(anyhow::anyhow!("no WAL volume to fill")),
        },
        Fault::Zone(_) => {
            let mut result = Ok(());
            for p in &frozen {
                // SAFETY: kill(2) with SIGSTOP on the zone's PostgreSQL processes.
                if unsafe { libc::kill(*p as libc::pid_t, libc::SIGSTOP) } != 0 && postmasters.contains(p) {
                    result = Err(anyhow::anyhow!("cannot stop pid {p}: {}", std::io::Error::last_os_error()));
                }
            }
            if result.is_err() {
                continue_all(&frozen);
            }
            result
        }
        Fault::Switchover { to, .. } => match client.take() {
            // The reply comes once the switchover is done; the canary measures meanwhile.
            Some(mut client) => {
                let req = cirkel_state::control::Request::Switchover {
                    cluster: cluster.to_string(),
                    to: to.clone(),
                    at: None,
                };
                asked = Some(std::thread::spawn(move || client.call(&req, Some(timeout * 2))));
                Ok(())
            }
            None => Err(anyhow::anyhow!("no control socket to ask")),
        },
    };
    let killed = matches!(fault, Fault::Kill);
    let filled = matches!(fault, Fault::DiskFull);
    let stopped = matches!(fault, Fault::Stop);
    let zoned = matches!(fault, Fault::Zone(_));
    let partitioned = matches!(fault, Fault::Partition);
    let fault = Instant::now();
    if let Err(e) = injected {
        stop.store(true, Ordering::Relaxed);
        let _ = canary.stop();
        // Nothing was injected: nothing is left to undo.
        if let Some((state, _)) = &leftovers {
            let _ = std::fs::remove_file(state.root().join(LEFTOVER_FILE));
        }
        return Err(e);
    }
    let old_port = old_cfg.port.to_string();
    let mut failures = Vec::new();
    let mut first = None;
    while fault.elapsed() < timeout && !abort.load(Ordering::Relaxed) {
        if let Some(t) = canary.first_ack(|a| a.at > fault && a.port != old_port) {
            first = Some(t);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if abort.load(Ordering::Relaxed) {
        failures.push("aborted before the end".into());
    } else if first.is_none() {
        failures.push(format!("no write went through the endpoint within {timeout:?}: is `cirkel serve` running?"));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let run = canary.run.clone();
    let (acked, writes_failed) = canary.stop()?;
    if let Some(p) = pressure {
        let _ = p.join();
    }
    let write_pause_s = first.and_then(|first| longest_pause(&acked, fault, first));

    let mut lost = 0;
    let mut new_primary = None;
    if first.is_some() {
        let conn = PgConn::connect(Some(&member_conninfo(c, &ep, Duration::from_secs(2))))?;
        lost = count_lost(&conn, &run, &acked)?;
        let port: String = conn.query_one("SELECT current_setting('port')")?.get(0);
        new_primary = c.members.iter().find(|(_, m)| m.port.to_string() == port).map(|(n, _)| n.clone());
    }

    // Start the old primary again; `cirkel serve` rewinds it into a standby.
    // Where nothing reaps orphans, the dead postmaster stays a zombie and its
    // lock files would keep the new one from starting.
    if let Some(b) = &balloon
        && let Err(e) = std::fs::remove_file(b)
    {
        failures.push(format!("could not remove {}: {e}; remove it by hand", b.display()));
    }
    // A full WAL volume stops PostgreSQL (a PANIC, then a startup that
    // cannot write): freed, it is started again like a killed one.
    let restart = killed || (filled && !crate::keeper::postmaster_alive(&pgdata));
    if restart {
        clear_dead_locks(&pgdata, &old_cfg);
    }
    let log = std::env::temp_dir().join(format!("cirkel-drill-{cluster}-{old}.log"));
    // SAFETY: kill(2) with SIGCONT on the postmaster this drill stopped.
    if stopped && unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) } != 0 {
        failures.push(format!("could not continue {old} (pid {pid}): {}", std::io::Error::last_os_error()));
    }
    if let Some(cut) = cut.take()
        && let Err(e) = cut.undo()
    {
        failures.push(format!("{e:#}; the drill's rules are still in place: delete them by hand"));
    }
    if zoned && continue_all(&frozen) < postmasters.len() {
        failures.push(format!("not every process of zone {} could be continued", zone.clone().unwrap_or_default()));
    }
    if !restart {
        // The watcher rejoins the old primary itself after a switchover.
    } else if let Err(e) = crate::failover::start_member(c, &old_cfg, &pgdata, &log, false) {
        failures.push(format!("could not start {old} again: {e:#} (log: {})", log.display()));
    }
    if let Some((state, _)) = &leftovers {
        let _ = std::fs::remove_file(state.root().join(LEFTOVER_FILE));
    }
    let mut rejoin_s = None;
    let mut after = status(cluster, c);
    // Aborted: the old primary is started again, and not waited for.
    while fault.elapsed() < timeout * 2 && !abort.load(Ordering::Relaxed) {
        after = status(cluster, c);
        let back = after.members.iter().any(|m| {
            m.name == old
                && m.role.as_deref() == Some("standby")
                && m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming"))
        });
        if back && after.healthy {
            rejoin_s = Some(fault.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if rejoin_s.is_none() && !abort.load(Ordering::Relaxed) {
        failures.push(format!("{old} did not come back as a streaming standby: {}", after.problems.join("; ")));
    }
    if let Some(asked) = asked {
        use cirkel_state::control::Reply;
        match asked.join() {
            Ok(Ok(Reply::Outcome { event })) if event.kind == "switchover" => {}
            Ok(Ok(Reply::Outcome { event })) => failures.push(event.message),
            Ok(Ok(other)) => failures.push(format!("cirkel serve answered the switchover with {other:?}")),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("the switchover request panicked".into()),
        }
    }
    // Kill → first canary write acknowledged through the endpoint.
    let rto_s = first.map(|t| (t - fault).as_secs_f64());
    let timeline_s = [("writable", rto_s), ("rejoined", rejoin_s)]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect();
    Ok(DrillReport {
        kind: kind.into(),
        started,
        passed: failures.is_empty(),
        failures,
        engine: PgDrill {
            cluster: cluster.to_string(),
            killed: killed.then(|| old.clone()),
            stopped: stopped.then(|| old.clone()),
            zone,
            cut_off,
            filled: filled.then(|| old.clone()),
            balloon_bytes,
            partitioned: partitioned.then(|| old.clone()),
            old_primary: old,
            new_primary,
            write_pause_s,
        },
        rto_s,
        writes_acknowledged: acked.len(),
        writes_failed,
        writes_lost: lost,
        timeline_s,
        rejoin_s,
        healthy_after: after.healthy,
        problems_after: after.problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(pid: u32) -> char {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()))
            .unwrap_or('?')
    }

    #[test]
    fn a_frozen_zone_left_by_a_killed_drill_is_continued_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = cirkel_state::StateDir::new(dir.path().join("state"));
        state.ensure().unwrap();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // SAFETY: stopping the child this test started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        let t = Instant::now();
        while state_of(pid) != 'T' && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(state_of(pid), 'T');
        // Written by a drill that is gone (pid 0 is never a drill's).
        let left = Leftover {
            pid: 0,
            name: Some("quarterly-zone".into()),
            cluster: "main".into(),
            member: "a".into(),
            fault: "zone".into(),
            postmaster: Some(pid),
            frozen: vec![pid],
            balloon: None,
            nft_table: None,
            started: Utc::now(),
        };
        state.save_json(LEFTOVER_FILE, &left).unwrap();
        let (back, done) = undo_leftover(&state, &Default::default()).unwrap().unwrap();
        assert_eq!(back.name.as_deref(), Some("quarterly-zone"));
        assert!(done.contains("(1 of 1 processes) continued"), "{done}");
        assert_ne!(state_of(pid), 'T', "still stopped");
        assert!(undo_leftover(&state, &Default::default()).unwrap().is_none(), "undone once");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A network fault a killed drill left (its nftables table) is
    /// removed once, and the run is reported.
    #[test]
    fn a_network_fault_left_by_a_killed_drill_is_removed_once() {
        let dir = tempfile::tempdir().unwrap();
        let state = cirkel_state::StateDir::new(dir.path().join("state"));
        state.ensure().unwrap();
        let table = format!("cirkel_drill_unit_{}", std::process::id());
        let t = crate::netfault::Target { addrs: vec![std::net::IpAddr::from([127, 0, 0, 9])], port: 9 };
        let injected = crate::netfault::inject(crate::netfault::NetFault::Loss(50), &t, &table).unwrap();
        std::mem::forget(injected); // as a kill -9 would
        assert!(crate::netfault::table_exists(&table));
        let left = Leftover {
            pid: 0,
            name: Some("weekly-loss".into()),
            cluster: "main".into(),
            member: "a".into(),
            fault: "network loss=50%".into(),
            postmaster: None,
            frozen: Vec::new(),
            balloon: None,
            nft_table: Some(table.clone()),
            started: Utc::now(),
        };
        state.save_json(LEFTOVER_FILE, &left).unwrap();
        let (back, done) = undo_leftover(&state, &Default::default()).unwrap().unwrap();
        assert_eq!(back.name.as_deref(), Some("weekly-loss"));
        assert!(done.contains("was removed") && done.contains(&table), "{done}");
        assert!(!crate::netfault::table_exists(&table));
        assert!(undo_leftover(&state, &Default::default()).unwrap().is_none(), "undone once");
    }

    /// A killed postmaster left a zombie: its lock files go, in the socket
    /// directory postmaster.pid names even for a member reached over TCP.
    #[test]
    fn a_dead_postmasters_locks_are_cleared_where_it_listened() {
        let dir = tempfile::tempdir().unwrap();
        let (data, sock) = (dir.path().join("data"), dir.path().join("sock"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&sock).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let t = Instant::now();
        while !is_zombie(child.id()) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid_file =
            format!("{}\n{}\n1700000000\n45651\n{}\n127.0.0.1\n", child.id(), data.display(), sock.display());
        std::fs::write(data.join("postmaster.pid"), pid_file).unwrap();
        std::fs::write(sock.join(".s.PGSQL.45651.lock"), "x").unwrap();
        let m = PgMemberConfig { host: "127.0.0.1".into(), port: 45651, ..Default::default() };
        clear_dead_locks(&data, &m);
        assert!(!data.join("postmaster.pid").exists());
        assert!(!sock.join(".s.PGSQL.45651.lock").exists());
        child.wait().unwrap();
        // A live postmaster's are left alone.
        std::fs::write(data.join("postmaster.pid"), format!("{}\n", std::process::id())).unwrap();
        clear_dead_locks(&data, &m);
        assert!(data.join("postmaster.pid").exists());
    }

    #[test]
    fn a_postmasters_tree_holds_it_and_its_children() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let t = Instant::now();
        let mut tree = process_tree(child.id());
        while tree.len() < 2 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
            tree = process_tree(child.id());
        }
        assert_eq!(tree[0], child.id());
        assert_eq!(tree.len(), 2, "{tree:?}");
        for p in &tree {
            // SAFETY: the processes this test started.
            unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
        }
        let _ = child.wait();
    }
}
