//! Named streams: whole files stored under a name rather than as
//! deduplicated blobs, for data that never repeats and is fetched by name
//! (write-ahead log segments, for example).
//!
//! A stream lives at `streams/<namespace>/<name>` and is immutable like every
//! other object: storing the same content again is a no-op, storing
//! different content under an existing name is refused. The content is cut
//! into 1 MiB parts that are compressed and sealed in parallel, so a 16 MiB
//! segment costs a few milliseconds on two cores.
//!
//! Layout (`CKS2`, written): `CKS2` | plaintext length (u64 LE) | part count
//! (u32 LE) | per part: stored length (u32 LE) and the sealed zstd frame
//! (AAD = name and part number) | keyed id of the plaintext (32 bytes). The
//! checksum comes last so that parts are written while later ones are still
//! being compressed. `CKS1` objects (the id after the length, before the part
//! count) are still read.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use bytes::Bytes;

use crate::backend::Created;
use crate::{Error, Id, Repository, Result};

const MAGIC_V1: &[u8; 4] = b"CKS1";
const MAGIC: &[u8; 4] = b"CKS2";
/// The size of the parts written now: small enough that two workers share a
/// 16 MiB WAL segment evenly, well above zstd level 1's 512 KiB window.
const PART: usize = 1024 * 1024;
/// The largest part any layout holds (`CKS2` objects were once cut into
/// 4 MiB parts).
const MAX_PART: usize = 4 * 1024 * 1024;
const HEADER_V1: usize = 4 + 8 + 32 + 4;
const HEADER: usize = 4 + 8 + 4;
const ID_LEN: usize = 32;

/// What storing a stream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The same content was already stored under that name.
    AlreadyPresent,
}

/// A stored stream, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub name: String,
    pub stored_size: u64,
    pub modified: Option<chrono::DateTime<chrono::Utc>>,
}

fn key(namespace: &str, name: &str) -> String {
    format!("streams/{namespace}/{name}")
}

fn aad(name: &str, part: usize) -> Vec<u8> {
    let mut a = name.as_bytes().to_vec();
    a.extend_from_slice(&(part as u32).to_le_bytes());
    a
}

/// What a worker finished.
enum Done {
    Id(Id),
    Part(usize, Result<Vec<u8>>),
}

/// Gathers the workers' results in the order they are written.
struct Collector {
    rx: mpsc::Receiver<Done>,
    ready: std::collections::BTreeMap<usize, Result<Vec<u8>>>,
    checksum: Option<Id>,
}

impl Collector {
    fn recv(&mut self) -> Result<()> {
        match self.rx.recv() {
            Ok(Done::Id(id)) => self.checksum = Some(id),
            Ok(Done::Part(i, r)) => {
                self.ready.insert(i, r);
            }
            Err(_) => return Err(Error::Other("a compression thread stopped".into())),
        }
        Ok(())
    }

    fn part(&mut self, i: usize) -> Result<Vec<u8>> {
        loop {
            if let Some(r) = self.ready.remove(&i) {
                return r;
            }
            self.recv()?;
        }
    }

    fn id(&mut self) -> Result<Id> {
        loop {
            if let Some(id) = self.checksum {
                return Ok(id);
            }
            self.recv()?;
        }
    }
}

impl Repository {
    /// Compresses (with this worker's context) and seals part `i`.
    fn seal_part(
        &self,
        zstd: &mut Option<zstd::bulk::Compressor<'static>>,
        level: i32,
        part: &[u8],
        name: &str,
        i: usize,
    ) -> Result<Vec<u8>> {
        let z = match zstd {
            Some(z) => z,
            None => zstd.insert(zstd::bulk::Compressor::new(level).map_err(|e| Error::Other(e.to_string()))?),
        };
        let compressed = z.compress(part).map_err(|e| Error::Other(e.to_string()))?;
        Ok(self.crypto.seal(&compressed, &aad(name, i)))
    }

