//! Keys, key files and authenticated encryption.
//!
//! A repository has one random master key: 32 bytes that key its cipher and
//! 32 bytes that key the BLAKE3 hash naming blobs (so blob ids reveal nothing
//! about content to someone without the key). The master key is stored in
//! `keys/<id>` objects, each wrapping it under a key derived with Argon2id
//! from a passphrase.
//!
//! Objects are sealed with one of two ciphers, chosen when the repository is
//! created; both take a fresh 192-bit random nonce per object, which is safe
//! at any repository size:
//!
//! - `xchacha20poly1305`: XChaCha20-Poly1305 (HChaCha20 derives a one-object
//!   key from the first 16 nonce bytes). Fast everywhere.
//! - `aes256gcm`: AES-256-GCM under a one-object key, the keyed BLAKE3 hash
//!   of the first 12 nonce bytes; the other 12 are the GCM nonce. Several
//!   times faster where the CPU has AES instructions, and the default there.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
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

/// Largest Argon2 costs a key file may ask for: a key file is read before
/// anything is authenticated, so its costs are bounded before deriving.
pub const KDF_MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
pub const KDF_MAX_TIME: u32 = 64;
pub const KDF_MAX_LANES: u32 = 64;
/// The sealed master key: nonce, 64 key bytes, tag.
const WRAPPED_LEN: usize = NONCE_LEN + 64 + TAG_LEN;

impl KdfParams {
    /// Checks the costs against the bounds; the error names the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !(1..=KDF_MAX_LANES).contains(&self.p_cost) {
            return Err(format!("params.p_cost is {}; allowed 1 to {KDF_MAX_LANES}", self.p_cost));
        }
        if !(1..=KDF_MAX_TIME).contains(&self.t_cost) {
            return Err(format!("params.t_cost is {}; allowed 1 to {KDF_MAX_TIME}", self.t_cost));
        }
        let min_mem = 8 * self.p_cost;
        if !(min_mem..=KDF_MAX_MEMORY_KIB).contains(&self.m_cost) {
            return Err(format!("params.m_cost is {} KiB; allowed {min_mem} to {KDF_MAX_MEMORY_KIB} KiB", self.m_cost));
        }
        Ok(())
    }
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
    /// Who created the key, where known (older key files lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The authentication code of the config this key was made for, bound
    /// into the sealed key (its associated data): a config whose code was
    /// removed or changed is refused by every key made since configs carry
    /// one. Older key files lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_mac: Option<Id>,
}

/// Associated data of the sealed master key.
fn key_aad(config_mac: Option<Id>) -> Vec<u8> {
    let mut aad = b"cirkel key".to_vec();
    if let Some(m) = config_mac {
        aad.extend_from_slice(b" for config ");
        aad.extend_from_slice(&m.0);
    }
    aad
}

