//! `cirkel backup bucket`: list, reuse what the parent has, read the rest
//! on worker threads, write the trees and then the snapshot.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use cirkel_repo::runtime::Shared;
use cirkel_repo::{
    BlobKind, BlobWriter, Id, Node, NodeKind, Repository, Snapshot, SnapshotError, SnapshotSummary, Tree,
};
use serde::Serialize;

use crate::s3::{Bucket, ObjectEntry};
use crate::{Error, KIND, ObjectRecord, same_time};

/// Reports a backup's progress.
pub trait Progress: Sync {
    /// The listing is done: this many objects (or versions).
    fn listed(&self, _objects: u64, _bytes: u64) {}
    /// One object recorded, `read` when its content was read.
    fn object_done(&self, _bytes: u64, _read: bool) {}
}

impl Progress for () {}

/// What to back up and how.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// The source's name (`[buckets.NAME]`), recorded in the snapshot.
    pub name: String,
    /// Every version and delete marker, not only the current objects.
    pub versions: bool,
    pub tags: Vec<String>,
    /// Compare with this snapshot instead of the newest of the same source.
    pub parent: Option<(Id, Snapshot)>,
    /// Read every object, even those unchanged since the parent.
    pub force: bool,
    /// Objects read at once.
    pub threads: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackupStats {
    pub objects: u64,
    /// Objects whose content was read.
    pub read: u64,
    /// Objects whose content came from the parent snapshot unread.
    pub reused: u64,
    /// Objects whose head alone was read (their metadata may have changed).
    pub heads: u64,
    /// Objects listed but deleted before they could be read.
    pub vanished: u64,
    pub bytes_read: u64,
}

#[derive(Debug)]
pub struct BackupOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
    pub stats: BackupStats,
    pub parent: Option<Id>,
}

/// The newest snapshot of this source (same name and location).
fn newest_of(repo: &Repository, name: &str, location: &str) -> Result<Option<(Id, Snapshot)>, Error> {
    Ok(repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.kind == KIND && s.paths == [location] && s.meta["bucket"] == name)
        .max_by_key(|(_, s)| s.time))
}

/// Every object a bucket snapshot records, in order.
pub fn records(
    repo: &Repository,
    index: &cirkel_repo::index::Index,
    snap: &Snapshot,
) -> Result<Vec<ObjectRecord>, Error> {
    let root = repo.load_tree(index, &snap.tree)?;
    let mut out = Vec::new();
    for group in &root.nodes {
        let Some(sub) = &group.subtree else {
            return Err(Error::Failed {
                message: format!("snapshot group {} has no tree", group.name),
                hint: "this is not a bucket snapshot cirkel wrote; run `cirkel repo verify`".into(),
            });
        };
        out.extend(repo.load_tree(index, sub)?.nodes.iter().map(ObjectRecord::from_node));
    }
    Ok(out)
}

enum Work {
    /// Read the object's content and head.
    Get(usize),
    /// Read its head only; the content is the parent's.
    Head(usize, ObjectRecord),
}

/// Pieces of one answer, read on demand by the chunker.
struct Body<'a> {
    rt: &'a Shared,
    bucket: &'a Bucket,
    key: &'a str,
    resp: reqwest::Response,
    buf: Bytes,
    failed: Option<Error>,
}

impl Read for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rt.block_on(self.bucket.next_chunk(self.key, &mut self.resp)) {
                Ok(Some(b)) => self.buf = b,
                Ok(None) => return Ok(0),
                Err(e) => {
                    let text = e.to_string();
                    self.failed = Some(e);
                    return Err(std::io::Error::other(text));
                }
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        let _ = self.buf.split_to(n);
        Ok(n)
    }
}

/// What became of one object.
enum Done {
    Record(ObjectRecord, bool),
    Vanished,
    Unreadable(String),
}

