//! Copying snapshots to a second repository (another region).
//!
//! Both repositories must share a master key (`repo init --copy-keys-from`),
//! so blob ids agree and sealed blobs move verbatim: only blobs the
//! destination lacks travel, every blob is authenticated and checked against
//! its id on the way, every new pack is read back after upload, and a
//! snapshot is written only after all its data is indexed. Re-running after
//! an interruption skips what already arrived.

use std::sync::Arc;

use serde::Serialize;

use crate::prune::reachable;
use crate::writer::{BlobWriter, WriterStats};
use crate::{Error, Id, Repository, Result};

#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    pub copied: Vec<Id>,
    pub already_present: Vec<Id>,
    pub stats: WriterStats,
    /// Named streams (WAL) copied, and their stored bytes.
    pub streams_copied: usize,
    pub stream_bytes: u64,
}

/// Copies every named stream the destination lacks, verbatim, and reads
/// each back to check it arrived intact.
fn copy_streams(src: &Repository, dst: &Repository, report: &mut CopyReport) -> Result<()> {
    let have: std::collections::HashSet<String> =
        dst.block_on(dst.backend.list("streams/"))?.into_iter().map(|o| o.key).collect();
    for o in src.block_on(src.backend.list("streams/"))? {
        if have.contains(&o.key) {
            continue;
        }
        let bytes = match src.block_on(src.backend.read(&o.key)) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue, // expired meanwhile
            Err(e) => return Err(e.into()),
        };
        let sum = Id::of(&bytes);
        report.stream_bytes += bytes.len() as u64;
        dst.block_on(dst.backend.create(&o.key, bytes))?;
        if Id::of(&dst.block_on(dst.backend.read(&o.key))?) != sum {
            return Err(Error::corrupt("stream", &o.key, "arrived with different content"));
        }
        report.streams_copied += 1;
    }
    Ok(())
}

/// Refuses two repositories that do not share a master key and cipher:
/// sealed objects could not move verbatim between them.
pub fn check_keys(src: &Repository, dst: &Repository) -> Result<()> {
    if src.crypto.master_key().map(|k| k.fingerprint()) != dst.crypto.master_key().map(|k| k.fingerprint())
        || src.crypto.blob_id(b"") != dst.crypto.blob_id(b"")
        || src.crypto.cipher() != dst.crypto.cipher()
    {
        return Err(Error::KeysDiffer { src: src.location(), dst: dst.location() });
    }
    Ok(())
}

/// Copies the given snapshots (all when empty) and, with `streams`, every
/// named stream (the WAL archive) the destination lacks.
pub fn copy(
    src: &Repository,
    dst: &Repository,
    which: &[Id],
    streams: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<CopyReport> {
    check_keys(src, dst)?;
    let lock = dst.lock_shared("copy")?;
    let _source_lock = src.lock_reader("copy")?;
    let src_index = src.load_index()?;
    let dst_index = Arc::new(dst.load_index()?);
    let present: std::collections::HashSet<Id> = dst.list_ids("snapshots")?.into_iter().map(|(id, _)| id).collect();
    let mut report = CopyReport::default();
    let snaps: Vec<(Id, crate::Snapshot)> = if which.is_empty() {
        src.snapshots()?
    } else {
        which.iter().map(|id| Ok((*id, src.load_snapshot(id)?))).collect::<Result<_>>()?
    };
    let writer = BlobWriter::with_options(dst, dst_index.clone(), true);
    let mut todo = Vec::new();
    let mut blobs: Vec<Id> = Vec::new();
    for (id, snap) in snaps {
        if present.contains(&id) {
            report.already_present.push(id);
            continue;
        }
        let mut need: Vec<Id> =
            reachable(src, &src_index, [snap.tree])?.into_iter().filter(|b| !dst_index.contains(b)).collect();
        need.sort();
        blobs.extend(need);
        todo.push(id);
    }
    blobs.sort();
    blobs.dedup();
    let total: u64 = blobs.iter().filter_map(|b| src_index.get(b)).map(|l| l.length as u64).sum();
    let mut done = 0u64;
    for b in &blobs {
        let (stored, loc) = src.read_blob_raw(&src_index, b)?;
        src.decode_blob(b, &stored, loc.raw_length, loc.compressed)?;
        writer.add_raw(*b, loc.kind, &stored, loc.raw_length, loc.compressed)?;
        done += loc.length as u64;
        progress(done, total);
    }
    lock.check_fresh()?;
    report.stats = writer.finish()?;
    if streams {
        copy_streams(src, dst, &mut report)?;
    }
    crate::crash::point("copy-before-snapshots");
    for id in todo {
        let stored = src.block_on(src.backend.read(&format!("snapshots/{id}")))?;
        if Id::of(&stored) != id {
            return Err(Error::corrupt("snapshot", id, "content does not match its name"));
        }
        dst.block_on(dst.backend.create(&format!("snapshots/{id}"), stored))?;
        report.copied.push(id);
    }
    Ok(report)
}
