//! Restore drills: restore a backup into a scratch directory, start it on a
//! free port, check it, time it, and remove everything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cirkel_repo::{Id, Repository};
use serde::Serialize;

use crate::conn::PgConn;
use crate::restore::{self, Target};

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub backup: Option<Id>,
    /// An extra query that must succeed (for example a row count the
    /// application relies on); its first value is reported.
    pub query: Option<String>,
    pub bindir: PathBuf,
    /// How PostgreSQL fetches WAL during the drill.
    pub restore_command: String,
    pub threads: usize,
    pub timeout: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct TableCount {
    pub database: String,
    pub table: String,
    pub rows: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub backup: Option<Id>,
    /// When the backup ended: the state every check sees.
    pub stop_time: Option<chrono::DateTime<chrono::Utc>>,
    pub ok: bool,
    /// Seconds to write the files.
    pub restore_seconds: f64,
    /// Seconds from starting PostgreSQL until it accepted writes.
    pub recovery_seconds: f64,
    /// The measured restore time: both together.
    pub total_seconds: f64,
    pub bytes: u64,
    pub tables: Vec<TableCount>,
    pub indexes_checked: u64,
    /// `ok`, `unavailable` (no amcheck), or the failure.
    pub amcheck: String,
    pub query_result: Option<String>,
    /// The `--query` failed. It runs on the backup's own state (the drill
    /// replays no WAL after the backup), so objects created since are absent
    /// and this says nothing about the backup's health.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_error: Option<String>,
    pub problems: Vec<String>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a PostgreSQL program as the owner of the data directory.
fn as_owner(program: &Path, uid: u32, gid: u32) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}")).arg(format!("--regid={gid}")).arg("--clear-groups").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub fn verify(repo: &Repository, opts: &VerifyOptions) -> anyhow::Result<VerifyReport> {
    let plan = restore::plan(repo, None, Target::Immediate, opts.backup)?;
    let (uid, gid) = (plan.meta.owner_uid, plan.meta.owner_gid);
    let scratch = tempfile::Builder::new().prefix("cirkel-verify-").tempdir()?;
    if is_root() {
        std::os::unix::fs::chown(scratch.path(), Some(uid), Some(gid))?;
    }
    let data = scratch.path().join("data");
    let mut report =
        VerifyReport { backup: Some(plan.backup), stop_time: Some(plan.meta.stop_time), ..Default::default() };
    let started = Instant::now();
    let restored = restore::restore(
        repo,
        &plan,
        &data,
        &restore::Recovery { restore_command: opts.restore_command.clone(), archiving: restore::Archiving::Off },
        &[],
        opts.threads,
        &|_| {},
    )?;
    if !restored.errors.is_empty() {
        report.problems.extend(restored.errors.iter().map(|(p, e)| format!("{p}: {e}")));
        return Ok(report);
    }
    report.bytes = restored.bytes;
    report.restore_seconds = started.elapsed().as_secs_f64();
    check_started(&data, scratch.path(), uid, gid, opts, &mut report)?;
    report.total_seconds = report.restore_seconds + report.recovery_seconds;
    report.ok = report.problems.is_empty() && report.query_error.is_none();
    Ok(report)
}

/// Starts PostgreSQL on a restored data directory (its socket and log in
/// `work`) on a free port as the directory's owner, waits until it accepts
/// writes, counts every table's rows, runs amcheck and `opts.query`, and
/// stops it; what it finds goes into `report`.
pub fn check_started(
    data: &Path,
    work: &Path,
    uid: u32,
    gid: u32,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) -> anyhow::Result<()> {
    let port = free_port()?;
    let sock = work.to_path_buf();
    let log = work.join("postgres.log");
    let recovery = Instant::now();
    let out = as_owner(&opts.bindir.join("pg_ctl"), uid, gid)
        .arg("-D")
        .arg(data)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!("-p {port} -k {} -c listen_addresses='' -c archive_mode=off", sock.display()))
        .args(["-w", "-t", &opts.timeout.as_secs().to_string(), "start"])
        .output()?;
    let stop = || {
        let _ = as_owner(&opts.bindir.join("pg_ctl"), uid, gid)
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    };
    if !out.status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        stop();
        let important: Vec<&str> = tail.lines().filter(|l| l.contains("FATAL") || l.contains("PANIC")).collect();
        let shown = if important.is_empty() { tail.lines().rev().take(5).collect() } else { important };
        report.problems.push(format!("PostgreSQL did not start on the restored data: {}", shown.join(" | ")));
        return Ok(());
    }
    let conninfo = |db: &str| format!("host={} port={port} user=postgres dbname={db}", sock.display());
    let result = (|| -> anyhow::Result<()> {
        let deadline = Instant::now() + opts.timeout;
        let conn = loop {
            match PgConn::connect(Some(&conninfo("postgres"))) {
                Ok(c) => {
                    let r: bool = c.query_one("SELECT pg_is_in_recovery()")?.get(0);
                    if !r {
                        break c;
                    }
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
            if Instant::now() > deadline {
                anyhow::bail!("recovery did not finish within {:?}", opts.timeout);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        report.recovery_seconds = recovery.elapsed().as_secs_f64();
        let dbs: Vec<String> = conn
            .query("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        report.amcheck = "ok".into();
        for db in dbs {
            let c = PgConn::connect(Some(&conninfo(&db)))?;
            for row in c.query("SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1")? {
                let table: String = row.get(0);
                let n: i64 = c.query_one(&format!("SELECT count(*) FROM {table}"))?.get(0);
                report.tables.push(TableCount { database: db.clone(), table, rows: n });
            }
            match c.execute("CREATE EXTENSION IF NOT EXISTS amcheck") {
                Ok(()) => {
                    let rows = c.query(
                        "SELECT bt_index_check(c.oid)::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                         JOIN pg_am a ON a.oid = c.relam WHERE a.amname = 'btree' AND c.relpersistence <> 't'",
                    );
                    match rows {
                        Ok(r) => report.indexes_checked += r.len() as u64,
                        Err(e) => {
                            report.amcheck = format!("{db}: {e}");
                            report.problems.push(format!("amcheck in {db}: {e}"));
                        }
                    }
                }
                Err(_) => report.amcheck = "unavailable".into(),
            }
        }
        if let Some(q) = &opts.query {
            match conn.query(q) {
                Ok(rows) => {
                    report.query_result = rows.first().map(|r| {
                        r.try_get::<_, String>(0)
                            .or_else(|_| r.try_get::<_, i64>(0).map(|v| v.to_string()))
                            .unwrap_or_else(|_| "(row)".into())
                    })
                }
                Err(e) => report.query_error = Some(format!("{e:#}")),
            }
        }
        Ok(())
    })();
    stop();
    if let Err(e) = result {
        report.problems.push(format!("{e:#}"));
    }
    Ok(())
}
