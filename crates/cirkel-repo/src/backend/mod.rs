//! Storage backends: where repository objects live.
//!
//! A backend stores immutable objects under slash-separated keys. It offers
//! exactly what the repository needs and no more: create-if-absent writes,
//! whole and ranged reads, listing by prefix, and idempotent deletes. Both
//! implementations pass the same conformance suite (`tests/backend_conformance.rs`).

mod local;
mod s3;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

pub use local::LocalBackend;
pub use s3::{S3Backend, S3Options};

/// A stored object, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When the object was written, where the backend knows.
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

/// Outcome of a create-if-absent write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The object was written.
    New,
    /// An object with that key already existed and was left untouched.
    Existed,
}

/// Backend failures, classified by what a caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The object does not exist.
    #[error("object {key} not found in {location}")]
    NotFound { location: String, key: String },
    /// The backend could not be reached or answered with an error after
    /// retries; trying again later may help.
    #[error("storage unavailable at {location} ({op} {key}): {detail}")]
    Unavailable { location: String, op: &'static str, key: String, detail: String },
    /// A failure that retrying will not fix (permissions, bad configuration).
    #[error("storage error at {location} ({op} {key}): {detail}")]
    Fatal { location: String, op: &'static str, key: String, detail: String },
}

impl BackendError {
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            BackendError::NotFound { .. } => {
                "the repository is missing an object; run `cirkel repo verify`".into()
            }
            BackendError::Unavailable { .. } => {
                "check that the storage server is up and reachable, then run the command again; completed snapshots are unaffected".into()
            }
            BackendError::Fatal { .. } => {
                "check the repository location, its permissions and the storage credentials".into()
            }
        })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::NotFound { .. })
    }
}

/// Where repository objects are stored.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Human-readable location (a path or `s3://bucket/prefix`), never secrets.
    fn location(&self) -> String;

    /// Writes `data` under `key` unless an object already exists there.
    async fn create(&self, key: &str, data: Bytes) -> Result<Created, BackendError>;

    /// Reads a whole object.
    async fn read(&self, key: &str) -> Result<Bytes, BackendError>;

    /// Reads `range` of an object.
    async fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError>;

    /// Lists every object whose key starts with `prefix` (a folder such as `data/`).
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError>;

    /// Deletes an object; deleting an absent object succeeds.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;

    /// Replaces an object atomically: readers see the old bytes or the new,
    /// never neither. Only `repo repair config` uses it, the one object that
    /// is ever rewritten.
    async fn replace(&self, key: &str, data: Bytes) -> Result<(), BackendError>;

    /// Removes temporary files older than `older_than` that a killed writer
    /// left behind (the local backend writes each object to a temporary
    /// file first); returns how many. Backends without any: nothing to do.
    fn clean_temp(&self, _older_than: std::time::Duration) -> Result<usize, BackendError> {
        Ok(0)
    }

    /// Writes an object whose bytes come piece by piece, in order, unless
    /// one exists under `key`, so that writing overlaps producing. `None`
    /// means this backend cannot, and nothing was consumed: the caller
    /// gathers the pieces and uses `create`.
    fn create_pieces(
        &self,
        _key: &str,
        _pieces: &mut dyn Iterator<Item = std::io::Result<Vec<u8>>>,
    ) -> Option<Result<Created, BackendError>> {
        None
    }
}

/// Options for opening a backend from a location string.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    pub s3: S3Options,
}

/// Opens the backend a location names: `s3://bucket[/prefix]` or a local path
/// (optionally `file://`).
pub fn open(location: &str, opts: &BackendOptions) -> Result<Arc<dyn Backend>, BackendError> {
    let refuse =
        |detail: String| BackendError::Fatal { location: location.into(), op: "open", key: String::new(), detail };
    // A scheme is matched without regard to case, as URLs are; any scheme but
    // `s3` and `file` is refused rather than taken as a directory name.
    let scheme = location
        .split_once("://")
        .map(|(s, _)| s)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')));
    let rest = match scheme {
        Some(s) if s.eq_ignore_ascii_case("s3") => Some(&location[s.len() + 3..]),
        Some(s) if s.eq_ignore_ascii_case("file") => None,
        Some(s) => {
            return Err(refuse(format!(
                "`{s}://` is not a repository location: use a local path, file:///PATH or s3://BUCKET[/PREFIX] (an S3 server's URL goes in [repository.s3] endpoint)"
            )));
        }
        None => None,
    };
    if let Some(rest) = rest {
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, p.trim_matches('/')),
            None => (rest, ""),
        };
        if bucket.is_empty() {
            return Err(refuse("an S3 location needs a bucket: s3://BUCKET[/PREFIX]".into()));
        }
        Ok(Arc::new(S3Backend::new(bucket, prefix, &opts.s3)?))
    } else {
        let path = match scheme {
            Some(s) => &location[s.len() + 3..],
            None => location,
        };
        if path.is_empty() {
            return Err(refuse("an empty path names no repository".into()));
        }
        Ok(Arc::new(LocalBackend::new(path)))
    }
}
