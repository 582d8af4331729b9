//! Checking a repository: structure always, every byte on request.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::index::Index;
use crate::pack::parse_header;
use crate::prune::list_packs;
use crate::{Error, Id, Repository, Result};

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Read and authenticate every blob of every pack.
    pub read_data: bool,
}

/// A snapshot that cannot be fully restored, and the files affected.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Damage {
    pub snapshot: Id,
    pub paths: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub snapshots: usize,
    pub packs: usize,
    pub blobs: usize,
    pub bytes_read: u64,
    /// Named streams read and checked (with read_data).
    pub streams: usize,
    /// Problems found, one sentence each.
    pub errors: Vec<String>,
    /// Notes that need no action (packs left by an interrupted backup).
    pub notes: Vec<String>,
    pub damaged: Vec<Damage>,
}

impl VerifyReport {
    /// No error, and every snapshot restorable in full.
    pub fn ok(&self) -> bool {
        self.errors.is_empty() && self.damaged.is_empty()
    }
}

/// Walks a tree, calling `f(path, node)` for every node; trees that cannot
/// be read are reported to `on_err` and skipped.
pub fn walk(
    repo: &Repository,
    index: &Index,
    root: Id,
    f: &mut dyn FnMut(&str, &crate::Node),
    on_err: &mut dyn FnMut(&str, Id, &Error),
) {
    let mut stack = vec![(String::new(), root)];
    while let Some((prefix, id)) = stack.pop() {
        match repo.load_tree(index, &id) {
            Ok(tree) => {
                for n in &tree.nodes {
                    let path = format!("{prefix}/{}", n.name);
                    f(&path, n);
                    if let Some(sub) = n.subtree {
                        stack.push((path, sub));
                    }
                }
            }
            Err(e) => on_err(if prefix.is_empty() { "/" } else { &prefix }, id, &e),
        }
    }
}

pub fn verify(repo: &Repository, opts: &VerifyOptions, progress: &dyn Fn(u64, u64)) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let _lock = repo.lock_reader("verify")?;
    // Each unreadable index is an error; the others are still checked.
    let (index, unreadable) = repo.load_index_report()?;
    for u in unreadable {
        report.errors.push(format!("{}: {}; `cirkel repo repair index` rebuilds the index", u.key, u.error));
    }
    for k in repo.keys()? {
        if let Some(why) = &k.damaged {
            report.errors.push(format!("key keys/{} is damaged: {why}; `cirkel repo key remove` removes it", k.id));
        }
    }
    if repo.crypto.is_encrypted() && repo.config.mac.is_none() {
        report.notes.push("the config is not authenticated (written by an older cirkel); `cirkel repo repair config` authenticates it".into());
    }
    let stored: HashMap<Id, u64> = list_packs(repo)?.into_iter().collect();
    report.packs = stored.len();
    report.blobs = index.blob_count();

    // Damaged copies, as (pack, blob); a blob is lost only when every copy is.
    let mut bad_copies: HashSet<(Id, Id)> = HashSet::new();
    for pack in index.packs() {
        match stored.get(&pack.id) {
            None => {
                report.errors.push(format!("pack {} is listed in the index but missing", pack.id));
                bad_copies.extend(pack.blobs.iter().map(|b| (pack.id, b.id)));
            }
            Some(&size) if size != pack.size => {
                report.errors.push(format!("pack {} has {size} bytes, the index says {}", pack.id, pack.size));
                bad_copies.extend(pack.blobs.iter().map(|b| (pack.id, b.id)));
            }
            _ => {}
        }
    }
    let orphans = stored.keys().filter(|id| index.pack(id).is_none()).count();
    if orphans > 0 {
        report.notes.push(format!(
            "{orphans} pack(s) are in no index (left by an interrupted write); `cirkel repo prune` removes them"
        ));
    }

    if opts.read_data {
        let total: u64 = index.packs().filter(|p| stored.contains_key(&p.id)).map(|p| p.size).sum();
        let mut done = 0u64;
        for pack in index.packs() {
            if !stored.contains_key(&pack.id) {
                continue;
            }
            let bytes = match repo.read_pack(&pack.id) {
                Ok(b) => b,
                Err(e) => {
                    report.errors.push(format!("pack {}: {e}", pack.id));
                    bad_copies.extend(pack.blobs.iter().map(|b| (pack.id, b.id)));
                    continue;
                }
            };
            report.bytes_read += bytes.len() as u64;
            done += pack.size;
            progress(done, total);
            if Id::of(&bytes) != pack.id {
                report.errors.push(format!("pack {}: content does not match its name (damaged)", pack.id));
            }
            if let Err(e) = parse_header(&repo.crypto, &pack.id, &bytes) {
                report.errors.push(e.to_string());
            }
            for b in &pack.blobs {
                let ok = bytes
                    .get(b.offset as usize..(b.offset as usize + b.length as usize))
                    .map(|s| repo.decode_blob(&b.id, s, b.raw_length, b.compressed));
                match ok {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        report.errors.push(format!("pack {}: {e}", pack.id));
                        bad_copies.insert((pack.id, b.id));
                    }
                    None => {
                        report.errors.push(format!("pack {}: blob {} lies past its end", pack.id, b.id));
                        bad_copies.insert((pack.id, b.id));
                    }
                }
            }
        }
    }

    if opts.read_data {
        let (n, bad) = repo.check_streams()?;
        report.streams = n;
        report.errors.extend(bad);
    }

    let bad_blobs: HashSet<Id> = bad_copies
        .iter()
        .map(|(_, blob)| *blob)
        .filter(|blob| index.locations(blob).all(|l| bad_copies.contains(&(l.pack, *blob))))
        .collect();

    // Every snapshot: readable, every tree readable, every blob indexed and undamaged.
    let snapshot_ids = repo.list_ids("snapshots")?;
    report.snapshots = snapshot_ids.len();
    for (id, _) in snapshot_ids {
        let snap = match repo.load_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                report.errors.push(format!("snapshot {id}: {e}"));
                report.damaged.push(Damage { snapshot: id, paths: vec!["(whole snapshot)".into()] });
                continue;
            }
        };
        let paths = std::cell::RefCell::new(Vec::new());
        let mut errors = Vec::new();
        let bad_tree = |tid: &Id| bad_blobs.contains(tid) || !index.contains(tid);
        if bad_tree(&snap.tree) {
            errors.push(format!("snapshot {}: root tree {} is missing or damaged", id.short(), snap.tree.short()));
            paths.borrow_mut().push("/".to_string());
        } else {
            walk(
                repo,
                &index,
                snap.tree,
                &mut |path, node| {
                    let damaged = node.content.iter().any(|b| bad_blobs.contains(b) || !index.contains(b))
                        || node.subtree.is_some_and(|t| bad_tree(&t));
                    if damaged {
                        paths.borrow_mut().push(path.to_string());
                    }
                },
                &mut |path, tid, e| {
                    errors.push(format!("snapshot {}: tree {} at {path}: {e}", id.short(), tid.short()));
                    paths.borrow_mut().push(path.to_string());
                },
            );
        }
        let mut paths = paths.into_inner();
        paths.sort();
        paths.dedup();
        if errors.is_empty() && !paths.is_empty() {
            errors.push(format!(
                "snapshot {}: {} path(s) reference data that is missing from the index or damaged",
                id.short(),
                paths.len()
            ));
        }
        report.errors.extend(errors);
        if !paths.is_empty() {
            report.damaged.push(Damage { snapshot: id, paths });
        }
    }
    Ok(report)
}
