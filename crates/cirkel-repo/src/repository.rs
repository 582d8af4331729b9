//! Opening, creating and reading a repository.

use std::sync::Arc;

use crate::runtime::Shared as Runtime;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, Created};
use crate::blob::{self, BlobKind};
use crate::crypto::{Cipher, Crypto, KdfParams, KeyFile, MasterKey};
use crate::index::{self, Index, PackRecord};
use crate::snapshot::Snapshot;
use crate::tree::Tree;
use crate::{Error, Id, Result};

pub(crate) const CONFIG_KEY: &str = "config";
const KEY_CHECK: &[u8] = b"cirkel key check";
const FORMAT_VERSION: u32 = 1;

/// Content-defined chunking parameters, fixed at `repo init`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkerParams {
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams { min: 512 * 1024, avg: 1024 * 1024, max: 8 * 1024 * 1024 }
    }
}

/// The `config` object: public, unencrypted facts about the repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub version: u32,
    pub id: Id,
    pub created: DateTime<Utc>,
    /// `xchacha20poly1305` or `none`.
    pub encryption: String,
    pub compression_level: i32,
    pub chunker: ChunkerParams,
    pub pack_size: u32,
    /// Only for unencrypted repositories: the key of the blob-id hash.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex")]
    pub mac_key: Option<[u8; 32]>,
    /// Keyed hash of a fixed string: tells whether a cached master key
    /// belongs to this repository, without revealing anything about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<Id>,
    /// Keyed hash of the rest of the config under a key derived from the
    /// master key, so that no parameter changes unnoticed. Absent in
    /// unencrypted repositories (their hash key is public) and in those
    /// created before it existed (`repo repair config` adds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Id>,
}

/// Allowed ranges of the repository parameters. A config is read before
/// anything is authenticated, so every value is checked before it sizes a
/// buffer, a chunker or a pack.
pub mod limits {
    /// The content-defined chunker's own limits (FastCDC 2020).
    pub const CHUNK_MIN: (u32, u32) = (64, 1024 * 1024);
    pub const CHUNK_AVG: (u32, u32) = (256, 4 * 1024 * 1024);
    pub const CHUNK_MAX: (u32, u32) = (1024, 16 * 1024 * 1024);
    pub const PACK_SIZE: (u32, u32) = (64 * 1024, 1024 * 1024 * 1024);
    pub const COMPRESSION_LEVEL: (i32, i32) = (0, 22);
}

impl RepoConfig {
    /// Checks every parameter against [`limits`]; the error names the field
    /// and the allowed range.
    pub fn check_bounds(&self) -> std::result::Result<(), String> {
        use limits::*;
        if self.version != FORMAT_VERSION {
            return Err(format!("version is {}; this build reads version {FORMAT_VERSION}", self.version));
        }
        let (lo, hi) = COMPRESSION_LEVEL;
        if !(lo..=hi).contains(&self.compression_level) {
            return Err(format!("compression_level is {}; allowed {lo} to {hi}", self.compression_level));
        }
        let c = &self.chunker;
        for (name, v, (lo, hi)) in
            [("chunker.min", c.min, CHUNK_MIN), ("chunker.avg", c.avg, CHUNK_AVG), ("chunker.max", c.max, CHUNK_MAX)]
        {
            if !(lo..=hi).contains(&v) || v % 2 != 0 {
                return Err(format!("{name} is {v}; allowed an even number from {lo} to {hi}"));
            }
        }
        if !(c.min <= c.avg && c.avg <= c.max) {
            return Err(format!("chunker sizes must grow: min {} <= avg {} <= max {}", c.min, c.avg, c.max));
        }
        let (lo, hi) = PACK_SIZE;
        if !(lo..=hi).contains(&self.pack_size) {
            return Err(format!("pack_size is {}; allowed {lo} to {hi}", self.pack_size));
        }
        Ok(())
    }

    /// The config's authentication code under `crypto`'s keys.
    pub(crate) fn compute_mac(&self, crypto: &Crypto) -> Id {
        let mut unsigned = self.clone();
        unsigned.mac = None;
        let bytes = serde_json::to_vec(&unsigned).unwrap_or_default();
        crypto.config_mac(&bytes)
    }
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            let mut out = [0u8; 32];
            hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
            Ok(out)
        })
        .transpose()
    }
}

