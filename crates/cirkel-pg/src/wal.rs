//! WAL files: names, archiving (`wal-push`), retrieval (`wal-fetch`) and
//! continuity checks.
//!
//! Each WAL file is a named stream in the cluster's namespace:
//! `wal/<timeline+log>/<segment>` for segments, `history/<tli>.history` for
//! timeline histories, `partial/<segment>.<millis>` for the growing segment
//! uploaded by the streamer. Pushing the same file twice is a no-op (PostgreSQL
//! retries); pushing different content under a known name is refused.

use std::fmt;
use std::path::Path;

use cirkel_repo::stream::PutOutcome;
use cirkel_repo::{Error as RepoError, Repository};

/// The zstd level for WAL: speed matters more than ratio here.
pub const WAL_ZSTD_LEVEL: i32 = 1;

/// A WAL segment: timeline, log and segment numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub tli: u32,
    pub log: u32,
    pub seg: u32,
}

impl Segment {
    pub fn parse(name: &str) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let n = |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).ok();
        Some(Segment { tli: n(0..8)?, log: n(8..16)?, seg: n(16..24)? })
    }

    /// Segments per log file for a segment size (256 for 16 MiB).
    pub fn per_log(seg_size: u64) -> u64 {
        // A size of 0 or above 4 GiB is no PostgreSQL's; never divide by zero.
        (0x1_0000_0000 / seg_size.max(1)).max(1)
    }

    /// The segment holding `lsn` on timeline `tli`.
    pub fn containing(tli: u32, lsn: u64, seg_size: u64) -> Segment {
        let segno = lsn / seg_size.max(1);
        let per = Self::per_log(seg_size);
        Segment { tli, log: (segno / per) as u32, seg: (segno % per) as u32 }
    }

    pub fn segno(&self, seg_size: u64) -> u64 {
        self.log as u64 * Self::per_log(seg_size) + self.seg as u64
    }

    pub fn next(&self, seg_size: u64) -> Segment {
        Self::from_segno(self.tli, self.segno(seg_size) + 1, seg_size)
    }

    fn from_segno(tli: u32, n: u64, seg_size: u64) -> Segment {
        let per = Self::per_log(seg_size);
        Segment { tli, log: (n / per) as u32, seg: (n % per) as u32 }
    }

    fn stream_name(&self) -> String {
        format!("wal/{:08X}{:08X}/{self}", self.tli, self.log)
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.tli, self.log, self.seg)
    }
}

/// What a file name in `pg_wal` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalFile {
    Segment(Segment),
    /// `NNNNNNNN.history`
    History(u32),
    /// `<segment>.<offset>.backup`: a backup history file.
    BackupHistory(String),
    /// `<segment>.partial`: the last, incomplete segment of a timeline.
    Partial(Segment),
}

impl WalFile {
    pub fn parse(name: &str) -> Option<WalFile> {
        if let Some(s) = Segment::parse(name) {
            return Some(WalFile::Segment(s));
        }
        if let Some(t) = name.strip_suffix(".history") {
            if t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return u32::from_str_radix(t, 16).ok().map(WalFile::History);
            }
            return None;
        }
        if let Some(p) = name.strip_suffix(".partial") {
            return Segment::parse(p).map(WalFile::Partial);
        }
        if let Some(b) = name.strip_suffix(".backup") {
            let (seg, off) = b.split_once('.')?;
            if Segment::parse(seg).is_some() && off.len() == 8 && off.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Some(WalFile::BackupHistory(name.to_string()));
            }
        }
        None
    }

    fn stream_name(&self, name: &str) -> String {
        match self {
            WalFile::Segment(s) => s.stream_name(),
            WalFile::History(_) => format!("history/{name}"),
            WalFile::BackupHistory(_) => format!("backup-history/{name}"),
            // An archived .partial (PostgreSQL archives one at promotion).
            WalFile::Partial(s) => format!("wal/{:08X}{:08X}/{name}", s.tli, s.log),
        }
    }
}

/// A file name that is not a WAL file name.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a WAL file name (expected a 24-digit segment, NNNNNNNN.history, or .partial/.backup)")]
pub struct BadWalName(pub String);

/// Archives one WAL file (`archive_command = 'cirkel wal-push %p'`).
pub fn push(repo: &Repository, ns: &str, path: &Path) -> anyhow::Result<PutOutcome> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let kind = WalFile::parse(&name).ok_or_else(|| BadWalName(name.clone()))?;
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(repo.put_stream(ns, &kind.stream_name(&name), &[], WAL_ZSTD_LEVEL)?);
    }
    // SAFETY: PostgreSQL does not change a WAL file while it is being
    // archived; mapping it spares copying 16 MiB out of the page cache. The
    // pages are not populated up front: the workers fault them in, in
    // parallel, as they compress.
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }
        .map_err(|e| anyhow::anyhow!("map {}: {e}", path.display()))?;
    Ok(repo.put_stream(ns, &kind.stream_name(&name), &map, WAL_ZSTD_LEVEL)?)
}

/// Stores the growing segment that the streamer sees, under a new name each
/// time; readers take the newest.
pub fn push_partial(repo: &Repository, ns: &str, seg: Segment, data: &[u8]) -> anyhow::Result<String> {
    let millis = chrono::Utc::now().timestamp_millis();
    let name = format!("partial/{seg}.{millis:016}");
    repo.put_stream(ns, &name, data, WAL_ZSTD_LEVEL)?;
    Ok(name)
}

