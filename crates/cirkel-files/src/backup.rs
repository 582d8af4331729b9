//! Backing up directory trees.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cirkel_repo::{BlobKind, BlobWriter, Id, Node, NodeKind, Repository, Snapshot, SnapshotError, Tree};
use crossbeam::channel::{Receiver, Sender, bounded, unbounded};

use crate::{Excludes, KIND};

#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    pub paths: Vec<PathBuf>,
    pub tags: Vec<String>,
    pub excludes: Excludes,
    /// Compare against this snapshot instead of the latest one of the same paths.
    pub parent: Option<Id>,
    /// Read every file, ignoring the parent.
    pub force: bool,
    pub threads: usize,
    /// Stored with the snapshot; `None` means this machine's name.
    pub host: Option<String>,
    /// How file content is cut into blobs.
    pub chunking: Chunking,
    /// Store the single path given as the snapshot's root tree, instead of
    /// nesting it below its absolute path (a data directory restores in place).
    pub root_is_path: bool,
    /// Files that disappear during the backup are not errors (a database
    /// dropping a table while its files are copied).
    pub vanished_ok: bool,
    /// Snapshot kind; `files` when empty.
    pub kind: String,
    /// Called with every block read under fixed-size chunking (page checks).
    pub block_check: Option<BlockCheck>,
    /// Under fixed-size chunking, a zstd level for blocks that compress
    /// better at a level of their own (`None`: the backup's level).
    pub block_level: Option<BlockLevel>,
    /// Trust unchanged metadata only for files last modified at least this
    /// long before the parent backup started (files that change in place,
    /// where a write within the same timestamp tick would go unnoticed).
    pub mtime_margin: Option<std::time::Duration>,
    /// zstd level for this backup (default: the repository's).
    pub compression_level: Option<i32>,
    /// Symbolic links below the paths that are backed up as the directories
    /// they point to (a database's tablespaces), not as links.
    pub follow_links: Vec<PathBuf>,
}

/// A check run on every block a fixed-size backup reads: `(path, offset, data)`.
#[derive(Clone)]
pub struct BlockCheck(pub Arc<BlockCheckFn>);

/// The function behind a [`BlockCheck`].
pub type BlockCheckFn = dyn Fn(&Path, u64, &[u8]) + Send + Sync;

/// Chooses a zstd level for a block read under fixed-size chunking.
#[derive(Clone)]
pub struct BlockLevel(pub Arc<BlockLevelFn>);

/// The function behind a [`BlockLevel`].
pub type BlockLevelFn = dyn Fn(&[u8]) -> Option<i32> + Send + Sync;

impl std::fmt::Debug for BlockLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockLevel")
    }
}

impl std::fmt::Debug for BlockCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCheck")
    }
}

/// How file content is cut into blobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chunking {
    /// Content-defined chunks (FastCDC), robust to insertions: general files.
    #[default]
    ContentDefined,
    /// Fixed-size blocks at fixed offsets: files updated in place (database pages).
    Fixed(u32),
}

/// What a source adds when the tree walk is done and before the snapshot is
/// written: files for the root of the tree, and metadata.
#[derive(Debug, Default)]
pub struct Finish {
    pub extra_files: Vec<(String, Vec<u8>)>,
    pub meta: serde_json::Value,
}

/// Called once the files are stored; its error aborts the backup.
pub type FinishHook<'a> = &'a dyn Fn() -> anyhow::Result<Finish>;

/// Progress callbacks; called from worker threads.
pub trait Progress: Send + Sync {
    fn file_done(&self, _path: &Path, _bytes: u64, _read: bool) {}
    fn error(&self, _path: &Path, _message: &str) {}
}

impl Progress for () {}

#[derive(Debug)]
pub struct BackupOutcome {
    pub id: Id,
    pub snapshot: Snapshot,
}

/// A source path that cannot be backed up at all.
#[derive(Debug)]
pub struct SourceError(pub String);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceError {}

/// Why a file was not saved: its own fault (skip it, mark the snapshot
/// incomplete) or the repository's (stop the backup).
enum FileError {
    Vanished,
    Source(String),
    Repo(cirkel_repo::Error),
}

