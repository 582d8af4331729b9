//! Blobs: the unit of deduplication.

use serde::{Deserialize, Serialize};

use crate::crypto::Crypto;
use crate::{Error, Id, Result};

/// What a blob holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A chunk of file content.
    Data,
    /// A serialized directory tree.
    Tree,
    /// Part of a long file's list of block ids (see `Node::content_lists`).
    List,
}

impl BlobKind {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
            BlobKind::List => 2,
        }
    }

    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            2 => Some(BlobKind::List),
            _ => None,
        }
    }
}

/// A blob as stored: compressed (when that helps) and sealed.
pub(crate) struct EncodedBlob {
    pub stored: Vec<u8>,
    pub raw_length: u32,
    pub compressed: bool,
}

pub(crate) fn encode(crypto: &Crypto, id: &Id, plain: &[u8], level: i32) -> EncodedBlob {
    let compressed = if level > 0 && plain.len() > 64 {
        zstd::bulk::compress(plain, level).ok().filter(|c| c.len() + 8 < plain.len())
    } else {
        None
    };
    let is_compressed = compressed.is_some();
    let body = compressed.as_deref().unwrap_or(plain);
    EncodedBlob { stored: crypto.seal(body, &id.0), raw_length: plain.len() as u32, compressed: is_compressed }
}

/// More than any zstd frame can expand to (a 128 KiB block takes at least
/// four bytes): a declared size beyond this many times the compressed
/// length is a lie, refused before anything is allocated for it.
const MAX_EXPANSION: u64 = 1 << 16;

/// Decompresses `src`, whose plaintext is declared to be `declared` bytes,
/// refusing declared sizes no zstd input of this length can produce.
pub(crate) fn decompress_bounded(
    kind: &'static str,
    name: &dyn std::fmt::Display,
    src: &[u8],
    declared: u64,
) -> Result<Vec<u8>> {
    if declared > (src.len() as u64).saturating_mul(MAX_EXPANSION) || declared > isize::MAX as u64 {
        return Err(Error::corrupt(
            kind,
            name,
            format!("declared size {declared} is impossible for {} compressed bytes", src.len()),
        ));
    }
    zstd::bulk::decompress(src, declared as usize)
        .map_err(|e| Error::corrupt(kind, name, format!("decompression failed: {e}")))
}

/// Opens, decompresses and checks a stored blob against its id.
pub(crate) fn decode(crypto: &Crypto, id: &Id, stored: &[u8], raw_length: u32, compressed: bool) -> Result<Vec<u8>> {
    let body = crypto
        .open(stored, &id.0)
        .ok_or_else(|| Error::corrupt("blob", id, "authentication failed (data was altered or damaged)"))?;
    let plain = if compressed { decompress_bounded("blob", id, &body, raw_length as u64)? } else { body };
    if plain.len() != raw_length as usize || crypto.blob_id(&plain) != *id {
        return Err(Error::corrupt("blob", id, "content does not match its id"));
    }
    Ok(plain)
}

/// A blob's plaintext inside the buffer it was read into.
pub struct BlobData {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl std::ops::Deref for BlobData {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }
}

/// Like [`decode`], but decrypts in the read buffer. The keyed-hash check is
/// skipped for encrypted repositories, where the AEAD tag (whose associated
/// data is the blob id) already proves the content belongs to this id.
pub(crate) fn decode_owned(
    crypto: &Crypto,
    id: &Id,
    mut stored: Vec<u8>,
    raw_length: u32,
    compressed: bool,
) -> Result<BlobData> {
    let range = crypto
        .open_in_place(&mut stored, &id.0)
        .ok_or_else(|| Error::corrupt("blob", id, "authentication failed (data was altered or damaged)"))?;
    let data = if compressed {
        let plain = decompress_bounded("blob", id, &stored[range], raw_length as u64)?;
        let n = plain.len();
        BlobData { buf: plain, range: 0..n }
    } else {
        BlobData { buf: stored, range }
    };
    if data.len() != raw_length as usize || (!crypto.is_encrypted() && crypto.blob_id(&data) != *id) {
        return Err(Error::corrupt("blob", id, "content does not match its id"));
    }
    Ok(data)
}

thread_local! {
    /// One decompression context per thread: creating one per blob costs
    /// more than decompressing a small blob.
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// Decompresses `src` into `out`, which must be exactly the plaintext's size.
fn decompress_into(src: &[u8], out: &mut [u8]) -> std::io::Result<usize> {
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress_to_buffer(src, out),
            None => Err(std::io::Error::other("no decompression context")),
        }
    })
}

/// Authenticates `buf` (a sealed blob, decrypted in place) and writes the
/// plaintext into `out` (`raw_length` bytes), with no allocation.
pub(crate) fn decode_into(
    crypto: &Crypto,
    id: &Id,
    buf: &mut [u8],
    raw_length: u32,
    compressed: bool,
    out: &mut [u8],
) -> Result<()> {
    if out.len() != raw_length as usize {
        return Err(Error::Other(format!("output of {} bytes for a blob of {raw_length}", out.len())));
    }
    let range = crypto
        .open_in_place(buf, &id.0)
        .ok_or_else(|| Error::corrupt("blob", id, "authentication failed (data was altered or damaged)"))?;
    let n = if compressed {
        decompress_into(&buf[range], out)
            .map_err(|e| Error::corrupt("blob", id, format!("decompression failed: {e}")))?
    } else {
        let src = &buf[range];
        match out.get_mut(..src.len()) {
            Some(dst) => dst.copy_from_slice(src),
            None => return Err(Error::corrupt("blob", id, "content does not match its id")),
        }
        src.len()
    };
    if n != raw_length as usize || (!crypto.is_encrypted() && crypto.blob_id(out) != *id) {
        return Err(Error::corrupt("blob", id, "content does not match its id"));
    }
    Ok(())
}

/// Decrypts a blob inside `buf` and decompresses it if needed.
pub(crate) fn decode_in_place<'a>(
    crypto: &Crypto,
    id: &Id,
    buf: &'a mut [u8],
    raw_length: u32,
    compressed: bool,
) -> Result<std::borrow::Cow<'a, [u8]>> {
    let range = crypto
        .open_in_place(buf, &id.0)
        .ok_or_else(|| Error::corrupt("blob", id, "authentication failed (data was altered or damaged)"))?;
    let plain: std::borrow::Cow<'a, [u8]> = if compressed {
        std::borrow::Cow::Owned(decompress_bounded("blob", id, &buf[range], raw_length as u64)?)
    } else {
        std::borrow::Cow::Borrowed(&buf[range])
    };
    if plain.len() != raw_length as usize || (!crypto.is_encrypted() && crypto.blob_id(&plain) != *id) {
        return Err(Error::corrupt("blob", id, "content does not match its id"));
    }
    Ok(plain)
}
