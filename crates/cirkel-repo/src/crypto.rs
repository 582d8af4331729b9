//! Keys, key files and authenticated encryption.
//!
//! A repository has one random master key: 32 bytes for XChaCha20-Poly1305
//! and 32 bytes that key the BLAKE3 hash naming blobs (so blob ids reveal
//! nothing about content to someone without the key). The master key is
//! stored in `keys/<id>` objects, each wrapping it under a key derived with
//! Argon2id from a passphrase. Every sealed object carries a fresh 192-bit
//! random nonce, safe at any repository size.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::{Error, Id, Result};

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Overhead that sealing adds to each object.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// The repository master key. Never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    enc: [u8; 32],
    mac: [u8; 32],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        MasterKey { enc: rand::random(), mac: rand::random() }
    }

    fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.enc);
        out[32..].copy_from_slice(&self.mac);
        out
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 64 {
            return None;
        }
        let mut k = MasterKey { enc: [0; 32], mac: [0; 32] };
        k.enc.copy_from_slice(&b[..32]);
        k.mac.copy_from_slice(&b[32..]);
        Some(k)
    }

    pub(crate) fn to_cache_bytes(&self) -> Vec<u8> {
        self.to_bytes().to_vec()
    }

    pub(crate) fn from_cache_bytes(b: &[u8]) -> Option<Self> {
        Self::from_bytes(b)
    }

    /// A stable, non-secret fingerprint: equal for repositories that share a
    /// master key (and so share blob ids and can copy sealed blobs verbatim).
    pub fn fingerprint(&self) -> String {
        blake3::derive_key("cirkel 2026 master key fingerprint", &self.to_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Argon2id cost parameters, stored in each key file.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams { m_cost: 64 * 1024, t_cost: 2, p_cost: 1 }
    }
}

/// The stored form of a key: the master key wrapped under a passphrase.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyFile {
    pub kdf: String,
    pub params: KdfParams,
    #[serde(with = "hex_bytes")]
    pub salt: Vec<u8>,
    /// nonce || ciphertext || tag of the 64-byte master key.
    #[serde(with = "hex_bytes")]
    pub wrapped: Vec<u8>,
    pub created: chrono::DateTime<chrono::Utc>,
    pub host: String,
}

fn derive_kek(password: &[u8], salt: &[u8], p: KdfParams) -> Result<XChaCha20Poly1305> {
    let params = Params::new(p.m_cost, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| Error::Other(format!("invalid key derivation parameters: {e}")))?;
    let mut kek = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(password, salt, &mut kek)
        .map_err(|e| Error::Other(format!("key derivation failed: {e}")))?;
    let cipher = XChaCha20Poly1305::new((&kek).into());
    kek.zeroize();
    Ok(cipher)
}

impl KeyFile {
    /// Wraps `key` under `password`.
    pub fn wrap(key: &MasterKey, password: &[u8], params: KdfParams) -> Result<Self> {
        let salt: [u8; 16] = rand::random();
        let kek = derive_kek(password, &salt, params)?;
        let mut bytes = key.to_bytes();
        let wrapped = seal_with(&kek, &bytes, b"cirkel key");
        bytes.zeroize();
        Ok(KeyFile {
            kdf: "argon2id".into(),
            params,
            salt: salt.to_vec(),
            wrapped,
            created: chrono::Utc::now(),
            host: hostname(),
        })
    }

    /// Unwraps the master key; `None` when the password does not open it.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        if self.kdf != "argon2id" {
            return Err(Error::Unsupported(format!("key derivation function {}", self.kdf)));
        }
        let kek = derive_kek(password, &self.salt, self.params)?;
        match open_with(&kek, &self.wrapped, b"cirkel key") {
            Some(mut bytes) => {
                let key = MasterKey::from_bytes(&bytes);
                bytes.zeroize();
                Ok(key)
            }
            None => Ok(None),
        }
    }
}

fn seal_with(cipher: &XChaCha20Poly1305, plain: &[u8], aad: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ct = cipher.encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad }).unwrap_or_default();
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

fn open_with(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
}

