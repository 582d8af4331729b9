//! Continuous WAL streaming: `pg_receivewal` on a replication slot writes
//! into a local spool; every interval, completed segments are archived and
//! the growing `.partial` segment is uploaded as a new partial copy, so the
//! newest WAL reaches the repository within about one interval of its commit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cirkel_repo::Repository;
use serde::Serialize;

use crate::wal::{self, WalFile};

#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub spool: PathBuf,
    pub slot: String,
    pub interval: Duration,
    /// Directory with `pg_receivewal`.
    pub bindir: PathBuf,
    /// A libpq connection string for pg_receivewal; else the PG* environment.
    pub conninfo: Option<String>,
    /// Stop after this long (for drills and tests); run until stopped otherwise.
    pub run_for: Option<Duration>,
    /// Leave the replication slot on a clean stop. Without it the slot is
    /// dropped: an unused slot holds WAL back on the server until its disk fills.
    pub keep_slot: bool,
}

/// Counters of one streaming session.
#[derive(Debug, Default, Serialize)]
pub struct StreamStats {
    pub segments_archived: u64,
    pub partial_uploads: u64,
    pub receiver_restarts: u64,
}

struct Receiver {
    child: Option<Child>,
    started: Instant,
}

fn receivewal(opts: &StreamOptions) -> Command {
    let mut c = Command::new(opts.bindir.join("pg_receivewal"));
    if let Some(ci) = &opts.conninfo {
        let (ci, password) = crate::conn::split_password(ci);
        c.args(["-d", &ci]);
        if let Some(p) = password {
            c.env("PGPASSWORD", p);
        }
    }
    c
}

