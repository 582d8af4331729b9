//! A bucket snapshot written into a local directory: one file per current
//! object, at its key (the slashes of a key are directories). Keys are
//! checked before anything is written, and one that could not be a path
//! below the directory (absolute, `..` or `.`, an empty part, a NUL byte, a
//! key that is also another key's directory) stops the restore with the
//! list of them: nothing is ever written outside the directory, and no file
//! already there is replaced. A key ending in `/` with no content (the
//! "folder" object consoles create) becomes a directory. Below the target
//! every directory and file is made and opened relative to its parent's
//! descriptor, one component at a time and never through a symlink, so a
//! directory swapped for a link while the restore runs cannot lead it out.
//! Each file gets its object's modification time; its content headers and
//! user metadata, which a file cannot hold, go to the manifest named by the
//! caller.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    let io_hint = "check the directory's path, permissions and free space";
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("create {}: {e}", dir.display()), io_hint))?;
    let root = OwnedFd::from(File::open(dir).map_err(|e| failed(format!("open {}: {e}", dir.display()), io_hint))?);
    for d in &dirs {
        dir_below(root.as_fd(), d).map_err(|e| failed(format!("create {}: {e}", dir.join(d).display()), io_hint))?;
    }
    let report = Mutex::new(RestoreReport::default());
    crate::restore::in_parallel(&files, opts.threads, |(p, r)| {
        write_file(repo, &index, root.as_fd(), dir, p, r)?;
        if let Ok(mut rep) = report.lock() {
            rep.objects += 1;
            rep.bytes += r.head.size;
        }
        progress(r.head.size);
        Ok(())
    })?;
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

fn c_name(part: &std::ffi::OsStr) -> std::io::Result<CString> {
    CString::new(part.as_bytes()).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte"))
}

fn owned(fd: libc::c_int) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `rel` below `root`, made where missing, each component
/// opened relative to its parent without following a symlink.
fn dir_below(root: BorrowedFd<'_>, rel: &Path) -> std::io::Result<OwnedFd> {
    let mut cur = root.try_clone_to_owned()?;
    for part in rel.iter() {
        let name = c_name(part)?;
        // SAFETY: `cur` is an open directory and `name` a C string.
        if unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e);
            }
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: as above.
        cur = owned(unsafe { libc::openat(cur.as_raw_fd(), name.as_ptr(), flags) })?;
    }
    Ok(cur)
}

/// A new file `name` in `dir`: never one that exists, never through a link.
fn create_at(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<File> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open directory and `name` a C string.
    let fd = owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o644 as libc::c_uint) })?;
    Ok(File::from(fd))
}

/// One object into a new file at `rel` below the directory open as `root`.
fn write_file(
    repo: &Repository,
    index: &cirkel_repo::index::Index,
    root: BorrowedFd<'_>,
    dir: &Path,
    rel: &Path,
    r: &ObjectRecord,
) -> Result<(), Error> {
    let io = |e: std::io::Error| {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "restore into a new directory: nothing already there is replaced"
        } else {
            "check the directory's permissions and free space"
        };
        failed(format!("{} (key {:?}): {e}", dir.join(rel).display(), r.key), hint)
    };
    let parent = dir_below(root, rel.parent().unwrap_or(Path::new(""))).map_err(io)?;
    let name = c_name(rel.file_name().unwrap_or_default()).map_err(io)?;
    let mut f = create_at(parent.as_fd(), &name).map_err(io)?;
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

    #[test]
    fn a_link_in_the_target_is_never_followed() {
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("a")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), target.path().join("f")).unwrap();
        let root = OwnedFd::from(File::open(target.path()).unwrap());
        assert!(dir_below(root.as_fd(), Path::new("a/b")).is_err(), "a directory that is a link");
        assert!(create_at(root.as_fd(), &CString::new("f").unwrap()).is_err(), "a file that is a link");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
        let made = dir_below(root.as_fd(), Path::new("x/y")).unwrap();
        create_at(made.as_fd(), &CString::new("z").unwrap()).unwrap();
        assert!(target.path().join("x/y/z").is_file());
    }
}
