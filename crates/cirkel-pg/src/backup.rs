//! Base backups through PostgreSQL's non-exclusive backup API.
//!
//! `pg_backup_start` → copy the data directory (in parallel, as
//! deduplicated 128 KiB blocks at fixed offsets, so an incremental backup
//! stores only the blocks that changed) → `pg_backup_stop`, whose
//! `backup_label` is stored at the root of the tree. Files that change while
//! they are copied are made consistent by WAL replay from the start LSN;
//! files that vanish (dropped relations) are simply absent.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use cirkel_files::{BackupOptions, BlockCheck, BlockLevel, Chunking, Excludes, Finish, Progress};
use cirkel_repo::{Id, Repository, Snapshot};
use serde::{Deserialize, Serialize};

use crate::conn::{PgConn, parse_lsn};
use crate::wal::Segment;
use crate::{KIND, checksum};

/// zstd level for data-directory blocks.
pub const BLOCK_ZSTD_LEVEL: i32 = 1;
/// zstd level for blocks of index pages: B-tree leaves of sorted keys
/// compress a sixth to a third smaller at level 3, heap pages no better than
/// at level 1 (see docs/benchmarks.md).
pub const INDEX_ZSTD_LEVEL: i32 = 3;

/// Whether a block starts with an index page: a valid page header whose
/// special space (where every index access method keeps its page opaque
/// data) is not empty. Heap pages have none.
pub fn starts_with_index_page(block: &[u8]) -> bool {
    let Some(h) = block.get(..24) else { return false };
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as usize;
    let (lower, upper, special, size_version) = (u16_at(12), u16_at(14), u16_at(16), u16_at(18));
    let page = crate::checksum::PAGE;
    size_version & 0xFF00 == page && 24 <= lower && lower <= upper && upper <= special && special < page
}

/// Block size for relation files: 16 PostgreSQL pages.
pub const BLOCK: u32 = 128 * 1024;

/// A tablespace the backup followed out of the data directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: String,
    /// Where `pg_tblspc/<oid>` pointed when the backup was taken.
    pub location: String,
}

/// The tablespaces whose `pg_tblspc` entries are links out of the data
/// directory (entries that are directories are inside it already).
fn linked_tablespaces(pgdata: &Path) -> anyhow::Result<Vec<Tablespace>> {
    let dir = pgdata.join("pg_tblspc");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => anyhow::bail!("read {}: {e}", dir.display()),
    };
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_symlink() {
            continue;
        }
        let location = std::fs::read_link(entry.path())?;
        if !std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            anyhow::bail!(
                "tablespace {} points to {}, which is not a readable directory here; run cirkel on the database host",
                entry.file_name().to_string_lossy(),
                location.display()
            );
        }
        out.push(Tablespace {
            oid: entry.file_name().to_string_lossy().into_owned(),
            location: location.display().to_string(),
        });
    }
    out.sort_by(|a, b| a.oid.cmp(&b.oid));
    Ok(out)
}

/// What a base backup records about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackupMeta {
    pub system_id: String,
    pub pg_version: i32,
    pub timeline: u32,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub label: String,
    /// `full` or `incr`.
    pub backup_type: String,
    pub wal_segment_size: u64,
    pub pgdata: String,
    pub from_standby: bool,
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Pages whose checksum did not match when read (data checksums on).
    #[serde(default)]
    pub checksum_errors: Vec<String>,
    #[serde(default)]
    pub checksum_error_count: u64,
    #[serde(default)]
    pub data_checksums: bool,
    /// Tablespaces outside the data directory, stored below
    /// `pg_tblspc/<oid>` as directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<Tablespace>,
}

impl BackupMeta {
    pub fn of(snap: &Snapshot) -> Option<BackupMeta> {
        if snap.kind != KIND {
            return None;
        }
        serde_json::from_value(snap.meta.clone()).ok()
    }

    pub fn start_segment(&self) -> Option<Segment> {
        Segment::parse(&self.start_wal)
    }

