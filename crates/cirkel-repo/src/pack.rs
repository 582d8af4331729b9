//! Pack files: many blobs in one object, to keep object counts (and S3
//! request costs) low.
//!
//! Layout: the stored blobs back to back, then a sealed header listing them,
//! then the header's length as 4 little-endian bytes. The header makes each
//! pack self-describing, so indexes can be rebuilt from packs alone.

use crate::blob::BlobKind;
use crate::crypto::Crypto;
use crate::{Error, Id, Result};

/// One blob's place in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    pub id: Id,
    pub kind: BlobKind,
    pub offset: u32,
    /// Stored (sealed) length.
    pub length: u32,
    /// Length of the plaintext.
    pub raw_length: u32,
    pub compressed: bool,
}

pub(crate) const ENTRY_LEN: usize = 32 + 1 + 1 + 4 + 4 + 4;
const HEADER_AAD: &[u8] = b"cirkel pack header";

pub(crate) fn write_entry(out: &mut Vec<u8>, e: &BlobEntry) {
    out.extend_from_slice(&e.id.0);
    out.push(e.kind.to_u8());
    out.push(u8::from(e.compressed));
    out.extend_from_slice(&e.offset.to_le_bytes());
    out.extend_from_slice(&e.length.to_le_bytes());
    out.extend_from_slice(&e.raw_length.to_le_bytes());
}

pub(crate) fn read_entry(b: &[u8]) -> Option<BlobEntry> {
    if b.len() < ENTRY_LEN {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&b[..32]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Some(BlobEntry {
        id: Id(id),
        kind: BlobKind::from_u8(b[32])?,
        compressed: match b[33] {
            0 => false,
            1 => true,
            _ => return None,
        },
        offset: u32_at(34),
        length: u32_at(38),
        raw_length: u32_at(42),
    })
}

/// Accumulates stored blobs into one pack.
#[derive(Default)]
pub struct PackBuilder {
    pub(crate) data: Vec<u8>,
    pub(crate) entries: Vec<BlobEntry>,
}

impl PackBuilder {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn push(&mut self, id: Id, kind: BlobKind, stored: &[u8], raw_length: u32, compressed: bool) {
        let offset = self.data.len() as u32;
        self.data.extend_from_slice(stored);
        self.entries.push(BlobEntry { id, kind, offset, length: stored.len() as u32, raw_length, compressed });
    }

    /// Appends the header and returns the pack's bytes, id and entries.
    pub(crate) fn finish(mut self, crypto: &Crypto) -> (Id, Vec<u8>, Vec<BlobEntry>) {
        let mut header = Vec::with_capacity(self.entries.len() * ENTRY_LEN);
        for e in &self.entries {
            write_entry(&mut header, e);
        }
        let sealed = crypto.seal(&header, HEADER_AAD);
        self.data.extend_from_slice(&sealed);
        self.data.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        (Id::of(&self.data), self.data, self.entries)
    }
}

/// Reads the header of a whole pack.
pub fn parse_header(crypto: &Crypto, pack_id: &Id, pack: &[u8]) -> Result<Vec<BlobEntry>> {
    let n = pack.len();
    let hlen = header_length(pack_id, pack)? as usize;
    if hlen + 4 > n {
        return Err(Error::corrupt("pack", pack_id, "header length out of range"));
    }
    parse_sealed_header(crypto, pack_id, n as u64, &pack[n - 4 - hlen..n - 4])
}

/// The length of the sealed header, from a pack's last four bytes (or the
/// whole pack).
pub fn header_length(pack_id: &Id, tail: &[u8]) -> Result<u32> {
    match tail.len().checked_sub(4).and_then(|at| tail.get(at..)) {
        Some(&[a, b, c, d]) => Ok(u32::from_le_bytes([a, b, c, d])),
        _ => Err(Error::corrupt("pack", pack_id, "too short")),
    }
}

/// Opens and parses a pack's sealed header, given the pack's total length:
/// what `repo repair index` reads from each pack without reading its data.
pub fn parse_sealed_header(crypto: &Crypto, pack_id: &Id, pack_len: u64, sealed: &[u8]) -> Result<Vec<BlobEntry>> {
    let bad = |d: &str| Error::corrupt("pack", pack_id, d);
    let header_start =
        pack_len.checked_sub(4 + sealed.len() as u64).ok_or_else(|| bad("header length out of range"))?;
    let header = crypto.open(sealed, HEADER_AAD).ok_or_else(|| bad("header authentication failed"))?;
    if header.len() % ENTRY_LEN != 0 {
        return Err(bad("header has a partial entry"));
    }
    let mut out = Vec::with_capacity(header.len() / ENTRY_LEN);
    for chunk in header.chunks(ENTRY_LEN) {
        let e = read_entry(chunk).ok_or_else(|| bad("header entry malformed"))?;
        if e.offset as u64 + e.length as u64 > header_start {
            return Err(bad("blob extends past the data section"));
        }
        out.push(e);
    }
    Ok(out)
}
