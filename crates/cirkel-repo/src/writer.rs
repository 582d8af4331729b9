//! Writing blobs: deduplicate, compress, seal, pack, upload, index.
//!
//! Any number of threads call [`BlobWriter::add`]; the CPU work (hashing,
//! compression, encryption) runs on the calling thread, so a backup scales
//! with its worker threads. Full packs go to a small pool of upload threads
//! over a bounded channel, which bounds memory. An index file is written for
//! every batch of uploaded packs and at [`BlobWriter::finish`], always after
//! the packs it lists exist: packs → index → snapshot.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam::channel::{Receiver, Sender, bounded};

use crate::blob::{self, BlobKind};
use crate::index::{Index, PackRecord};
use crate::pack::PackBuilder;
use crate::tree::{LIST_IDS, Tree};
use crate::{Error, Id, Repository, Result};

/// Packs written between index files, so an interrupted long write (a
/// backup, a copy) keeps most of its progress.
const PACKS_PER_INDEX: usize = 32;
const UPLOAD_THREADS: usize = 2;

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    pub blobs_new: u64,
    pub blobs_dedup: u64,
    /// Plaintext bytes of new blobs.
    pub bytes_new_raw: u64,
    /// Stored bytes of new blobs (after compression and sealing).
    pub bytes_new_stored: u64,
    pub packs: u64,
}

struct Shared {
    repo: Repository,
    pending: Mutex<Vec<PackRecord>>,
    error: Mutex<Option<Error>>,
    packs: AtomicU64,
    verify_uploads: bool,
}

struct State {
    current: PackBuilder,
    seen: HashSet<Id>,
    stats: WriterStats,
}

pub struct BlobWriter {
    shared: Arc<Shared>,
    index: Arc<Index>,
    state: Mutex<State>,
    tx: Mutex<Option<Sender<PackBuilder>>>,
    uploaders: Mutex<Vec<JoinHandle<()>>>,
    level: i32,
}

impl BlobWriter {
    /// A writer that deduplicates against `index` (usually the repository's
    /// index loaded at the start of the operation).
    pub fn new(repo: &Repository, index: Arc<Index>) -> Self {
        Self::with_options(repo, index, false)
    }

    /// With `verify_uploads`, every pack is read back after upload and its
    /// hash checked ("verified on arrival").
    pub fn with_options(repo: &Repository, index: Arc<Index>, verify_uploads: bool) -> Self {
        let shared = Arc::new(Shared {
            repo: repo.clone(),
            pending: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            packs: AtomicU64::new(0),
            verify_uploads,
        });
        let (tx, rx) = bounded::<PackBuilder>(UPLOAD_THREADS);
        let uploaders = (0..UPLOAD_THREADS)
            .map(|_| {
                let shared = shared.clone();
                let rx: Receiver<PackBuilder> = rx.clone();
                std::thread::spawn(move || upload_loop(&shared, &rx))
            })
            .collect();
        BlobWriter {
            shared,
            index,
            state: Mutex::new(State {
                current: PackBuilder::default(),
                seen: HashSet::new(),
                stats: WriterStats::default(),
            }),
            tx: Mutex::new(Some(tx)),
            uploaders: Mutex::new(uploaders),
            level: repo.config.compression_level,
        }
    }

