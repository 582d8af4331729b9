//! Forgetting snapshots and removing the data no kept snapshot needs.
//!
//! Order of work, chosen so that a crash at any step leaves a readable
//! repository: (1) forgotten snapshot objects are deleted; (2) still-used
//! blobs of mostly-empty packs are copied into new packs (with their own
//! index); (3) one consolidated index of the surviving packs is written;
//! (4) the old index files are deleted; (5) the unused packs are deleted.
//! Until (4) the old indexes still name the old packs, which still exist;
//! after it no index names a pack about to go, so no new backup can dedup
//! against it. Data is removed only when no writer holds a live lock (see
//! [`crate::lock`]); otherwise prune deletes snapshots only and says so.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use crate::blob::BlobKind;
use crate::index::{Index, PackRecord};
use crate::retention::{self, Decision, Policy};
use crate::snapshot::Snapshot;
use crate::writer::BlobWriter;
use crate::{Error, Id, Repository, Result};

/// Age after which a temporary file with no live writer is a leftover.
pub const TEMP_FILES_AFTER: std::time::Duration = std::time::Duration::from_secs(60 * 60);

#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub policy: Policy,
    /// Only snapshots with this tag are subject to the policy.
    pub only_tag: Option<String>,
    pub dry_run: bool,
    /// Repack a pack when more than this fraction of it is unused.
    pub max_unused: f64,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { policy: Policy::default(), only_tag: None, dry_run: false, max_unused: 0.2 }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub decisions: Vec<Decision>,
    pub snapshots_removed: usize,
    pub packs_removed: usize,
    pub packs_repacked: usize,
    pub bytes_freed: u64,
    pub orphan_packs_removed: usize,
    /// Temporary files left by killed writers, removed.
    pub temp_files_removed: usize,
    /// Set when data removal was skipped, with the reason.
    pub deferred: Option<String>,
    pub dry_run: bool,
}

/// Every blob reachable from the given trees (the trees themselves included).
pub fn reachable(repo: &Repository, index: &Index, roots: impl IntoIterator<Item = Id>) -> Result<HashSet<Id>> {
    let mut seen = HashSet::new();
    let mut stack: Vec<Id> = roots.into_iter().collect();
    while let Some(tree_id) = stack.pop() {
        if !seen.insert(tree_id) {
            continue;
        }
        let tree = repo.load_tree(index, &tree_id)?;
        for node in tree.nodes {
            seen.extend(node.content);
            seen.extend(node.content_lists);
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
        }
    }
    Ok(seen)
}

/// Walks every kept snapshot and returns the blobs they reach; fails,
/// naming the snapshot, when one of them reaches a blob no index lists or a
/// tree that cannot be read. Deleting anything on the strength of an
/// incomplete index could remove the only copy of that blob.
pub fn reachable_complete(repo: &Repository, index: &Index, kept: &[(Id, Snapshot)]) -> Result<HashSet<Id>> {
    let mut seen = HashSet::new();
    for (snap_id, snap) in kept {
        let incomplete = |what: String| {
            Error::Failed {
            message: format!(
                "prune stopped before deleting anything: kept snapshot {} {what}",
                snap_id.short()
            ),
            hint: Some(
                "run `cirkel repo repair index` to rebuild the index from the packs; if data is really lost, `cirkel repo repair snapshots` or `cirkel repo forget ID`".into(),
            ),
        }
        };
        let mut stack = vec![snap.tree];
        while let Some(tree_id) = stack.pop() {
            if !index.contains(&tree_id) {
                return Err(incomplete(format!("references tree {tree_id}, which no index lists")));
            }
            if !seen.insert(tree_id) {
                continue;
            }
            let tree = repo.load_tree(index, &tree_id).map_err(|e| incomplete(format!("cannot be read ({e})")))?;
            for node in tree.nodes {
                for blob in node.content.iter().chain(&node.content_lists) {
                    if !index.contains(blob) {
                        return Err(incomplete(format!(
                            "references blob {blob} (of {}), which no index lists",
                            node.name
                        )));
                    }
                }
                seen.extend(node.content);
                seen.extend(node.content_lists);
                if let Some(sub) = node.subtree {
                    stack.push(sub);
                }
            }
        }
    }
    Ok(seen)
}

pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let (_guard, writers) = repo.lock_exclusive("prune")?;
    let mut report = PruneReport { dry_run: opts.dry_run, ..Default::default() };

    // Nothing is deleted until every snapshot and index reads and every
    // kept snapshot finds all its blobs in the index.
    let snapshots = repo.snapshots_strict()?;
    if !opts.policy.is_empty() {
        report.decisions = retention::apply(&opts.policy, &snapshots, chrono::Utc::now(), opts.only_tag.as_deref());
    }
    let forget: HashSet<Id> = report.decisions.iter().filter(|d| !d.keep).map(|d| d.id).collect();
    let index = repo.load_index_strict()?;
    let kept: Vec<(Id, Snapshot)> = snapshots.into_iter().filter(|(id, _)| !forget.contains(id)).collect();
    let used = reachable_complete(repo, &index, &kept)?;

    if !opts.dry_run {
        for id in &forget {
            repo.delete_snapshot(id)?;
        }
    }
    report.snapshots_removed = forget.len();
    crate::crash::point("prune-after-forget");

    if let Some(w) = writers.first() {
        report.deferred = Some(format!(
            "{} in progress (pid {} on {}): data is removed by the next prune",
            w.operation, w.pid, w.host
        ));
        return Ok(report);
    }

    // Classify packs by how much of them is still used.
    let mut to_delete: Vec<&PackRecord> = Vec::new();
    let mut to_repack: Vec<&PackRecord> = Vec::new();
    let mut keep: Vec<PackRecord> = Vec::new();
    for pack in index.packs() {
        let (mut used_bytes, mut total) = (0u64, 0u64);
        for b in &pack.blobs {
            total += b.length as u64;
            if used.contains(&b.id) && index.is_primary(&pack.id, b) {
                used_bytes += b.length as u64;
            }
        }
        if used_bytes == 0 {
            to_delete.push(pack);
        } else if total > 0 && (total - used_bytes) as f64 / total as f64 > opts.max_unused {
            to_repack.push(pack);
        } else {
            keep.push(pack.clone());
        }
    }
    // No writer is live: temporary files older than any write in progress
    // could be were left by a killed one.
    if !opts.dry_run {
        report.temp_files_removed = repo.backend.clean_temp(TEMP_FILES_AFTER)?;
    }
    let indexed: HashSet<Id> = index.packs().map(|p| p.id).collect();
    let orphans: Vec<(Id, u64)> = list_packs(repo)?.into_iter().filter(|(id, _)| !indexed.contains(id)).collect();

    report.packs_removed = to_delete.len() + to_repack.len();
    report.packs_repacked = to_repack.len();
    report.orphan_packs_removed = orphans.len();
    report.bytes_freed =
        to_delete.iter().chain(&to_repack).map(|p| p.size).sum::<u64>() + orphans.iter().map(|(_, s)| s).sum::<u64>();
    if opts.dry_run {
        return Ok(report);
    }

    // (2) Copy still-used blobs out of packs about to go.
    let mut new_files = HashSet::new();
    if !to_repack.is_empty() {
        let writer = BlobWriter::new(repo, Arc::new(Index::default()));
        for pack in &to_repack {
            let bytes = repo.read_pack(&pack.id)?;
            for b in &pack.blobs {
                if used.contains(&b.id) && index.is_primary(&pack.id, b) {
                    let stored = bytes
                        .get(b.offset as usize..(b.offset + b.length) as usize)
                        .ok_or_else(|| Error::corrupt("pack", pack.id, "shorter than its index says"))?;
                    // Check before moving: never copy damage into a new pack.
                    repo.decode_blob(&b.id, stored, b.raw_length, b.compressed)?;
                    writer.add_raw(b.id, b.kind, stored, b.raw_length, b.compressed)?;
                }
            }
        }
        writer.finish()?;
        crate::crash::point("prune-after-repack");
        new_files =
            repo.list_ids("index")?.into_iter().map(|(id, _)| id).filter(|id| !index.files.contains(id)).collect();
    }
    // (3) One index for the surviving old packs. (4) Old index files go.
    let consolidated = repo.save_index(&keep)?;
    new_files.insert(consolidated);
    crate::crash::point("prune-after-new-index");
    for old in &index.files {
        if !new_files.contains(old) {
            repo.block_on(repo.backend.delete(&format!("index/{old}")))?;
        }
    }
    crate::crash::point("prune-after-old-index");
    // (5) Unused packs go.
    for (i, pack) in to_delete.iter().chain(&to_repack).enumerate() {
        if i == 1 {
            crate::crash::point("prune-mid-pack-delete");
        }
        repo.block_on(repo.backend.delete(&Repository::pack_key(&pack.id)))?;
    }
    for (id, _) in &orphans {
        repo.block_on(repo.backend.delete(&Repository::pack_key(id)))?;
    }
    Ok(report)
}

/// Every pack object in `data/`, with its size.
pub fn list_packs(repo: &Repository) -> Result<Vec<(Id, u64)>> {
    repo.list_ids("data")
}

/// How many bytes each kind of blob takes; used by `repo stats`.
pub fn blob_kinds(index: &Index) -> HashMap<BlobKind, (u64, u64)> {
    let mut out: HashMap<BlobKind, (u64, u64)> = HashMap::new();
    for p in index.packs() {
        for b in &p.blobs {
            let e = out.entry(b.kind).or_default();
            e.0 += 1;
            e.1 += b.length as u64;
        }
    }
    out
}
