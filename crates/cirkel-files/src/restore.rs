//! Restoring a snapshot's tree below a target directory.
//!
//! Every name is checked to be a single safe path component, and no path of
//! more than one component is ever resolved below the target: the target is
//! opened once, each directory below it through its parent's descriptor
//! with `O_NOFOLLOW`, and every file, symlink and directory is created,
//! replaced, opened and given its owner, mode and times relative to its
//! directory's descriptor (see [`crate::fsat`]). Neither a crafted snapshot
//! nor a local user who swaps a directory they own for a symlink during the
//! restore can make it write outside `--to`. A file whose data cannot be
//! read is reported and the rest still restore.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cirkel_repo::{Id, Node, NodeKind, Repository, Snapshot};
use serde::Serialize;

use crate::fsat;

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
    /// Files restored as further hard links of a file restored before.
    pub hardlinks: u64,
    /// Device nodes and FIFOs.
    pub special: u64,
    pub bytes: u64,
    /// Paths (relative to the target) that could not be restored, with why.
    pub errors: Vec<(String, String)>,
    /// Entries left out on purpose (sockets, which their server recreates), with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<(String, String)>,
}

/// A file to restore as a hard link of `files[first]`.
struct LinkTask {
    rel: String,
    dir: usize,
    name: CString,
    first: usize,
}

struct FileTask {
    rel: String,
    /// Its directory in [`Dirs`].
    dir: usize,
    name: CString,
    node: Node,
}

/// What identifies a file created by this restore: (device, inode).
type FileId = (u64, u64);

/// The directories of a restore, each reached from the target through its
/// parent's descriptor. Up to `keep_open` stay open; the others are opened
/// again through the same chain, and a directory that is no longer the one
/// created or entered before (someone moved another one in its place) is
/// refused.
struct Dirs {
    root: Arc<OwnedFd>,
    entries: Vec<DirEntry>,
    open: Mutex<HashMap<usize, Arc<OwnedFd>>>,
    keep_open: usize,
}

struct DirEntry {
    parent: usize,
    name: CString,
    id: FileId,
}

/// How many directory descriptors to keep open: a quarter of the process's
/// descriptor limit (workers keep files open too), within bounds.
fn dirs_kept_open() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid out-pointer.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 1024 };
    (soft / 4).clamp(64, 16384) as usize
}

impl Dirs {
    /// Opens the target (created if missing), whose index is 0.
    fn open_target(target: &Path) -> anyhow::Result<Dirs> {
        std::fs::create_dir_all(target)
            .map_err(|e| anyhow::anyhow!("create restore target {}: {e}", target.display()))?;
        let canonical = std::fs::canonicalize(target)?;
        let fd = fsat::open_dir_path(&canonical)
            .map_err(|e| anyhow::anyhow!("open restore target {}: {e}", canonical.display()))?;
        let id = fsat::identity(&fsat::fstat(fd.as_fd())?);
        Ok(Dirs {
            root: Arc::new(fd),
            entries: vec![DirEntry { parent: 0, name: CString::default(), id }],
            open: Mutex::new(HashMap::new()),
            keep_open: dirs_kept_open(),
        })
    }

    fn fd(&self, i: usize) -> Result<Arc<OwnedFd>, String> {
        if i == 0 {
            return Ok(self.root.clone());
        }
        if let Some(fd) = self.open.lock().ok().and_then(|m| m.get(&i).cloned()) {
            return Ok(fd);
        }
        let e = self.entries.get(i).ok_or("no such directory")?;
        let parent = self.fd(e.parent)?;
        let fd = fsat::open_dir_at(parent.as_fd(), &e.name).map_err(dir_error)?;
        let st = fsat::fstat(fd.as_fd()).map_err(|e| format!("stat directory: {e}"))?;
        if fsat::identity(&st) != e.id {
            return Err("the directory was replaced during the restore (not entered)".into());
        }
        let fd = Arc::new(fd);
        self.remember(i, fd.clone());
        Ok(fd)
    }

    fn remember(&self, i: usize, fd: Arc<OwnedFd>) {
        if let Ok(mut m) = self.open.lock() {
            if m.len() >= self.keep_open {
                m.clear();
            }
            m.insert(i, fd);
        }
    }