/// Choices made when creating a repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub encrypt: bool,
    /// The cipher of an encrypted repository.
    pub cipher: Cipher,
    pub compression_level: i32,
    pub chunker: ChunkerParams,
    pub pack_size: u32,
    pub kdf: KdfParams,
    /// Share the master key of another repository, so that `repo copy`
    /// between them moves sealed blobs verbatim.
    pub master_key: Option<MasterKey>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            encrypt: true,
            cipher: Cipher::fastest(),
            compression_level: 3,
            chunker: ChunkerParams::default(),
            pack_size: 16 * 1024 * 1024,
            kdf: KdfParams::default(),
            master_key: None,
        }
    }
}

/// An open repository. Cheap to clone; all methods are blocking and may be
/// called from many threads (never from inside an async task).
#[derive(Clone, Debug)]
pub struct Repository {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) rt: Runtime,
    pub(crate) config: RepoConfig,
    pub(crate) crypto: Crypto,
    /// Objects readers skipped because they could not be read; commands
    /// show them beside their results.
    warnings: Arc<std::sync::Mutex<Vec<String>>>,
    /// The key object the passphrase opened, when it was looked up.
    key_in_use: Option<String>,
}

/// The readable snapshots, oldest first, and the objects that were not.
pub type SnapshotsRead = (Vec<(Id, Snapshot)>, Vec<Unreadable>);

/// A key object, as `repo key list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub created: Option<DateTime<Utc>>,
    pub host: Option<String>,
    pub user: Option<String>,
    /// Whether this key opened the repository.
    pub in_use: bool,
    /// Why the key file is unusable, when it is.
    pub damaged: Option<String>,
}

/// An object a reader could not read, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Unreadable {
    pub key: String,
    pub error: String,
}

/// Reads and checks the `config` object.
fn read_config(rt: &Runtime, backend: &dyn Backend) -> Result<RepoConfig> {
    let location = backend.location();
    let raw = match rt.block_on(backend.read(CONFIG_KEY)) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Err(Error::NotARepository(location)),
        Err(e) => return Err(e.into()),
    };
    let config: RepoConfig = serde_json::from_slice(&raw)
        .map_err(|e| Error::NotARepository(format!("{location} (unreadable config: {e})")))?;
    if config.version != FORMAT_VERSION {
        return Err(Error::Unsupported(format!("format version {}", config.version)));
    }
    config.check_bounds().map_err(|detail| Error::BadConfig { location, detail })?;
    Ok(config)
}

/// Checks the config's authentication code, once the master key is known.
/// A config without one (written before it existed) is accepted, since its
/// values are within bounds, with a warning.
fn authenticate_config(config: &RepoConfig, crypto: &Crypto, location: &str) -> Result<()> {
    if !crypto.is_encrypted() {
        return Ok(());
    }
    match config.mac {
        Some(mac) if mac == config.compute_mac(crypto) => Ok(()),
        Some(_) => Err(Error::BadConfig {
            location: location.into(),
            detail: "its authentication code does not match: a parameter was changed outside cirkel".into(),
        }),
        None => {
            tracing::warn!(
                "the repository config at {location} is not authenticated (written by an older cirkel); `cirkel repo repair config` authenticates it"
            );
            Ok(())
        }
    }
}

fn runtime() -> Result<Runtime> {
    Runtime::get().map_err(|e| Error::Other(e.to_string()))
}

impl Repository {
    fn assemble(backend: Arc<dyn Backend>, rt: Runtime, config: RepoConfig, crypto: Crypto) -> Self {
        Repository { backend, rt, config, crypto, warnings: Arc::default(), key_in_use: None }
    }