    pub fn stop_lsn(&self) -> u64 {
        parse_lsn(&self.stop_lsn).unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct PgBackupOptions {
    pub pgdata: Option<PathBuf>,
    pub conninfo: Option<String>,
    pub label: Option<String>,
    /// Re-read every file instead of trusting unchanged metadata.
    pub full: bool,
    pub tags: Vec<String>,
    pub threads: usize,
    /// How long to wait for the backup's last WAL segment to be archived.
    pub archive_timeout: std::time::Duration,
}

/// The backup's last WAL segment did not reach the archive in time.
#[derive(Debug, thiserror::Error)]
#[error("WAL segment {segment} was not archived within {waited:?}; without it the backup cannot be restored{why}")]
pub struct ArchiveWaitTimeout {
    pub segment: String,
    pub waited: std::time::Duration,
    pub why: String,
}

/// Paths below the data directory that a backup leaves out, as PostgreSQL's
/// own `pg_basebackup` does: runtime state that is recreated at startup.
const EXCLUDED_CONTENTS: &[&str] =
    &["pg_wal", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_stat_tmp", "pg_subtrans"];
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "recovery.signal",
    "standby.signal",
];

fn excludes(pgdata: &Path) -> anyhow::Result<Excludes> {
    let base = pgdata.display().to_string();
    let mut patterns: Vec<String> = EXCLUDED_CONTENTS.iter().map(|d| format!("{base}/{d}/**")).collect();
    patterns.extend(EXCLUDED_FILES.iter().map(|f| format!("{base}/{f}")));
    patterns.push("pgsql_tmp*".into());
    patterns.push("pg_internal.init".into());
    Excludes::new(&patterns, &[]).map_err(|e| anyhow::anyhow!(e))
}

fn label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Takes a base backup of the cluster; returns the snapshot.
///
/// `notify` hears what the backup waits for (the archiving of its last WAL
/// segment), so that a wait is never silent.
pub fn backup(
    repo: &Repository,
    opts: &PgBackupOptions,
    progress: &dyn Progress,
    notify: &dyn Fn(&str),
) -> anyhow::Result<(Id, Snapshot)> {
    let conn = PgConn::connect(opts.conninfo.as_deref())?;
    let row = conn.query_one(
        "SELECT current_setting('server_version_num')::int, current_setting('data_directory'),
                current_setting('wal_segment_size'), pg_is_in_recovery(), current_setting('archive_mode'),
                (SELECT system_identifier::text FROM pg_control_system()), current_setting('data_checksums')",
    )?;
    let version: i32 = row.get(0);
    let data_dir: String = row.get(1);
    let seg_size_text: String = row.get(2);
    let in_recovery: bool = row.get(3);
    let archive_mode: String = row.get(4);
    let system_id: String = row.get(5);
    let data_checksums = row.get::<_, String>(6) == "on";
    if version < 150000 {
        anyhow::bail!("PostgreSQL {version} is not supported: cirkel needs PostgreSQL 15 or newer");
    }
    let pgdata = match &opts.pgdata {
        Some(p) => std::fs::canonicalize(p)?,
        None => std::fs::canonicalize(&data_dir).map_err(|e| {
            anyhow::anyhow!(
                "the server's data directory {data_dir} is not readable here ({e}); run cirkel on the database host"
            )
        })?,
    };
    if std::fs::canonicalize(&data_dir).ok().as_deref() != Some(pgdata.as_path()) {
        anyhow::bail!(
            "{} is not the data directory of the server at {} (it uses {data_dir}); check PGDATA and PGHOST/PGPORT",
            pgdata.display(),
            conn.describe
        );
    }
    let tablespaces = linked_tablespaces(&pgdata)?;
    let wal_segment_size = parse_size(&seg_size_text).unwrap_or(16 * 1024 * 1024);
    let owner = std::fs::metadata(&pgdata)?;
    let label = opts.label.clone().unwrap_or_else(|| format!("cirkel {}", Utc::now().format("%Y-%m-%dT%H:%M:%SZ")));
    let start_time = Utc::now();
    let start_row = conn.query_one_text("SELECT pg_backup_start($1, true)::text", &label)?;
    let start_lsn_value = parse_lsn(&start_row.get::<_, String>(0)).unwrap_or(u64::MAX);
    let bad_pages: Arc<Mutex<(u64, Vec<String>)>> = Arc::default();
    let block_check = data_checksums.then(|| {
        let bad = bad_pages.clone();
        BlockCheck(Arc::new(move |path: &Path, offset: u64, data: &[u8]| {
            let found = checksum::check_block(path, offset, data, start_lsn_value);
            if !found.is_empty()
                && let Ok(mut b) = bad.lock()
            {
                b.0 += found.len() as u64;
                let room = 100usize.saturating_sub(b.1.len());
                b.1.extend(found.into_iter().take(room));
            }
        }))
    });

    let files = BackupOptions {
        paths: vec![pgdata.clone()],
        tags: opts.tags.clone(),
        excludes: excludes(&pgdata)?,
        force: opts.full,
        threads: opts.threads,
        chunking: Chunking::Fixed(BLOCK),
        root_is_path: true,
        vanished_ok: true,
        kind: KIND.into(),
        block_check,
        block_level: Some(BlockLevel(Arc::new(|block: &[u8]| {
            starts_with_index_page(block).then_some(INDEX_ZSTD_LEVEL)
        }))),
        // Relation files change in place: trust metadata only for files
        // untouched since well before the previous backup began.
        mtime_margin: Some(std::time::Duration::from_secs(2)),
        // Database pages compress as well at level 1 as at 3 (often better)
        // and twice as fast: see docs/benchmarks.md.
        compression_level: Some(if repo.config().compression_level == 0 { 0 } else { BLOCK_ZSTD_LEVEL }),
        follow_links: tablespaces.iter().map(|t| pgdata.join("pg_tblspc").join(&t.oid)).collect(),
        ..Default::default()
    };
    // PostgreSQL waits for the archive without a word and without end;
    // cirkel waits itself, says so, and gives up after the timeout.
    let wait = archive_mode == "always" || (archive_mode == "on" && !in_recovery);
    // The first backup of a cluster stores every block, whatever was asked.
    let first = list(repo)?.iter().all(|(_, s, m)| s.incomplete || m.system_id != system_id);
    let pgdata_s = pgdata.display().to_string();
    let finish = || -> anyhow::Result<Finish> {
        let row = conn.query_one("SELECT lsn::text, labelfile FROM pg_backup_stop(wait_for_archive => false)")?;
        let stop_lsn: String = row.get(0);
        let labelfile: String = row.get(1);
        let timeline: u32 = label_field(&labelfile, "START TIMELINE:").and_then(|t| t.parse().ok()).unwrap_or(1);
        let start_loc = label_field(&labelfile, "START WAL LOCATION:").unwrap_or_default();
        let start_lsn = start_loc.split_whitespace().next().unwrap_or_default().to_string();
        let start_wal = start_loc.rsplit("file ").next().unwrap_or_default().trim_end_matches(')').to_string();
        let stop = parse_lsn(&stop_lsn).unwrap_or(0);
        let stop_wal = Segment::containing(timeline, stop.saturating_sub(1), wal_segment_size).to_string();
        if wait {
            wait_archived(&conn, &pgdata, &stop_wal, opts.archive_timeout, notify)?;
        }
        let meta = BackupMeta {
            system_id: system_id.clone(),
            pg_version: version,
            timeline,
            start_lsn,
            stop_lsn,
            start_wal,
            stop_wal,
            start_time,
            stop_time: Utc::now(),
            label: label.clone(),
            backup_type: if opts.full || first { "full".into() } else { "incr".into() },
            wal_segment_size,
            pgdata: pgdata_s.clone(),
            from_standby: in_recovery,
            owner_uid: owner.uid(),
            owner_gid: owner.gid(),
            checksum_errors: bad_pages.lock().map(|b| b.1.clone()).unwrap_or_default(),
            checksum_error_count: bad_pages.lock().map(|b| b.0).unwrap_or_default(),
            data_checksums,
            tablespaces: tablespaces.clone(),
        };
        // No `tablespace_map`: the tablespaces are stored as directories, and
        // restores put them in place or where they are mapped; PostgreSQL
        // would replace them with links to where they were.
        let extra = vec![("backup_label".to_string(), labelfile.into_bytes())];
        Ok(Finish { extra_files: extra, meta: serde_json::to_value(meta)? })
    };
    let outcome = cirkel_files::backup_with(repo, &files, progress, Some(&finish))?;
    Ok((outcome.id, outcome.snapshot))
}

/// Waits until `segment` is archived (its `.done` status file exists, or
/// it is gone from `pg_wal`), telling `notify` once what it waits for and
/// again whenever the archiver reports a new failure.
fn wait_archived(
    conn: &PgConn,
    pgdata: &Path,
    segment: &str,
    timeout: std::time::Duration,
    notify: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let status = pgdata.join("pg_wal/archive_status");
    let done = || status.join(format!("{segment}.done")).exists() || !pgdata.join("pg_wal").join(segment).exists();
    let start = std::time::Instant::now();
    let mut told = false;
    let mut failures_told = 0;
    loop {
        if done() {
            return Ok(());
        }
        let health = crate::archiver::ArchiverHealth::read(conn).ok();
        if !told && start.elapsed() >= std::time::Duration::from_secs(1) {
            notify(&format!("waiting for WAL segment {segment} to be archived by archive_command (up to {timeout:?})"));
            told = true;
        }
        if told
            && let Some(h) = &health
            && h.failing
            && h.failed_count > failures_told
        {
            failures_told = h.failed_count;
            notify(&format!(
                "archive_command fails: {} failed attempt(s), the last on {}",
                h.failed_count,
                h.last_failed_wal.as_deref().unwrap_or("?")
            ));
        }
        if start.elapsed() >= timeout {
            let why = health
                .and_then(|h| h.problem())
                .map(|p| format!(" ({p})"))
                .unwrap_or_else(|| " (the archiver reports no failure: is archive_command slow?)".into());
            return Err(ArchiveWaitTimeout { segment: segment.to_string(), waited: timeout, why }.into());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `16MB` → bytes, as PostgreSQL shows sizes.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim() {
        "" | "B" => n,
        "kB" => n * 1024,
        "MB" => n * 1024 * 1024,
        "GB" => n * 1024 * 1024 * 1024,
        _ => return None,
    })
}

/// Base backups in the repository, oldest first.
pub fn list(repo: &Repository) -> anyhow::Result<Vec<(Id, Snapshot, BackupMeta)>> {
    Ok(of_snapshots(repo.snapshots()?))
}

/// The base backups among `snapshots`, with their metadata.
pub fn of_snapshots(snapshots: Vec<(Id, Snapshot)>) -> Vec<(Id, Snapshot, BackupMeta)> {
    snapshots
        .into_iter()
        .filter_map(|(id, s)| {
            let m = BackupMeta::of(&s)?;
            Some((id, s, m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_labels() {
        assert_eq!(parse_size("16MB"), Some(16 * 1024 * 1024));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n";
        assert_eq!(label_field(label, "START TIMELINE:"), Some("1"));
    }

    fn page(lower: u16, upper: u16, special: u16, size_version: u16) -> Vec<u8> {
        let mut p = vec![0u8; 8192];
        for (at, v) in [(12, lower), (14, upper), (16, special), (18, size_version)] {
            p[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
        p
    }

    #[test]
    fn index_pages_are_told_from_heap_pages() {
        assert!(starts_with_index_page(&page(40, 7000, 8176, 8192 | 4)), "B-tree page");
        assert!(!starts_with_index_page(&page(40, 7000, 8192, 8192 | 4)), "heap page");
        assert!(!starts_with_index_page(&page(0, 0, 0, 0)), "new, all-zero page");
        assert!(!starts_with_index_page(&page(40, 7000, 8176, 4096 | 4)), "another page size");
        assert!(!starts_with_index_page(&page(7000, 40, 8176, 8192 | 4)), "lower above upper");
        assert!(!starts_with_index_page(&[1, 2, 3]), "short");
    }
}