struct FileJob {
    path: PathBuf,
    meta: Metadata,
    parent: Option<Node>,
    reply: Sender<Result<Node, FileError>>,
}

struct Ctx<'a> {
    repo: &'a Repository,
    writer: Arc<BlobWriter>,
    excludes: &'a Excludes,
    jobs: Sender<FileJob>,
    errors: Vec<SnapshotError>,
    progress: &'a dyn Progress,
    vanished_ok: bool,
    follow_links: &'a [PathBuf],
    files: u64,
    dirs: u64,
    bytes: u64,
}

/// Paths as a trie of components, so several roots share their ancestors.
#[derive(Default)]
struct Trie {
    children: BTreeMap<String, Trie>,
    full: bool,
}

pub fn backup(repo: &Repository, opts: &BackupOptions, progress: &dyn Progress) -> anyhow::Result<BackupOutcome> {
    backup_with(repo, opts, progress, None)
}

/// [`backup`], with a hook that runs after the files are stored and before
/// the snapshot is written.
pub fn backup_with(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &dyn Progress,
    finish: Option<FinishHook<'_>>,
) -> anyhow::Result<BackupOutcome> {
    let start = Instant::now();
    let kind = if opts.kind.is_empty() { KIND.to_string() } else { opts.kind.clone() };
    let mut roots = Vec::new();
    for p in &opts.paths {
        let abs = std::fs::canonicalize(p).map_err(|e| SourceError(format!("cannot back up {}: {e}", p.display())))?;
        roots.push(abs);
    }
    roots.sort();
    roots.dedup();
    if opts.root_is_path && roots.len() != 1 {
        anyhow::bail!("a backup stored as its own root takes exactly one path");
    }
    let paths: Vec<String> = roots.iter().map(|p| p.display().to_string()).collect();
    let host = opts.host.clone().unwrap_or_else(cirkel_repo_hostname);

    let lock = repo.lock_shared("backup")?;
    let index = Arc::new(repo.load_index()?);
    let parent = find_parent(repo, opts, &kind, &host, &paths)?;
    let parent_tree = match &parent {
        Some((_, s)) => repo.load_tree(&index, &s.tree).ok(),
        None => None,
    };

    let mut writer = BlobWriter::new(repo, index);
    if let Some(level) = opts.compression_level {
        writer = writer.with_compression_level(level);
    }
    let writer = Arc::new(writer);
    let (job_tx, job_rx) = unbounded::<FileJob>();
    let threads = opts.threads.max(1);
    let settings = ChunkSettings {
        chunking: opts.chunking,
        chunker: repo.config().chunker,
        seed: repo.crypto().chunker_seed(),
        vanished_ok: opts.vanished_ok,
        block_check: opts.block_check.as_ref(),
        block_level: opts.block_level.as_ref(),
        reuse_before_ns: match (&parent, opts.mtime_margin) {
            (Some((_, s)), Some(margin)) => {
                let started = s.time - chrono::Duration::milliseconds(s.summary.duration_ms as i64);
                let cutoff = started - chrono::Duration::from_std(margin).unwrap_or_default();
                Some(cutoff.timestamp_nanos_opt().unwrap_or(0))
            }
            _ => None,
        },
    };
    let progress_ref: &dyn Progress = progress;
    let files_read = AtomicU64::new(0);
    let files_read_ref = &files_read;
    let (root_nodes, mut ctx) = std::thread::scope(|scope| {
        for _ in 0..threads {
            let rx: Receiver<FileJob> = job_rx.clone();
            let w = writer.clone();
            scope.spawn(move || {
                for job in rx.iter() {
                    let res = save_file(&w, &job, settings, progress_ref, files_read_ref);
                    let _ = job.reply.send(res);
                }
            });
        }
        let mut ctx = Ctx {
            repo,
            writer: writer.clone(),
            excludes: &opts.excludes,
            jobs: job_tx,
            errors: Vec::new(),
            progress,
            vanished_ok: opts.vanished_ok,
            follow_links: &opts.follow_links,
            files: 0,
            dirs: 0,
            bytes: 0,
        };
        let mut trie = Trie::default();
        for r in &roots {
            let mut node = &mut trie;
            for c in r.components().skip(1) {
                node = node.children.entry(c.as_os_str().to_string_lossy().into_owned()).or_default();
            }
            node.full = true;
        }
        let nodes = if opts.root_is_path {
            save_dir_nodes(&mut ctx, &roots[0], parent_tree)
        } else if trie.full {
            save_dir_nodes(&mut ctx, Path::new("/"), parent_tree)
        } else {
            save_virtual_nodes(&mut ctx, Path::new("/"), &trie, parent_tree)
        };
        // Dropping the job sender ends the workers.
        let Ctx { jobs, .. } = &mut ctx;
        drop(std::mem::replace(jobs, unbounded().0));
        (nodes, ctx)
    });
    let mut root_nodes = root_nodes?;
    let mut meta = serde_json::Value::Null;
    if let Some(hook) = finish {
        let f = hook()?;
        meta = f.meta;
        let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        for (name, content) in f.extra_files {
            let id = writer.add(BlobKind::Data, &content)?;
            let content_len = content.len() as u64;
            root_nodes.retain(|n| n.name != name);
            let content = if content.is_empty() { vec![] } else { vec![id] };
            root_nodes.push(Node::synthetic_file(name, content_len, content, now_ns));
        }
    }
    let root = finish_tree(&mut ctx, root_nodes)?;
    lock.check_fresh()?;
    let stats = writer.finish()?;
    ctx.errors.sort_by(|a, b| a.path.cmp(&b.path));
    let snapshot = Snapshot {
        time: chrono::Utc::now(),
        host,
        kind,
        paths,
        tags: opts.tags.clone(),
        tree: root,
        parent: parent.map(|(id, _)| id),
        summary: cirkel_repo::SnapshotSummary {
            files: ctx.files,
            dirs: ctx.dirs,
            bytes: ctx.bytes,
            files_read: files_read.load(Ordering::Relaxed),
            bytes_added: stats.bytes_new_stored,
            duration_ms: start.elapsed().as_millis() as u64,
        },
        incomplete: !ctx.errors.is_empty(),
        errors: std::mem::take(&mut ctx.errors),
        meta,
    };
    cirkel_repo::crash::point("backup-before-snapshot");
    lock.check_fresh()?;
    let id = repo.save_snapshot(&snapshot)?;
    Ok(BackupOutcome { id, snapshot })
}

