//! cirkel's configuration.
//!
//! One TOML file. It is parsed with spans, then read table by table into a
//! typed [`Config`]; every problem (unknown key, wrong type, bad duration,
//! missing required key) is collected with its file, line and column and the
//! expected form, so `cirkel config check` reports all of them at once.
//! Secrets never sit in the file: they come from `*_file` paths or the
//! environment, and [`Secret`] never prints its value.

pub mod alarms;
pub mod buckets;
pub mod checks;
pub mod coordination;
pub mod cron;
pub mod drills;
pub mod exclude;
pub mod notify;
mod reader;
mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use alarms::{AlarmConfig, ScrapeConfig};
pub use buckets::BucketConfig;
pub use checks::{CheckConfig, CheckKindConfig, ServerConfig};
pub use coordination::CoordinationConfig;
pub use drills::{DrillConfig, DrillKind, NetFault, Scenario};
pub use notify::NotifyConfig;
pub use reader::duration_to_string;
pub use secret::Secret;

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending key (`repository.s3.endpoint`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        } else {
            write!(f, "{}:{}:{}: `{}`: {}", self.file, self.line, self.column, self.key, self.message)
        }
    }
}

/// All problems found in a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// S3 connection settings of a repository.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub allow_http: Option<bool>,
    #[serde(serialize_with = "reader::ser_opt_duration")]
    pub retry_timeout: Option<Duration>,
}

/// Where a repository is and how to open it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct RepositoryConfig {
    /// A local path or `s3://bucket/prefix`.
    pub url: String,
    /// The passphrase, read from `password_file`.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// zstd level used when the repository is created.
    pub compression_level: Option<i32>,
    pub s3: S3Config,
    /// `cirkel serve` copies every new snapshot and WAL segment of the main
    /// repository here as they land (`repo copy --to NAME --follow`), and
    /// runs `pg expire` on it after copies.
    pub continuous: bool,
    /// This repository's own PostgreSQL retention (`[repositories.NAME.pg_expire]`):
    /// what `pg expire` keeps here when the continuous copy runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_expire: Option<PgExpireConfig>,
    /// Cron expression for `cirkel drill region --from NAME` by `cirkel serve`
    /// (the plan: quarterly, "0 4 1 */3 *").
    pub drill_schedule: Option<String>,
    /// Shell command run after `cirkel recover --from NAME` succeeded, with
    /// CIRKEL_EVENT=recovered, CIRKEL_RECOVER_DIR and CIRKEL_RECOVER_REPORT
    /// set: for DNS, secrets or starting applications.
    pub on_recovered: Option<String>,
}

/// How long `pg expire` keeps PostgreSQL backups and WAL in a repository;
/// unset fields take `pg expire`'s defaults.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PgExpireConfig {
    /// Untagged (daily) backups.
    #[serde(serialize_with = "reader::ser_opt_duration")]
    pub daily: Option<Duration>,
    /// Backups tagged `weekly`.
    #[serde(serialize_with = "reader::ser_opt_duration")]
    pub weekly: Option<Duration>,
    /// Backups tagged `pre-deploy`.
    #[serde(serialize_with = "reader::ser_opt_duration")]
    pub pre_deploy: Option<Duration>,
    /// WAL beyond what kept backups need.
    #[serde(serialize_with = "reader::ser_opt_duration")]
    pub wal: Option<Duration>,
}

/// A retention policy, as in `[retention]` or a backup set.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct RetentionConfig {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    #[serde(serialize_with = "reader::ser_opt_duration")]
    pub keep_within: Option<Duration>,
    pub keep_tags: Vec<String>,
}

/// A named set of paths backed up together (`[files.NAME]`).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FileSetConfig {
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub exclude_file: Option<PathBuf>,
    pub exclude_if_present: Vec<String>,
    pub tags: Vec<String>,
    /// Cron expression (five fields) for `cirkel serve`.
    pub schedule: Option<String>,
    /// Named repositories each new snapshot is copied to.
    pub copy_to: Vec<String>,
    pub retention: Option<RetentionConfig>,
}

