//! Redis protection: RDB snapshots taken over the replication protocol
//! (`redis-cli --rdb`), checked (magic, structure end, CRC-64), stored in the
//! repository and restored into a directory or a running server; and
//! failover through Redis Sentinel, configured, watched, held to a loss
//! limit, measured and drilled by cirkel.

pub mod drill;
pub mod events;
pub mod group;
mod load;
pub mod rdb;
pub mod resp;
pub mod watch;

use std::path::{Path, PathBuf};
use std::process::Command;

use cirkel_repo::single_file::{StreamSnapshot, backup_reader, restore_to_writer};
use cirkel_repo::{Id, Repository, Snapshot};
use serde::{Deserialize, Serialize};

/// The snapshot kind of Redis backups.
pub const KIND: &str = "redis";

/// What a Redis backup records about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RedisMeta {
    pub host: String,
    pub port: u16,
    pub group: Option<String>,
    pub rdb_version: u32,
    pub bytes: u64,
    pub crc64: String,
}

/// A Redis server to back up.
#[derive(Clone, Debug)]
pub struct Source {
    pub host: String,
    pub port: u16,
    pub group: Option<String>,
    /// The ACL user for redis-cli's `--user` (default: Redis's `default`).
    pub user: Option<String>,
    /// Handed to redis-cli in `REDISCLI_AUTH`, never on its command line;
    /// without it redis-cli reads `REDISCLI_AUTH` from cirkel's environment.
    pub password: Option<String>,
    pub tags: Vec<String>,
}

fn redis_cli() -> PathBuf {
    std::env::var_os("REDIS_CLI").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-cli"))
}

/// Takes an RDB snapshot of `source`, checks it, and stores it.
pub fn backup(repo: &Repository, source: &Source) -> anyhow::Result<(Id, Snapshot)> {
    let scratch = tempfile::Builder::new().prefix("cirkel-rdb-").tempdir()?;
    let file = scratch.path().join("dump.rdb");
    let mut cli = Command::new(redis_cli());
    cli.args(["-h", &source.host, "-p", &source.port.to_string()]);
    if let Some(u) = &source.user {
        cli.args(["--user", u]);
    }
    if let Some(p) = &source.password {
        cli.env("REDISCLI_AUTH", p);
    }
    let out = cli
        .arg("--rdb")
        .arg(&file)
        .output()
        .map_err(|e| anyhow::anyhow!("run redis-cli (package redis-tools): {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "redis-cli --rdb from {}:{} failed: {}",
            source.host,
            source.port,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let bytes = std::fs::read(&file)?;
    let info = rdb::check(&bytes)?;
    let meta = RedisMeta {
        host: source.host.clone(),
        port: source.port,
        group: source.group.clone(),
        rdb_version: info.version,
        bytes: bytes.len() as u64,
        crc64: format!("{:016x}", info.crc64),
    };
    let what = StreamSnapshot {
        kind: KIND.into(),
        file_name: "dump.rdb".into(),
        // Retention groups snapshots by path: a group's backups stay one
        // series whichever member they came from.
        paths: vec![match &source.group {
            Some(g) => format!("redis:{g}"),
            None => format!("{}:{}", source.host, source.port),
        }],
        tags: source.tags.clone(),
        meta: serde_json::to_value(&meta)?,
    };
    Ok(backup_reader(repo, &bytes[..], &what, &mut || Ok(()))?)
}

/// Writes a backup's RDB as `dump.rdb` in `dir`, after checking it again.
/// An existing `dump.rdb` is replaced only with `force`.
pub fn restore_to_dir(repo: &Repository, snapshot: &Snapshot, dir: &Path, force: bool) -> anyhow::Result<u64> {
    if snapshot.kind != KIND {
        anyhow::bail!("snapshot is a `{}` snapshot, not a Redis backup", snapshot.kind);
    }
    std::fs::create_dir_all(dir)?;
    let target = dir.join("dump.rdb");
    if target.exists() && !force {
        return Err(anyhow::Error::new(TargetHasData(target.display().to_string())));
    }
    let mut bytes = Vec::new();
    restore_to_writer(repo, snapshot, &mut bytes)?;
    rdb::check(&bytes)?;
    let tmp = dir.join(".dump.rdb.cirkel-tmp");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &target)?;
    Ok(bytes.len() as u64)
}

/// A restore target that already holds data.
#[derive(Debug, thiserror::Error)]
#[error("{0} already exists; refusing to overwrite it")]
pub struct TargetHasData(pub String);

/// Redis backups in the repository, oldest first.
pub fn list(repo: &Repository) -> anyhow::Result<Vec<(Id, Snapshot, RedisMeta)>> {
    Ok(repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| s.kind == KIND)
        .filter_map(|(id, s)| {
            let m: RedisMeta = serde_json::from_value(s.meta.clone()).ok()?;
            Some((id, s, m))
        })
        .collect())
}

/// Restores a backup into a running, empty Redis at `host:port`: a private
/// redis-server is started on the RDB, the target replicates from it, and
/// is then detached. The target must be able to reach this host. A target
/// that holds keys is refused unless `force` (its keys are then replaced).
/// The target's password, if it has one, comes from `REDISCLI_AUTH`.
pub fn restore_to_server(
    repo: &Repository,
    snapshot: &Snapshot,
    host: &str,
    port: u16,
    force: bool,
) -> anyhow::Result<u64> {
    load::restore_to_server(repo, snapshot, host, port, force)
}