    /// Compresses new blobs at this zstd level instead of the repository's
    /// (0 stores them uncompressed).
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }

    pub fn repo(&self) -> &Repository {
        &self.shared.repo
    }

    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    fn check_error(&self) -> Result<()> {
        match self.shared.error.lock().map_err(poisoned)?.as_ref() {
            Some(e) => Err(e.replay()),
            None => Ok(()),
        }
    }

    /// Whether the blob is already stored (or being stored by this writer).
    pub fn has(&self, id: &Id) -> bool {
        self.index.contains(id) || self.state.lock().map(|s| s.seen.contains(id)).unwrap_or(false)
    }

    /// Stores a blob unless the repository already has it; returns its id.
    pub fn add(&self, kind: BlobKind, plain: &[u8]) -> Result<Id> {
        self.add_at_level(kind, plain, self.level)
    }

    /// Like [`BlobWriter::add`], compressing a new blob at `level` (0: not at
    /// all when the writer's level is 0, since the repository asked for that).
    pub fn add_at_level(&self, kind: BlobKind, plain: &[u8], level: i32) -> Result<Id> {
        let id = self.shared.repo.crypto.blob_id(plain);
        if !self.reserve(&id)? {
            return Ok(id);
        }
        let level = if self.level == 0 { 0 } else { level };
        let enc = blob::encode(&self.shared.repo.crypto, &id, plain, level);
        self.push(id, kind, &enc.stored, enc.raw_length, enc.compressed)?;
        Ok(id)
    }

    /// Stores a tree. A file with more than [`LIST_IDS`] blocks keeps its
    /// block ids in list blobs: an incremental backup of a large database
    /// then stores a few lists for each changed file instead of every block
    /// id of the whole directory again.
    pub fn add_tree(&self, tree: &Tree) -> Result<Id> {
        let mut stored = Tree { nodes: Vec::with_capacity(tree.nodes.len()) };
        for node in &tree.nodes {
            let mut node = node.clone();
            node.content_lists.clear();
            if node.content.len() > LIST_IDS {
                for ids in node.content.chunks(LIST_IDS) {
                    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.0).collect();
                    node.content_lists.push(self.add(BlobKind::List, &bytes)?);
                }
                node.content.clear();
            }
            stored.nodes.push(node);
        }
        self.add(BlobKind::Tree, &stored.to_bytes())
    }

    /// Stores an already sealed blob verbatim (for copies between
    /// repositories that share a master key). Returns false if it was present.
    pub fn add_raw(&self, id: Id, kind: BlobKind, stored: &[u8], raw_length: u32, compressed: bool) -> Result<bool> {
        if !self.reserve(&id)? {
            return Ok(false);
        }
        self.push(id, kind, stored, raw_length, compressed)?;
        Ok(true)
    }

    fn reserve(&self, id: &Id) -> Result<bool> {
        self.check_error()?;
        let mut st = self.state.lock().map_err(poisoned)?;
        if self.index.contains(id) || !st.seen.insert(*id) {
            st.stats.blobs_dedup += 1;
            return Ok(false);
        }
        Ok(true)
    }

    fn push(&self, id: Id, kind: BlobKind, stored: &[u8], raw_length: u32, compressed: bool) -> Result<()> {
        let full = {
            let mut st = self.state.lock().map_err(poisoned)?;
            st.stats.blobs_new += 1;
            st.stats.bytes_new_raw += raw_length as u64;
            st.stats.bytes_new_stored += stored.len() as u64;
            st.current.push(id, kind, stored, raw_length, compressed);
            if st.current.len() >= self.shared.repo.config.pack_size as usize {
                Some(std::mem::take(&mut st.current))
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.send(pack)?;
        }
        Ok(())
    }

    fn send(&self, pack: PackBuilder) -> Result<()> {
        let tx = self.tx.lock().map_err(poisoned)?.clone();
        match tx {
            Some(tx) => tx.send(pack).map_err(|_| {
                self.shared
                    .error
                    .lock()
                    .ok()
                    .and_then(|e| e.as_ref().map(Error::replay))
                    .unwrap_or_else(|| Error::Other("upload stopped".into()))
            }),
            None => Err(Error::Other("writer already finished".into())),
        }
    }

    /// Uploads what is left, writes the last index file and returns totals.
    pub fn finish(&self) -> Result<WriterStats> {
        let last = std::mem::take(&mut self.state.lock().map_err(poisoned)?.current);
        if !last.is_empty() {
            self.send(last)?;
        }
        drop(self.tx.lock().map_err(poisoned)?.take());
        for h in std::mem::take(&mut *self.uploaders.lock().map_err(poisoned)?) {
            if h.join().is_err() {
                return Err(Error::Other("an upload thread panicked; nothing after the last index was saved".into()));
            }
        }
        self.check_error()?;
        flush_index(&self.shared, 0)?;
        let mut stats = self.state.lock().map_err(poisoned)?.stats.clone();
        stats.packs = self.shared.packs.load(Ordering::Relaxed);
        Ok(stats)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut hs) = self.uploaders.lock() {
            for h in hs.drain(..) {
                let _ = h.join();
            }
        }
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Other("internal lock poisoned".into())
}

fn upload_loop(shared: &Shared, rx: &Receiver<PackBuilder>) {
    for pack in rx.iter() {
        if shared.error.lock().map(|e| e.is_some()).unwrap_or(true) {
            continue; // drain, so senders never block forever
        }
        if let Err(e) = upload(shared, pack)
            && let Ok(mut slot) = shared.error.lock()
        {
            slot.get_or_insert(e);
        }
    }
}

fn upload(shared: &Shared, pack: PackBuilder) -> Result<()> {
    let repo = &shared.repo;
    let (id, bytes, entries) = pack.finish(&repo.crypto);
    let size = bytes.len() as u64;
    let key = Repository::pack_key(&id);
    repo.block_on(repo.backend.create(&key, Bytes::from(bytes)))?;
    if shared.verify_uploads {
        let back = repo.read_pack(&id)?;
        if Id::of(&back) != id {
            return Err(Error::corrupt("pack", id, "read back after upload with different content"));
        }
    }
    crate::crash::point("after-pack");
    shared.packs.fetch_add(1, Ordering::Relaxed);
    shared.pending.lock().map_err(poisoned)?.push(PackRecord { id, size, blobs: entries });
    flush_index(shared, PACKS_PER_INDEX)
}

/// Writes an index file for uploaded packs once at least `min` are waiting.
fn flush_index(shared: &Shared, min: usize) -> Result<()> {
    let batch = {
        let mut pending = shared.pending.lock().map_err(poisoned)?;
        if pending.is_empty() || pending.len() < min {
            return Ok(());
        }
        std::mem::take(&mut *pending)
    };
    shared.repo.save_index(&batch)?;
    Ok(())
}