    /// Creates (or enters an existing) directory `name` below directory
    /// `parent`; never follows a symlink in its place.
    fn make(&mut self, parent: usize, name: CString) -> Result<usize, String> {
        let pfd = self.fd(parent)?;
        match fsat::mkdir_at(pfd.as_fd(), &name, 0o700) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create directory: {e}")),
        }
        let fd = fsat::open_dir_at(pfd.as_fd(), &name).map_err(dir_error)?;
        let st = fsat::fstat(fd.as_fd()).map_err(|e| format!("stat directory: {e}"))?;
        self.entries.push(DirEntry { parent, name, id: fsat::identity(&st) });
        let i = self.entries.len() - 1;
        self.remember(i, Arc::new(fd));
        Ok(i)
    }
}

fn dir_error(e: std::io::Error) -> String {
    match e.raw_os_error() {
        // With O_DIRECTORY a symlink fails as ENOTDIR, like a file.
        Some(libc::ELOOP | libc::ENOTDIR) => "a symlink or other non-directory is in the way (not followed)".into(),
        _ => format!("open directory: {e}"),
    }
}

/// One blob of one pack, and every place its content goes.
struct Piece {
    id: Id,
    offset: u32,
    length: u32,
    raw_length: u32,
    compressed: bool,
    /// (file index, offset in the file)
    targets: Vec<(usize, u64)>,
}

pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<RestoreReport> {
    let _lock = repo.lock_reader("restore")?;
    let index = repo.load_index()?;
    let mut dirs = Dirs::open_target(&opts.target)?;
    let errors = Mutex::new(Vec::new());
    let mut report = RestoreReport::default();
    let mut dirs_meta: Vec<(usize, String, Node)> = Vec::new();
    let mut files: Vec<FileTask> = Vec::new();
    let mut links: Vec<LinkTask> = Vec::new();
    // (device, inode) of a multiply linked file → its first file in `files`.
    let mut link_groups: HashMap<(u64, u64), usize> = HashMap::new();
    let is_root = unsafe_is_root();

    // 1. The tree: directories and symlinks now, files listed.
    let mut stack: Vec<(String, usize, Id)> = vec![(String::new(), 0, snapshot.tree)];
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
            if !Node::raw_name_is_safe(node.raw_name()) || !seen.insert(node.raw_name().to_vec()) {
                push_err(&errors, &child_rel, format!("refused unsafe or duplicate name {:?}", node.name));
                continue;
            }
            let name = match fsat::c_name(node.raw_name()) {
                Ok(n) => n,
                Err(e) => {
                    push_err(&errors, &child_rel, e);
                    continue;
                }
            };
            match node.kind {
                NodeKind::Dir => match dirs.make(dir, name) {
                    Ok(i) => {
                        report.dirs += 1;
                        if let Some(sub) = node.subtree {
                            stack.push((child_rel.clone(), i, sub));
                        }
                        dirs_meta.push((i, child_rel, node));
                    }
                    Err(e) => push_err(&errors, &child_rel, e),
                },
                NodeKind::File if node.links > 1 => match link_groups.entry((node.device, node.inode)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        links.push(LinkTask { rel: child_rel, dir, name, first: *first.get() })
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(files.len());
                        files.push(FileTask { rel: child_rel, dir, name, node });
                    }
                },
                NodeKind::File => files.push(FileTask { rel: child_rel, dir, name, node }),
                NodeKind::Symlink => match restore_symlink(&dirs, dir, &name, &node, is_root) {
                    Ok(()) => report.symlinks += 1,
                    Err(e) => push_err(&errors, &child_rel, e),
                },
                NodeKind::Fifo | NodeKind::CharDevice | NodeKind::BlockDevice => {
                    match restore_special(&dirs, dir, &name, &node, is_root) {
                        Ok(()) => report.special += 1,
                        Err(e) => push_err(&errors, &child_rel, e),
                    }
                }
                NodeKind::Socket => report
                    .notes
                    .push((child_rel, "a socket is not restored; the program that listens on it creates it".into())),
            }
        }
    }

    // 2. Each file is created at its final size by the first thread that
    //    writes to it (so that creating a thousand files overlaps with
    //    decompressing), or at the end when nothing is written to it; a file
    //    that fails is reported once and left out of what follows.
    let failed: Vec<AtomicBool> = files.iter().map(|_| AtomicBool::new(false)).collect();
    let fail = |i: usize, msg: String| {
        if !failed[i].swap(true, Ordering::Relaxed) {
            push_err(&errors, &files[i].rel, msg);
        }
    };
    let dirs = &dirs;
    let created: Vec<OnceLock<Result<FileId, String>>> = files.iter().map(|_| OnceLock::new()).collect();
    let create = |i: usize| created[i].get_or_init(|| create_file(dirs, &files[i])).clone();
    let threads = opts.threads.max(1);

    // 3. Which blob goes where, grouped by pack.
    let mut by_pack: HashMap<Id, HashMap<Id, Piece>> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        let mut offset = 0u64;
        for id in &f.node.content {
            match index.get(id) {
                Some(loc) => {
                    let piece = by_pack.entry(loc.pack).or_default().entry(*id).or_insert_with(|| Piece {
                        id: *id,
                        offset: loc.offset,
                        length: loc.length,
                        raw_length: loc.raw_length,
                        compressed: loc.compressed,
                        targets: Vec::new(),
                    });
                    piece.targets.push((i, offset));
                    offset += loc.raw_length as u64;
                }
                None => {
                    fail(i, format!("{}", cirkel_repo::Error::MissingBlob(id.to_hex())));
                    break;
                }
            }
        }
        if offset != f.node.size && !failed[i].load(Ordering::Relaxed) {
            fail(i, format!("its blobs hold {offset} bytes, the snapshot records {}", f.node.size));
        }
    }
    // Work units: runs of one pack's blobs worth at most UNIT_BYTES of
    // output, so that a few highly compressible packs still spread over
    // every thread.
    const UNIT_BYTES: u64 = 32 * 1024 * 1024;
    let mut packs: Vec<(Id, Vec<Piece>)> = Vec::new();
    for (id, pieces) in by_pack {
        let mut v: Vec<Piece> = pieces.into_values().collect();
        v.sort_by_key(|p| p.offset);
        let mut unit = Vec::new();
        let mut out = 0u64;
        for p in v {
            out += p.raw_length as u64 * p.targets.len() as u64;
            unit.push(p);
            if out >= UNIT_BYTES {
                packs.push((id, std::mem::take(&mut unit)));
                out = 0;
            }
        }
        if !unit.is_empty() {
            packs.push((id, unit));
        }
    }

    // 4. Each pack read once; its blobs decrypted in place and written to
    //    every file (and offset) that holds them.
    let written = AtomicU64::new(0);
    parallel(threads, packs.len(), &|k| {
        let (pack, pieces) = &packs[k];
        let start = pieces.first().map(|p| p.offset as u64).unwrap_or(0);
        let end = pieces.iter().map(|p| p.offset as u64 + p.length as u64).max().unwrap_or(0);
        let mut buf = repo.read_pack_range(pack, start..end).unwrap_or_default();
        let mut sink = Sink::default();
        let mut plain = AlignedBuf::default();
        // Consecutive blocks of one big file are decompressed side by side
        // and written with one call: fewer, larger writes around the cache.
        let mut run = AlignedBuf::default();
        let mut pending: Option<Run> = None;
        let flush = |pending: &mut Option<Run>, run: &mut AlignedBuf, sink: &mut Sink| {
            let Some(r) = pending.take() else { return };
            if r.len == 0 || failed[r.file].load(Ordering::Relaxed) {
                return;
            }
            let data = &run.get(COALESCE)[..r.len];
            match create(r.file).and_then(|id| sink.write(dirs, &files[r.file], r.file, id, data, r.at)) {
                Ok(()) => {
                    written.fetch_add(r.len as u64, Ordering::Relaxed);
                    on_bytes(r.len as u64);
                }
                Err(e) => fail(r.file, e),
            }
        };
        for p in pieces {
            let lo = (p.offset as u64 - start) as usize;
            let raw = p.raw_length as usize;
            if let [(i, at)] = p.targets[..]
                && raw > 0
                && raw <= COALESCE
                && raw.is_multiple_of(ALIGN)
                && at.is_multiple_of(ALIGN as u64)
                && files[i].node.size >= DIRECT_MIN
            {
                if failed[i].load(Ordering::Relaxed) {
                    continue;
                }
                if !pending
                    .as_ref()
                    .is_some_and(|r| r.file == i && r.at + r.len as u64 == at && r.len + raw <= COALESCE)
                {
                    flush(&mut pending, &mut run, &mut sink);
                    pending = Some(Run { file: i, at, len: 0 });
                }
                let Some(r) = pending.as_mut() else { continue };
                let out = &mut run.get(COALESCE)[r.len..r.len + raw];
                if let Err(e) = decode_piece(repo, &index, p, buf.get_mut(lo..lo + p.length as usize), out) {
                    fail(i, e);
                    pending = None;
                    continue;
                }
                r.len += raw;
                continue;
            }
            flush(&mut pending, &mut run, &mut sink);
            let data = plain.get(raw);
            if let Err(e) = decode_piece(repo, &index, p, buf.get_mut(lo..lo + p.length as usize), data) {
                for (i, _) in &p.targets {
                    fail(*i, e.clone());
                }
                continue;
            }
            let data = &*data;
            for &(i, at) in &p.targets {
                if failed[i].load(Ordering::Relaxed) {
                    continue;
                }
                if let Err(e) = create(i).and_then(|id| sink.write(dirs, &files[i], i, id, data, at)) {
                    fail(i, e);
                    continue;
                }
                written.fetch_add(data.len() as u64, Ordering::Relaxed);
                on_bytes(data.len() as u64);
            }
        }
        flush(&mut pending, &mut run, &mut sink);
    });

    // 5. File metadata, then directories deepest first (so writing inside
    //    them does not disturb their mtimes and read-only ones can be filled).
    let done = AtomicU64::new(0);
    parallel(threads, files.len(), &|i| {
        if failed[i].load(Ordering::Relaxed) {
            return;
        }
        match create(i).and_then(|id| finish_file(dirs, &files[i], id, is_root)) {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => fail(i, e),
        }
    });
    // Further hard links of files restored, before their directories get
    // their times.
    for l in &links {
        let res = match created[l.first].get() {
            Some(Ok(id)) if !failed[l.first].load(Ordering::Relaxed) => link_file(dirs, &files[l.first], *id, l),
            _ => Err(format!("its first link {} was not restored", files[l.first].rel)),
        };
        match res {
            Ok(()) => report.hardlinks += 1,
            Err(e) => push_err(&errors, &l.rel, e),
        }
    }
    for (i, rel, node) in dirs_meta.iter().rev() {
        let owner = is_root.then_some((node.uid, node.gid));
        if let Err(e) =
            dirs.fd(*i).and_then(|fd| fsat::set_meta(fd.as_fd(), owner, &node.xattrs, node.mode, node.mtime_ns))
        {
            push_err(&errors, rel, e);
        }
    }
    report.files = done.load(Ordering::Relaxed);
    report.bytes = written.load(Ordering::Relaxed);
    report.errors = errors.into_inner().unwrap_or_default();
    report.errors.sort();
    Ok(report)
}

