//! The cirkel backup repository.
//!
//! A repository is a set of immutable, content-addressed objects in a storage
//! backend (a local directory or an S3 bucket). It stores *blobs* (chunks of
//! data and directory trees), groups them into *packs*, lists them in
//! *indexes* and names the roots of backups in *snapshots*. Nothing here knows
//! about PostgreSQL, Redis or any other source: sources hand in bytes and
//! trees, and get them back.
//!
//! Invariants (see ARCHITECTURE.md):
//! - every object is written create-if-absent and never modified;
//! - objects are written in the order packs → index → snapshot, so a crash at
//!   any point leaves every completed snapshot readable;
//! - the name of a pack, index or snapshot object is the BLAKE3 hash of its
//!   stored bytes, so any flipped bit is detectable without the key.

pub mod backend;
mod blob;
pub mod chunker;
pub mod crash;
pub mod crypto;
mod error;
mod id;
pub mod index;
pub mod lock;
pub mod pack;
mod repository;
pub mod retention;
pub mod runtime;
pub mod single_file;
pub mod snapshot;
pub mod stream;
pub mod tree;
mod writer;

pub mod copy;
pub mod follow;
pub mod prune;
pub mod repair;
pub mod verify;

pub use backend::{Backend, BackendError, ObjectInfo};
pub use blob::{BlobData, BlobKind};
pub use crypto::Cipher;
pub use error::{Error, Result, chain as error_chain};
pub use id::Id;
pub use repository::{ChunkerParams, InitOptions, KeyInfo, RepoConfig, Repository, Unreadable, limits};
pub use snapshot::{Snapshot, SnapshotError, SnapshotSummary};
pub use tree::{Node, NodeKind, Tree, Xattr};
pub use writer::{BlobWriter, WriterStats};