fn derive_kek(password: &[u8], salt: &[u8], p: KdfParams) -> Result<XChaCha20Poly1305> {
    p.check().map_err(|e| Error::Other(format!("invalid key derivation parameters: {e}")))?;
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
    /// Parses a stored key file and checks its structure, before any costly
    /// key derivation: its content must match its name (the hash of its
    /// bytes), and its salt, sealed key and costs must be in range. The
    /// error says what is damaged.
    pub fn parse(name: &str, bytes: &[u8]) -> std::result::Result<KeyFile, String> {
        if let Some(Ok(id)) = name.rsplit('/').next().map(str::parse::<Id>)
            && Id::of(bytes) != id
        {
            return Err("its content does not match its name (changed after it was written)".into());
        }
        let kf: KeyFile = serde_json::from_slice(bytes).map_err(|e| format!("not a key file: {e}"))?;
        kf.check()?;
        Ok(kf)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.kdf != "argon2id" {
            return Err(format!("unknown key derivation function {:?}", self.kdf));
        }
        if !(8..=64).contains(&self.salt.len()) {
            return Err(format!("its salt has {} bytes; allowed 8 to 64", self.salt.len()));
        }
        if self.wrapped.len() != WRAPPED_LEN {
            return Err(format!("its sealed key has {} bytes, not {WRAPPED_LEN}", self.wrapped.len()));
        }
        self.params.check()
    }

    /// Wraps `key` under `password`, bound to no config.
    pub fn wrap(key: &MasterKey, password: &[u8], params: KdfParams) -> Result<Self> {
        Self::wrap_for_config(key, password, params, None)
    }

    /// Wraps `key` under `password`, bound to the config with this
    /// authentication code.
    pub fn wrap_for_config(
        key: &MasterKey,
        password: &[u8],
        params: KdfParams,
        config_mac: Option<Id>,
    ) -> Result<Self> {
        let salt: [u8; 16] = rand::random();
        let kek = derive_kek(password, &salt, params)?;
        let mut bytes = key.to_bytes();
        let wrapped = seal_with(&kek, &bytes, &key_aad(config_mac));
        bytes.zeroize();
        Ok(KeyFile {
            kdf: "argon2id".into(),
            params,
            salt: salt.to_vec(),
            wrapped,
            created: chrono::Utc::now(),
            host: hostname(),
            user: std::env::var("USER").ok().filter(|u| !u.is_empty()).or_else(|| {
                // SAFETY: getuid has no preconditions.
                Some(format!("uid {}", unsafe { libc::getuid() }))
            }),
            config_mac,
        })
    }

    /// Unwraps the master key; `None` when the password does not open it.
    pub fn unwrap_key(&self, password: &[u8]) -> Result<Option<MasterKey>> {
        if self.kdf != "argon2id" {
            return Err(Error::Unsupported(format!("key derivation function {}", self.kdf)));
        }
        self.check().map_err(|e| Error::Other(format!("damaged key file: {e}")))?;
        let kek = derive_kek(password, &self.salt, self.params)?;
        match open_with(&kek, &self.wrapped, &key_aad(self.config_mac)) {
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

/// The cipher a repository seals its objects with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    XChaCha20Poly1305,
    Aes256Gcm,
}

impl Cipher {
    /// The name stored in the repository's config.
    pub fn config_name(self) -> &'static str {
        match self {
            Cipher::XChaCha20Poly1305 => "xchacha20poly1305",
            Cipher::Aes256Gcm => "aes256gcm",
        }
    }

    pub fn from_config_name(name: &str) -> Option<Cipher> {
        match name {
            "xchacha20poly1305" => Some(Cipher::XChaCha20Poly1305),
            "aes256gcm" => Some(Cipher::Aes256Gcm),
            _ => None,
        }
    }

    /// AES-256-GCM where the CPU has AES and carry-less multiply
    /// instructions, XChaCha20-Poly1305 elsewhere.
    pub fn fastest() -> Cipher {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq") {
            return Cipher::Aes256Gcm;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull") {
            return Cipher::Aes256Gcm;
        }
        Cipher::XChaCha20Poly1305
    }
}

/// Seals and opens objects under one key; see the module documentation.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Sealer {
    #[zeroize(skip)]
    cipher: Cipher,
    key: [u8; 32],
}

impl Sealer {
    fn new(cipher: Cipher, enc: &[u8; 32]) -> Self {
        let key = match cipher {
            Cipher::XChaCha20Poly1305 => *enc,
            Cipher::Aes256Gcm => blake3::derive_key("cirkel 2026 aes-256-gcm object keys", enc),
        };
        Sealer { cipher, key }
    }

    /// The one-object key and the 96-bit nonce for a 192-bit nonce.
    fn object_key(&self, nonce: &[u8; NONCE_LEN]) -> Option<(LessSafeKey, Nonce)> {
        let (mut sub, alg, n): ([u8; 32], _, [u8; 12]) = match self.cipher {
            Cipher::XChaCha20Poly1305 => {
                let sub = chacha20::hchacha::<chacha20::cipher::consts::U10>(
                    (&self.key).into(),
                    chacha20::cipher::generic_array::GenericArray::from_slice(&nonce[..16]),
                );
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&nonce[16..]);
                (sub.into(), &CHACHA20_POLY1305, n)
            }
            Cipher::Aes256Gcm => {
                let sub = *blake3::keyed_hash(&self.key, &nonce[..12]).as_bytes();
                let mut n = [0u8; 12];
                n.copy_from_slice(&nonce[12..]);
                (sub, &AES_256_GCM, n)
            }
        };
        let key = UnboundKey::new(alg, &sub).ok().map(LessSafeKey::new);
        sub.zeroize();
        Some((key?, Nonce::assume_unique_for_key(n)))
    }

    fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .object_key(&nonce)
            .and_then(|(key, n)| key.seal_in_place_separate_tag(n, Aad::from(aad), &mut out[NONCE_LEN..]).ok());
        match tag {
            Some(tag) => out.extend_from_slice(tag.as_ref()),
            // Unreachable with a 32-byte key; an empty result never opens.
            None => out.clear(),
        }
        out
    }

    fn open_in_place(&self, buf: &mut [u8], aad: &[u8]) -> Option<std::ops::Range<usize>> {
        if buf.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, rest) = buf.split_at_mut(NONCE_LEN);
        let (key, n) = self.object_key(&(*nonce).try_into().ok()?)?;
        let plain = key.open_in_place(n, Aad::from(aad), rest).ok()?.len();
        Some(NONCE_LEN..NONCE_LEN + plain)
    }
}

