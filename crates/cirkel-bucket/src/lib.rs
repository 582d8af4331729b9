//! The object-storage source: a bucket (or a prefix of one) on any
//! S3-compatible server, backed up into a cirkel repository and written
//! back.
//!
//! A bucket snapshot is a tree like any other, so verify, prune and copy
//! treat it as they treat files: the root holds directories named
//! `00000`, `00001`, … whose trees hold the objects, one file node per
//! object (or per version). A node's name is the object's key below the
//! prefix, exactly as S3 has it (slashes included: the tree itself is never
//! restored onto a file system; `local.rs` checks each key before it writes
//! one as a file below a directory); its ETag, version, content headers and
//! user metadata are extended attributes under `s3.`. Groups end where a key's
//! hash says so (about one key in 256), so a new key changes one group's
//! tree, not every one after it.
//!
//! A backup lists the bucket, reuses the parent snapshot's content for every
//! object whose ETag and size are unchanged (a HEAD fetches its metadata when
//! only its modification time moved), and reads the rest, each with one GET:
//! one answer carries one version of an object, and the node records the
//! ETag, size and headers of that answer, so an object replaced during the
//! backup is stored either as it was or as it became, never torn.

mod backup;
mod local;
mod restore;
pub mod s3;
mod xml;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use cirkel_repo::{Id, Node, NodeKind, Xattr};

pub use backup::{BackupOptions, BackupOutcome, BackupStats, Progress, backup, records};
pub use local::{DirOptions, key_path, restore_to_dir};
pub use restore::{RestoreOptions, RestoreReport, restore};
pub use s3::{Bucket, ObjectEntry, ObjectHead};

/// The snapshot kind of bucket backups.
pub const KIND: &str = "bucket";

/// What can go wrong with a bucket backup or restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings name no usable bucket or server.
    #[error("{message}")]
    Config { message: String, hint: String },
    /// The server could not be reached, or kept failing, until the retry timeout.
    #[error("S3 unavailable ({what}): {detail}")]
    Unavailable { what: String, detail: String },
    /// The server refused a request (permissions, a missing bucket, a bad request).
    #[error("S3 refused {what}: {detail}")]
    Refused { what: String, detail: String },
    /// The object does not exist (any more).
    #[error("not found: {what}")]
    NotFound { what: String },
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] cirkel_repo::Error),
    /// Anything else, with what to do.
    #[error("{message}")]
    Failed { message: String, hint: String },
}

impl Error {
    pub(crate) fn config(message: impl Into<String>, hint: impl Into<String>) -> Error {
        Error::Config { message: message.into(), hint: hint.into() }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Config { hint, .. } | Error::Failed { hint, .. } => Some(hint.clone()),
            Error::Unavailable { .. } => Some(
                "check that the S3 server is up and reachable, then run the command again; no snapshot was written"
                    .into(),
            ),
            Error::Refused { .. } => Some(
                "check the bucket name, endpoint, region and credentials ([buckets.NAME.s3] or AWS_* variables) and the key's permissions"
                    .into(),
            ),
            Error::NotFound { .. } => Some("list the bucket to see what it holds".into()),
            Error::Repo(e) => e.hint(),
        }
    }
}

/// One object (or version) as a snapshot records it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRecord {
    /// The key below the bucket's prefix.
    pub key: String,
    pub head: ObjectHead,
    pub is_latest: bool,
    /// A delete marker of a versioned bucket: no content.
    pub delete_marker: bool,
    pub content: Vec<Id>,
}

const ETAG: &str = "s3.etag";
const VERSION: &str = "s3.version-id";
const LATEST: &str = "s3.latest";
const DELETE_MARKER: &str = "s3.delete-marker";
const HEADER: &str = "s3.header.";
const META: &str = "s3.meta.";

impl ObjectRecord {
    pub fn to_node(&self) -> Node {
        let mut x = vec![Xattr { name: ETAG.into(), value: self.head.etag.as_bytes().to_vec() }];
        if let Some(v) = &self.head.version_id {
            x.push(Xattr { name: VERSION.into(), value: v.as_bytes().to_vec() });
        }
        if !self.is_latest {
            x.push(Xattr { name: LATEST.into(), value: b"0".to_vec() });
        }
        if self.delete_marker {
            x.push(Xattr { name: DELETE_MARKER.into(), value: b"1".to_vec() });
        }
        for (k, v) in &self.head.headers {
            x.push(Xattr { name: format!("{HEADER}{k}"), value: v.as_bytes().to_vec() });
        }
        for (k, v) in &self.head.metadata {
            x.push(Xattr { name: format!("{META}{k}"), value: v.as_bytes().to_vec() });
        }
        Node {
            name: self.key.clone(),
            kind: NodeKind::File,
            mode: 0o600,
            mtime_ns: self.head.modified.and_then(|t| t.timestamp_nanos_opt()).unwrap_or(0),
            size: self.head.size,
            content: self.content.clone(),
            xattrs: x,
            ..Node::default()
        }
    }

    pub fn from_node(node: &Node) -> ObjectRecord {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let mut r = ObjectRecord {
            key: node.name.clone(),
            head: ObjectHead {
                size: node.size,
                modified: (node.mtime_ns != 0).then(|| Utc.timestamp_nanos(node.mtime_ns)),
                headers: BTreeMap::new(),
                metadata: BTreeMap::new(),
                ..ObjectHead::default()
            },
            is_latest: true,
            delete_marker: false,
            content: node.content.clone(),
        };
        for a in &node.xattrs {
            match a.name.as_str() {
                ETAG => r.head.etag = text(&a.value),
                VERSION => r.head.version_id = Some(text(&a.value)),
                LATEST => r.is_latest = a.value != b"0",
                DELETE_MARKER => r.delete_marker = true,
                n => {
                    if let Some(h) = n.strip_prefix(HEADER) {
                        r.head.headers.insert(h.to_string(), text(&a.value));
                    } else if let Some(m) = n.strip_prefix(META) {
                        r.head.metadata.insert(m.to_string(), text(&a.value));
                    }
                }
            }
        }
        r
    }
}

/// When a listing's time and a recorded one count as the same (S3 lists
/// whole seconds or milliseconds; a read's header has whole seconds).
pub(crate) fn same_time(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.timestamp() == b.timestamp(),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_its_node() {
        let mut head = ObjectHead {
            size: 5,
            etag: "abc-2".into(),
            modified: Some(Utc.timestamp_opt(1_700_000_000, 0).unwrap()),
            version_id: Some("v1".into()),
            ..ObjectHead::default()
        };
        head.headers.insert("content-type".into(), "image/png".into());
        head.metadata.insert("owner".into(), "ada".into());
        let r = ObjectRecord {
            key: "a//b/ c?".into(),
            head,
            is_latest: false,
            delete_marker: false,
            content: vec![Id([7; 32])],
        };
        assert_eq!(ObjectRecord::from_node(&r.to_node()), r);
    }
}