/// What a repository seals and hashes with: a master key, or nothing (for
/// repositories created with encryption turned off, which still name blobs
/// with a keyed hash whose key is stored in the clear).
#[derive(Clone)]
pub enum Crypto {
    Encrypted { key: MasterKey, cipher: XChaCha20Poly1305 },
    Plain { mac: [u8; 32] },
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Crypto::Encrypted { .. } => f.write_str("Crypto::Encrypted(<redacted>)"),
            Crypto::Plain { .. } => f.write_str("Crypto::Plain"),
        }
    }
}

impl Crypto {
    pub fn encrypted(key: MasterKey) -> Self {
        let cipher = XChaCha20Poly1305::new((&key.enc).into());
        Crypto::Encrypted { key, cipher }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, Crypto::Encrypted { .. })
    }

    pub fn master_key(&self) -> Option<&MasterKey> {
        match self {
            Crypto::Encrypted { key, .. } => Some(key),
            Crypto::Plain { .. } => None,
        }
    }

    fn mac_key(&self) -> &[u8; 32] {
        match self {
            Crypto::Encrypted { key, .. } => &key.mac,
            Crypto::Plain { mac } => mac,
        }
    }

    /// The id of a blob with this plaintext.
    pub fn blob_id(&self, plain: &[u8]) -> Id {
        Id(*blake3::keyed_hash(self.mac_key(), plain).as_bytes())
    }

    /// A per-repository seed for the content-defined chunker, so chunk
    /// boundaries do not reveal file contents to someone without the key.
    pub fn chunker_seed(&self) -> u64 {
        let k = blake3::derive_key("cirkel 2026 chunker seed", self.mac_key());
        u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
    }

    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        match self {
            Crypto::Encrypted { cipher, .. } => seal_with(cipher, plain, aad),
            Crypto::Plain { .. } => plain.to_vec(),
        }
    }

    /// Opens a sealed object in its own buffer, without copying; returns the
    /// plaintext's range within `buf`, or `None` when authentication fails.
    pub fn open_in_place(&self, buf: &mut [u8], aad: &[u8]) -> Option<std::ops::Range<usize>> {
        match self {
            Crypto::Encrypted { cipher, .. } => {
                if buf.len() < NONCE_LEN + TAG_LEN {
                    return None;
                }
                let (nonce, rest) = buf.split_at_mut(NONCE_LEN);
                let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
                let tag = chacha20poly1305::Tag::clone_from_slice(tag);
                cipher.decrypt_in_place_detached(XNonce::from_slice(nonce), aad, body, &tag).ok()?;
                Some(NONCE_LEN..buf.len() - TAG_LEN)
            }
            Crypto::Plain { .. } => Some(0..buf.len()),
        }
    }

    /// Opens a sealed object; `None` when authentication fails.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        match self {
            Crypto::Encrypted { cipher, .. } => open_with(cipher, sealed, aad),
            Crypto::Plain { .. } => Some(sealed.to_vec()),
        }
    }

    pub fn overhead(&self) -> usize {
        if self.is_encrypted() { SEAL_OVERHEAD } else { 0 }
    }
}

pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> KdfParams {
        KdfParams { m_cost: 256, t_cost: 1, p_cost: 1 }
    }

    #[test]
    fn key_file_round_trip_and_wrong_password() {
        let key = MasterKey::generate();
        let kf = KeyFile::wrap(&key, b"right", fast()).unwrap();
        let back = kf.unwrap_key(b"right").unwrap().unwrap();
        assert_eq!(back.fingerprint(), key.fingerprint());
        assert!(kf.unwrap_key(b"wrong").unwrap().is_none());
    }

    #[test]
    fn seal_detects_tampering_and_wrong_aad() {
        let c = Crypto::encrypted(MasterKey::generate());
        let mut sealed = c.seal(b"hello", b"aad");
        assert_eq!(c.open(&sealed, b"aad").unwrap(), b"hello");
        assert!(c.open(&sealed, b"other").is_none());
        sealed[30] ^= 1;
        assert!(c.open(&sealed, b"aad").is_none());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = MasterKey::generate();
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
        assert!(!format!("{:?}", Crypto::encrypted(key)).contains(|c: char| c.is_ascii_digit()));
    }
}
