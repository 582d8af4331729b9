//! PostgreSQL protection: base backups, WAL archiving and streaming, and
//! point-in-time restore, on top of the source-agnostic repository.
//!
//! - [`wal`]: WAL file names, `wal-push` / `wal-fetch` (PostgreSQL's
//!   `archive_command` / `restore_command`), gap and timeline checks.
//! - [`backup`]: consistent base backups through the non-exclusive backup
//!   API, stored as a deduplicated tree in fixed-size page-aligned blocks.
//! - [`restore`]: choosing a backup for a target and writing the recovery
//!   settings so that starting PostgreSQL replays to it and promotes.
//! - [`stream`]: a `pg_receivewal` supervisor that uploads partial segments
//!   every second, so the newest WAL leaves the host within seconds.
//! - [`catalog`]: backups and the recoverable window.

pub mod api;
pub mod archiver;
pub mod backup;
pub mod catalog;
pub mod checksum;
pub mod conn;
pub mod control;
pub mod coord;
pub mod drill;
pub mod dump;
pub mod expire;
pub mod failover;
pub mod ha;
pub mod keeper;
pub mod lineage;
pub mod members;
pub mod netfault;
pub mod proxy;
pub mod restore;
pub mod stream;
pub mod verify;
pub mod wal;
pub mod watch;

/// The snapshot kind of base backups.
pub const KIND: &str = "pg";

/// The repository namespace of one cluster's WAL: clusters are told apart
/// by their system identifier, so several can share a repository.
pub fn namespace(system_id: u64) -> String {
    format!("pg-{system_id}")
}
