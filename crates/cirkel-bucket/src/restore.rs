//! `cirkel restore bucket`: write a snapshot's objects into a bucket, with
//! their content headers and user metadata; with every version, in the
//! order they were written.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use cirkel_repo::runtime::Shared;
use cirkel_repo::{Repository, Snapshot};
use serde::Serialize;

use crate::s3::Bucket;
use crate::{Error, ObjectRecord, records};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Objects written at once.
    pub threads: usize,
    /// Write into a bucket (prefix) that already holds objects.
    pub force: bool,
    /// Write every recorded version, oldest first, and the delete markers
    /// that end a key's history; otherwise only the current objects.
    pub all_versions: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub objects: u64,
    pub bytes: u64,
    /// Keys whose history ends in a delete marker, deleted again.
    pub deleted: u64,
}

/// Objects larger than this are written in parts of this size.
const PART: u64 = 16 << 20;

fn write_one(
    rt: &Shared,
    repo: &Repository,
    index: &cirkel_repo::index::Index,
    target: &Bucket,
    r: &ObjectRecord,
) -> Result<(), Error> {
    if r.head.size <= PART {
        let mut data = Vec::with_capacity(r.head.size as usize);
        for id in &r.content {
            data.extend_from_slice(&repo.read_blob(index, id)?);
        }
        check_size(r, data.len() as u64)?;
        return rt.block_on(target.put(&r.key, &r.head, Bytes::from(data)));
    }
    let upload = rt.block_on(target.start_upload(&r.key, &r.head))?;
    let result = (|| {
        let mut etags = Vec::new();
        let mut part = Vec::with_capacity(PART as usize);
        let mut written = 0u64;
        for id in &r.content {
            part.extend_from_slice(&repo.read_blob(index, id)?);
            if part.len() as u64 >= PART {
                written += part.len() as u64;
                let body = Bytes::from(std::mem::take(&mut part));
                etags.push(rt.block_on(target.put_part(&r.key, &upload, etags.len() as u32 + 1, body))?);
            }
        }
        if !part.is_empty() {
            written += part.len() as u64;
            etags.push(rt.block_on(target.put_part(&r.key, &upload, etags.len() as u32 + 1, Bytes::from(part)))?);
        }
        check_size(r, written)?;
        rt.block_on(target.finish_upload(&r.key, &upload, &etags))
    })();
    if result.is_err() {
        let _ = rt.block_on(target.abort_upload(&r.key, &upload));
    }
    result
}

fn check_size(r: &ObjectRecord, got: u64) -> Result<(), Error> {
    if got != r.head.size {
        return Err(Error::Failed {
            message: format!("{}: the snapshot's content holds {got} bytes, it records {}", r.key, r.head.size),
            hint: "run `cirkel repo verify --read-data`".into(),
        });
    }
    Ok(())
}

/// Writes the objects of `snap` into `target`.
pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    target: &Bucket,
    opts: &RestoreOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RestoreReport, Error> {
    let rt = Shared::get()
        .map_err(|e| Error::Failed { message: e.to_string(), hint: "check the system's limits".into() })?;
    if !opts.force && !rt.block_on(target.is_empty())? {
        return Err(Error::Failed {
            message: format!("{} already holds objects", target.location()),
            hint: "restore into an empty bucket or prefix, or pass --force to write over objects of the same keys (others are left alone)".into(),
        });
    }
    let index = repo.load_index()?;
    let all = records(repo, &index, snap)?;
    // One work item per key: its versions are written in order.
    let mut keys: Vec<Vec<ObjectRecord>> = Vec::new();
    for r in all {
        match keys.last_mut() {
            Some(v) if v[0].key == r.key => v.push(r),
            _ => keys.push(vec![r]),
        }
    }
    for v in &mut keys {
        if opts.all_versions {
            // Listings give a key's versions newest first (some servers list
            // delete markers after the versions): oldest first, the current
            // one last.
            v.reverse();
            v.sort_by_key(|r| (r.is_latest, r.head.modified));
        } else {
            v.retain(|r| r.is_latest && !r.delete_marker);
        }
    }
    let report = Mutex::new(RestoreReport::default());
    in_parallel(&keys, opts.threads, |versions| {
        for r in versions {
            if r.delete_marker {
                if r.is_latest {
                    rt.block_on(target.delete(&r.key))?;
                }
            } else {
                write_one(&rt, repo, &index, target, r)?;
            }
            if let Ok(mut rep) = report.lock() {
                if r.delete_marker {
                    rep.deleted += u64::from(r.is_latest);
                } else {
                    rep.objects += 1;
                    rep.bytes += r.head.size;
                }
            }
            progress(r.head.size);
        }
        Ok(())
    })?;
    Ok(report.into_inner().unwrap_or_default())
}

/// Runs `f` on every item on `threads` threads; the first error stops
/// the others from taking new items and is returned.
pub(crate) fn in_parallel<T: Sync>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> Result<(), Error> + Sync,
) -> Result<(), Error> {
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= items.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Err(e) = f(&items[i]) {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut first) = fatal.lock()
                            && first.is_none()
                        {
                            *first = Some(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    match fatal.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