/// What a repository seals and hashes with: a master key, or nothing (for
/// repositories created with encryption turned off, which still name blobs
/// with a keyed hash whose key is stored in the clear).
#[derive(Clone)]
pub enum Crypto {
    Encrypted { key: MasterKey, sealer: Sealer },
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
    pub fn encrypted(key: MasterKey, cipher: Cipher) -> Self {
        let sealer = Sealer::new(cipher, &key.enc);
        Crypto::Encrypted { key, sealer }
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, Crypto::Encrypted { .. })
    }

    pub fn cipher(&self) -> Option<Cipher> {
        match self {
            Crypto::Encrypted { sealer, .. } => Some(sealer.cipher),
            Crypto::Plain { .. } => None,
        }
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

    /// The authentication code of the repository config's bytes.
    pub(crate) fn config_mac(&self, bytes: &[u8]) -> Id {
        let key = blake3::derive_key("cirkel 2026 config mac", self.mac_key());
        Id(*blake3::keyed_hash(&key, bytes).as_bytes())
    }

    /// A per-repository seed for the content-defined chunker, so chunk
    /// boundaries do not reveal file contents to someone without the key.
    pub fn chunker_seed(&self) -> u64 {
        let k = blake3::derive_key("cirkel 2026 chunker seed", self.mac_key());
        u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]])
    }

    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Vec<u8> {
        match self {
            Crypto::Encrypted { sealer, .. } => sealer.seal(plain, aad),
            Crypto::Plain { .. } => plain.to_vec(),
        }
    }

    /// Opens a sealed object in its own buffer, without copying; returns the
    /// plaintext's range within `buf`, or `None` when authentication fails.
    pub fn open_in_place(&self, buf: &mut [u8], aad: &[u8]) -> Option<std::ops::Range<usize>> {
        match self {
            Crypto::Encrypted { sealer, .. } => sealer.open_in_place(buf, aad),
            Crypto::Plain { .. } => Some(0..buf.len()),
        }
    }

    /// Opens a sealed object; `None` when authentication fails.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let range = self.open_in_place(&mut buf, aad)?;
        buf.truncate(range.end);
        buf.drain(..range.start);
        Some(buf)
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

    const CIPHERS: [Cipher; 2] = [Cipher::XChaCha20Poly1305, Cipher::Aes256Gcm];

    #[test]
    fn seal_detects_tampering_and_wrong_aad() {
        for cipher in CIPHERS {
            let c = Crypto::encrypted(MasterKey::generate(), cipher);
            let mut sealed = c.seal(b"hello", b"aad");
            assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
            assert_eq!(c.open(&sealed, b"aad").unwrap(), b"hello");
            assert_eq!(c.open(&c.seal(b"", b"aad"), b"aad").unwrap(), b"");
            assert!(c.open(&sealed, b"other").is_none());
            for at in [0, 23, 24, 28, sealed.len() - 1] {
                sealed[at] ^= 1;
                assert!(c.open(&sealed, b"aad").is_none(), "{cipher:?}: flipped byte {at}");
                sealed[at] ^= 1;
            }
            assert!(c.open(&sealed[..SEAL_OVERHEAD - 1], b"aad").is_none());
        }
    }

    #[test]
    fn ciphers_do_not_open_each_other() {
        let key = MasterKey::generate();
        let x = Crypto::encrypted(key.clone(), Cipher::XChaCha20Poly1305);
        let a = Crypto::encrypted(key, Cipher::Aes256Gcm);
        assert!(a.open(&x.seal(b"hello", b"aad"), b"aad").is_none());
        assert!(x.open(&a.seal(b"hello", b"aad"), b"aad").is_none());
    }

    /// Objects sealed before the assembly implementation (with the pure-Rust
    /// XChaCha20-Poly1305) still open, and the reverse.
    #[test]
    fn xchacha_objects_match_the_reference_implementation() {
        let key = MasterKey::generate();
        let reference = XChaCha20Poly1305::new((&key.enc).into());
        let c = Crypto::encrypted(key.clone(), Cipher::XChaCha20Poly1305);
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let old = seal_with(&reference, &plain, b"blob id");
        assert_eq!(c.open(&old, b"blob id").unwrap(), plain);
        let new = c.seal(&plain, b"blob id");
        assert_eq!(open_with(&reference, &new, b"blob id").unwrap(), plain);
    }

    #[test]
    fn config_names_round_trip() {
        for cipher in CIPHERS {
            assert_eq!(Cipher::from_config_name(cipher.config_name()), Some(cipher));
        }
        assert_eq!(Cipher::from_config_name("rot13"), None);
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = MasterKey::generate();
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
        assert!(!format!("{:?}", Crypto::encrypted(key, Cipher::Aes256Gcm)).contains(|c: char| c.is_ascii_digit()));
    }
}
