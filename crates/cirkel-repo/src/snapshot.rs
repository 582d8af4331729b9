//! Snapshots: the root of one backup.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Id;

/// A path that could not be read during a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotError {
    pub path: String,
    pub message: String,
}

/// Counters recorded with each snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSummary {
    pub files: u64,
    pub dirs: u64,
    /// Bytes of file content in the snapshot.
    pub bytes: u64,
    /// Files read (the rest were unchanged since the parent).
    pub files_read: u64,
    /// Bytes this snapshot added to the repository (stored size).
    pub bytes_added: u64,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub time: DateTime<Utc>,
    pub host: String,
    /// What the snapshot holds: `files`, and later `pg`, `redis`, ...
    pub kind: String,
    pub paths: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub tree: Id,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    #[serde(default)]
    pub summary: SnapshotSummary,
    /// True when some source paths could not be read: see `errors`.
    #[serde(default)]
    pub incomplete: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<SnapshotError>,
    /// Source-specific metadata; the repository does not interpret it.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub meta: serde_json::Value,
}

impl Snapshot {
    /// A complete snapshot taken now, with no tags, parent or metadata.
    pub fn new(kind: &str, host: &str, paths: Vec<String>, tree: Id) -> Snapshot {
        Snapshot {
            time: chrono::Utc::now(),
            host: host.into(),
            kind: kind.into(),
            paths,
            tags: Vec::new(),
            tree,
            parent: None,
            summary: SnapshotSummary::default(),
            incomplete: false,
            errors: Vec::new(),
            meta: serde_json::Value::Null,
        }
    }
}