/// Decodes a piece from its sealed copy in the pack range read (`sealed`)
/// into `out`, which holds exactly its plaintext; when that copy is
/// unreadable, any other copy of the blob serves.
fn decode_piece(
    repo: &Repository,
    index: &cirkel_repo::index::Index,
    p: &Piece,
    sealed: Option<&mut [u8]>,
    out: &mut [u8],
) -> Result<(), String> {
    if let Some(slot) = sealed
        && repo.decode_blob_into(&p.id, slot, p.raw_length, p.compressed, out).is_ok()
    {
        return Ok(());
    }
    let other = repo.read_blob(index, &p.id).map_err(|e| e.to_string())?;
    if other.len() != out.len() {
        return Err(format!("blob {}: its other copy holds {} bytes, not {}", p.id.to_hex(), other.len(), out.len()));
    }
    out.copy_from_slice(&other);
    Ok(())
}

/// Runs `f(0..n)` on `threads` threads.
fn parallel(threads: usize, n: usize, f: &(dyn Fn(usize) + Sync)) {
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(n.max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n {
                        break;
                    }
                    f(i);
                }
            });
        }
    });
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

/// Removes a file or symlink in the way; never a directory.
fn clear_way(dir: &OwnedFd, name: &CString) -> Result<(), String> {
    fsat::unlink_at(dir.as_fd(), name).map_err(|e| match e.raw_os_error() {
        Some(libc::EISDIR) => "a directory is in the way (not replaced)".to_string(),
        _ => format!("replace existing file: {e}"),
    })
}