fn cirkel_repo_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    kind: &str,
    host: &str,
    paths: &[String],
) -> anyhow::Result<Option<(Id, Snapshot)>> {
    if opts.force {
        return Ok(None);
    }
    if let Some(id) = opts.parent {
        return Ok(Some((id, repo.load_snapshot(&id)?)));
    }
    Ok(repo.snapshots()?.into_iter().rev().find(|(_, s)| s.kind == kind && s.host == host && s.paths == paths))
}

fn node_from_meta(name: &[u8], meta: &Metadata, kind: NodeKind) -> Node {
    let mut node = Node {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
        size: if kind == NodeKind::File { meta.len() } else { 0 },
        device: if kind == NodeKind::File && meta.nlink() > 1 { meta.dev() } else { 0 },
        links: if kind == NodeKind::File && meta.nlink() > 1 { meta.nlink() } else { 0 },
        rdev: if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) { meta.rdev() } else { 0 },
        ..Node::default()
    };
    node.set_raw_name(name);
    node
}

fn name_of(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.file_name().map(|n| n.as_bytes().to_vec()).unwrap_or_else(|| b"/".to_vec())
}

/// The extended attributes of `path` itself (not of a symlink's target),
/// POSIX ACLs included; a file system without them has none.
fn read_xattrs(path: &Path) -> Result<Vec<cirkel_repo::Xattr>, String> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| "a path with a NUL byte".to_string())?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: `p` is a C string and `names` a buffer of the given length.
        let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(format!("list extended attributes: {e}")),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let text = std::str::from_utf8(name).map_err(|_| {
            format!("extended attribute {:?} has a name that is not UTF-8", String::from_utf8_lossy(name))
        })?;
        let c = std::ffi::CString::new(name).map_err(|_| "an attribute name with a NUL byte".to_string())?;
        let mut value = vec![0u8; 256];
        loop {
            // SAFETY: both are C strings and `value` a buffer of the given length.
            let n = unsafe { libc::lgetxattr(p.as_ptr(), c.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            if n >= 0 {
                value.truncate(n as usize);
                out.push(cirkel_repo::Xattr { name: text.to_string(), value });
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => value.resize(value.len() * 16, 0),
                // Removed since it was listed.
                Some(libc::ENODATA) => break,
                _ => return Err(format!("read extended attribute {text}: {e}")),
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Adds the extended attributes of `path` to its node; one that cannot be
/// read marks the snapshot incomplete.
fn add_xattrs(ctx: &mut Ctx<'_>, path: &Path, node: &mut Node) {
    match read_xattrs(path) {
        Ok(x) => node.xattrs = x,
        Err(e) if ctx.vanished_ok && e.contains("No such file") => {}
        Err(e) => record_error(ctx, path, e),
    }
}

/// A directory on the way to a backed-up path: only the listed children.
fn save_virtual(ctx: &mut Ctx<'_>, path: &Path, trie: &Trie, parent: Option<Tree>) -> anyhow::Result<Id> {
    let nodes = save_virtual_nodes(ctx, path, trie, parent)?;
    finish_tree(ctx, nodes)
}

fn save_virtual_nodes(ctx: &mut Ctx<'_>, path: &Path, trie: &Trie, parent: Option<Tree>) -> anyhow::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    for (name, child) in &trie.children {
        let child_path = path.join(name);
        let parent_node = parent.as_ref().and_then(|t| t.find(name)).cloned();
        if child.full {
            if let Some(n) = save_entry(ctx, &child_path, parent_node)? {
                nodes.push(n);
            }
            continue;
        }
        let meta = std::fs::symlink_metadata(&child_path)
            .map_err(|e| anyhow::anyhow!("stat {}: {e}", child_path.display()))?;
        let sub_parent = parent_subtree(ctx, parent_node.as_ref());
        let mut node = node_from_meta(name.as_bytes(), &meta, NodeKind::Dir);
        add_xattrs(ctx, &child_path, &mut node);
        node.subtree = Some(save_virtual(ctx, &child_path, child, sub_parent)?);
        nodes.push(node);
    }
    Ok(nodes)
}

fn parent_subtree(ctx: &Ctx<'_>, node: Option<&Node>) -> Option<Tree> {
    let id = node?.subtree?;
    ctx.repo.load_tree(ctx.writer.index(), &id).ok()
}

fn finish_tree(ctx: &mut Ctx<'_>, nodes: Vec<Node>) -> anyhow::Result<Id> {
    let mut tree = Tree { nodes };
    tree.sort();
    Ok(ctx.writer.add_tree(&tree)?)
}

enum Pending {
    Ready(Box<Node>),
    File(Receiver<Result<Node, FileError>>, PathBuf),
}

/// One entry given on the command line (or found in a directory).
fn save_entry(ctx: &mut Ctx<'_>, path: &Path, parent: Option<Node>) -> anyhow::Result<Option<Node>> {
    match prepare(ctx, path, parent)? {
        None => Ok(None),
        Some(Pending::Ready(n)) => Ok(Some(*n)),
        Some(Pending::File(rx, p)) => collect(ctx, rx, &p),
    }
}

fn collect(ctx: &mut Ctx<'_>, rx: Receiver<Result<Node, FileError>>, path: &Path) -> anyhow::Result<Option<Node>> {
    match rx.recv() {
        Ok(Ok(mut n)) => {
            ctx.files += 1;
            ctx.bytes += n.size;
            add_xattrs(ctx, path, &mut n);
            Ok(Some(n))
        }
        Ok(Err(FileError::Vanished)) => Ok(None),
        Ok(Err(FileError::Source(msg))) => {
            record_error(ctx, path, msg);
            Ok(None)
        }
        Ok(Err(FileError::Repo(e))) => Err(e.into()),
        Err(_) => Err(anyhow::anyhow!("backup worker stopped while saving {}", path.display())),
    }
}

fn record_error(ctx: &mut Ctx<'_>, path: &Path, message: String) {
    ctx.progress.error(path, &message);
    ctx.errors.push(SnapshotError { path: path.display().to_string(), message });
}

fn prepare(ctx: &mut Ctx<'_>, path: &Path, parent: Option<Node>) -> anyhow::Result<Option<Pending>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if ctx.vanished_ok && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            record_error(ctx, path, format!("stat: {e}"));
            return Ok(None);
        }
    };
    let name = name_of(path);
    let ft = meta.file_type();
    if ft.is_file() {
        let (tx, rx) = bounded(1);
        let parent = parent.filter(|p| p.kind == NodeKind::File);
        ctx.jobs
            .send(FileJob { path: path.to_path_buf(), meta, parent, reply: tx })
            .map_err(|_| anyhow::anyhow!("backup workers stopped"))?;
        Ok(Some(Pending::File(rx, path.to_path_buf())))
    } else if ft.is_dir() {
        let sub_parent = parent_subtree(ctx, parent.as_ref());
        let mut node = node_from_meta(&name, &meta, NodeKind::Dir);
        add_xattrs(ctx, path, &mut node);
        node.subtree = Some(save_dir(ctx, path, sub_parent)?);
        Ok(Some(Pending::Ready(Box::new(node))))
    } else if ft.is_symlink() && ctx.follow_links.iter().any(|l| l == path) {
        let target_meta = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                record_error(ctx, path, "the link to follow does not point to a directory".into());
                return Ok(None);
            }
            Err(e) => {
                record_error(ctx, path, format!("follow the link: {e}"));
                return Ok(None);
            }
        };
        let sub_parent = parent_subtree(ctx, parent.as_ref());
        let mut node = node_from_meta(&name, &target_meta, NodeKind::Dir);
        node.subtree = Some(save_dir(ctx, path, sub_parent)?);
        Ok(Some(Pending::Ready(Box::new(node))))
    } else if ft.is_symlink() {
        let mut node = node_from_meta(&name, &meta, NodeKind::Symlink);
        match std::fs::read_link(path) {
            Ok(t) => node.set_raw_link_target(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str())),
            Err(e) => {
                record_error(ctx, path, format!("read link: {e}"));
                return Ok(None);
            }
        }
        add_xattrs(ctx, path, &mut node);
        Ok(Some(Pending::Ready(Box::new(node))))
    } else {
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_fifo() {
            NodeKind::Fifo
        } else if ft.is_socket() {
            NodeKind::Socket
        } else if ft.is_char_device() {
            NodeKind::CharDevice
        } else if ft.is_block_device() {
            NodeKind::BlockDevice
        } else {
            record_error(ctx, path, "a file of an unknown type (not saved)".into());
            return Ok(None);
        };
        let mut node = node_from_meta(&name, &meta, kind);
        add_xattrs(ctx, path, &mut node);
        Ok(Some(Pending::Ready(Box::new(node))))
    }
}