/// Partial uploads of a segment, oldest first.
pub fn partials(repo: &Repository, ns: &str, seg: Option<Segment>) -> anyhow::Result<Vec<String>> {
    let prefix = match seg {
        Some(s) => format!("partial/{s}."),
        None => "partial/".to_string(),
    };
    Ok(repo.list_streams(ns, &prefix)?.into_iter().map(|s| s.name).collect())
}

/// Outcome of a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    Archived,
    /// Only the streamer's newest partial copy exists: served as the segment
    /// (the rest of the file is zeros, where replay stops).
    FromPartial(String),
    NotFound,
}

/// Retrieves one WAL file (`restore_command = 'cirkel wal-fetch %f %p'`).
pub fn fetch(repo: &Repository, ns: &str, name: &str, dest: &Path) -> anyhow::Result<Fetched> {
    let kind = WalFile::parse(name).ok_or_else(|| BadWalName(name.to_string()))?;
    let (data, how) = match repo.get_stream(ns, &kind.stream_name(name)) {
        Ok(d) => (d, Fetched::Archived),
        Err(RepoError::Backend(e)) if e.is_not_found() => match kind {
            WalFile::Segment(seg) => match partials(repo, ns, Some(seg))?.pop() {
                Some(p) => (repo.get_stream(ns, &p)?, Fetched::FromPartial(p)),
                None => return Ok(Fetched::NotFound),
            },
            _ => return Ok(Fetched::NotFound),
        },
        Err(e) => return Err(e.into()),
    };
    let tmp = dest.with_extension("cirkel-tmp");
    std::fs::write(&tmp, &data).map_err(|e| anyhow::anyhow!("write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dest).map_err(|e| anyhow::anyhow!("rename to {}: {e}", dest.display()))?;
    Ok(how)
}

/// Every archived segment, sorted.
pub fn archived_segments(repo: &Repository, ns: &str) -> anyhow::Result<Vec<Segment>> {
    let mut out: Vec<Segment> =
        repo.list_streams(ns, "wal/")?.into_iter().filter_map(|s| Segment::parse(s.name.rsplit('/').next()?)).collect();
    out.sort();
    Ok(out)
}

/// Timelines that have a history file.
pub fn history_timelines(repo: &Repository, ns: &str) -> anyhow::Result<Vec<u32>> {
    Ok(repo
        .list_streams(ns, "history/")?
        .into_iter()
        .filter_map(|s| match WalFile::parse(s.name.rsplit('/').next()?) {
            Some(WalFile::History(t)) => Some(t),
            _ => None,
        })
        .collect())
}

/// The most missing segments [`gaps`] lists (the earliest): a crafted
/// name far ahead in the archive must not make it list billions.
pub const MAX_GAPS: usize = 1000;

/// Missing segments between `from` and the newest archived segment of its
/// timeline, at most [`MAX_GAPS`] of them. Names whose segment number does
/// not exist for `seg_size` are not segments of this cluster and count as
/// absent.
pub fn gaps(archived: &[Segment], from: Segment, seg_size: u64) -> Vec<Segment> {
    let per = Segment::per_log(seg_size);
    let mut have: Vec<u64> = archived
        .iter()
        .filter(|s| s.tli == from.tli && **s >= from && u64::from(s.seg) < per)
        .map(|s| s.segno(seg_size))
        .collect();
    have.sort_unstable();
    have.dedup();
    if have.is_empty() {
        return vec![from];
    }
    let mut missing = Vec::new();
    let mut expect = from.segno(seg_size);
    for n in have {
        while expect < n && missing.len() < MAX_GAPS {
            missing.push(Segment::from_segno(from.tli, expect, seg_size));
            expect += 1;
        }
        if missing.len() >= MAX_GAPS {
            break;
        }
        expect = n + 1;
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn names_parse_and_format() {
        let s = Segment::parse("00000002000000010000000A").unwrap();
        assert_eq!((s.tli, s.log, s.seg), (2, 1, 10));
        assert_eq!(s.to_string(), "00000002000000010000000A");
        assert_eq!(
            Segment::parse("0000000200000001000000FF").unwrap().next(SEG).to_string(),
            "000000020000000200000000"
        );
        assert_eq!(Segment::containing(1, 0x1_0300_0028, SEG).to_string(), "000000010000000100000003");
        assert_eq!(WalFile::parse("00000003.history"), Some(WalFile::History(3)));
        assert!(matches!(WalFile::parse("000000010000000000000003.partial"), Some(WalFile::Partial(_))));
        assert!(matches!(WalFile::parse("000000010000000000000003.00000028.backup"), Some(WalFile::BackupHistory(_))));
        for bad in
            ["", "RECOVERYXLOG", "0000000100000000000000", "../../etc/passwd", "0000000G0000000000000003", "1.history"]
        {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn gaps_are_found() {
        let seg = |n: u32| Segment { tli: 1, log: 0, seg: n };
        let archived = vec![seg(2), seg(3), seg(5), Segment { tli: 2, log: 0, seg: 9 }];
        assert_eq!(gaps(&archived, seg(2), SEG), vec![seg(4)]);
        assert_eq!(gaps(&archived, seg(5), SEG), vec![]);
        assert_eq!(gaps(&archived, seg(6), SEG), vec![seg(6)]);
    }
}