    /// Stores `data` as stream `name` in `namespace`. Parts are compressed
    /// and sealed by a worker per core in order while the ones already done
    /// are written, and one of the workers computes the checksum of the whole
    /// first.
    pub fn put_stream(&self, namespace: &str, name: &str, data: &[u8], level: i32) -> Result<PutOutcome> {
        let parts: Vec<&[u8]> = if data.is_empty() { vec![&[][..]] } else { data.chunks(PART).collect() };
        let k = key(namespace, name);
        // One queue of tasks for every worker: the checksum of the whole
        // first, then the parts in order.
        let next = AtomicUsize::new(0);
        let (created, id) = std::thread::scope(|s| -> Result<(Created, Id)> {
            let (tx, rx) = mpsc::channel::<Done>();
            let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, parts.len() + 1);
            for _ in 0..workers {
                let (tx, next, parts) = (tx.clone(), &next, &parts);
                s.spawn(move || {
                    let mut zstd = None;
                    loop {
                        let task = next.fetch_add(1, Ordering::Relaxed);
                        let done = match task.checked_sub(1) {
                            None => Done::Id(self.crypto.blob_id(data)),
                            Some(i) => match parts.get(i) {
                                Some(part) => Done::Part(i, self.seal_part(&mut zstd, level, part, name, i)),
                                None => return,
                            },
                        };
                        if tx.send(done).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(tx);
            let mut done = Collector { rx, ready: std::collections::BTreeMap::new(), checksum: None };
            let mut header = Vec::with_capacity(HEADER);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&(data.len() as u64).to_le_bytes());
            header.extend_from_slice(&(parts.len() as u32).to_le_bytes());
            // The pieces in order: the header, each part behind its length,
            // then the checksum once every part is out.
            let mut want = 0;
            let mut failed = false;
            let mut body = std::iter::from_fn(|| {
                if failed || want > parts.len() {
                    return None;
                }
                want += 1;
                let piece = if want - 1 == parts.len() {
                    done.id().map(|id| id.0.to_vec())
                } else {
                    done.part(want - 1).map(|sealed| {
                        let mut piece = Vec::with_capacity(4 + sealed.len());
                        piece.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
                        piece.extend_from_slice(&sealed);
                        piece
                    })
                };
                failed = piece.is_err();
                Some(piece.map_err(|e| std::io::Error::other(e.to_string())))
            });
            let mut pieces = std::iter::once(Ok(header)).chain(&mut body);
            let created = match self.backend.create_pieces(&k, &mut pieces) {
                Some(r) => r.map_err(Error::from),
                None => (|| {
                    let mut all = Vec::with_capacity(HEADER + data.len() / 2);
                    for p in pieces.by_ref() {
                        all.extend_from_slice(&p.map_err(|e| Error::Other(e.to_string()))?);
                    }
                    Ok(self.block_on(self.backend.create(&k, Bytes::from(all)))?)
                })(),
            };
            // Nothing more is written (the name existed, or writing failed):
            // the workers take no further parts.
            next.fetch_max(parts.len() + 1, Ordering::Relaxed);
            let created = created?;
            // The checksum, unless no worker started on it before they stopped.
            let id = done.id().unwrap_or_else(|_| self.crypto.blob_id(data));
            Ok((created, id))
        })?;
        match created {
            Created::New => Ok(PutOutcome::Stored),
            Created::Existed => {
                let existing = self.block_on(self.backend.read(&k))?;
                if Self::stream_id(&existing) == Some(id) {
                    Ok(PutOutcome::AlreadyPresent)
                } else {
                    Err(Error::StreamConflict(k))
                }
            }
        }
    }

    fn stream_id(stored: &[u8]) -> Option<Id> {
        let mut id = [0u8; ID_LEN];
        match stored.get(..4)? {
            m if m == MAGIC && stored.len() >= HEADER + ID_LEN => id.copy_from_slice(&stored[stored.len() - ID_LEN..]),
            m if m == MAGIC_V1 && stored.len() >= HEADER_V1 => id.copy_from_slice(&stored[12..44]),
            _ => return None,
        }
        Some(Id(id))
    }

    /// Reads, authenticates and checks a stream.
    pub fn get_stream(&self, namespace: &str, name: &str) -> Result<Vec<u8>> {
        let k = key(namespace, name);
        let stored = self.block_on(self.backend.read(&k))?;
        self.decode_stream(&k, name, &stored)
    }

    fn decode_stream(&self, k: &str, name: &str, stored: &[u8]) -> Result<Vec<u8>> {
        let bad = |d: &str| Error::corrupt("stream", k, d);
        let id = Self::stream_id(stored).ok_or_else(|| bad("not a stream object"))?;
        let v1 = &stored[..4] == MAGIC_V1;
        let (count_at, body_start, body_end) =
            if v1 { (44, HEADER_V1, stored.len()) } else { (12, HEADER, stored.len() - ID_LEN) };
        let stored = &stored[..body_end];
        let len = u64::from_le_bytes(stored[4..12].try_into().map_err(|_| bad("header"))?) as usize;
        let count = u32::from_le_bytes(stored[count_at..count_at + 4].try_into().map_err(|_| bad("header"))?) as usize;
        if count > stored.len() / 4 || len > count.saturating_mul(MAX_PART) {
            return Err(bad("header lengths are impossible"));
        }
        let mut pos = body_start;
        let mut spans = Vec::with_capacity(count);
        for _ in 0..count {
            let l = stored.get(pos..pos + 4).ok_or_else(|| bad("truncated"))?;
            let l = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
            spans.push(stored.get(pos + 4..pos + 4 + l).ok_or_else(|| bad("truncated"))?);
            pos += 4 + l;
        }
        // Parts are opened and decompressed by a worker per core.
        let next = AtomicUsize::new(0);
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, count.max(1));
        let open_part = |i: usize, sealed: &[u8]| -> Result<Vec<u8>> {
            let z = self.crypto.open(sealed, &aad(name, i)).ok_or_else(|| bad("authentication failed"))?;
            let size = zstd::zstd_safe::get_frame_content_size(&z).ok().flatten().unwrap_or(MAX_PART as u64);
            crate::blob::decompress_bounded("stream", &k, &z, size.min(MAX_PART as u64))
        };
        let mut parts: Vec<Option<Result<Vec<u8>>>> = (0..count).map(|_| None).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(sealed) = spans.get(i) else { return done };
                            done.push((i, open_part(i, sealed)));
                        }
                    })
                })
                .collect();
            for h in handles {
                for (i, r) in h.join().unwrap_or_default() {
                    parts[i] = Some(r);
                }
            }
        });
        // Sized by what the parts hold, not by the header's claim.
        let parts: Vec<Vec<u8>> =
            parts.into_iter().map(|p| p.unwrap_or_else(|| Err(bad("decompression thread")))).collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum::<usize>().min(len));
        for p in parts {
            out.extend_from_slice(&p);
        }
        if out.len() != len || self.crypto.blob_id(&out) != id {
            return Err(bad("content does not match its checksum"));
        }
        Ok(out)
    }

    /// Streams in a namespace whose name starts with `prefix`, sorted by name.
    pub fn list_streams(&self, namespace: &str, prefix: &str) -> Result<Vec<StreamInfo>> {
        let base = format!("streams/{namespace}/");
        let dir = match prefix.rfind('/') {
            Some(i) => format!("{base}{}", &prefix[..=i]),
            None => base.clone(),
        };
        let objs = self.block_on(self.backend.list(&dir))?;
        Ok(objs
            .into_iter()
            .filter_map(|o| {
                let name = o.key.strip_prefix(&base)?.to_string();
                name.starts_with(prefix).then_some(StreamInfo { name, stored_size: o.size, modified: o.modified })
            })
            .collect())
    }

    pub fn delete_stream(&self, namespace: &str, name: &str) -> Result<()> {
        Ok(self.block_on(self.backend.delete(&key(namespace, name)))?)
    }

    /// Reads and checks every stream (for `verify --read-data`); returns the
    /// names that fail with why.
    pub fn check_streams(&self) -> Result<(usize, Vec<String>)> {
        let objs = self.block_on(self.backend.list("streams/"))?;
        let mut bad = Vec::new();
        for o in &objs {
            let name = o.key.splitn(3, '/').nth(2).unwrap_or_default();
            match self.block_on(self.backend.read(&o.key)) {
                Ok(b) => {
                    if let Err(e) = self.decode_stream(&o.key, name, &b) {
                        bad.push(e.to_string());
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => bad.push(format!("{}: {e}", o.key)),
            }
        }
        Ok((objs.len(), bad))
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::backend::{BackendError, LocalBackend, ObjectInfo};
    use crate::crypto::KdfParams;
    use crate::{Backend, InitOptions};

    /// A local directory that cannot write piece by piece, like S3.
    #[derive(Debug)]
    struct Gathering(LocalBackend);

    #[async_trait]
    impl Backend for Gathering {
        fn location(&self) -> String {
            self.0.location()
        }
        async fn create(&self, key: &str, data: Bytes) -> std::result::Result<Created, BackendError> {
            self.0.create(key, data).await
        }
        async fn read(&self, key: &str) -> std::result::Result<Bytes, BackendError> {
            self.0.read(key).await
        }
        async fn read_range(&self, key: &str, range: Range<u64>) -> std::result::Result<Bytes, BackendError> {
            self.0.read_range(key, range).await
        }
        async fn list(&self, prefix: &str) -> std::result::Result<Vec<ObjectInfo>, BackendError> {
            self.0.list(prefix).await
        }
        async fn delete(&self, key: &str) -> std::result::Result<(), BackendError> {
            self.0.delete(key).await
        }
        async fn replace(&self, key: &str, data: Bytes) -> std::result::Result<(), BackendError> {
            self.0.replace(key, data).await
        }
    }

    fn repo(backend: Arc<dyn Backend>) -> Repository {
        let opts = InitOptions { kdf: KdfParams { m_cost: 256, t_cost: 1, p_cost: 1 }, ..Default::default() };
        Repository::init(backend, Some(b"pw"), opts).unwrap()
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i % 7) as u8).collect()
    }

    #[test]
    fn streams_round_trip_written_piece_by_piece_or_gathered() {
        let dir = tempfile::tempdir().unwrap();
        let piecewise = repo(Arc::new(LocalBackend::new(dir.path().join("a"))));
        let gathered = repo(Arc::new(Gathering(LocalBackend::new(dir.path().join("b")))));
        for r in [&piecewise, &gathered] {
            for (i, len) in [0, 1, PART, 4 * PART + 3].into_iter().enumerate() {
                let d = data(len);
                let name = format!("s{i}");
                assert_eq!(r.put_stream("ns", &name, &d, 1).unwrap(), PutOutcome::Stored);
                assert_eq!(r.get_stream("ns", &name).unwrap(), d);
                assert_eq!(r.put_stream("ns", &name, &d, 1).unwrap(), PutOutcome::AlreadyPresent);
            }
            let err = r.put_stream("ns", "s1", b"other", 1).unwrap_err();
            assert!(matches!(err, Error::StreamConflict(_)), "{err}");
            assert_eq!(r.check_streams().unwrap().1, Vec::<String>::new());
        }
    }

    #[test]
    fn the_first_layout_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(Arc::new(LocalBackend::new(dir.path().join("a"))));
        let d = data(PART + 10);
        let mut old = Vec::new();
        old.extend_from_slice(MAGIC_V1);
        old.extend_from_slice(&(d.len() as u64).to_le_bytes());
        old.extend_from_slice(&r.crypto.blob_id(&d).0);
        old.extend_from_slice(&2u32.to_le_bytes());
        for (i, part) in d.chunks(PART).enumerate() {
            let sealed = r.crypto.seal(&zstd::bulk::compress(part, 1).unwrap(), &aad("old", i));
            old.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            old.extend_from_slice(&sealed);
        }
        r.block_on(r.backend.create(&key("ns", "old"), Bytes::from(old))).unwrap();
        assert_eq!(r.get_stream("ns", "old").unwrap(), d);
        assert_eq!(r.put_stream("ns", "old", &d, 1).unwrap(), PutOutcome::AlreadyPresent);
    }

    #[test]
    fn streams_cut_into_larger_parts_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(Arc::new(LocalBackend::new(dir.path().join("a"))));
        let d = data(2 * MAX_PART + 5);
        let mut old = Vec::new();
        old.extend_from_slice(MAGIC);
        old.extend_from_slice(&(d.len() as u64).to_le_bytes());
        old.extend_from_slice(&3u32.to_le_bytes());
        for (i, part) in d.chunks(MAX_PART).enumerate() {
            let sealed = r.crypto.seal(&zstd::bulk::compress(part, 1).unwrap(), &aad("old", i));
            old.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
            old.extend_from_slice(&sealed);
        }
        old.extend_from_slice(&r.crypto.blob_id(&d).0);
        r.block_on(r.backend.create(&key("ns", "old"), Bytes::from(old))).unwrap();
        assert_eq!(r.get_stream("ns", "old").unwrap(), d);
        assert_eq!(r.put_stream("ns", "old", &d, 1).unwrap(), PutOutcome::AlreadyPresent);
    }

    #[test]
    fn a_damaged_stream_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(Arc::new(LocalBackend::new(dir.path().join("a"))));
        let d = data(PART * 2);
        r.put_stream("ns", "x", &d, 1).unwrap();
        let path = dir.path().join("a").join(key("ns", "x"));
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        assert!(r.get_stream("ns", "x").is_err(), "a flipped checksum bit is caught");
    }
}
