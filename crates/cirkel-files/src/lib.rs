//! File backups: directory trees into a repository and back.
//!
//! [`backup`] walks the given paths, reads changed files in parallel, cuts
//! them into content-defined chunks and stores them through a
//! [`cirkel_repo::BlobWriter`]; files whose size, mtime, ctime and inode match
//! the parent snapshot are not read again. [`restore`] writes a snapshot's
//! tree below a target directory and never anywhere else.

mod backup;
mod exclude;
mod fsat;
mod restore;

pub use backup::{
    BackupOptions, BackupOutcome, BlockCheck, BlockLevel, Chunking, Finish, FinishHook, Progress, SourceError, backup,
    backup_with,
};
pub use exclude::Excludes;
pub use restore::{RestoreOptions, RestoreReport, restore};

/// The snapshot kind file backups use.
pub const KIND: &str = "files";