/// A PostgreSQL cluster (`[postgres.NAME]`). Passwords come from libpq's
/// own sources (`~/.pgpass`, `PGPASSWORD`) or peer authentication.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PostgresConfig {
    pub pgdata: Option<PathBuf>,
    /// Host name, IP address, or socket directory.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub database: Option<String>,
    /// Directory with pg_receivewal, pg_dump, pg_ctl (default: PostgreSQL 15's).
    pub bindir: Option<PathBuf>,
    /// Cron expression for the daily base backup by `cirkel serve` (the plan: "0 2 * * *").
    pub schedule: Option<String>,
    /// Cron expression for the weekly full backup, tagged `weekly` (the plan: "0 3 * * 0").
    pub weekly_schedule: Option<String>,
    /// Named repositories each weekly backup (and the WAL) is copied to.
    pub copy_to: Vec<String>,
    /// The members of a replicated cluster (`[postgres.NAME.members.M]`), for
    /// `cirkel status` and `cirkel pg failover --explain`.
    pub members: BTreeMap<String, PgMemberConfig>,
    pub health: HealthConfig,
    /// A standby further behind the primary than this is never promoted.
    pub max_lag_bytes: u64,
    /// `cirkel serve` fails the cluster over by itself (default true).
    pub auto_failover: bool,
    /// Address of the read-write endpoint `cirkel serve` opens, e.g. "127.0.0.1:6432".
    pub proxy_listen: Option<String>,
    /// Address of the read-only endpoint: a streaming standby within
    /// `max_lag_bytes`, else the primary.
    pub proxy_listen_ro: Option<String>,
    /// Sessions each endpoint carries at once; connections beyond are
    /// closed at once and logged (default 1,000).
    pub proxy_max_connections: usize,
    /// Shell command run after every role change (failover, rejoin), with
    /// CIRKEL_EVENT, CIRKEL_CLUSTER, CIRKEL_MEMBER, CIRKEL_PRIMARY,
    /// CIRKEL_PRIMARY_HOST and CIRKEL_PRIMARY_PORT set: for DNS, secrets or
    /// application restarts.
    pub on_role_change: Option<String>,
    /// Synchronous replication managed by `cirkel serve`: a commit is
    /// acknowledged only once a standby of the synchronous set has flushed
    /// it, and a failover promotes only a member of that set, so no
    /// acknowledged commit is lost (default false).
    pub synchronous: bool,
    /// `cirkel serve` streams this cluster's WAL into the repository as it
    /// is written (`cirkel pg stream-wal`), for an RPO of seconds.
    pub stream_wal: bool,
}

/// One member of a PostgreSQL cluster.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PgMemberConfig {
    pub host: String,
    pub port: u16,
    /// Availability zone label (the plan's eu-north-1a, …).
    pub zone: String,
    /// 0: never promote; a higher priority wins between equally advanced standbys.
    pub priority: u32,
    /// Data directory, for a member on this host: lets an old primary be
    /// rewound and restarted as a standby.
    pub pgdata: Option<PathBuf>,
    /// Address of this member's Patroni-compatible health endpoints
    /// (`/primary`, `/replica`, …) for HAProxy, e.g. "127.0.0.1:8009".
    pub api_listen: Option<String>,
    /// The agent (`cirkel serve --node NAME`) on this member's host, which
    /// starts, stops, fences and rewinds it; with `[coordination]` only.
    pub node: Option<String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            pgdata: None,
            host: None,
            port: None,
            user: None,
            database: None,
            bindir: None,
            schedule: None,
            weekly_schedule: None,
            copy_to: Vec::new(),
            members: BTreeMap::new(),
            health: HealthConfig::default(),
            max_lag_bytes: 1 << 20,
            auto_failover: true,
            proxy_listen: None,
            proxy_listen_ro: None,
            proxy_max_connections: 1000,
            on_role_change: None,
            synchronous: false,
            stream_wal: false,
        }
    }
}

impl PostgresConfig {
    /// A libpq connection string for the set fields.
    pub fn conninfo(&self) -> String {
        let mut parts = Vec::new();
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        if let Some(h) = &self.host {
            parts.push(format!("host={}", q(h)));
        }
        if let Some(p) = self.port {
            parts.push(format!("port={p}"));
        }
        if let Some(u) = &self.user {
            parts.push(format!("user={}", q(u)));
        }
        if let Some(d) = &self.database {
            parts.push(format!("dbname={}", q(d)));
        }
        parts.join(" ")
    }
}

/// A health check in the plan's form: probe every `interval`, give up on a
/// probe after `timeout`; a member turns healthy after `healthy_threshold`
/// good probes in a row and unhealthy after `unhealthy_threshold` bad ones.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HealthConfig {
    #[serde(serialize_with = "reader::ser_duration")]
    pub interval: Duration,
    #[serde(serialize_with = "reader::ser_duration")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// What the Redis watcher does when the best replica is further behind
/// than the loss limit while the master is unreachable.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnLag {
    /// Hold the Sentinels back: no failover that would lose more than the limit.
    #[default]
    Refuse,
    /// Let Sentinel fail over and record the loss as over the limit.
    Warn,
}

