//! Indexes: which pack holds which blob.
//!
//! An index file lists packs with their blob entries. Every writer adds index
//! files of its own; readers take the union of all of them. Prune replaces
//! them with one consolidated file. A blob may appear in several packs (two
//! concurrent writers, or a crash before prune finished): any copy serves.

use std::collections::HashMap;

use crate::blob::BlobKind;
use crate::pack::{BlobEntry, ENTRY_LEN, read_entry, write_entry};
use crate::{Error, Id, Result};

const MAGIC: &[u8; 4] = b"CKX1";

/// A pack and its blobs, as written in an index file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackRecord {
    pub id: Id,
    pub size: u64,
    pub blobs: Vec<BlobEntry>,
}

/// An index file's plaintext.
pub fn encode(packs: &[PackRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + packs.iter().map(|p| 44 + p.blobs.len() * ENTRY_LEN).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for p in packs {
        out.extend_from_slice(&p.id.0);
        out.extend_from_slice(&p.size.to_le_bytes());
        out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
        for b in &p.blobs {
            write_entry(&mut out, b);
        }
    }
    out
}

/// Parses an index file's plaintext (public for the property tests).
pub fn decode(name: &Id, b: &[u8]) -> Result<Vec<PackRecord>> {
    let bad = || Error::corrupt("index", name, "malformed");
    if b.len() < 8 || &b[..4] != MAGIC {
        return Err(bad());
    }
    let u32_at = |i: usize| -> Result<u32> {
        b.get(i..i + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or_else(bad)
    };
    let npacks = u32_at(4)? as usize;
    let mut pos = 8;
    // Capacities come from the input's length, never from its counts alone.
    let mut out = Vec::with_capacity(npacks.min((b.len() - 8) / 44));
    for _ in 0..npacks {
        let idb = b.get(pos..pos + 32).ok_or_else(bad)?;
        let mut id = [0u8; 32];
        id.copy_from_slice(idb);
        let size = u64::from_le_bytes(b.get(pos + 32..pos + 40).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
        let nblobs = u32_at(pos + 40)? as usize;
        pos += 44;
        let mut blobs = Vec::with_capacity(nblobs.min(b.len().saturating_sub(pos) / ENTRY_LEN));
        for _ in 0..nblobs {
            blobs.push(read_entry(b.get(pos..pos + ENTRY_LEN).ok_or_else(bad)?).ok_or_else(bad)?);
            pos += ENTRY_LEN;
        }
        out.push(PackRecord { id: Id(id), size, blobs });
    }
    Ok(out)
}

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub kind: BlobKind,
    pub offset: u32,
    pub length: u32,
    pub raw_length: u32,
    pub compressed: bool,
}

/// The union of all index files, in memory.
#[derive(Default, Debug, Clone)]
pub struct Index {
    blobs: HashMap<Id, Location>,
    packs: HashMap<Id, PackRecord>,
    /// Further copies of duplicated blobs: any copy serves a read.
    others: HashMap<Id, Vec<Location>>,
    /// The index files this was loaded from.
    pub files: Vec<Id>,
}

impl Index {
    pub fn add_pack(&mut self, rec: PackRecord) {
        if self.packs.contains_key(&rec.id) {
            return;
        }
        for b in &rec.blobs {
            let loc = Location {
                pack: rec.id,
                kind: b.kind,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
                compressed: b.compressed,
            };
            match self.blobs.entry(b.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(loc);
                }
                std::collections::hash_map::Entry::Occupied(_) => self.others.entry(b.id).or_default().push(loc),
            }
        }
        self.packs.insert(rec.id, rec);
    }

    /// Every place a blob is stored, the chosen one first.
    pub fn locations(&self, id: &Id) -> impl Iterator<Item = &Location> {
        self.blobs.get(id).into_iter().chain(self.others.get(id).into_iter().flatten())
    }

    pub fn get(&self, id: &Id) -> Option<&Location> {
        self.blobs.get(id)
    }

    pub fn contains(&self, id: &Id) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn packs(&self) -> impl Iterator<Item = &PackRecord> {
        self.packs.values()
    }

    pub fn pack(&self, id: &Id) -> Option<&PackRecord> {
        self.packs.get(id)
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Whether a blob's chosen location is this entry in this pack (the
    /// other copies of a duplicated blob are garbage to prune).
    pub fn is_primary(&self, pack: &Id, entry: &BlobEntry) -> bool {
        self.blobs.get(&entry.id).is_some_and(|l| l.pack == *pack && l.offset == entry.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let rec = PackRecord {
            id: Id::of(b"p"),
            size: 99,
            blobs: vec![BlobEntry {
                id: Id::of(b"b"),
                kind: BlobKind::Tree,
                offset: 3,
                length: 40,
                raw_length: 10,
                compressed: true,
            }],
        };
        let bytes = encode(std::slice::from_ref(&rec));
        assert_eq!(decode(&Id::of(b"x"), &bytes).unwrap(), vec![rec]);
        assert!(decode(&Id::of(b"x"), &bytes[..bytes.len() - 1]).is_err());
    }
}