/// Creates a file at its final size; what identifies it is checked on
/// every later open, so that nothing put in its place is written to.
fn create_file(dirs: &Dirs, task: &FileTask) -> Result<FileId, String> {
    let dir = dirs.fd(task.dir)?;
    clear_way(&dir, &task.name)?;
    let f = fsat::create_at(dir.as_fd(), &task.name, 0o600).map_err(|e| format!("create: {e}"))?;
    f.set_len(task.node.size).map_err(|e| format!("size: {e}"))?;
    let st = fsat::fstat(f.as_fd()).map_err(|e| format!("stat: {e}"))?;
    Ok(fsat::identity(&st))
}

/// Opens a file this restore created, by name in its directory; `Ok(None)`
/// when `O_DIRECT` is wanted and the file system refuses it.
fn open_created(dirs: &Dirs, task: &FileTask, id: FileId, direct: bool) -> Result<Option<File>, String> {
    let dir = dirs.fd(task.dir)?;
    let f = match fsat::open_write_at(dir.as_fd(), &task.name, direct) {
        Ok(f) => f,
        Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(format!("open: {e}")),
    };
    let st = fsat::fstat(f.as_fd()).map_err(|e| format!("stat: {e}"))?;
    if fsat::identity(&st) != id {
        return Err("the file was replaced during the restore (not written)".into());
    }
    Ok(Some(f))
}

/// Files of at least this size get their page-aligned pieces written with
/// `O_DIRECT`.
const DIRECT_MIN: u64 = 1 << 20;
/// The most bytes of consecutive pieces written with one call.
const COALESCE: usize = 2 << 20;

/// Consecutive pieces of one file waiting in the run buffer.
struct Run {
    file: usize,
    at: u64,
    len: usize,
}
const ALIGN: usize = 4096;

/// Where one work unit writes. Page-aligned pieces of big files (every
/// block of a PostgreSQL base backup) go around the page cache with
/// `O_DIRECT`: on VMs whose guest pages are backed on first touch, filling
/// the page cache with a restore costs several times what writing to the
/// disk does, and a restore's data is not read back soon. Other pieces, and
/// file systems without `O_DIRECT`, are written through the page cache.
/// A reusable buffer whose slices start at a 4096-byte-aligned address, so
/// that `O_DIRECT` writes take them as they are.
#[derive(Default)]
struct AlignedBuf {
    bytes: Vec<u8>,
}

impl AlignedBuf {
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.bytes.len() < len + ALIGN {
            self.bytes = vec![0; len + ALIGN];
        }
        let off = self.bytes.as_ptr().align_offset(ALIGN).min(ALIGN);
        &mut self.bytes[off..off + len]
    }
}

#[derive(Default)]
struct Sink {
    buffered: HashMap<usize, File>,
    /// `None`: this file's file system refused `O_DIRECT`.
    direct: HashMap<usize, Option<File>>,
    /// Room for a piece that does not start at an aligned address.
    aligned: AlignedBuf,
}

impl Sink {
    fn write(
        &mut self,
        dirs: &Dirs,
        task: &FileTask,
        i: usize,
        id: FileId,
        data: &[u8],
        at: u64,
    ) -> Result<(), String> {
        // The file was created at its size as one hole: long runs of zeros
        // need no write, and a sparse file restores sparse.
        let runs = data_runs(data, at);
        if let [only] = &runs[..]
            && only.len() == data.len()
        {
            return self.write_run(dirs, task, i, id, data, at);
        }
        for r in runs {
            self.write_run(dirs, task, i, id, &data[r.clone()], at + r.start as u64)?;
        }
        Ok(())
    }

