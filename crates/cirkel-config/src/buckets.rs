//! `[buckets.NAME]`: S3 buckets (or prefixes of them) backed up as a source.

use serde::Serialize;

use crate::{RetentionConfig, S3Config};

/// A bucket backed up by `cirkel backup bucket NAME`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BucketConfig {
    /// `s3://bucket[/prefix]`.
    pub url: String,
    /// Every version and delete marker of a versioned bucket, not only the
    /// current objects.
    pub versions: bool,
    pub tags: Vec<String>,
    /// Cron expression (five fields) for backups by `cirkel serve`.
    pub schedule: Option<String>,
    /// Named repositories each new snapshot is copied to.
    pub copy_to: Vec<String>,
    pub retention: Option<RetentionConfig>,
    /// How to reach the server: the same settings as a repository's `[s3]`.
    pub s3: S3Config,
}
