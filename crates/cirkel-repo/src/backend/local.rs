//! The local-filesystem backend, the embedded default.
//!
//! Objects are files below the repository directory. A write goes to a
//! temporary file that is fsynced and then hard-linked to its final name:
//! `link(2)` fails if the name exists, which makes the write atomic and
//! create-if-absent, so a crash never leaves a half-written object under a
//! real name and two writers never overwrite each other.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Backend, BackendError, Created, ObjectInfo};

const TMP_DIR: &str = ".tmp";

#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A repository at `root`; a relative path is taken from the current
    /// directory now, so that later changes of directory do not move it.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        LocalBackend { root: std::path::absolute(&root).unwrap_or(root) }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> BackendError {
        let location = self.location();
        match e.kind() {
            ErrorKind::NotFound => BackendError::NotFound { location, key: key.into() },
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem | ErrorKind::NotADirectory => {
                BackendError::Fatal { location, op, key: key.into(), detail: e.to_string() }
            }
            _ => BackendError::Unavailable { location, op, key: key.into(), detail: e.to_string() },
        }
    }

    fn create_blocking(&self, key: &str, data: &[u8]) -> Result<Created, BackendError> {
        self.create_with(key, |f| f.write_all(data))
    }

    /// Writes a temporary file with `write`, syncs it, and links it into
    /// place unless the target exists.
    fn create_with(
        &self,
        key: &str,
        write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> Result<Created, BackendError> {
        let target = self.path(key);
        if target.exists() {
            return Ok(Created::Existed);
        }
        let tmp_dir = self.root.join(TMP_DIR);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        // Only `repo init` (its key, then its config) makes the root.
        let init = key == "config" || key.starts_with("keys/");
        for dir in [&tmp_dir, &parent] {
            self.ensure_dir(dir, init).map_err(|e| self.err("create", key, e))?;
        }
        let tmp = tmp_dir.join(format!("{}-{}", std::process::id(), crate::Id::random().short()));
        let result = (|| {
            let mut f = new_private_file(&tmp)?;
            write(&mut f)?;
            f.sync_all()?;
            drop(f);
            match std::fs::hard_link(&tmp, &target) {
                Ok(()) => {
                    sync_dir(&parent)?;
                    Ok(Created::New)
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Created::Existed),
                Err(e) => Err(e),
            }
        })();
        let _ = std::fs::remove_file(&tmp);
        result.map_err(|e| self.err("create", key, e))
    }

    /// Writes a temporary file, syncs it and renames it over the target.
    fn replace_blocking(&self, key: &str, data: &[u8]) -> Result<(), BackendError> {
        let target = self.path(key);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        let tmp_dir = self.root.join(TMP_DIR);
        self.ensure_dir(&tmp_dir, false).map_err(|e| self.err("replace", key, e))?;
        let tmp = tmp_dir.join(format!("{}-{}", std::process::id(), crate::Id::random().short()));
        let result = (|| {
            let mut f = new_private_file(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &target)?;
            sync_dir(&parent)
        })();
        let _ = std::fs::remove_file(&tmp);
        result.map_err(|e| self.err("replace", key, e))
    }

    /// Makes `dir`, below the root, with what it lacks between; the root
    /// itself only when `may_create_root`. A root that vanished (moved,
    /// deleted, unmounted) is never made again: a writer that opened the
    /// repository before fails instead of starting a second one.
    fn ensure_dir(&self, dir: &Path, may_create_root: bool) -> std::io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if dir == self.root || !dir.starts_with(&self.root) {
            if may_create_root {
                return create_dir_durable(dir);
            }
            return Err(std::io::Error::other(format!(
                "the repository's directory {} is gone (moved, deleted or unmounted); it is not made again",
                self.root.display()
            )));
        }
        if let Some(parent) = dir.parent() {
            self.ensure_dir(parent, may_create_root)?;
        }
        make_dir_synced(dir)
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let mut out = Vec::new();
        let start = self.path(prefix);
        if !self.root.is_dir() {
            return Err(BackendError::NotFound { location: self.location(), key: prefix.into() });
        }
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.err("list", prefix, e))?;
                let path = entry.path();
                let meta = entry.metadata().map_err(|e| self.err("list", prefix, e))?;
                if meta.is_dir() {
                    if entry.file_name() != TMP_DIR {
                        stack.push(path);
                    }
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    let key = rel.to_string_lossy().replace('\\', "/");
                    let modified = meta.modified().ok().map(chrono::DateTime::<chrono::Utc>::from);
                    out.push(ObjectInfo { key, size: meta.len(), modified });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// Creates a file only its owner can read or write, never through a
/// symlink: key files must not be readable by other local users (an offline
/// guess at the passphrase needs only them), and the rest need not be.
fn new_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Creates a directory (and its missing parents), syncing each new entry's
/// parent so that the directory survives a power loss with what it holds.
fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    make_dir_synced(dir)
}