/// A Redis replication group watched by Redis Sentinel (`[redis.NAME]`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RedisGroupConfig {
    /// The master's name in the Sentinels (default: the group's name).
    pub master_name: String,
    /// Every data node, `host:port`: the master and its replicas, in any order.
    pub members: Vec<String>,
    /// The group's Sentinels, `host:port`.
    pub sentinels: Vec<String>,
    /// Sentinels that must agree the master is down (default: a majority).
    pub quorum: u32,
    #[serde(serialize_with = "reader::ser_duration")]
    pub down_after: Duration,
    #[serde(serialize_with = "reader::ser_duration")]
    pub failover_timeout: Duration,
    pub parallel_syncs: u32,
    /// The loss limit: replication bytes the promoted replica may lack.
    pub max_lag_bytes: u64,
    pub on_lag: OnLag,
    /// AUTH password of the data nodes.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// ACL user the password belongs to (default: Redis's `default` user).
    pub user: Option<String>,
    pub health: HealthConfig,
    /// Shell command that starts a stopped member again (`{host}`, `{port}`
    /// are substituted); drills use it to bring a killed master back.
    pub restart_command: Option<String>,
    pub tags: Vec<String>,
    /// Cron expression (five fields) for backups by `cirkel serve`.
    pub schedule: Option<String>,
    pub copy_to: Vec<String>,
    pub retention: Option<RetentionConfig>,
}

/// Where cirkel keeps its own state (events, drill reports).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct StateConfig {
    pub dir: Option<PathBuf>,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Config {
    /// The repository commands use unless `--repo` says otherwise.
    pub repository: Option<RepositoryConfig>,
    /// Further repositories by name (a second region), for `repo copy --to NAME`.
    pub repositories: BTreeMap<String, RepositoryConfig>,
    pub retention: Option<RetentionConfig>,
    pub files: BTreeMap<String, FileSetConfig>,
    /// PostgreSQL clusters by name (`[postgres.NAME]`), for `--cluster NAME`.
    pub postgres: BTreeMap<String, PostgresConfig>,
    /// Redis groups by name (`[redis.NAME]`), for `--group NAME`.
    pub redis: BTreeMap<String, RedisGroupConfig>,
    /// S3 buckets backed up as a source (`[buckets.NAME]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<String, BucketConfig>,
    pub state: StateConfig,
    /// Alarms that override, remove or add to the built-ins (`[alarms.NAME]`); see [`Config::alarm_specs`].
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub alarms: BTreeMap<String, AlarmConfig>,
    /// Prometheus endpoints whose series alarms may watch (`[scrape.NAME]`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub scrape: BTreeMap<String, ScrapeConfig>,
    /// Health checks of any service by name (`[checks.NAME]`).
    pub checks: BTreeMap<String, CheckConfig>,
    pub server: ServerConfig,
    /// Receivers, routes, escalation and maintenance windows.
    #[serde(flatten)]
    pub notifications: NotifyConfig,
    /// Leadership through etcd (`[coordination]`); a local lock when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordination: Option<CoordinationConfig>,
    /// Drills `cirkel serve` runs on a schedule (`[drills.NAME]`).
    pub drills: BTreeMap<String, DrillConfig>,
    /// The file this came from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The longest configuration file read, and the longest secret or exclude
/// file: a path such as `/dev/zero` gets an error, not all the memory.
pub const CONFIG_MAX: u64 = 16 << 20;
pub const SECRET_FILE_MAX: u64 = 64 << 10;

/// Reads a text file of at most `max` bytes.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {max} bytes; is this the right file?"),
        ));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = read_bounded(path, CONFIG_MAX).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.display().to_string(),
                line: 0,
                column: 0,
                key: String::new(),
                message: format!("cannot read the file: {e}"),
            }])
        })?;
        let mut cfg = Self::parse(&text, &path.display().to_string(), path.parent())?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses configuration text. Relative `*_file` paths are taken relative
    /// to `base_dir`; secret files are read now so that a missing one is
    /// reported with the rest.
    pub fn parse(text: &str, file: &str, base_dir: Option<&Path>) -> Result<Config, ConfigErrors> {
        reader::parse(text, file, base_dir)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// A named repository: `default`/empty gives `[repository]`.
    pub fn repository_named(&self, name: &str) -> Option<&RepositoryConfig> {
        self.repositories.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_connection_cap_is_read_and_bounded() {
        let cfg = |extra: &str| {
            Config::parse(
                &format!("[postgres.main]\n{extra}\n[postgres.main.members.a]\nhost = \"h\"\n"),
                "c.toml",
                None,
            )
        };
        assert_eq!(cfg("").unwrap().postgres["main"].proxy_max_connections, 1000);
        assert_eq!(cfg("proxy_max_connections = 50").unwrap().postgres["main"].proxy_max_connections, 50);
        let err = cfg("proxy_max_connections = 0").err().unwrap().to_string();
        assert!(err.contains("proxy_max_connections") && err.contains("c.toml:2"), "{err}");
    }
}