fn save_dir(ctx: &mut Ctx<'_>, path: &Path, parent: Option<Tree>) -> anyhow::Result<Id> {
    let nodes = save_dir_nodes(ctx, path, parent)?;
    finish_tree(ctx, nodes)
}

fn save_dir_nodes(ctx: &mut Ctx<'_>, path: &Path, parent: Option<Tree>) -> anyhow::Result<Vec<Node>> {
    ctx.dirs += 1;
    let mut names: Vec<_> = match std::fs::read_dir(path) {
        Ok(rd) => {
            let mut v = Vec::new();
            for e in rd {
                match e {
                    Ok(e) => v.push(e.file_name()),
                    Err(e) => record_error(ctx, path, format!("read directory: {e}")),
                }
            }
            v
        }
        Err(e) if ctx.vanished_ok && e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            record_error(ctx, path, format!("read directory: {e}"));
            Vec::new()
        }
    };
    names.sort();
    let mut pending = Vec::with_capacity(names.len());
    for name in names {
        let child = path.join(&name);
        if ctx.excludes.is_excluded(&child) {
            continue;
        }
        if ctx.excludes.dir_has_marker(&child) && child.is_dir() {
            continue;
        }
        let parent_node =
            parent.as_ref().and_then(|t| t.find_raw(std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()))).cloned();
        if let Some(p) = prepare(ctx, &child, parent_node)? {
            pending.push(p);
        }
    }
    let mut nodes = Vec::with_capacity(pending.len());
    for p in pending {
        match p {
            Pending::Ready(n) => nodes.push(*n),
            Pending::File(rx, path) => nodes.extend(collect(ctx, rx, &path)?),
        }
    }
    Ok(nodes)
}

