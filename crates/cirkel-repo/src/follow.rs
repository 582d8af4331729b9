//! Continuous copy to a second repository: what the source holds that the
//! destination lacks (its backlog), how old the oldest of it is, and one
//! pass that copies it.
//!
//! A pass lists `snapshots/` and `streams/` on both sides; a snapshot
//! travels with its data through [`copy`](crate::copy::copy) (packs, then
//! index, then the snapshot), a stream object verbatim. Nothing is written
//! that a reader could see half-done, so a pass killed at any point leaves
//! the destination readable and the next pass completes it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::copy::CopyReport;
use crate::{Id, ObjectInfo, Repository, Result};

/// The keys of a repository that a copy carries: snapshots and streams.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub objects: HashMap<String, ObjectInfo>,
}

impl Listing {
    pub fn of(repo: &Repository) -> Result<Listing> {
        let mut objects = HashMap::new();
        for prefix in ["snapshots/", "streams/"] {
            for o in repo.block_on(repo.backend().list(prefix))? {
                objects.insert(o.key.clone(), o);
            }
        }
        Ok(Listing { objects })
    }
}

/// What the destination lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub snapshots: Vec<Id>,
    /// Keys of the missing stream objects (WAL).
    pub streams: Vec<String>,
    /// Stored bytes of the missing streams plus what the missing snapshots
    /// added to the source.
    pub bytes: u64,
    /// When the oldest missing object reached the source.
    pub oldest: Option<DateTime<Utc>>,
}

impl Backlog {
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty() && self.streams.is_empty()
    }
}

/// How far before the last complete pass a pass still looks by default:
/// objects the destination's own retention removed are older than this,
/// and are not copied back.
pub const LOOK_BACK: std::time::Duration = std::time::Duration::from_secs(3600);

/// The source's objects the destination lacks, of those that reached the
/// source since `since` minus `look_back` (all when `since` is `None`). A
/// snapshot that cannot be read counts by its object's size.
pub fn backlog(
    src: &Repository,
    src_list: &Listing,
    dst_keys: &HashSet<String>,
    since: Option<DateTime<Utc>>,
    look_back: std::time::Duration,
) -> Backlog {
    let mut b = Backlog::default();
    let back = chrono::TimeDelta::from_std(look_back).unwrap_or(chrono::TimeDelta::MAX);
    let from = since.and_then(|t| t.checked_sub_signed(back));
    for (key, o) in &src_list.objects {
        if dst_keys.contains(key) {
            continue;
        }
        if let (Some(from), Some(m)) = (from, o.modified)
            && m < from
        {
            continue;
        }
        b.oldest = match (b.oldest, o.modified) {
            (Some(a), Some(m)) => Some(a.min(m)),
            (a, m) => a.or(m),
        };
        if let Some(id) = key.strip_prefix("snapshots/").and_then(|s| s.parse::<Id>().ok()) {
            b.bytes += src.load_snapshot(&id).map(|s| s.summary.bytes_added).unwrap_or(o.size);
            b.snapshots.push(id);
        } else {
            b.bytes += o.size;
            b.streams.push(key.clone());
        }
    }
    b.snapshots.sort();
    b.streams.sort();
    b
}

/// Copies a backlog: its snapshots with their data (packs, index, then the
/// snapshot), then its streams, each read back after it is written.
pub fn copy_backlog(
    src: &Repository,
    dst: &Repository,
    backlog: &Backlog,
    progress: &dyn Fn(u64, u64),
) -> Result<CopyReport> {
    let mut report = if backlog.snapshots.is_empty() {
        crate::copy::check_keys(src, dst)?;
        CopyReport::default()
    } else {
        crate::copy::copy(src, dst, &backlog.snapshots, false, progress)?
    };
    for key in &backlog.streams {
        let bytes = match src.block_on(src.backend().read(key)) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue, // expired meanwhile
            Err(e) => return Err(e.into()),
        };
        let sum = Id::of(&bytes);
        report.stream_bytes += bytes.len() as u64;
        dst.block_on(dst.backend().create(key, bytes))?;
        if Id::of(&dst.block_on(dst.backend().read(key))?) != sum {
            return Err(crate::Error::corrupt("stream", key, "arrived with different content"));
        }
        report.streams_copied += 1;
    }
    Ok(report)
}

/// The name of a destination's state record: `copy-NAME.json`.
pub fn record_name(to: &str) -> String {
    let safe: String =
        to.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("copy-{safe}.json")
}

/// What a continuous copy last saw, kept in the state directory for the
/// daemon's metrics (`copy-NAME.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowState {
    /// The destination's name or location.
    pub repository: String,
    /// The last time the source was listed.
    pub checked: Option<DateTime<Utc>>,
    /// When the oldest object the destination lacked reached the source.
    pub oldest_pending: Option<DateTime<Utc>>,
    pub pending_bytes: u64,
    pub pending_objects: u64,
    /// The listing time of the last pass that copied everything it found:
    /// later passes look only at objects newer than this (minus
    /// the look-back, [`LOOK_BACK`] by default), so that what the destination's retention removed is
    /// not copied back.
    pub caught_up: Option<DateTime<Utc>>,
    /// Why the last pass failed, if it did.
    pub error: Option<String>,
    pub updated: DateTime<Utc>,
}

impl FollowState {
    /// Seconds of the source's history the destination may lack now: since
    /// the oldest object it lacks reached the source, or, when it lacked
    /// none, since the source was last listed (nothing newer is known to
    /// have arrived). Grows while the copy or either side is down.
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> f64 {
        let since = self.oldest_pending.or(self.checked).unwrap_or(self.updated);
        ((now - since).num_milliseconds() as f64 / 1000.0).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_counts_from_the_oldest_missing_object_or_the_last_look() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_700_000_000 + s, 0).unwrap();
        let mut st = FollowState { checked: Some(t(100)), updated: t(100), ..FollowState::default() };
        assert_eq!(st.lag_seconds(t(103)), 3.0);
        st.oldest_pending = Some(t(40));
        assert_eq!(st.lag_seconds(t(103)), 63.0);
        assert_eq!(st.lag_seconds(t(0)), 0.0);
    }
}