fn read_object(
    rt: &Shared,
    bucket: &Bucket,
    writer: &BlobWriter,
    entry: &ObjectEntry,
    versions: bool,
) -> Result<Done, Error> {
    let version = if versions { entry.version_id.as_deref() } else { None };
    let (head, resp) = match rt.block_on(bucket.get(&entry.key, version)) {
        Ok(x) => x,
        Err(Error::NotFound { .. }) => return Ok(Done::Vanished),
        Err(Error::Refused { what, detail }) => return Ok(Done::Unreadable(format!("{what}: {detail}"))),
        Err(e) => return Err(e),
    };
    let repo = writer.repo();
    let chunker = repo.config().chunker;
    let mut body = Body { rt, bucket, key: &entry.key, resp, buf: Bytes::new(), failed: None };
    let mut content = Vec::new();
    let mut size = 0u64;
    if head.size <= chunker.min as u64 {
        // One chunk whatever the chunker would say: spare it its buffer.
        let mut data = Vec::with_capacity(head.size as usize);
        if let Err(e) = body.read_to_end(&mut data) {
            return Err(body.failed.take().unwrap_or_else(|| failed_read(&entry.key, e)));
        }
        size = data.len() as u64;
        if !data.is_empty() {
            content.push(writer.add(BlobKind::Data, &data)?);
        }
    } else {
        let seed = repo.crypto().chunker_seed();
        for chunk in cirkel_repo::chunker::content_defined(&mut body, chunker, seed) {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => return Err(body.failed.take().unwrap_or_else(|| failed_read(&entry.key, e))),
            };
            size += chunk.data.len() as u64;
            content.push(writer.add(BlobKind::Data, &chunk.data)?);
        }
    }
    if size != head.size {
        return Ok(Done::Unreadable(format!(
            "the server sent {size} bytes of an object it said holds {}; back up again",
            head.size
        )));
    }
    let record =
        ObjectRecord { key: entry.key.clone(), head, is_latest: entry.is_latest, delete_marker: false, content };
    Ok(Done::Record(record, true))
}

fn failed_read(key: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable { what: format!("read {key}"), detail: e.to_string() }
}

