//! What the repository holds for PostgreSQL: backups, WAL, the window.

use chrono::{DateTime, Utc};
use cirkel_repo::{Id, Repository};
use serde::Serialize;

use crate::backup::{BackupMeta, list};
use crate::wal::{self, Segment};

#[derive(Debug, Serialize)]
pub struct BackupInfo {
    pub id: Id,
    pub short_id: String,
    pub time: DateTime<Utc>,
    pub tags: Vec<String>,
    pub bytes: u64,
    pub bytes_added: u64,
    pub duration_ms: u64,
    pub meta: BackupMeta,
}

/// One cluster's recoverable window in one repository.
#[derive(Debug, Serialize)]
pub struct ClusterInfo {
    pub system_id: String,
    pub backups: usize,
    /// The earliest point a restore can reach: the end of the oldest backup.
    pub earliest_time: Option<DateTime<Utc>>,
    pub earliest_lsn: Option<String>,
    /// The newest WAL archived (or streamed) that replay can reach.
    pub latest_wal: Option<String>,
    pub latest_partial: Option<String>,
    /// When the newest WAL reached the repository: replay can reach commits
    /// up to about then.
    pub latest_time: Option<DateTime<Utc>>,
    pub archived_segments: usize,
    pub timelines: Vec<u32>,
    /// Missing segments that cut the window short, with what they affect.
    pub gaps: Vec<String>,
    pub problems: Vec<String>,
    /// The server's own view of archiving, when a server was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiver: Option<crate::archiver::ArchiverHealth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archiver_error: Option<String>,
}

pub fn backups(repo: &Repository) -> anyhow::Result<Vec<BackupInfo>> {
    Ok(list(repo)?
        .into_iter()
        .map(|(id, s, meta)| BackupInfo {
            id,
            short_id: id.short(),
            time: s.time,
            tags: s.tags,
            bytes: s.summary.bytes,
            bytes_added: s.summary.bytes_added,
            duration_ms: s.summary.duration_ms,
            meta,
        })
        .collect())
}

/// Window and continuity of every cluster with backups in the repository.
pub fn info(repo: &Repository) -> anyhow::Result<Vec<ClusterInfo>> {
    let all = list(repo)?;
    let mut systems: Vec<String> = all.iter().map(|(_, _, m)| m.system_id.clone()).collect();
    systems.sort();
    systems.dedup();
    let mut out = Vec::new();
    for sys in systems {
        let mine: Vec<&BackupMeta> = all.iter().filter(|(_, _, m)| m.system_id == sys).map(|(_, _, m)| m).collect();
        let ns = crate::namespace(sys.parse().unwrap_or(0));
        let archived = wal::archived_segments(repo, &ns)?;
        let timelines = wal::history_timelines(repo, &ns)?;
        let partials = wal::partials(repo, &ns, None)?;
        // A restore reaches at least the end of the newest backup, whose
        // last segment may have reached the repository a moment before the
        // backup recorded its stop time.
        let newest_stop = mine.iter().map(|m| m.stop_time).max();
        let latest_time = repo
            .list_streams(&ns, "wal/")?
            .into_iter()
            .chain(repo.list_streams(&ns, "partial/")?)
            .filter_map(|s| s.modified)
            .chain(newest_stop)
            .max();
        // A partial is the growing end of the WAL only while no archived
        // segment is newer: one left behind on an old timeline is history.
        let partials: Vec<String> =
            partials.into_iter().filter(|p| partial_segment(p).is_some_and(|s| archived.last() < Some(&s))).collect();
        let mut problems = Vec::new();
        let mut gaps = Vec::new();
        let seg_size = mine.first().map(|m| m.wal_segment_size).unwrap_or(16 * 1024 * 1024);
        for m in &mine {
            if let Some(from) = m.start_segment() {
                for g in wal::gaps(&archived, from, seg_size) {
                    let s = g.to_string();
                    if !gaps.contains(&s) {
                        gaps.push(s);
                    }
                }
            }
        }
        // Every timeline after the first needs its history file.
        let mut tlis: Vec<u32> = archived.iter().map(|s| s.tli).collect();
        tlis.sort();
        tlis.dedup();
        for t in tlis.iter().filter(|t| **t > 1) {
            if !timelines.contains(t) {
                problems.push(format!("timeline {t} has WAL but no {t:08X}.history file: recovery cannot follow it"));
            }
        }
        if !gaps.is_empty() {
            problems.push(format!("{} WAL segment(s) missing, first {}", gaps.len(), gaps[0]));
        }
        let oldest = mine.first();
        out.push(ClusterInfo {
            system_id: sys,
            backups: mine.len(),
            earliest_time: oldest.map(|m| m.stop_time),
            earliest_lsn: oldest.map(|m| m.stop_lsn.clone()),
            latest_wal: archived.last().map(Segment::to_string),
            latest_partial: partials.last().cloned(),
            latest_time,
            archived_segments: archived.len(),
            timelines: tlis,
            gaps,
            problems,
            archiver: None,
            archiver_error: None,
        });
    }
    Ok(out)
}

/// The segment a streamer partial (`partial/<segment>.<millis>`) belongs to.
pub fn partial_segment(name: &str) -> Option<Segment> {
    Segment::parse(name.strip_prefix("partial/")?.split('.').next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_name_their_segment() {
        let s = partial_segment("partial/000000010000000000000005.0001733000000000").unwrap();
        assert_eq!(s.to_string(), "000000010000000000000005");
        let newer = Segment { tli: 2, log: 0, seg: 3 };
        assert!(s < newer, "a timeline-1 partial is older than any timeline-2 segment");
        assert_eq!(partial_segment("wal/x"), None);
    }
}