fn unchanged(parent: &Node, meta: &Metadata) -> bool {
    parent.size == meta.len()
        && parent.mtime_ns == meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
        && parent.ctime_ns == meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
        && parent.inode == meta.ino()
}

/// How workers read files.
#[derive(Clone, Copy)]
struct ChunkSettings<'a> {
    chunking: Chunking,
    chunker: cirkel_repo::ChunkerParams,
    seed: u64,
    vanished_ok: bool,
    block_check: Option<&'a BlockCheck>,
    block_level: Option<&'a BlockLevel>,
    /// Reuse a parent's content only for files modified before this (ns).
    reuse_before_ns: Option<i64>,
}

fn save_file(
    writer: &BlobWriter,
    job: &FileJob,
    settings: ChunkSettings<'_>,
    progress: &dyn Progress,
    files_read: &AtomicU64,
) -> Result<Node, FileError> {
    let ChunkSettings { chunking, chunker, seed, vanished_ok, block_check, block_level, reuse_before_ns } = settings;
    let src = |what: &str, e: std::io::Error| {
        if vanished_ok && e.kind() == std::io::ErrorKind::NotFound {
            FileError::Vanished
        } else {
            FileError::Source(format!("{what}: {e}"))
        }
    };
    let mut node = node_from_meta(&name_of(&job.path), &job.meta, NodeKind::File);
    if let Some(p) = &job.parent
        && unchanged(p, &job.meta)
        && reuse_before_ns.is_none_or(|t| p.mtime_ns < t)
        && p.content.iter().all(|id| writer.has(id))
    {
        node.content = p.content.clone();
        progress.file_done(&job.path, node.size, false);
        return Ok(node);
    }
    let mut file = File::open(&job.path).map_err(|e| src("open", e))?;
    files_read.fetch_add(1, Ordering::Relaxed);
    let mut size = 0u64;
    if let Chunking::Fixed(block) = chunking {
        let mut buf = vec![0u8; block as usize];
        loop {
            let n = read_full(&mut file, &mut buf).map_err(|e| src("read", e))?;
            if n == 0 {
                break;
            }
            if let Some(check) = block_check {
                (check.0)(&job.path, size, &buf[..n]);
            }
            size += n as u64;
            let id = match block_level.and_then(|choose| (choose.0)(&buf[..n])) {
                Some(level) => writer.add_at_level(BlobKind::Data, &buf[..n], level),
                None => writer.add(BlobKind::Data, &buf[..n]),
            };
            node.content.push(id.map_err(FileError::Repo)?);
            if n < buf.len() {
                break;
            }
        }
    } else if job.meta.len() < chunker.min as u64 {
        let mut buf = Vec::with_capacity(job.meta.len() as usize);
        file.read_to_end(&mut buf).map_err(|e| src("read", e))?;
        size = buf.len() as u64;
        if !buf.is_empty() {
            node.content.push(writer.add(BlobKind::Data, &buf).map_err(FileError::Repo)?);
        }
    } else {
        let cdc = cirkel_repo::chunker::content_defined(file, chunker, seed);
        for chunk in cdc {
            let chunk = chunk.map_err(|e| FileError::Source(format!("read: {e}")))?;
            size += chunk.data.len() as u64;
            node.content.push(writer.add(BlobKind::Data, &chunk.data).map_err(FileError::Repo)?);
        }
    }
    // Record what was read, not what stat said before reading.
    node.size = size;
    progress.file_done(&job.path, size, true);
    Ok(node)
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
