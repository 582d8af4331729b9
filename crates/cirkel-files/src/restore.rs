//! Restoring a snapshot's tree below a target directory.
//!
//! Every name is checked to be a single safe path component before it is
//! joined onto the target, directories are created by us and checked not to
//! be symlinks before we descend, and files are opened with `O_NOFOLLOW`, so
//! nothing in a snapshot can make a restore write outside `--to`. A file
//! whose data cannot be read is reported and the rest still restore.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cirkel_repo::index::Index;
use cirkel_repo::{Id, Node, NodeKind, Repository, Snapshot};
use crossbeam::channel::unbounded;
use filetime::FileTime;
use serde::Serialize;

#[derive(Clone, Debug)]
pub struct RestoreOptions {
    pub target: PathBuf,
    pub threads: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Paths (relative to the target) that could not be restored, with why.
    pub errors: Vec<(String, String)>,
}

struct FileTask {
    rel: String,
    path: PathBuf,
    node: Node,
}

pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<RestoreReport> {
    let _lock = repo.lock_reader("restore")?;
    let index = repo.load_index()?;
    std::fs::create_dir_all(&opts.target)
        .map_err(|e| anyhow::anyhow!("create restore target {}: {e}", opts.target.display()))?;
    let target = std::fs::canonicalize(&opts.target)?;
    let errors = Mutex::new(Vec::new());
    let files = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let mut report = RestoreReport::default();
    let mut dirs_meta: Vec<(PathBuf, Node)> = Vec::new();
    let (tx, rx) = unbounded::<FileTask>();
    let is_root = unsafe_is_root();

    std::thread::scope(|scope| {
        for _ in 0..opts.threads.max(1) {
            let rx = rx.clone();
            let (index, errors, files, bytes) = (&index, &errors, &files, &bytes);
            scope.spawn(move || {
                for task in rx.iter() {
                    match restore_file(repo, index, &task, is_root, on_bytes) {
                        Ok(n) => {
                            files.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut v) = errors.lock() {
                                v.push((task.rel.clone(), e));
                            }
                        }
                    }
                }
            });
        }
        let mut stack: Vec<(String, PathBuf, Id)> = vec![(String::new(), target.clone(), snapshot.tree)];
        while let Some((rel, dir, tree_id)) = stack.pop() {
            let tree = match repo.load_tree(&index, &tree_id) {
                Ok(t) => t,
                Err(e) => {
                    push_err(&errors, if rel.is_empty() { "/" } else { &rel }, format!("{e}"));
                    continue;
                }
            };
            let mut seen = std::collections::HashSet::new();
            for node in tree.nodes {
                let child_rel = format!("{rel}/{}", node.name);
                if !Node::name_is_safe(&node.name) || !seen.insert(node.name.clone()) {
                    push_err(&errors, &child_rel, format!("refused unsafe or duplicate name {:?}", node.name));
                    continue;
                }
                let path = dir.join(&node.name);
                match node.kind {
                    NodeKind::Dir => match make_dir(&path) {
                        Ok(()) => {
                            report.dirs += 1;
                            if let Some(sub) = node.subtree {
                                stack.push((child_rel, path.clone(), sub));
                            }
                            dirs_meta.push((path, node));
                        }
                        Err(e) => push_err(&errors, &child_rel, e),
                    },
                    NodeKind::File => {
                        let _ = tx.send(FileTask { rel: child_rel, path, node });
                    }
                    NodeKind::Symlink => match restore_symlink(&path, &node, is_root) {
                        Ok(()) => report.symlinks += 1,
                        Err(e) => push_err(&errors, &child_rel, e),
                    },
                }
            }
        }
        drop(tx);
    });
    // Directory metadata last, deepest first, so writing files inside does
    // not disturb their mtimes and read-only directories can be filled.
    for (path, node) in dirs_meta.iter().rev() {
        if let Err(e) = apply_meta(path, node, is_root) {
            push_err(&errors, &path.strip_prefix(&target).unwrap_or(path).display().to_string(), e);
        }
    }
    report.files = files.load(Ordering::Relaxed);
    report.bytes = bytes.load(Ordering::Relaxed);
    report.errors = errors.into_inner().unwrap_or_default();
    report.errors.sort();
    Ok(report)
}

fn push_err(errors: &Mutex<Vec<(String, String)>>, rel: &str, msg: String) {
    if let Ok(mut v) = errors.lock() {
        v.push((rel.to_string(), msg));
    }
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn make_dir(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(_) => Err("a non-directory is in the way (not replaced)".into()),
        Err(_) => std::fs::create_dir(path).map_err(|e| format!("create directory: {e}")),
    }
}

/// Removes a file or symlink in the way; never a directory.
fn clear_way(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Err("a directory is in the way (not replaced)".into()),
        Ok(_) => std::fs::remove_file(path).map_err(|e| format!("replace existing file: {e}")),
        Err(_) => Ok(()),
    }
}

fn restore_file(
    repo: &Repository,
    index: &Index,
    task: &FileTask,
    is_root: bool,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<u64, String> {
    clear_way(&task.path)?;
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&task.path)
        .map_err(|e| format!("create: {e}"))?;
    let mut written = 0u64;
    for id in &task.node.content {
        let data = repo.read_blob_data(index, id).map_err(|e| format!("{e}"))?;
        f.write_all(&data).map_err(|e| format!("write: {e}"))?;
        written += data.len() as u64;
        on_bytes(data.len() as u64);
    }
    if written != task.node.size {
        return Err(format!("restored {written} bytes, the snapshot records {}", task.node.size));
    }
    if is_root {
        std::os::unix::fs::fchown(&f, Some(task.node.uid), Some(task.node.gid)).map_err(|e| format!("chown: {e}"))?;
    }
    f.set_permissions(std::fs::Permissions::from_mode(task.node.mode)).map_err(|e| format!("chmod: {e}"))?;
    let mtime = ns_to_filetime(task.node.mtime_ns);
    filetime::set_file_handle_times(&f, Some(mtime), Some(mtime)).map_err(|e| format!("set mtime: {e}"))?;
    Ok(written)
}

fn restore_symlink(path: &Path, node: &Node, is_root: bool) -> Result<(), String> {
    let target = node.link_target.as_deref().ok_or("symlink without a target")?;
    clear_way(path)?;
    std::os::unix::fs::symlink(target, path).map_err(|e| format!("create symlink: {e}"))?;
    if is_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid)).map_err(|e| format!("chown: {e}"))?;
    }
    let mtime = ns_to_filetime(node.mtime_ns);
    filetime::set_symlink_file_times(path, mtime, mtime).map_err(|e| format!("set mtime: {e}"))
}

fn apply_meta(path: &Path, node: &Node, is_root: bool) -> Result<(), String> {
    if is_root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid)).map_err(|e| format!("chown: {e}"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(node.mode)).map_err(|e| format!("chmod: {e}"))?;
    let mtime = ns_to_filetime(node.mtime_ns);
    filetime::set_file_times(path, mtime, mtime).map_err(|e| format!("set mtime: {e}"))
}

fn ns_to_filetime(ns: i64) -> FileTime {
    FileTime::from_unix_time(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32)
}