    /// What readers skipped so far (unreadable indexes and snapshots), one
    /// sentence each; also logged as warnings when they happen.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().map(|w| w.clone()).unwrap_or_default()
    }

    fn warn(&self, message: String) {
        tracing::warn!("{message}");
        if let Ok(mut w) = self.warnings.lock()
            && !w.contains(&message)
        {
            w.push(message);
        }
    }

    /// Creates a repository at the backend's location.
    pub fn init(backend: Arc<dyn Backend>, password: Option<&[u8]>, opts: InitOptions) -> Result<Self> {
        let rt = runtime()?;
        let location = backend.location();
        match rt.block_on(backend.read(CONFIG_KEY)) {
            Ok(_) => return Err(Error::AlreadyInitialized(location)),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let (crypto, master_key) = if opts.encrypt {
            let password = password.ok_or(Error::PasswordRequired)?;
            refuse_empty(password)?;
            let key = opts.master_key.clone().unwrap_or_else(MasterKey::generate);
            (Crypto::encrypted(key.clone(), opts.cipher), Some((key, password)))
        } else {
            (Crypto::Plain { mac: rand::random() }, None)
        };
        let mut config = RepoConfig {
            version: FORMAT_VERSION,
            id: Id::random(),
            created: Utc::now(),
            encryption: if opts.encrypt { opts.cipher.config_name().into() } else { "none".into() },
            compression_level: opts.compression_level,
            chunker: opts.chunker,
            pack_size: opts.pack_size,
            mac_key: match &crypto {
                Crypto::Plain { mac } => Some(*mac),
                Crypto::Encrypted { .. } => None,
            },
            key_check: Some(crypto.blob_id(KEY_CHECK)),
            mac: None,
        };
        config.check_bounds().map_err(|detail| Error::BadConfig { location: location.clone(), detail })?;
        let mut key_object = None;
        if let Some((key, password)) = master_key {
            config.mac = Some(config.compute_mac(&crypto));
            let kf = KeyFile::wrap_for_config(&key, password, opts.kdf, config.mac)?;
            key_object = Some(serde_json::to_vec_pretty(&kf).map_err(|e| Error::Other(e.to_string()))?);
        }
        // The key goes first: a crash before the config leaves no repository
        // (init can simply run again), never a repository without a key.
        let mut key_name = None;
        if let Some(bytes) = key_object {
            let name = format!("keys/{}", Id::of(&bytes));
            rt.block_on(backend.create(&name, Bytes::from(bytes)))?;
            key_name = Some(name);
        }
        let config_bytes = serde_json::to_vec_pretty(&config).map_err(|e| Error::Other(e.to_string()))?;
        if rt.block_on(backend.create(CONFIG_KEY, Bytes::from(config_bytes)))? == Created::Existed {
            if let Some(name) = key_name {
                let _ = rt.block_on(backend.delete(&name));
            }
            return Err(Error::AlreadyInitialized(location));
        }
        Ok(Repository::assemble(backend, rt, config, crypto))
    }

    /// Opens an existing repository, trying the password on each key.
    pub fn open(backend: Arc<dyn Backend>, password: Option<&[u8]>) -> Result<Self> {
        let rt = runtime()?;
        let location = backend.location();
        let config = read_config(&rt, backend.as_ref())?;
        let mut key_in_use = None;
        let crypto = match (config.encryption.as_str(), config.mac_key) {
            ("none", Some(mac)) => {
                // Key objects exist only in encrypted repositories: a config
                // that says otherwise was replaced, to make writers leak data.
                if !rt.block_on(backend.list("keys/"))?.is_empty() {
                    return Err(Error::corrupt(
                        "config",
                        &location,
                        "it says unencrypted, but the repository has keys; refusing to write plaintext",
                    ));
                }
                Crypto::Plain { mac }
            }
            (name, None) if let Some(cipher) = Cipher::from_config_name(name) => {
                let password = password.ok_or(Error::PasswordRequired)?;
                let (key, name) = Self::find_key(&rt, backend.as_ref(), password, config.mac)?;
                key_in_use = Some(name);
                Crypto::encrypted(key, cipher)
            }
            (other, _) => return Err(Error::Unsupported(format!("encryption {other}"))),
        };
        authenticate_config(&config, &crypto, &location)?;
        let mut repo = Repository::assemble(backend, rt, config, crypto);
        repo.key_in_use = key_in_use;
        Ok(repo)
    }

    /// Like [`Repository::open`], but remembers the unwrapped master key in
    /// `cache_dir` (a 0600 file), so that frequent short commands such as
    /// `wal-push` skip the deliberately slow passphrase derivation. The cache
    /// holds what the passphrase file already grants; it is checked against
    /// the repository before use and ignored when it does not match.
    pub fn open_cached(
        backend: Arc<dyn Backend>,
        password: Option<&[u8]>,
        cache_dir: &std::path::Path,
    ) -> Result<Self> {
        let rt = runtime()?;
        let config = read_config(&rt, backend.as_ref())?;
        let cache_file = cache_dir.join(format!("{}.key", config.id));
        // A config without its code may have been stripped of it; only the
        // key files can tell, so such a config takes the full open.
        if let Some(cipher) = Cipher::from_config_name(&config.encryption)
            && config.mac.is_some()
            && let (Some(check), Ok(bytes)) = (config.key_check, std::fs::read(&cache_file))
            && let Some(key) = MasterKey::from_cache_bytes(&bytes)
        {
            let crypto = Crypto::encrypted(key, cipher);
            if crypto.blob_id(KEY_CHECK) == check {
                authenticate_config(&config, &crypto, &backend.location())?;
                return Ok(Repository::assemble(backend, rt, config, crypto));
            }
        }
        drop(rt);
        let repo = Self::open(backend, password)?;
        if let (Some(key), Some(_)) = (repo.crypto.master_key(), repo.config.key_check) {
            let _ = write_private(&cache_file, &key.to_cache_bytes());
        }
        Ok(repo)
    }

    /// The master key the passphrase opens, and the key object it came from.
    /// Key files whose content does not match their name, or whose structure
    /// or costs are out of range, are damaged: they are not tried, and are
    /// named if no other key opens.
    fn find_key(
        rt: &Runtime,
        backend: &dyn Backend,
        password: &[u8],
        config_mac: Option<Id>,
    ) -> Result<(MasterKey, String)> {
        let keys = rt.block_on(backend.list("keys/"))?;
        if keys.is_empty() {
            return Err(Error::corrupt("repository", backend.location(), "it has no key objects"));
        }
        let mut damaged = Vec::new();
        let mut other_config = false;
        for k in keys {
            let bytes = rt.block_on(backend.read(&k.key))?;
            let kf = match KeyFile::parse(&k.key, &bytes) {
                Ok(kf) => kf,
                Err(why) => {
                    tracing::warn!("key {} is damaged: {why}", k.key);
                    damaged.push(format!("{}: {why}", k.key));
                    continue;
                }
            };
            if let Some(key) = kf.unwrap_key(password)? {
                // A key made for a config with a code opens only that config.
                if kf.config_mac.is_some() && kf.config_mac != config_mac {
                    other_config = true;
                    continue;
                }
                return Ok((key, k.key));
            }
        }
        if other_config {
            return Err(Error::BadConfig {
                location: backend.location(),
                detail: "its authentication code was removed or replaced: the key was made for another config".into(),
            });
        }
        if damaged.is_empty() { Err(Error::WrongPassword) } else { Err(Error::WrongPasswordOrDamagedKey(damaged)) }
    }

    /// Adds a key object that opens this repository with another password.
    pub fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<String> {
        refuse_empty(password)?;
        let key =
            self.crypto.master_key().ok_or_else(|| Error::Other("an unencrypted repository has no keys".into()))?;
        let bytes = serde_json::to_vec_pretty(&KeyFile::wrap_for_config(key, password, kdf, self.config.mac)?)
            .map_err(|e| Error::Other(e.to_string()))?;
        let name = format!("keys/{}", Id::of(&bytes));
        self.block_on(self.backend.create(&name, Bytes::from(bytes)))?;
        Ok(name)
    }

    /// Every key object: its id, when, where and by whom it was created,
    /// whether it opened this repository, or why it is damaged.
    pub fn keys(&self) -> Result<Vec<KeyInfo>> {
        let mut out = Vec::new();
        for o in self.block_on(self.backend.list("keys/"))? {
            let id = o.key.trim_start_matches("keys/").to_string();
            let in_use = self.key_in_use.as_deref() == Some(o.key.as_str());
            let info = match self.block_on(self.backend.read(&o.key)) {
                Ok(bytes) => match KeyFile::parse(&o.key, &bytes) {
                    Ok(kf) => KeyInfo {
                        id,
                        created: Some(kf.created),
                        host: Some(kf.host),
                        user: kf.user,
                        in_use,
                        damaged: None,
                    },
                    Err(why) => KeyInfo { id, created: None, host: None, user: None, in_use, damaged: Some(why) },
                },
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            out.push(info);
        }
        Ok(out)
    }

    /// Removes a key by id or unique id prefix; never the last key, and the
    /// one the passphrase opened only with `force`. Returns its id.
    pub fn remove_key(&self, spec: &str, force: bool) -> Result<String> {
        let refuse = |message: String, hint: &str| Error::Failed { message, hint: Some(hint.into()) };
        if spec.trim().is_empty() {
            return Err(refuse("an empty key id names no key".into(), "list keys with `cirkel repo key list`"));
        }
        let keys = self.keys()?;
        let found: Vec<&KeyInfo> = keys.iter().filter(|k| k.id.starts_with(spec)).collect();
        let key = match found.as_slice() {
            [one] => *one,
            [] => return Err(refuse(format!("no key matches `{spec}`"), "list keys with `cirkel repo key list`")),
            many => {
                return Err(refuse(
                    format!("`{spec}` matches {} keys", many.len()),
                    "give more digits; list keys with `cirkel repo key list`",
                ));
            }
        };
        let usable_others = keys.iter().filter(|k| k.id != key.id && k.damaged.is_none()).count();
        if keys.len() <= 1 || (key.damaged.is_none() && usable_others == 0) {
            return Err(refuse(
                format!("key {} is the repository's only usable key", key.id),
                "add another with `cirkel repo add-key` first; without a key the repository cannot be opened",
            ));
        }
        if key.in_use && !force {
            return Err(refuse(
                format!("key {} is the one this passphrase opens", key.id),
                "pass --force to remove it anyway; afterwards only the other keys' passphrases open the repository",
            ));
        }
        self.block_on(self.backend.delete(&format!("keys/{}", key.id)))?;
        Ok(key.id.clone())
    }

    /// Adds the authentication code to a config written before configs
    /// carried one, and replaces the key `password` opens with one bound to
    /// it (so that removing the code again is noticed). Returns false when
    /// there was nothing to do.
    pub fn repair_config(&mut self, password: &[u8], kdf: KdfParams) -> Result<bool> {
        let Some(key) = self.crypto.master_key().cloned() else {
            return Err(Error::Failed {
                message:
                    "an unencrypted repository's config cannot be authenticated (its hash key is stored in the clear)"
                        .into(),
                hint: Some("its parameters are checked against their bounds on every open".into()),
            });
        };
        let old_key = self.key_in_use.clone();
        let bound = match &old_key {
            Some(name) => {
                let bytes = self.block_on(self.backend.read(name))?;
                KeyFile::parse(name, &bytes).ok().and_then(|kf| kf.config_mac)
            }
            None => None,
        };
        if self.config.mac.is_some() && bound == self.config.mac {
            return Ok(false);
        }
        let mut config = self.config.clone();
        config.mac = Some(config.compute_mac(&self.crypto));
        // The new key first: until the config is replaced, opening skips it
        // (it is bound to a code the config does not carry yet) and the old
        // key still opens; a crash leaves one of the two working.
        let kf = KeyFile::wrap_for_config(&key, password, kdf, config.mac)?;
        let bytes = serde_json::to_vec_pretty(&kf).map_err(|e| Error::Other(e.to_string()))?;
        let name = format!("keys/{}", Id::of(&bytes));
        self.block_on(self.backend.create(&name, Bytes::from(bytes)))?;
        if self.config.mac.is_none() {
            let config_bytes = serde_json::to_vec_pretty(&config).map_err(|e| Error::Other(e.to_string()))?;
            self.block_on(self.backend.replace(CONFIG_KEY, Bytes::from(config_bytes)))?;
        }
        if let Some(old) = old_key {
            self.block_on(self.backend.delete(&old))?;
        }
        self.key_in_use = Some(name);
        self.config = config;
        Ok(true)
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn location(&self) -> String {
        self.backend.location()
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub(crate) fn pack_key(id: &Id) -> String {
        let hex = id.to_hex();
        format!("data/{}/{hex}", &hex[..2])
    }

    /// Seals and stores a metadata object (index, snapshot) under
    /// `prefix/<hash of stored bytes>`.
    pub(crate) fn save_object(&self, prefix: &str, plain: &[u8]) -> Result<Id> {
        let compressed = zstd::bulk::compress(plain, 3).map_err(|e| Error::Other(e.to_string()))?;
        let mut body = (plain.len() as u64).to_le_bytes().to_vec();
        body.extend_from_slice(&compressed);
        let stored = self.crypto.seal(&body, prefix.as_bytes());
        let id = Id::of(&stored);
        self.block_on(self.backend.create(&format!("{prefix}/{id}"), Bytes::from(stored)))?;
        Ok(id)
    }

    pub(crate) fn decode_object(&self, kind: &'static str, prefix: &str, id: &Id, stored: &[u8]) -> Result<Vec<u8>> {
        if Id::of(stored) != *id {
            return Err(Error::corrupt(kind, id, "content does not match its name (bit rot or tampering)"));
        }
        let body = self
            .crypto
            .open(stored, prefix.as_bytes())
            .ok_or_else(|| Error::corrupt(kind, id, "authentication failed"))?;
        if body.len() < 8 {
            return Err(Error::corrupt(kind, id, "too short"));
        }
        let len = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
        blob::decompress_bounded(kind, id, &body[8..], len)
    }

    pub(crate) fn load_object(&self, kind: &'static str, prefix: &str, id: &Id) -> Result<Vec<u8>> {
        let stored = self.block_on(self.backend.read(&format!("{prefix}/{id}")))?;
        self.decode_object(kind, prefix, id, &stored)
    }

    /// Ids of objects under a prefix; malformed names are ignored.
    pub(crate) fn list_ids(&self, prefix: &str) -> Result<Vec<(Id, u64)>> {
        let objs = self.block_on(self.backend.list(&format!("{prefix}/")))?;
        Ok(objs
            .into_iter()
            .filter_map(|o| {
                let name = o.key.rsplit('/').next()?;
                Some((name.parse().ok()?, o.size))
            })
            .collect())
    }

    // ---- indexes -------------------------------------------------------

    pub fn save_index(&self, packs: &[PackRecord]) -> Result<Id> {
        self.save_object("index", &index::encode(packs))
    }

    pub fn load_index_file(&self, id: &Id) -> Result<Vec<PackRecord>> {
        let plain = self.load_object("index", "index", id)?;
        index::decode(id, &plain)
    }

    /// Loads and merges every readable index file. An index that cannot be
    /// read is skipped with a warning: what it listed is then stored again
    /// by the next backup instead of being deduplicated against. Anything
    /// that deletes uses [`Repository::load_index_strict`] instead.
    pub fn load_index(&self) -> Result<Index> {
        let (index, skipped) = self.load_index_report()?;
        for u in skipped {
            self.warn(format!("skipped unreadable index {}: {}; run `cirkel repo repair index`", u.key, u.error));
        }
        Ok(index)
    }

    /// Like [`Repository::load_index`], but refuses when any index file
    /// cannot be read: deleting on the strength of a partial index could
    /// remove data a snapshot needs.
    pub fn load_index_strict(&self) -> Result<Index> {
        let (index, skipped) = self.load_index_report()?;
        if let Some(u) = skipped.first() {
            return Err(Error::Failed {
                message: format!("index {} cannot be read: {}", u.key, u.error),
                hint: Some("run `cirkel repo repair index` to rebuild the index from the packs, then try again".into()),
            });
        }
        Ok(index)
    }

    /// The readable indexes merged, and the index files that could not be
    /// read (damaged, or not an index at all).
    pub fn load_index_report(&self) -> Result<(Index, Vec<Unreadable>)> {
        let ids = self.list_ids("index")?;
        let mut index = Index::default();
        let mut skipped = Vec::new();
        let backend = self.backend.clone();
        let fetched: Vec<(Id, std::result::Result<Bytes, BackendError>)> = self.block_on(async move {
            let futs = ids.into_iter().map(|(id, _)| {
                let b = backend.clone();
                async move { (id, b.read(&format!("index/{id}")).await) }
            });
            futures::future::join_all(futs).await
        });
        for (id, res) in fetched {
            let stored = match res {
                Ok(b) => b,
                // Removed by a prune after we listed it. Writers and readers
                // hold locks that make prune keep its data, so what this
                // file listed is also in the file that replaced it.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let records =
                self.decode_object("index", "index", &id, &stored).and_then(|plain| index::decode(&id, &plain));
            match records {
                Ok(records) => {
                    for rec in records {
                        index.add_pack(rec);
                    }
                    index.files.push(id);
                }
                Err(e @ Error::Corrupt { .. }) => {
                    skipped.push(Unreadable { key: format!("index/{id}"), error: e.to_string() })
                }
                Err(e) => return Err(e),
            }
        }
        Ok((index, skipped))
    }

    // ---- blobs ---------------------------------------------------------

    /// Reads a blob's stored (sealed) bytes.
    pub fn read_blob_raw(&self, index: &Index, id: &Id) -> Result<(Bytes, index::Location)> {
        let loc = *index.get(id).ok_or_else(|| Error::MissingBlob(id.to_hex()))?;
        self.read_blob_at(id, loc)
    }

    fn read_blob_at(&self, id: &Id, loc: index::Location) -> Result<(Bytes, index::Location)> {
        let range = loc.offset as u64..loc.offset as u64 + loc.length as u64;
        let bytes = self.block_on(self.backend.read_range(&Self::pack_key(&loc.pack), range)).map_err(|e| {
            if e.is_not_found() {
                Error::MissingBlob(format!("{id} (its pack {} is missing)", loc.pack))
            } else {
                e.into()
            }
        })?;
        if bytes.len() != loc.length as usize {
            return Err(Error::corrupt("pack", loc.pack, "shorter than its index says"));
        }
        Ok((bytes, loc))
    }

    /// Reads a byte range of a pack (the restore path reads each pack once).
    pub fn read_pack_range(&self, pack: &Id, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let want = (range.end - range.start) as usize;
        let bytes = self.block_on(self.backend.read_range(&Self::pack_key(pack), range)).map_err(|e| {
            if e.is_not_found() { Error::corrupt("pack", pack, "missing from storage") } else { e.into() }
        })?;
        if bytes.len() != want {
            return Err(Error::corrupt("pack", pack, "shorter than its index says"));
        }
        Ok(Vec::from(bytes))
    }

    /// Authenticates and decompresses a blob that lies in `buf` (read with
    /// [`Repository::read_pack_range`]), decrypting it where it is.
    pub fn decode_blob_in_place<'a>(
        &self,
        id: &Id,
        buf: &'a mut [u8],
        raw_length: u32,
        compressed: bool,
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        blob::decode_in_place(&self.crypto, id, buf, raw_length, compressed)
    }

    /// Like [`Repository::decode_blob_in_place`], into `out` (exactly
    /// `raw_length` bytes) without allocating: restores put it where it is
    /// written from.
    pub fn decode_blob_into(
        &self,
        id: &Id,
        buf: &mut [u8],
        raw_length: u32,
        compressed: bool,
        out: &mut [u8],
    ) -> Result<()> {
        blob::decode_into(&self.crypto, id, buf, raw_length, compressed, out)
    }

    /// Reads, authenticates and decompresses a blob without extra copies
    /// (the restore path).
    pub fn read_blob_data(&self, index: &Index, id: &Id) -> Result<blob::BlobData> {
        self.first_good_copy(index, id, |bytes, loc| {
            blob::decode_owned(&self.crypto, id, Vec::from(bytes), loc.raw_length, loc.compressed)
        })
    }

    /// Reads, authenticates and decompresses a blob.
    pub fn read_blob(&self, index: &Index, id: &Id) -> Result<Vec<u8>> {
        self.first_good_copy(index, id, |bytes, loc| {
            blob::decode(&self.crypto, id, &bytes, loc.raw_length, loc.compressed)
        })
    }

    /// Tries every stored copy of a blob until one reads and decodes; the
    /// first copy's error is returned when none does.
    fn first_good_copy<T>(
        &self,
        index: &Index,
        id: &Id,
        decode: impl Fn(Bytes, index::Location) -> Result<T>,
    ) -> Result<T> {
        let mut first_error = None;
        for loc in index.locations(id) {
            match self.read_blob_at(id, *loc).and_then(|(bytes, loc)| decode(bytes, loc)) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or_else(|| Error::MissingBlob(id.to_hex())))
    }

    pub(crate) fn decode_blob(&self, id: &Id, stored: &[u8], raw_length: u32, compressed: bool) -> Result<Vec<u8>> {
        blob::decode(&self.crypto, id, stored, raw_length, compressed)
    }

    pub fn read_pack(&self, id: &Id) -> Result<Bytes> {
        Ok(self.block_on(self.backend.read(&Self::pack_key(id)))?)
    }

    pub fn load_tree(&self, index: &Index, id: &Id) -> Result<Tree> {
        match index.get(id) {
            Some(l) if l.kind != BlobKind::Tree => {
                return Err(Error::corrupt("tree", id, "blob is not a tree"));
            }
            _ => {}
        }
        let mut tree = Tree::from_bytes(id, &self.read_blob(index, id)?)?;
        for node in &mut tree.nodes {
            if node.content_lists.is_empty() {
                continue;
            }
            if !node.content.is_empty() {
                return Err(Error::corrupt("tree", id, format!("{} has both block ids and block lists", node.name)));
            }
            for list in &node.content_lists {
                if let Some(l) = index.get(list)
                    && l.kind != BlobKind::List
                {
                    return Err(Error::corrupt("block list", list, "blob is not a block list"));
                }
                let bytes = self.read_blob(index, list)?;
                if bytes.len() % 32 != 0 {
                    return Err(Error::corrupt("block list", list, "its length is not a whole number of ids"));
                }
                node.content.extend(bytes.chunks_exact(32).map(|c| {
                    let mut id = [0u8; 32];
                    id.copy_from_slice(c);
                    Id(id)
                }));
            }
        }
        Ok(tree)
    }

    // ---- snapshots -----------------------------------------------------

    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id> {
        let bytes = serde_json::to_vec(snap).map_err(|e| Error::Other(e.to_string()))?;
        self.save_object("snapshots", &bytes)
    }

    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot> {
        let plain = self.load_object("snapshot", "snapshots", id)?;
        serde_json::from_slice(&plain).map_err(|e| Error::corrupt("snapshot", id, e))
    }

    /// Every readable snapshot, oldest first. A snapshot object that cannot
    /// be read is skipped with a warning, so one damaged object does not
    /// hide the others; deleting commands use
    /// [`Repository::snapshots_strict`].
    pub fn snapshots(&self) -> Result<Vec<(Id, Snapshot)>> {
        let (out, skipped) = self.snapshots_report()?;
        for u in skipped {
            self.warn(format!("skipped unreadable snapshot {}: {}; `cirkel repo forget` removes it", u.key, u.error));
        }
        Ok(out)
    }

    /// Like [`Repository::snapshots`], but refuses when any snapshot object
    /// cannot be read: its data would look unused to a prune.
    pub fn snapshots_strict(&self) -> Result<Vec<(Id, Snapshot)>> {
        let (out, skipped) = self.snapshots_report()?;
        if let Some(u) = skipped.first() {
            let id = u.key.trim_start_matches("snapshots/");
            return Err(Error::Failed {
                message: format!("snapshot {id} cannot be read: {}", u.error),
                hint: Some(format!(
                    "restore the object from a second repository, or forget it with `cirkel repo forget {id}`"
                )),
            });
        }
        Ok(out)
    }

    /// Every readable snapshot, oldest first, and the snapshot objects that
    /// could not be read.
    pub fn snapshots_report(&self) -> Result<SnapshotsRead> {
        let ids = self.list_ids("snapshots")?;
        let mut out = Vec::with_capacity(ids.len());
        let mut skipped = Vec::new();
        for (id, _) in ids {
            match self.load_snapshot(&id) {
                Ok(s) => out.push((id, s)),
                Err(Error::Backend(e)) if e.is_not_found() => continue,
                Err(e @ Error::Corrupt { .. }) => {
                    skipped.push(Unreadable { key: format!("snapshots/{id}"), error: e.to_string() })
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok((out, skipped))
    }

    /// Finds a snapshot by id, unique id prefix, or `latest` (optionally of a kind).
    pub fn find_snapshot(&self, spec: &str, kind: Option<&str>) -> Result<(Id, Snapshot)> {
        check_spec(spec)?;
        let all = self.snapshots()?;
        let mut matching: Vec<_> = all.into_iter().filter(|(_, s)| kind.is_none_or(|k| s.kind == k)).collect();
        if spec == "latest" {
            return matching.pop().ok_or_else(|| {
                Error::SnapshotLookup(format!(
                    "no {}snapshot in the repository",
                    kind.map(|k| format!("{k} ")).unwrap_or_default()
                ))
            });
        }
        one_match(spec, matching.into_iter().filter(|(id, _)| id.to_hex().starts_with(&spec.to_ascii_lowercase())))
    }

    /// Finds a snapshot object by id or unique id prefix without reading
    /// it, so that an unreadable snapshot can still be named (to forget it).
    pub fn find_snapshot_id(&self, spec: &str) -> Result<Id> {
        check_spec(spec)?;
        let spec_lc = spec.to_ascii_lowercase();
        let ids = self.list_ids("snapshots")?.into_iter().map(|(id, _)| id);
        one_match(spec, ids.filter(|id| id.to_hex().starts_with(&spec_lc)))
    }

    pub fn delete_snapshot(&self, id: &Id) -> Result<()> {
        Ok(self.block_on(self.backend.delete(&format!("snapshots/{id}")))?)
    }
}

/// A key anyone could guess protects nothing.
fn refuse_empty(password: &[u8]) -> Result<()> {
    if password.is_empty() {
        return Err(Error::Failed {
            message: "an empty passphrase is refused".into(),
            hint: Some("put a passphrase in the password file (one line)".into()),
        });
    }
    Ok(())
}

/// Refuses snapshot specs that would select by accident: an empty prefix
/// matches every snapshot.
fn check_spec(spec: &str) -> Result<()> {
    if spec.trim().is_empty() {
        return Err(Error::SnapshotLookup("an empty snapshot id names no snapshot".into()));
    }
    Ok(())
}

/// The only item a prefix selected, or why there is not exactly one.
fn one_match<T>(spec: &str, found: impl Iterator<Item = T>) -> Result<T> {
    let found: Vec<T> = found.collect();
    let n = found.len();
    let mut found = found.into_iter();
    match (found.next(), n) {
        (Some(one), 1) => Ok(one),
        (None, _) => Err(Error::SnapshotLookup(format!("no snapshot matches `{spec}`"))),
        _ => Err(Error::SnapshotLookup(format!("`{spec}` matches {n} snapshots; give more digits"))),
    }
}

/// Writes a file only its owner can read, atomically.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), Id::random().short()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