    fn write_run(
        &mut self,
        dirs: &Dirs,
        task: &FileTask,
        i: usize,
        id: FileId,
        data: &[u8],
        at: u64,
    ) -> Result<(), String> {
        let aligned = at.is_multiple_of(ALIGN as u64) && data.len().is_multiple_of(ALIGN) && !data.is_empty();
        if aligned && task.node.size >= DIRECT_MIN {
            if self.direct.len() >= 64 && !self.direct.contains_key(&i) {
                self.direct.clear();
            }
            let slot = match self.direct.entry(i) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(open_created(dirs, task, id, true)?),
            };
            if let Some(f) = slot {
                let buf: &[u8] = if (data.as_ptr() as usize).is_multiple_of(ALIGN) {
                    data
                } else {
                    let b = self.aligned.get(data.len());
                    b.copy_from_slice(data);
                    b
                };
                match f.write_all_at(buf, at) {
                    Ok(()) => return Ok(()),
                    // Alignment this file system does not take: buffered from now on.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        self.direct.insert(i, None);
                    }
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
        }
        if self.buffered.len() >= 64 && !self.buffered.contains_key(&i) {
            self.buffered.clear();
        }
        let f = match self.buffered.entry(i) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(open_created(dirs, task, id, false)?.ok_or("open: refused")?)
            }
        };
        f.write_all_at(data, at).map_err(|e| format!("write: {e}"))
    }
}

/// Zero runs at least this long (on 4 KiB file boundaries) are left as
/// holes inside a piece; shorter ones are written, so that pages with a
/// zeroed middle do not split a write into many.
const HOLE_MIN: usize = 64 * 1024;

/// The parts of `data`, to be written at file offset `at`, that hold more
/// than zeros: an all-zero piece has none, and zero runs of at least
/// [`HOLE_MIN`] bytes on 4 KiB file boundaries are cut out.
fn data_runs(data: &[u8], at: u64) -> Vec<std::ops::Range<usize>> {
    if is_zero(data) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut zeros_from: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let block_end = ((at + pos as u64) / ALIGN as u64 + 1) * ALIGN as u64 - at;
        let end = (block_end as usize).min(data.len());
        if is_zero(&data[pos..end]) {
            zeros_from.get_or_insert(pos);
        } else if let Some(z) = zeros_from.take()
            && pos - z >= HOLE_MIN
        {
            if z > start {
                out.push(start..z);
            }
            start = pos;
        }
        pos = end;
    }
    match zeros_from {
        Some(z) if data.len() - z >= HOLE_MIN => out.push(start..z),
        _ => out.push(start..data.len()),
    }
    out
}

