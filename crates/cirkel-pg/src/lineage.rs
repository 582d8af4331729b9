//! Whether a WAL file belongs to the history the repository archives.
//!
//! A restored copy or a clone has the same system identifier as the cluster
//! it came from, so it archives into the same namespace. If it promotes onto
//! a new timeline while the original keeps writing, its history file and WAL
//! would make every later `--latest` restore follow the copy, and a later
//! promotion of the original onto the same timeline number would fail to
//! archive forever. `wal-push` therefore checks each file before storing it:
//!
//! - a segment's long page header must carry the data directory's system
//!   identifier;
//! - a new timeline's history must branch where its parent timeline's
//!   archived WAL ends: if the archive holds WAL of the parent past the
//!   branch point, someone else is still writing the parent, and this
//!   timeline is a fork;
//! - WAL on a timeline after the first needs the timeline's history in the
//!   archive, with the same content as the cluster's own.

use std::path::Path;

use cirkel_repo::{Error as RepoError, Repository};

use crate::conn::parse_lsn;
use crate::wal::{self, Segment, WalFile};

/// `XLP_LONG_HEADER` in `xlp_info`: the page starts a segment.
const XLP_LONG_HEADER: u16 = 0x0002;

/// A WAL file that does not belong to the archived lineage.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("{file} was written by cluster {found}, not by this data directory's cluster {expected}")]
    OtherSystem { file: String, found: u64, expected: u64 },
    #[error(
        "timeline {tli} branches from timeline {parent} at {switch}, but the archive already holds timeline {parent} WAL \
         up to {newest}, past that point: this cluster is a copy that diverged from the one being archived"
    )]
    Fork { tli: u32, parent: u32, switch: String, newest: String },
    #[error(
        "the archive holds another history for timeline {tli}: this cluster's timeline {tli} is not the archived one"
    )]
    OtherHistory { tli: u32 },
}

impl LineageError {
    pub fn hint(&self) -> String {
        match self {
            LineageError::OtherSystem { .. } => {
                "archive_command runs in the cluster's data directory; pass --pgdata if the segment comes from elsewhere".into()
            }
            _ => "a restored copy must not archive into its source's repository: set archive_mode = off on it \
                  (`cirkel pg restore` does), or restore with --archive-to ANOTHER_REPO. If this cluster is the new \
                  primary and the old one is gone for good, add --new-lineage to its `cirkel wal-push` once"
                .into(),
        }
    }
}

/// The system identifier in a segment's first page, if it starts with a long header.
pub fn segment_system_id(head: &[u8]) -> Option<u64> {
    let info = u16::from_le_bytes(head.get(2..4)?.try_into().ok()?);
    if info & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(u64::from_le_bytes(head.get(24..32)?.try_into().ok()?))
}

/// The last line of a history file: the parent timeline and the switch point.
pub fn branch_point(history: &str) -> Option<(u32, u64)> {
    let line = history.lines().map(str::trim).rfind(|l| !l.is_empty() && !l.starts_with('#'))?;
    let mut fields = line.split_whitespace();
    let parent = fields.next()?.parse().ok()?;
    let lsn = parse_lsn(fields.next()?)?;
    Some((parent, lsn))
}

