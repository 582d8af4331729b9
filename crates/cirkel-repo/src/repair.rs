//! Repairs: what to do once verify has found damage.
//!
//! - `repair index` rebuilds the index from the packs themselves: every pack
//!   carries a sealed header listing its blobs, so the index is redundant
//!   and can be written again from `data/` alone. This recovers from a lost
//!   or damaged index object, and drops entries for lost packs, so that the
//!   next backup stores those blobs again instead of deduplicating against
//!   data that is gone.
//! - `repair snapshots` rewrites snapshots that reference lost data without
//!   the files that cannot be restored, marks them (tag `repaired`, each
//!   dropped path in the snapshot's errors) and forgets the originals, so
//!   that prune can run again and the rest of each snapshot stays usable.
//! - `forget` removes snapshots by id, including ones that cannot be read.
//!
//! Each writes in the repository's usual order (packs, index, snapshot) and
//! deletes last, so a crash at any point leaves every object readable: at
//! worst an old index next to the new one, or an original snapshot next to
//! its repaired copy.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::index::{Index, PackRecord};
use crate::pack::{header_length, parse_sealed_header};
use crate::prune::list_packs;
use crate::snapshot::SnapshotError;
use crate::tree::{NodeKind, Tree};
use crate::writer::BlobWriter;
use crate::{Error, Id, Repository, Result};

/// Tag of a snapshot written by `repair snapshots`.
pub const REPAIRED_TAG: &str = "repaired";

#[derive(Clone, Debug, Default, Serialize)]
pub struct IndexRepair {
    /// Packs listed in the new index.
    pub packs: usize,
    pub blobs: usize,
    /// Packs whose header cannot be read, and why: their blobs are in no
    /// index, and a prune removes them once no kept snapshot needs them.
    pub unreadable_packs: Vec<String>,
    /// Index objects replaced (and removed, unless a dry run).
    pub old_indexes: usize,
    pub new_index: Option<Id>,
    pub dry_run: bool,
}

/// Rebuilds the index from the headers of the packs in `data/`.
pub fn repair_index(repo: &Repository, dry_run: bool) -> Result<IndexRepair> {
    let _lock = repo.lock_exclusive("repair index")?;
    // Listed before the packs: an index a writer adds from here on names
    // packs that already exist, and is left alone.
    let old = repo.block_on(repo.backend.list("index/"))?;
    let packs = list_packs(repo)?;
    let backend = repo.backend.clone();
    let headers: Vec<(Id, u64, Result<Vec<u8>>)> = repo.block_on(async move {
        futures::stream::iter(packs)
            .map(|(id, size)| {
                let b = backend.clone();
                async move {
                    let key = Repository::pack_key(&id);
                    let res = async {
                        if size < 4 {
                            return Err(Error::corrupt("pack", id, "too short"));
                        }
                        let tail = b.read_range(&key, size - 4..size).await?;
                        let hlen = header_length(&id, &tail)? as u64;
                        if hlen + 4 > size {
                            return Err(Error::corrupt("pack", id, "header length out of range"));
                        }
                        Ok(b.read_range(&key, size - 4 - hlen..size - 4).await?.to_vec())
                    }
                    .await;
                    (id, size, res)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await
    });
    let mut report = IndexRepair { dry_run, old_indexes: old.len(), ..Default::default() };
    let mut records = Vec::new();
    for (id, size, sealed) in headers {
        match sealed.and_then(|s| parse_sealed_header(&repo.crypto, &id, size, &s)) {
            Ok(blobs) => {
                report.blobs += blobs.len();
                records.push(PackRecord { id, size, blobs });
            }
            // An outage is not damage: stop rather than leave packs out.
            Err(Error::Backend(e)) if !e.is_not_found() => return Err(e.into()),
            Err(e) => report.unreadable_packs.push(e.to_string()),
        }
    }
    records.sort_by_key(|r| r.id);
    report.packs = records.len();
    if dry_run {
        return Ok(report);
    }
    let new = repo.save_index(&records)?;
    report.new_index = Some(new);
    crate::crash::point("repair-index-after-new-index");
    let new_key = format!("index/{new}");
    for o in old {
        if o.key != new_key {
            repo.block_on(repo.backend.delete(&o.key))?;
        }
    }
    Ok(report)
}

/// One snapshot `repair snapshots` rewrote (or would rewrite).
#[derive(Clone, Debug, Serialize)]
pub struct RepairedSnapshot {
    pub original: Id,
    /// The repaired copy; `None` on a dry run or when it cannot be repaired.
    pub repaired: Option<Id>,
    /// Paths dropped because their data is missing or damaged.
    pub dropped: Vec<String>,
    /// Why the snapshot cannot be repaired (its root tree is lost).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SnapshotRepair {
    pub snapshots: Vec<RepairedSnapshot>,
    pub dry_run: bool,
}

enum Fixed {
    Unchanged,
    Replaced(Id),
    Lost,
}

struct TreeFixer<'a> {
    repo: &'a Repository,
    index: &'a Index,
    stored: HashSet<Id>,
    /// Copies found damaged, as (pack, blob).
    damaged: HashSet<(Id, Id)>,
    writer: Option<BlobWriter>,
}

impl TreeFixer<'_> {
    /// A blob is usable when some copy of it lies undamaged in a pack that exists.
    fn usable(&self, id: &Id) -> bool {
        self.index.locations(id).any(|l| self.stored.contains(&l.pack) && !self.damaged.contains(&(l.pack, *id)))
    }

    fn fix(&self, tree_id: Id, path: &str, dropped: &mut Vec<String>) -> Result<Fixed> {
        if !self.usable(&tree_id) {
            return Ok(Fixed::Lost);
        }
        let Ok(tree) = self.repo.load_tree(self.index, &tree_id) else {
            return Ok(Fixed::Lost);
        };
        let mut changed = false;
        let mut nodes = Vec::with_capacity(tree.nodes.len());
        for mut node in tree.nodes {
            let node_path = format!("{path}/{}", node.name);
            if node.content.iter().chain(&node.content_lists).any(|b| !self.usable(b)) {
                dropped.push(node_path);
                changed = true;
                continue;
            }
            if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
                match self.fix(sub, &node_path, dropped)? {
                    Fixed::Unchanged => {}
                    Fixed::Replaced(id) => {
                        node.subtree = Some(id);
                        changed = true;
                    }
                    Fixed::Lost => {
                        dropped.push(format!("{node_path}/"));
                        changed = true;
                        continue;
                    }
                }
            }
            nodes.push(node);
        }
        if !changed {
            return Ok(Fixed::Unchanged);
        }
        match &self.writer {
            Some(w) => Ok(Fixed::Replaced(w.add_tree(&Tree { nodes })?)),
            None => Ok(Fixed::Replaced(tree_id)),
        }
    }
}