fn is_zero(data: &[u8]) -> bool {
    let (head, words, tail) = unsafe_align_words(data);
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

fn unsafe_align_words(data: &[u8]) -> (&[u8], &[u64], &[u8]) {
    // SAFETY: every bit pattern is a valid u64.
    unsafe { data.align_to::<u64>() }
}

fn finish_file(dirs: &Dirs, task: &FileTask, id: FileId, is_root: bool) -> Result<(), String> {
    let f = open_created(dirs, task, id, false)?.ok_or("open: refused")?;
    let owner = is_root.then_some((task.node.uid, task.node.gid));
    fsat::set_meta(f.as_fd(), owner, &task.node.xattrs, task.node.mode, task.node.mtime_ns)
}

/// Links a further name to a file this restore created, through the open
/// file itself, so that nothing put in the first name's place is linked.
fn link_file(dirs: &Dirs, first: &FileTask, id: FileId, l: &LinkTask) -> Result<(), String> {
    let src_dir = dirs.fd(first.dir)?;
    let src = fsat::open_path_at(src_dir.as_fd(), &first.name).map_err(|e| format!("open its first link: {e}"))?;
    let st = fsat::fstat(src.as_fd()).map_err(|e| format!("stat: {e}"))?;
    if fsat::identity(&st) != id {
        return Err("its first link was replaced during the restore (not linked)".into());
    }
    let dir = dirs.fd(l.dir)?;
    clear_way(&dir, &l.name)?;
    fsat::link_fd_at(src.as_fd(), dir.as_fd(), &l.name).map_err(|e| format!("link: {e}"))
}

/// A FIFO or device node: created with `mknodat`, then given its owner,
/// attributes, mode and times through a descriptor that refers to it alone.
fn restore_special(dirs: &Dirs, dir: usize, name: &CString, node: &Node, is_root: bool) -> Result<(), String> {
    let (format, rdev) = match node.kind {
        NodeKind::Fifo => (libc::S_IFIFO, 0),
        NodeKind::CharDevice => (libc::S_IFCHR, node.rdev),
        NodeKind::BlockDevice => (libc::S_IFBLK, node.rdev),
        _ => return Err("not a FIFO or device node".into()),
    };
    if format != libc::S_IFIFO && !is_root {
        return Err("device nodes are restored by root only (not created)".into());
    }
    let dir = dirs.fd(dir)?;
    clear_way(&dir, name)?;
    fsat::mknod_at(dir.as_fd(), name, format | 0o600, rdev).map_err(|e| format!("create: {e}"))?;
    let fd = fsat::open_path_at(dir.as_fd(), name).map_err(|e| format!("open: {e}"))?;
    let st = fsat::fstat(fd.as_fd()).map_err(|e| format!("stat: {e}"))?;
    if st.st_mode & libc::S_IFMT != format || st.st_rdev != rdev {
        return Err("replaced during the restore (left alone)".into());
    }
    let owner = is_root.then_some((node.uid, node.gid));
    fsat::set_meta_path_fd(fd.as_fd(), owner, &node.xattrs, node.mode, node.mtime_ns)
}

fn restore_symlink(dirs: &Dirs, dir: usize, name: &CString, node: &Node, is_root: bool) -> Result<(), String> {
    let target = node.raw_link_target().ok_or("symlink without a target")?;
    let target = fsat::c_name(target)?;
    let dir = dirs.fd(dir)?;
    clear_way(&dir, name)?;
    fsat::symlink_at(&target, dir.as_fd(), name).map_err(|e| format!("create symlink: {e}"))?;
    if is_root {
        fsat::lchown_at(dir.as_fd(), name, node.uid, node.gid).map_err(|e| format!("chown: {e}"))?;
    }
    let attrs = fsat::set_xattrs_at(dir.as_fd(), name, &node.xattrs);
    fsat::set_times_at(dir.as_fd(), name, node.mtime_ns).map_err(|e| format!("set mtime: {e}"))?;
    attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(size: u64) -> FileTask {
        let node = Node::synthetic_file("f".into(), size, Vec::new(), 0);
        FileTask { rel: "f".into(), dir: 0, name: fsat::c_name(b"f").unwrap(), node }
    }

    /// A directory reopened through its parents after its descriptor was
    /// let go must be the one entered before: one moved into its place, or
    /// a symlink there, is refused.
    #[test]
    fn directories_reopened_through_the_chain_must_be_the_same() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let mut dirs = Dirs::open_target(dir.path()).unwrap();
        dirs.keep_open = 1;
        let a = dirs.make(0, fsat::c_name(b"a").unwrap()).unwrap();
        let b = dirs.make(a, fsat::c_name(b"b").unwrap()).unwrap();
        let c = dirs.make(b, fsat::c_name(b"c").unwrap()).unwrap();
        dirs.open.lock().unwrap().clear();
        assert!(dirs.fd(c).is_ok(), "reopened through a and b");
        std::fs::rename(dir.path().join("a/b"), dir.path().join("a/moved")).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        dirs.open.lock().unwrap().clear();
        let e = dirs.fd(c).unwrap_err();
        assert!(e.contains("replaced"), "{e}");
        std::fs::remove_dir_all(dir.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("a/moved"), dir.path().join("a/b")).unwrap();
        dirs.open.lock().unwrap().clear();
        let e = dirs.fd(c).unwrap_err();
        assert!(e.contains("not followed"), "{e}");
    }

    /// Long zero runs inside a piece become holes, on 4 KiB file
    /// boundaries; short ones and unaligned edges are written.
    #[test]
    fn zero_runs_are_cut_out_on_block_boundaries() {
        let mut d = vec![1u8; 300 * 1024];
        d[4096..200 * 1024].fill(0);
        assert_eq!(data_runs(&d, 0), vec![0..4096, 200 * 1024..300 * 1024]);
        // Written at an unaligned offset, the hole starts at the next boundary.
        assert_eq!(data_runs(&d, 100), vec![0..8192 - 100, 200 * 1024 - 100..300 * 1024]);
        // A short zero run stays; trailing zeros become a hole.
        let mut e = vec![1u8; 200 * 1024];
        e[8192..16384].fill(0);
        e[100 * 1024..].fill(0);
        assert_eq!(data_runs(&e, 0), vec![0..100 * 1024]);
        assert!(data_runs(&[0; 5000], 7).is_empty());
        assert_eq!(data_runs(&[3; 10], 0), vec![0..10]);
    }

    /// Aligned pieces of a big file go around the page cache, unaligned ones
    /// through it, and the file holds exactly what was written either way.
    #[test]
    fn aligned_and_unaligned_pieces_land_where_they_belong() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let size = 3 * 128 * 1024 + 8192 + 100;
        let t = task(size as u64);
        let dirs = Dirs::open_target(dir.path()).unwrap();
        let id = create_file(&dirs, &t).unwrap();
        let want: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let mut sink = Sink::default();
        // Out of order, as work units finish: aligned 128 KiB blocks, an
        // aligned 8 KiB tail block, and an unaligned remainder.
        let cuts = [(128 * 1024, 256 * 1024), (0, 128 * 1024), (3 * 128 * 1024, 3 * 128 * 1024 + 8192)];
        for (lo, hi) in cuts {
            sink.write(&dirs, &t, 0, id, &want[lo..hi], lo as u64).unwrap();
        }
        sink.write(&dirs, &t, 0, id, &want[256 * 1024..3 * 128 * 1024], 256 * 1024).unwrap();
        sink.write(&dirs, &t, 0, id, &want[3 * 128 * 1024 + 8192..], (3 * 128 * 1024 + 8192) as u64).unwrap();
        assert!(sink.buffered.contains_key(&0), "the unaligned tail went through the page cache");
        drop(sink);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), want);
    }

    /// Consecutive blocks of a big file are written in runs; a block whose
    /// stored copy is damaged is read from its other copy, inside a run too.
    #[test]
    fn runs_of_blocks_restore_exactly_and_fall_back_to_other_copies() {
        use cirkel_repo::backend::LocalBackend;
        use cirkel_repo::crypto::KdfParams;
        use cirkel_repo::index::Index;
        use cirkel_repo::{BlobKind, BlobWriter, InitOptions, Snapshot, Tree};

        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let opts = InitOptions { kdf: KdfParams { m_cost: 256, t_cost: 1, p_cost: 1 }, ..Default::default() };
        let repo = Repository::init(std::sync::Arc::new(LocalBackend::new(dir.path().join("repo"))), Some(b"pw"), opts)
            .unwrap();
        let block = 128 * 1024;
        // More blocks than one run holds, and a short aligned tail.
        let big: Vec<u8> = (0..24 * block + 4096).map(|i| ((i * 31 % 253) ^ (i / block)) as u8).collect();
        let small = b"a small file".to_vec();
        let mut content = Vec::new();
        let mut root = None;
        // Two writers that do not see each other: every blob is stored twice.
        for _ in 0..2 {
            let writer = BlobWriter::new(&repo, std::sync::Arc::new(Index::default()));
            content = big.chunks(block).map(|c| writer.add(BlobKind::Data, c).unwrap()).collect();
            let small_id = writer.add(BlobKind::Data, &small).unwrap();
            let tree = Tree {
                nodes: vec![
                    Node::synthetic_file("big".into(), big.len() as u64, content.clone(), 0),
                    Node::synthetic_file("small".into(), small.len() as u64, vec![small_id], 0),
                ],
            };
            root = Some(writer.add_tree(&tree).unwrap());
            writer.finish().unwrap();
        }
        let snap = Snapshot::new("files", "h", vec!["/x".into()], root.unwrap());
        let index = repo.load_index().unwrap();
        let loc = index.get(&content[5]).unwrap();
        let hex = loc.pack.to_hex();
        let pack = dir.path().join("repo/data").join(&hex[..2]).join(&hex);
        let mut bytes = std::fs::read(&pack).unwrap();
        bytes[loc.offset as usize + 60] ^= 1;
        std::fs::remove_file(&pack).unwrap();
        std::fs::write(&pack, &bytes).unwrap();

        let target = dir.path().join("out");
        let report = restore(&repo, &snap, &RestoreOptions { target: target.clone(), threads: 2 }, &|_| {}).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(std::fs::read(target.join("big")).unwrap(), big);
        assert_eq!(std::fs::read(target.join("small")).unwrap(), small);
    }
}
