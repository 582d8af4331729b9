//! A bucket snapshot written into a local directory: one file per current
//! object, at its key (the slashes of a key are directories). Keys are
//! checked before anything is written, and one that could not be a path
//! below the directory (absolute, `..` or `.`, an empty part, a NUL byte, a
//! key that is also another key's directory) stops the restore with the
//! list of them: nothing is ever written outside the directory, and no file
//! already there is replaced. A key ending in `/` with no content (the
//! "folder" object consoles create) becomes a directory. Each file gets its
//! object's modification time; its content headers and user metadata, which
//! a file cannot hold, go to the manifest named by the caller.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cirkel_repo::{Repository, Snapshot};
use serde::Serialize;

use crate::restore::RestoreReport;
use crate::{Error, ObjectRecord, records};

/// The longest name of one path component Linux file systems take.
const NAME_MAX: usize = 255;

#[derive(Clone, Debug, Default)]
pub struct DirOptions {
    /// Objects written at once.
    pub threads: usize,
    /// Write into a directory that already holds something (no existing
    /// file is ever replaced: the restore stops at the first).
    pub force: bool,
    /// Where to write the manifest (key, size, ETag, time, headers and user
    /// metadata of every object), if anywhere; outside the directory, so
    /// that it cannot collide with a key.
    pub manifest: Option<PathBuf>,
}

/// One object in the manifest.
#[derive(Debug, Serialize)]
struct Entry<'a> {
    key: &'a str,
    path: String,
    size: u64,
    etag: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    modified: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    metadata: &'a BTreeMap<String, String>,
}

/// Where a key goes below the directory, or why it cannot go anywhere.
/// `Ok((path, true))` is a directory (a "folder" key ending in `/`).
pub fn key_path(key: &str, size: u64) -> Result<(PathBuf, bool), String> {
    if key.is_empty() {
        return Err("an empty key".into());
    }
    if key.contains('\0') {
        return Err("it holds a NUL byte".into());
    }
    if key.starts_with('/') {
        return Err("it is absolute (starts with `/`)".into());
    }
    let (body, folder) = match key.strip_suffix('/') {
        Some(b) if size == 0 => (b, true),
        Some(_) => return Err("it ends in `/` but has content".into()),
        None => (key, false),
    };
    let mut path = PathBuf::new();
    for part in body.split('/') {
        match part {
            "" => return Err("it has an empty part (`//`)".into()),
            "." | ".." => return Err(format!("it has a `{part}` part")),
            p if p.len() > NAME_MAX => return Err(format!("a part is longer than {NAME_MAX} bytes")),
            p => path.push(p),
        }
    }
    Ok((path, folder))
}

fn failed(message: String, hint: &str) -> Error {
    Error::Failed { message, hint: hint.into() }
}