/// Backs a bucket up into `repo`.
pub fn backup(
    repo: &Repository,
    bucket: &Bucket,
    opts: &BackupOptions,
    progress: &dyn Progress,
) -> Result<BackupOutcome, Error> {
    let start = Instant::now();
    let location = bucket.location();
    let rt = Shared::get()
        .map_err(|e| Error::Failed { message: e.to_string(), hint: "check the system's limits".into() })?;
    let _lock = repo.lock_shared("backup")?;
    let index = Arc::new(repo.load_index()?);
    let parent = match &opts.parent {
        Some(p) => Some(p.clone()),
        None => newest_of(repo, &opts.name, &location)?,
    };
    let mut previous: HashMap<(String, Option<String>), ObjectRecord> = HashMap::new();
    if let Some((_, snap)) = &parent
        && !opts.force
    {
        for r in records(repo, &index, snap)? {
            if !r.delete_marker {
                previous.insert((r.key.clone(), r.head.version_id.clone()), r);
            }
        }
    }
    let entries = if opts.versions { rt.block_on(bucket.list_versions())? } else { rt.block_on(bucket.list())? };
    let keys: Vec<ObjectEntry> = entries
        .into_iter()
        .filter_map(|mut e| {
            e.key = e.key.strip_prefix(&bucket.prefix)?.to_string();
            Some(e)
        })
        .collect();
    progress.listed(keys.len() as u64, keys.iter().map(|e| e.size).sum());

    let mut results: Vec<Option<Done>> = (0..keys.len()).map(|_| None).collect();
    let mut work = Vec::new();
    let mut stats = BackupStats::default();
    for (i, e) in keys.iter().enumerate() {
        if e.delete_marker {
            let head =
                crate::ObjectHead { version_id: e.version_id.clone(), modified: e.modified, ..Default::default() };
            let r =
                ObjectRecord { key: e.key.clone(), head, is_latest: e.is_latest, delete_marker: true, content: vec![] };
            results[i] = Some(Done::Record(r, false));
            continue;
        }
        let version = if opts.versions { e.version_id.clone() } else { None };
        let reusable = previous.get(&(e.key.clone(), version)).filter(|p| {
            p.head.etag == e.etag && p.head.size == e.size && p.content.iter().all(|id| index.contains(id))
        });
        match reusable {
            Some(p) if same_time(p.head.modified, e.modified) || (opts.versions && e.version_id.is_some()) => {
                let mut r = p.clone();
                r.is_latest = e.is_latest;
                results[i] = Some(Done::Record(r, false));
            }
            Some(p) => work.push(Work::Head(i, p.clone())),
            None => work.push(Work::Get(i)),
        }
    }
    for d in results.iter().flatten() {
        if let Done::Record(r, _) = d {
            progress.object_done(r.head.size, false);
        }
    }

    let writer = BlobWriter::new(repo, index.clone());
    let (tx, rx) = crossbeam::channel::unbounded::<Work>();
    for w in work {
        let _ = tx.send(w);
    }
    drop(tx);
    let done: Mutex<Vec<(usize, Done)>> = Mutex::new(Vec::new());
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let bytes_read = AtomicU64::new(0);
    let heads = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1) {
            s.spawn(|| {
                while let Ok(w) = rx.recv() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (i, outcome) = match w {
                        Work::Get(i) => (i, read_object(&rt, bucket, &writer, &keys[i], opts.versions)),
                        Work::Head(i, mut r) => {
                            let e = &keys[i];
                            let version = if opts.versions { e.version_id.as_deref() } else { None };
                            let outcome = match rt.block_on(bucket.head(&e.key, version)) {
                                // The content is the parent's only if the head still says so.
                                Ok(h) if h.etag == r.head.etag && h.size == r.head.size => {
                                    r.head = h;
                                    r.is_latest = e.is_latest;
                                    heads.fetch_add(1, Ordering::Relaxed);
                                    Ok(Done::Record(r, false))
                                }
                                Ok(_) => read_object(&rt, bucket, &writer, e, opts.versions),
                                Err(Error::NotFound { .. }) => Ok(Done::Vanished),
                                Err(Error::Refused { what, detail }) => {
                                    Ok(Done::Unreadable(format!("{what}: {detail}")))
                                }
                                Err(e) => Err(e),
                            };
                            (i, outcome)
                        }
                    };
                    match outcome {
                        Ok(d) => {
                            if let Done::Record(r, read) = &d {
                                if *read {
                                    bytes_read.fetch_add(r.head.size, Ordering::Relaxed);
                                }
                                progress.object_done(r.head.size, *read);
                            }
                            if let Ok(mut v) = done.lock() {
                                v.push((i, d));
                            }
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            if let Ok(mut f) = fatal.lock()
                                && f.is_none()
                            {
                                *f = Some(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = fatal.into_inner().ok().flatten() {
        // Packs written so far are kept (a later backup reuses them); no snapshot.
        let _ = writer.finish();
        return Err(e);
    }
    for (i, d) in done.into_inner().unwrap_or_default() {
        results[i] = Some(d);
    }

    let mut errors = Vec::new();
    let mut recorded = Vec::new();
    for (i, d) in results.into_iter().enumerate() {
        match d {
            Some(Done::Record(r, read)) => {
                if read {
                    stats.read += 1;
                } else if !r.delete_marker {
                    stats.reused += 1;
                }
                recorded.push(r);
            }
            Some(Done::Vanished) => stats.vanished += 1,
            Some(Done::Unreadable(message)) => errors.push(SnapshotError { path: keys[i].key.clone(), message }),
            None => errors.push(SnapshotError { path: keys[i].key.clone(), message: "not read".into() }),
        }
    }
    stats.heads = heads.load(Ordering::Relaxed);
    stats.objects = recorded.len() as u64;
    stats.bytes_read = bytes_read.load(Ordering::Relaxed);

    let root = write_groups(&writer, &recorded)?;
    let wstats = writer.finish()?;
    let bytes: u64 = recorded.iter().map(|r| r.head.size).sum();
    let snapshot = Snapshot {
        time: chrono::Utc::now(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
        kind: KIND.into(),
        paths: vec![location.clone()],
        tags: opts.tags.clone(),
        tree: root,
        parent: parent.as_ref().map(|(id, _)| *id),
        summary: SnapshotSummary {
            files: stats.objects,
            dirs: 0,
            bytes,
            files_read: stats.read,
            bytes_added: wstats.bytes_new_stored,
            duration_ms: start.elapsed().as_millis() as u64,
        },
        incomplete: !errors.is_empty(),
        errors,
        meta: serde_json::json!({
            "bucket": opts.name,
            "url": location,
            "versions": opts.versions,
            "objects": stats.objects,
            "vanished": stats.vanished,
        }),
    };
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupOutcome { id, snapshot, stats, parent: parent.map(|(id, _)| id) })
}

/// Objects per group at most, whatever the hashes say.
const GROUP_MAX: usize = 4096;

/// Writes the objects in groups cut where a key's hash begins with a zero
/// byte (all versions of a key stay together); returns the root tree.
fn write_groups(writer: &BlobWriter, records: &[ObjectRecord]) -> Result<Id, Error> {
    let mut roots = Vec::new();
    let mut group: Vec<Node> = Vec::new();
    let flush = |group: &mut Vec<Node>, roots: &mut Vec<Node>| -> Result<(), Error> {
        if group.is_empty() {
            return Ok(());
        }
        let id = writer.add_tree(&Tree { nodes: std::mem::take(group) })?;
        roots.push(Node {
            name: format!("{:05}", roots.len()),
            kind: NodeKind::Dir,
            mode: 0o700,
            subtree: Some(id),
            ..Node::default()
        });
        Ok(())
    };
    let mut last_key: Option<&str> = None;
    for r in records {
        let new_key = last_key != Some(r.key.as_str());
        if new_key
            && !group.is_empty()
            && (blake3::hash(r.key.as_bytes()).as_bytes()[0] == 0 || group.len() >= GROUP_MAX)
        {
            flush(&mut group, &mut roots)?;
        }
        last_key = Some(&r.key);
        group.push(r.to_node());
    }
    flush(&mut group, &mut roots)?;
    Ok(writer.add_tree(&Tree { nodes: roots })?)
}