/// Every copy in an existing pack that does not read back, as (pack, blob).
fn damaged_copies(repo: &Repository, index: &Index, stored: &HashSet<Id>) -> HashSet<(Id, Id)> {
    let mut bad = HashSet::new();
    for pack in index.packs().filter(|p| stored.contains(&p.id)) {
        let bytes = repo.read_pack(&pack.id).ok();
        for b in &pack.blobs {
            let ok = bytes
                .as_ref()
                .and_then(|bytes| bytes.get(b.offset as usize..b.offset as usize + b.length as usize))
                .is_some_and(|s| repo.decode_blob(&b.id, s, b.raw_length, b.compressed).is_ok());
            if !ok {
                bad.insert((pack.id, b.id));
            }
        }
    }
    bad
}

/// Rewrites every snapshot that references missing data (or, with
/// `read_data`, damaged data) without the affected files, and forgets the
/// originals.
pub fn repair_snapshots(repo: &Repository, dry_run: bool, read_data: bool) -> Result<SnapshotRepair> {
    let _lock = repo.lock_exclusive("repair snapshots")?;
    // A file whose data is listed only in an unreadable index is not lost:
    // the index has to be repaired first.
    let index = repo.load_index_strict()?;
    let stored: HashSet<Id> = list_packs(repo)?.into_iter().map(|(id, _)| id).collect();
    let damaged = if read_data { damaged_copies(repo, &index, &stored) } else { HashSet::new() };
    // New trees deduplicate only against copies that are really there.
    let mut usable = Index::default();
    for pack in index.packs().filter(|p| stored.contains(&p.id)) {
        let mut pack = pack.clone();
        pack.blobs.retain(|b| !damaged.contains(&(pack.id, b.id)));
        usable.add_pack(pack);
    }
    let writer = (!dry_run).then(|| BlobWriter::new(repo, Arc::new(usable)));
    let fixer = TreeFixer { repo, index: &index, stored, damaged, writer };
    let mut report = SnapshotRepair { dry_run, ..Default::default() };
    let mut rewrites = Vec::new();
    for (id, snap) in repo.snapshots()? {
        let mut dropped = Vec::new();
        match fixer.fix(snap.tree, "", &mut dropped)? {
            Fixed::Unchanged => {}
            Fixed::Lost => report.snapshots.push(RepairedSnapshot {
                original: id,
                repaired: None,
                dropped: vec!["/".into()],
                error: Some(format!(
                    "its root tree is lost: nothing of it can be restored; `cirkel repo forget {}` removes it",
                    id.short()
                )),
            }),
            Fixed::Replaced(tree) => {
                rewrites.push((id, snap, tree, dropped.len()));
                report.snapshots.push(RepairedSnapshot { original: id, repaired: None, dropped, error: None });
            }
        }
    }
    let Some(writer) = fixer.writer else {
        return Ok(report);
    };
    writer.finish()?;
    for (id, mut snap, tree, _) in rewrites {
        let entry = report.snapshots.iter_mut().find(|r| r.original == id);
        let Some(entry) = entry else { continue };
        snap.tree = tree;
        snap.incomplete = true;
        if !snap.tags.iter().any(|t| t == REPAIRED_TAG) {
            snap.tags.push(REPAIRED_TAG.into());
        }
        for p in &entry.dropped {
            snap.errors.push(SnapshotError {
                path: p.clone(),
                message: format!(
                    "dropped by `repo repair snapshots` from snapshot {id}: its data is missing or damaged"
                ),
            });
        }
        let new = repo.save_snapshot(&snap)?;
        crate::crash::point("repair-snapshots-after-save");
        repo.delete_snapshot(&id)?;
        entry.repaired = Some(new);
    }
    Ok(report)
}

/// Forgets the snapshots named by id or unique id prefix. Every name is
/// resolved before anything is deleted; a snapshot that cannot be read can
/// still be named. The data they alone used is removed by the next prune.
pub fn forget(repo: &Repository, specs: &[String], dry_run: bool) -> Result<Vec<Id>> {
    let _lock = repo.lock_exclusive("forget")?;
    let mut ids = Vec::new();
    for spec in specs {
        let id = repo.find_snapshot_id(spec)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if !dry_run {
        for id in &ids {
            repo.delete_snapshot(id)?;
        }
    }
    Ok(ids)
}