/// Writes the current objects of `snap` into `dir` (made if missing).
pub fn restore_to_dir(
    repo: &Repository,
    snap: &Snapshot,
    dir: &Path,
    opts: &DirOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<RestoreReport, Error> {
    let index = repo.load_index()?;
    let objects: Vec<ObjectRecord> =
        records(repo, &index, snap)?.into_iter().filter(|r| r.is_latest && !r.delete_marker).collect();
    // Every key checked, and every path placed, before a byte is written.
    let mut bad = Vec::new();
    let mut files: Vec<(PathBuf, &ObjectRecord)> = Vec::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    for r in &objects {
        match key_path(&r.key, r.head.size) {
            Ok((p, true)) => {
                dirs.insert(p);
            }
            Ok((p, false)) => files.push((p, r)),
            Err(why) => bad.push(format!("{:?}: {why}", r.key)),
        }
    }
    for (p, _) in &files {
        dirs.extend(p.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf));
    }
    for (p, r) in &files {
        if dirs.contains(p) {
            bad.push(format!("{:?}: another key has it as its directory", r.key));
        }
    }
    if !bad.is_empty() {
        let n = bad.len();
        bad.truncate(10);
        return Err(failed(
            format!(
                "{n} key(s) of the snapshot cannot be files below {}: {}{}",
                dir.display(),
                bad.join("; "),
                if n > 10 { "; …" } else { "" }
            ),
            "restore the bucket into an S3 bucket instead (cirkel restore bucket SNAPSHOT --to s3://BUCKET, or recover --bucket-to NAME=s3://BUCKET), which keeps every key as it is",
        ));
    }
    let holds_something = std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if holds_something && !opts.force {
        return Err(failed(
            format!("{} already holds files", dir.display()),
            "restore into a new or empty directory, or pass --force to add to it (no existing file is replaced)",
        ));
    }
    let mkdir = |d: &Path| {
        std::fs::create_dir_all(d).map_err(|e| {
            failed(format!("create {}: {e}", d.display()), "check the directory's path, permissions and free space")
        })
    };
    mkdir(dir)?;
    for d in &dirs {
        mkdir(&dir.join(d))?;
    }
    let report = Mutex::new(RestoreReport::default());
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..opts.threads.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= files.len() || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (p, r) = &files[i];
                    match write_file(repo, &index, &dir.join(p), r) {
                        Ok(()) => {
                            if let Ok(mut rep) = report.lock() {
                                rep.objects += 1;
                                rep.bytes += r.head.size;
                            }
                            progress(r.head.size);
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
        return Err(e);
    }
    if let Some(m) = &opts.manifest {
        let entries: Vec<Entry> = files
            .iter()
            .map(|(p, r)| Entry {
                key: &r.key,
                path: p.to_string_lossy().into_owned(),
                size: r.head.size,
                etag: &r.head.etag,
                modified: r.head.modified,
                headers: &r.head.headers,
                metadata: &r.head.metadata,
            })
            .collect();
        let text = serde_json::to_vec_pretty(&entries)
            .map_err(|e| failed(format!("manifest: {e}"), "report this as a bug"))?;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(m).map_err(|e| {
            failed(format!("create {}: {e}", m.display()), "write the manifest to a new file (it is never replaced)")
        })?;
        f.write_all(&text).map_err(|e| failed(format!("write {}: {e}", m.display()), "check the free space"))?;
    }
    Ok(report.into_inner().unwrap_or_default())
}

/// One object into a new file (`create_new`: nothing existing is replaced,
/// and no link at its place is followed).
fn write_file(
    repo: &Repository,
    index: &cirkel_repo::index::Index,
    path: &Path,
    r: &ObjectRecord,
) -> Result<(), Error> {
    let io = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "restore into a new directory: nothing already there is replaced"
        } else {
            "check the directory's permissions and free space"
        };
        failed(format!("{} (key {:?}): {e}", path.display(), r.key), hint)
    };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
    let mut written = 0u64;
    for id in &r.content {
        let blob = repo.read_blob(index, id)?;
        written += blob.len() as u64;
        f.write_all(&blob).map_err(io)?;
    }
    if written != r.head.size {
        return Err(failed(
            format!("{}: the snapshot's content holds {written} bytes, it records {}", r.key, r.head.size),
            "run `cirkel repo verify --read-data`",
        ));
    }
    if let Some(t) = r.head.modified {
        f.set_modified(t.into()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_paths_below_the_directory_or_are_refused() {
        assert_eq!(key_path("a/b/c", 1), Ok((PathBuf::from("a/b/c"), false)));
        assert_eq!(key_path("ünï/cødé ✓ 50%+x", 1), Ok((PathBuf::from("ünï/cødé ✓ 50%+x"), false)));
        assert_eq!(key_path("folder/", 0), Ok((PathBuf::from("folder"), true)));
        assert_eq!(key_path("...", 1), Ok((PathBuf::from("..."), false)));
        for bad in ["", "/etc/passwd", "x/../y", "..", "../up", "./dot", "a//b", "a/.", "nul\0byte"] {
            assert!(key_path(bad, 1).is_err(), "{bad:?}");
        }
        assert!(key_path("folder/", 3).is_err());
        assert!(key_path(&"n".repeat(256), 1).is_err());
    }
}