fn create_slot(opts: &StreamOptions) -> anyhow::Result<()> {
    let out = receivewal(opts)
        .args(["--create-slot", "--if-not-exists", "--slot", &opts.slot])
        .output()
        .map_err(|e| anyhow::anyhow!("run {}: {e}", opts.bindir.join("pg_receivewal").display()))?;
    if !out.status.success() {
        anyhow::bail!("create replication slot {}: {}", opts.slot, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn drop_slot(opts: &StreamOptions) -> anyhow::Result<()> {
    let out = receivewal(opts)
        .args(["--drop-slot", "--slot", &opts.slot, "--no-password"])
        .output()
        .map_err(|e| anyhow::anyhow!("run {}: {e}", opts.bindir.join("pg_receivewal").display()))?;
    if !out.status.success() {
        anyhow::bail!("drop replication slot {}: {}", opts.slot, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn spawn(opts: &StreamOptions) -> anyhow::Result<Child> {
    receivewal(opts)
        .args(["--slot", &opts.slot, "--synchronous", "--no-loop", "--no-password", "-D"])
        .arg(&opts.spool)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("start pg_receivewal: {e}"))
}

/// Runs until `stop` is set (or `run_for` passes).
pub fn run(repo: &Repository, ns: &str, opts: &StreamOptions, stop: Arc<AtomicBool>) -> anyhow::Result<StreamStats> {
    std::fs::create_dir_all(&opts.spool)?;
    create_slot(opts)?;
    let mut stats = StreamStats::default();
    let mut rx = Receiver { child: Some(spawn(opts)?), started: Instant::now() };
    let mut uploaded: HashMap<String, blake3::Hash> = HashMap::new();
    let began = Instant::now();
    let mut failing_sweeps = 0u32;
    let mut quick_failures = 0u32;
    loop {
        let stopping = stop.load(Ordering::Relaxed) || opts.run_for.is_some_and(|d| began.elapsed() >= d);
        if let Some(child) = rx.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            tracing::warn!("pg_receivewal exited ({status}); archiving what it wrote and restarting");
            rx.child = None;
            // A receiver that keeps failing as soon as it starts will not
            // recover by itself (a dropped or invalidated slot, WAL already
            // removed, a refused login): WAL is not being archived, so say so
            // loudly instead of retrying forever.
            quick_failures = if rx.started.elapsed() < QUICK_FAILURE { quick_failures + 1 } else { 0 };
            if quick_failures >= MAX_QUICK_FAILURES && !stopping {
                let _ = sweep(repo, ns, &opts.spool, &mut uploaded, &mut stats);
                anyhow::bail!(
                    "pg_receivewal failed {quick_failures} times in a row right after starting (its messages are above): \
                     WAL is not being streamed. If the server says the requested WAL segment was removed or the slot \
                     does not exist, replication slot `{}` was dropped or invalidated (max_slot_wal_keep_size) and WAL \
                     may be missing from the archive: run `cirkel pg check`, then take a new base backup",
                    opts.slot
                );
            }
        }
        let errors = sweep(repo, ns, &opts.spool, &mut uploaded, &mut stats);
        if errors.is_empty() {
            failing_sweeps = 0;
        } else {
            failing_sweeps += 1;
            for e in &errors {
                tracing::error!("uploading WAL: {e:#}");
            }
            if failing_sweeps >= MAX_FAILING_SWEEPS {
                if let Some(mut c) = rx.child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                anyhow::bail!(
                    "WAL could not be uploaded for {failing_sweeps} consecutive passes (last: {:#}); the replication slot keeps the WAL on the server until streaming resumes",
                    errors[errors.len() - 1]
                );
            }
        }
        if stopping {
            if let Some(mut c) = rx.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(e) = sweep(repo, ns, &opts.spool, &mut uploaded, &mut stats).into_iter().next() {
                return Err(e.context("final WAL upload before stopping"));
            }
            if !opts.keep_slot {
                drop_slot(opts)?;
            }
            return Ok(stats);
        }
        if rx.child.is_none() && rx.started.elapsed() >= Duration::from_secs(1) {
            match spawn(opts) {
                Ok(c) => {
                    rx = Receiver { child: Some(c), started: Instant::now() };
                    stats.receiver_restarts += 1;
                }
                Err(e) => tracing::error!("{e:#}"),
            }
        }
        std::thread::sleep(opts.interval);
    }
}

/// How many passes in a row may fail before the streamer gives up loudly.
const MAX_FAILING_SWEEPS: u32 = 60;

/// A receiver that exits this soon after starting has failed to stream.
const QUICK_FAILURE: Duration = Duration::from_secs(5);
/// How many such failures in a row end the streamer with an error.
const MAX_QUICK_FAILURES: u32 = 10;

/// One pass over the spool; every file is tried, and the errors returned.
fn sweep(
    repo: &Repository,
    ns: &str,
    spool: &Path,
    uploaded: &mut HashMap<String, blake3::Hash>,
    stats: &mut StreamStats,
) -> Vec<anyhow::Error> {
    let mut names: Vec<String> = match std::fs::read_dir(spool) {
        Ok(rd) => rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect(),
        Err(e) => return vec![anyhow::anyhow!("read spool {}: {e}", spool.display())],
    };
    names.sort();
    let mut errors = Vec::new();
    for name in names {
        if let Err(e) = sweep_one(repo, ns, spool, &name, uploaded, stats) {
            errors.push(e.context(format!("WAL file {name}")));
        }
    }
    errors
}

fn sweep_one(
    repo: &Repository,
    ns: &str,
    spool: &Path,
    name: &str,
    uploaded: &mut HashMap<String, blake3::Hash>,
    stats: &mut StreamStats,
) -> anyhow::Result<()> {
    let path = spool.join(name);
    match WalFile::parse(name) {
        Some(WalFile::Segment(seg)) => {
            wal::push(repo, ns, &path)?;
            stats.segments_archived += 1;
            std::fs::remove_file(&path)?;
            uploaded.remove(&seg.to_string());
            // The complete segment supersedes its partial copies.
            for p in wal::partials(repo, ns, Some(seg))? {
                repo.delete_stream(ns, &p)?;
            }
        }
        Some(WalFile::History(_)) => {
            wal::push(repo, ns, &path)?;
            std::fs::remove_file(&path)?;
        }
        Some(WalFile::Partial(seg)) => {
            let data = std::fs::read(&path)?;
            let hash = blake3::hash(&data);
            if uploaded.get(&seg.to_string()) == Some(&hash) {
                return Ok(());
            }
            let older = wal::partials(repo, ns, Some(seg))?;
            wal::push_partial(repo, ns, seg, &data)?;
            stats.partial_uploads += 1;
            uploaded.insert(seg.to_string(), hash);
            for p in older {
                repo.delete_stream(ns, &p)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Where `pg_receivewal` is: PG_BINDIR, PostgreSQL 15's Debian location, else PATH.
pub fn find_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BINDIR") {
        return PathBuf::from(d);
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("pg_receivewal").exists() {
        return debian;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).find(|d| d.join("pg_receivewal").exists()))
        .unwrap_or(debian)
}