fn archived_history(repo: &Repository, ns: &str, tli: u32) -> anyhow::Result<Option<Vec<u8>>> {
    match repo.get_stream(ns, &format!("history/{tli:08X}.history")) {
        Ok(d) => Ok(Some(d)),
        Err(RepoError::Backend(e)) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Checks that timeline `tli`, whose history file reads `history`, continues
/// the archived lineage.
pub fn check_history(repo: &Repository, ns: &str, tli: u32, history: &[u8], seg_size: u64) -> anyhow::Result<()> {
    if let Some(stored) = archived_history(repo, ns, tli)? {
        if stored != history {
            return Err(LineageError::OtherHistory { tli }.into());
        }
        return Ok(());
    }
    let Some((parent, switch)) = branch_point(&String::from_utf8_lossy(history)) else {
        return Ok(());
    };
    let branch = Segment::containing(parent, switch, seg_size);
    let newest = wal::archived_segments(repo, ns)?.into_iter().filter(|s| s.tli == parent).max();
    if let Some(newest) = newest
        && newest.segno(seg_size) > branch.segno(seg_size)
    {
        return Err(LineageError::Fork {
            tli,
            parent,
            switch: format!("{:X}/{:X}", switch >> 32, switch & 0xFFFF_FFFF),
            newest: newest.to_string(),
        }
        .into());
    }
    Ok(())
}

/// Checks one file `wal-push` is about to store. `pgdata` is the cluster's
/// data directory (for its own history files), `system_id` its identifier.
pub fn check(repo: &Repository, ns: &str, path: &Path, pgdata: &Path, system_id: u64) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(kind) = WalFile::parse(name) else { return Ok(()) };
    let seg_size = |head: &[u8]| {
        head.get(32..36)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as u64)
            .filter(|s| s.is_power_of_two() && *s >= 1 << 20)
            .unwrap_or(16 * 1024 * 1024)
    };
    match kind {
        WalFile::History(tli) => {
            let history = std::fs::read(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
            check_history(repo, ns, tli, &history, wal_segment_size(pgdata))
        }
        WalFile::Segment(seg) | WalFile::Partial(seg) => {
            let mut head = [0u8; 40];
            let n = {
                use std::io::Read;
                let mut f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
                f.read(&mut head)?
            };
            if let Some(found) = segment_system_id(&head[..n])
                && found != system_id
            {
                return Err(LineageError::OtherSystem { file: name.to_string(), found, expected: system_id }.into());
            }
            if seg.tli <= 1 {
                return Ok(());
            }
            let local = std::fs::read(pgdata.join("pg_wal").join(format!("{:08X}.history", seg.tli))).ok();
            match (archived_history(repo, ns, seg.tli)?, local) {
                (Some(stored), Some(own)) if stored != own => Err(LineageError::OtherHistory { tli: seg.tli }.into()),
                // The history was never archived: check it, and store it so
                // that recovery can follow this timeline.
                (None, Some(own)) => {
                    check_history(repo, ns, seg.tli, &own, seg_size(&head[..n]))?;
                    repo.put_stream(ns, &format!("history/{:08X}.history", seg.tli), &own, wal::WAL_ZSTD_LEVEL)?;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        WalFile::BackupHistory(_) => Ok(()),
    }
}

/// The cluster's WAL segment size from `pg_control` is not at a stable
/// offset across versions; the newest segment's long header says it.
fn wal_segment_size(pgdata: &Path) -> u64 {
    let newest = std::fs::read_dir(pgdata.join("pg_wal")).ok().and_then(|rd| {
        rd.filter_map(Result::ok)
            .filter(|e| Segment::parse(&e.file_name().to_string_lossy()).is_some())
            .map(|e| e.path())
            .max()
    });
    newest
        .and_then(|p| {
            use std::io::Read;
            let mut head = [0u8; 40];
            std::fs::File::open(p).ok()?.read_exact(&mut head).ok()?;
            let size = u32::from_le_bytes(head[32..36].try_into().ok()?) as u64;
            (size.is_power_of_two() && size >= 1 << 20).then_some(size)
        })
        .unwrap_or(16 * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_name_their_branch_point() {
        let h = "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        assert_eq!(branch_point(h), Some((2, 0x500_0000)));
        assert_eq!(branch_point(""), None);
    }

    #[test]
    fn long_page_headers_carry_the_system_id() {
        let mut page = [0u8; 40];
        page[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        page[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        page[24..32].copy_from_slice(&7_312_345_678_901_234_567u64.to_le_bytes());
        assert_eq!(segment_system_id(&page), Some(7_312_345_678_901_234_567));
        page[2] = 0;
        assert_eq!(segment_system_id(&page), None);
        assert_eq!(segment_system_id(&page[..10]), None);
    }
}