/// Makes one directory whose parent exists, and syncs the parent.
fn make_dir_synced(dir: &Path) -> std::io::Result<()> {
    // Owner-only: whoever creates the repository (root, or the `postgres`
    // user archiving WAL) is the only one who reads it.
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Starts writing a range of `f` to disk without waiting, so that the sync
/// that ends a piecewise write has little left to wait for.
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid descriptor and a plain range; the call only
        // schedules writeback and its failure changes nothing (the final
        // sync still runs and reports errors).
        unsafe {
            libc::sync_file_range(f.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, offset, len);
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self, key: &str, data: Bytes) -> Result<Created, BackendError> {
        let this = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || this.create_blocking(&key, &data)).await.map_err(|e| {
            BackendError::Fatal { location: self.location(), op: "create", key: String::new(), detail: e.to_string() }
        })?
    }

    fn clean_temp(&self, older_than: std::time::Duration) -> Result<usize, BackendError> {
        let dir = self.root.join(TMP_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.err("clean", TMP_DIR, e)),
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let old = meta.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > older_than);
            if meta.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn create_pieces(
        &self,
        key: &str,
        pieces: &mut dyn Iterator<Item = std::io::Result<Vec<u8>>>,
    ) -> Option<Result<Created, BackendError>> {
        Some(self.create_with(key, |f| {
            let mut written = 0u64;
            for piece in pieces {
                let piece = piece?;
                f.write_all(&piece)?;
                start_writeback(f, written, piece.len() as u64);
                written += piece.len() as u64;
            }
            Ok(())
        }))
    }

    async fn read(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = self.path(key);
        tokio::fs::read(&path).await.map(Bytes::from).map_err(|e| self.err("read", key, e))
    }

    async fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BackendError> {
        let path = self.path(key);
        let this = self.clone();
        let key_owned = key.to_string();
        tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(range.start))?;
            let len = (range.end - range.start) as usize;
            // read_to_end fills spare capacity without zeroing it first.
            let mut buf = Vec::with_capacity(len);
            // A short read is returned as is: callers check lengths and
            // report a truncated object as corruption, not as an outage.
            f.take(len as u64).read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(Bytes::from(buf))
        })
        .await
        .map_err(|e| BackendError::Fatal {
            location: self.location(),
            op: "read",
            key: key.to_string(),
            detail: e.to_string(),
        })?
        .map_err(|e| this.err("read", &key_owned, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, BackendError> {
        let this = self.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || this.list_blocking(&prefix)).await.map_err(|e| BackendError::Fatal {
            location: self.location(),
            op: "list",
            key: String::new(),
            detail: e.to_string(),
        })?
    }

    async fn replace(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let this = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || this.replace_blocking(&key, &data)).await.map_err(|e| {
            BackendError::Fatal { location: self.location(), op: "replace", key: String::new(), detail: e.to_string() }
        })?
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }
}
