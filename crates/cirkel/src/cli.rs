//! The command line, as clap types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Disaster recovery for self-hosted PostgreSQL, Redis and files: encrypted,
/// deduplicated backups on local disk or S3, restores, and copies to a second region.
#[derive(Debug, Parser)]
#[command(name = "cirkel", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command shares.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Repository: a path, `s3://bucket/prefix`, or the name of a [repositories.NAME] table.
    #[arg(long, global = true, env = "CIRKEL_REPO", value_name = "REPO")]
    pub repo: Option<String>,
    /// File holding the repository passphrase (else CIRKEL_PASSWORD, else the config's password_file).
    #[arg(long, global = true, env = "CIRKEL_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "CIRKEL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as plain text or as one JSON object each (for journald and log shippers).
    #[arg(long, global = true, env = "CIRKEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Only errors; no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// As root, write a local repository another user owns, and give what was written to that owner
    /// when the command ends (without it, commands that write refuse to run as anyone but the owner).
    #[arg(long, global = true)]
    pub fix_owner: bool,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check or show the configuration file.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Create, check, prune and copy repositories.
    #[command(subcommand)]
    Repo(RepoCmd),
    /// Back up a source into the repository.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Restore from a snapshot.
    #[command(subcommand)]
    Restore(RestoreCmd),
    /// List the snapshots in the repository.
    Snapshots(SnapshotsArgs),
    /// PostgreSQL: base backups, WAL streaming, point-in-time restore.
    #[command(subcommand)]
    Pg(PgCmd),
    /// Redis: RDB backups and restores.
    #[command(subcommand)]
    Redis(RedisCmd),
    /// Health, roles, positions and lag of every configured Redis group and PostgreSQL cluster.
    Status(StatusArgs),
    /// Recorded events: failovers with their timelines and losses, held failovers, members down.
    Events(EventsArgs),
    /// Alarms and health checks: the state of each, why and since when, as `cirkel serve` judges
    /// them (exit 2 while one is in ALARM); `alarms history NAME` lists an alarm's transitions.
    Alarms(AlarmsArgs),
    /// Alerts `cirkel serve` raised and routed to the receivers: open ones (`--all`: every one),
    /// failing deliveries; `alerts ack ID` stops an alert's escalation.
    Alerts(AlertsArgs),
    /// Silences: matching alerts are recorded but not sent until the silence ends.
    #[command(subcommand)]
    Silence(SilenceCmd),
    /// Incidents: what a critical alert or a failover opened, its timeline and post-mortem.
    #[command(subcommand)]
    Incident(IncidentCmd),
    /// Drills: prove recovery works by doing it, and measure it.
    #[command(subcommand)]
    Drill(DrillCmd),
    /// The daemon: watch every configured PostgreSQL cluster and Redis group (failing them over),
    /// run the backup schedules (with their copies and retention) and WAL streaming, run the
    /// health checks, serve /metrics, evaluate the alarms and send the notifications, until
    /// stopped (SIGINT/SIGTERM; SIGHUP reloads the schedules). With [coordination], run one agent
    /// per host (`--node NAME`): the agents elect a leader through etcd, and each manages the members
    /// whose `node` names it.
    Serve(ServeArgs),
    /// A complete local estate to try cirkel on (PostgreSQL primary and two standbys, Redis with
    /// Sentinels, a web service, two repositories, `cirkel serve` and its dashboard): `lab up`,
    /// `lab status`, `lab down`.
    #[command(subcommand)]
    Lab(crate::cmd::lab::LabCmd),
    /// Rebuild every source a repository holds (the second region's, when the first is lost) onto
    /// this host: PostgreSQL to the newest point or --target-time, Redis, file sets; each step
    /// timed, the RTO and RPO kept in a report. `--dry-run` prints the plan.
    Recover(crate::cmd::recover::RecoverArgs),
    /// Archive one WAL file: archive_command = 'cirkel wal-push %p'.
    WalPush(WalPushArgs),
    /// Fetch one WAL file: restore_command = 'cirkel wal-fetch %f %p'.
    WalFetch(WalFetchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// This agent's name, as the members' `node` and the other agents know it (overrides
    /// [coordination] node; needs [coordination]).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
}

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The WAL file (PostgreSQL's %p, relative to the data directory).
    pub path: PathBuf,
    /// Accept a timeline that forks from the archived one (this cluster is the new primary and the old
    /// one is gone for good). Without it, WAL from a diverged copy is refused.
    #[arg(long)]
    pub new_lineage: bool,
    /// Data directory of the cluster (default: the current directory, then PGDATA).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file name PostgreSQL asks for (%f).
    pub name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    /// Data directory of the cluster (default: the current directory, then PGDATA).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum PgCmd {
    /// Take a base backup (from the primary or a standby).
    Backup(PgBackupArgs),
    /// List base backups.
    Backups,
    /// Show each cluster's recoverable window (earliest → latest restore point), and the server's
    /// archiving health when it can be reached.
    Info(PgServerArgs),
    /// Check WAL continuity (every missing segment and broken timeline) and, when the server can be
    /// reached, that archiving works (pg_stat_archiver); non-zero exit on any problem.
    Check(PgServerArgs),
    /// Restore a base backup and set up recovery to a target.
    Restore(PgRestoreArgs),
    /// Stream WAL continuously through a replication slot (runs until stopped).
    StreamWal(StreamWalArgs),
    /// Export one table (pg_dump -Fc -t) into the repository.
    Dump(PgDumpArgs),
    /// Restore a table export into a database (pg_restore).
    DumpRestore(PgDumpRestoreArgs),
    /// Restore drill: restore a backup into a scratch directory, start it, check it, time it, remove it.
    Verify(PgVerifyArgs),
    /// Delete the backups and WAL the retention plan no longer keeps (daily 35 d, weekly 90 d, pre-deploy
    /// 7 d, WAL 7 d beyond what kept backups need), then prune their data; --dry-run only lists them.
    Expire(PgExpireArgs),
    /// Who would be promoted if the primary failed now, and why the other members would not.
    Failover(PgFailoverArgs),
    /// Planned switchover to a standby with a short write pause and no lost commit: the primary is
    /// stopped cleanly, the standby promoted once it has replayed everything, and the old primary
    /// rejoins as a standby. Asks the running `cirkel serve` (which moves the endpoint), or does it
    /// itself when none runs.
    Switchover(PgSwitchoverArgs),
    /// Maintenance mode: `cirkel serve` keeps watching the cluster but takes no automatic action.
    Pause(PgClusterArg),
    /// End maintenance mode.
    Resume(PgClusterArg),
}

#[derive(Debug, Args)]
pub struct PgSwitchoverArgs {
    /// The cluster: a [postgres.NAME] table with members (default: the only one with members).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The standby to promote (default: the one a failover would choose).
    #[arg(long, value_name = "MEMBER")]
    pub to: Option<String>,
    /// When: RFC 3339, or "YYYY-MM-DD HH:MM:SS" in this host's local time (said on stderr). Needs `cirkel serve`; the command returns at once.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// How long to wait for the watcher to finish it.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct PgClusterArg {
    /// The cluster: a [postgres.NAME] table with members (default: the only one with members).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct PgFailoverArgs {
    /// The cluster: a [postgres.NAME] table with members (default: the only one with members).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Explain the decision without acting (required: this command only explains).
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Args)]
pub struct PgDumpArgs {
    /// The table, as SCHEMA.TABLE.
    #[arg(long, value_name = "SCHEMA.TABLE")]
    pub table: String,
    /// libpq connection string (default: PGHOST, PGPORT, PGUSER, PGDATABASE).
    #[arg(long, value_name = "CONNINFO")]
    pub conninfo: Option<String>,
    /// Tag the export (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PgDumpRestoreArgs {
    /// Export snapshot id, prefix, or `latest`.
    pub snapshot: String,
    /// Target database connection string or name (default: PGDATABASE).
    #[arg(long, value_name = "CONNINFO")]
    pub conninfo: Option<String>,
    /// Drop the table first if it exists.
    #[arg(long)]
    pub clean: bool,
}

#[derive(Debug, Args)]
pub struct PgVerifyArgs {
    /// Backup to check (default: the newest).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// A query that must succeed on the restored database; its first value is reported.
    #[arg(long, value_name = "SQL")]
    pub query: Option<String>,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub record: DrillRecordArgs,
}

#[derive(Debug, Args)]
pub struct PgExpireArgs {
    /// Keep untagged (daily) backups this long.
    #[arg(long, value_name = "DURATION", default_value = "35d", value_parser = humantime::parse_duration)]
    pub daily: std::time::Duration,
    /// Keep backups tagged `weekly` this long.
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = humantime::parse_duration)]
    pub weekly: std::time::Duration,
    /// Keep backups tagged `pre-deploy` this long.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub pre_deploy: std::time::Duration,
    /// Keep WAL this long beyond what kept backups need.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub wal: std::time::Duration,
    /// Show what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PgConnArgs {
    /// A [postgres.NAME] cluster from the configuration.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// libpq connection string (default: PGHOST, PGPORT, PGUSER, PGDATABASE).
    #[arg(long, value_name = "CONNINFO")]
    pub conninfo: Option<String>,
    /// The cluster's data directory (default: the server's data_directory).
    #[arg(long, value_name = "DIR", env = "PGDATA")]
    pub pgdata: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PgServerArgs {
    /// A [postgres.NAME] cluster from the configuration whose archiver to read.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// libpq connection string of the server whose archiver to read (default: PGHOST/PGPORT when set;
    /// without any, only the repository is checked).
    #[arg(long, value_name = "CONNINFO")]
    pub conninfo: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackupType {
    /// Read every file.
    Full,
    /// Skip files unchanged since the previous backup (by size, times and inode).
    Incr,
}

#[derive(Debug, Args)]
pub struct PgBackupArgs {
    #[command(flatten)]
    pub conn: PgConnArgs,
    #[arg(long = "type", value_enum, default_value = "incr")]
    pub backup_type: BackupType,
    /// Label for the backup (and a tag: `--label pre-deploy`).
    #[arg(long)]
    pub label: Option<String>,
    /// Tag the backup (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Give up when the backup's last WAL segment is not archived within this long.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = humantime::parse_duration)]
    pub archive_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").args(["target_time", "target_lsn", "target_xid", "target_name", "latest", "immediate"])))]
pub struct PgRestoreArgs {
    /// New data directory (must be empty or absent).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Recover to this time (RFC 3339, e.g. 2026-11-26T08:00:00Z; without a zone it is this host's
    /// local time, and the command says so).
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Recover to this LSN (e.g. 0/3000060).
    #[arg(long, value_name = "LSN")]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, value_name = "XID")]
    pub target_xid: Option<String>,
    /// Recover to this named restore point (pg_create_restore_point).
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Replay all WAL there is (the default).
    #[arg(long)]
    pub latest: bool,
    /// Stop as soon as the backup is consistent.
    #[arg(long)]
    pub immediate: bool,
    /// Use this backup instead of choosing one.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// The cluster to restore, when the repository holds several (see `cirkel pg backups`).
    #[arg(long, value_name = "ID")]
    pub system_id: Option<String>,
    /// Only explain which backup and WAL range would be used.
    #[arg(long)]
    pub dry_run: bool,
    /// Put the tablespace that was at OLD (a directory, or the tablespace's oid) into the empty or absent
    /// directory NEW, linked from pg_tblspc as PostgreSQL expects (repeatable; like pg_basebackup -T).
    /// Tablespaces not mapped are restored as directories inside the new data directory.
    #[arg(long = "tablespace-map", value_name = "OLD=NEW", value_parser = parse_tablespace_map)]
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Let the restored cluster archive its WAL into this other repository (default: archive_mode = off,
    /// so a copy never writes into the repository it came from).
    #[arg(long, value_name = "REPO", conflicts_with_all = ["standby", "take_over"])]
    pub archive_to: Option<String>,
    /// The restore replaces the cluster it came from, whose primary is gone for good: keep archiving
    /// into this repository (wal-push still refuses WAL while the old primary writes).
    #[arg(long, conflicts_with = "standby")]
    pub take_over: bool,
    /// Build a standby: standby.signal instead of recovery.signal, the source's archive settings kept
    /// (a standby archives only with archive_mode = always). Replays to the latest WAL.
    #[arg(long)]
    pub standby: bool,
    /// With --standby: the primary to stream from (primary_conninfo); without it the standby follows the archive.
    #[arg(long, value_name = "CONNINFO", requires = "standby")]
    pub primary_conninfo: Option<String>,
}

/// A duration longer than zero: a window of zero keeps nothing.
fn positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("a duration of 0 keeps nothing; give e.g. 7d".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_tablespace_map(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() => Ok((old.to_string(), PathBuf::from(new))),
        _ => Err(format!("`{s}` is not OLD=NEW (e.g. /srv/ts1=/restore/ts1, or 16414=/restore/ts1)")),
    }
}

#[derive(Debug, Args)]
pub struct StreamWalArgs {
    #[command(flatten)]
    pub conn: PgConnArgs,
    /// Replication slot (created if missing).
    #[arg(long, default_value = "cirkel")]
    pub slot: String,
    /// Local spool directory for pg_receivewal.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<PathBuf>,
    /// How often the growing segment is uploaded.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Stop after this long (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Keep the replication slot when stopping (default: drop it, so that it holds no WAL back on the
    /// server; keep it when streaming resumes soon and must not miss a segment).
    #[arg(long)]
    pub keep_slot: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Validate the configuration and report every problem with file and line.
    Check,
    /// Print the effective configuration, secrets redacted.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum RepoCmd {
    /// Create a new repository (encrypted unless --no-encryption).
    Init(InitArgs),
    /// Check the repository's structure; with --read-data, every byte.
    Verify(VerifyArgs),
    /// Forget snapshots by a retention policy and delete the data no kept snapshot needs.
    Prune(PruneArgs),
    /// Copy snapshots to a second repository (only missing data travels).
    Copy(CopyArgs),
    /// Remove stale locks left by processes that no longer run.
    Unlock,
    /// Add a passphrase that also opens the repository.
    AddKey(AddKeyArgs),
    /// List or remove the repository's keys (passphrases).
    #[command(subcommand)]
    Key(KeyCmd),
    /// Forget snapshots by id (or unique id prefix); prune then removes their data.
    Forget(ForgetArgs),
    /// Rebuild the index from the packs, or rewrite snapshots that reference lost data.
    #[command(subcommand)]
    Repair(RepairCmd),
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// List the keys: id, when and where each was created, and which one opened the repository.
    List,
    /// Remove a key (never the last one; the one in use only with --force).
    Remove(KeyRemoveArgs),
}

#[derive(Debug, Args)]
pub struct KeyRemoveArgs {
    /// The key's id, or a unique prefix of it.
    pub id: String,
    /// Also remove the key the current passphrase opens.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshot ids or unique prefixes.
    #[arg(required = true)]
    pub snapshots: Vec<String>,
    /// Show what would be forgotten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Subcommand)]
pub enum RepairCmd {
    /// Rebuild the index from the headers of the packs, replacing every index object.
    Index(DryRunArgs),
    /// Rewrite snapshots that reference missing or damaged data without the affected files.
    Snapshots(RepairSnapshotsArgs),
    /// Authenticate the config with the master key (repositories created before configs carried a MAC).
    Config,
}

#[derive(Debug, Args)]
pub struct RepairSnapshotsArgs {
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also read and authenticate every blob, to find damaged data (not only missing data).
    #[arg(long)]
    pub read_data: bool,
}

#[derive(Debug, Args)]
pub struct DryRunArgs {
    /// Show what would change; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Store data unencrypted (anyone with access to the storage can read it).
    #[arg(long)]
    pub no_encryption: bool,
    /// Share the master key of this repository, so `repo copy` between the two moves data verbatim.
    #[arg(long, value_name = "REPO")]
    pub copy_keys_from: Option<String>,
    /// Passphrase file of the --copy-keys-from repository (default: the same passphrase).
    #[arg(long, value_name = "FILE", requires = "copy_keys_from")]
    pub from_password_file: Option<PathBuf>,
    /// zstd compression level (0 turns compression off).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..=22))]
    pub compression_level: Option<i32>,
    /// Cipher of an encrypted repository. `auto` takes AES-256-GCM where the CPU has AES instructions
    /// (several times faster there) and XChaCha20-Poly1305 elsewhere. Both use 192-bit random nonces.
    #[arg(long, value_enum, default_value_t = CipherArg::Auto)]
    pub cipher: CipherArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CipherArg {
    Auto,
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    #[value(name = "xchacha20-poly1305")]
    Xchacha20Poly1305,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Read, authenticate and hash-check every blob.
    #[arg(long)]
    pub read_data: bool,
}

#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N hours.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the last N days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the last N years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot younger than this ("7d", "36h").
    #[arg(long, value_name = "DURATION", value_parser = positive_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Keep every snapshot carrying this tag (repeatable).
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Apply the policy only to snapshots with this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Show what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Repack packs with more than this percentage of unused data.
    #[arg(long, value_name = "PCT", default_value_t = 20.0)]
    pub max_unused: f64,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Destination: a path, `s3://bucket/prefix`, or the name of a [repositories.NAME] table.
    #[arg(long, value_name = "REPO")]
    pub to: String,
    /// Passphrase file of the destination (default: the source's passphrase).
    #[arg(long, value_name = "FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Snapshots to copy (ids or prefixes); all when none are given.
    pub snapshots: Vec<String>,
    /// Only snapshots with this tag (e.g. `weekly`).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Do not copy the WAL archive (named streams).
    #[arg(long)]
    pub no_wal: bool,
    /// Keep copying: every --interval, whatever new snapshots and WAL the destination lacks
    /// (`cirkel serve` runs this for `continuous = true`); the lag is kept in the state directory.
    #[arg(long)]
    pub follow: bool,
    /// How often --follow looks for new objects.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// With --follow: one pass, then exit (1 when it failed).
    #[arg(long, requires = "follow")]
    pub once: bool,
    /// With --follow: how far before its last complete pass it still looks for objects the
    /// destination lacks; older ones missing there were removed by its own retention.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub look_back: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct AddKeyArgs {
    /// File holding the new passphrase.
    #[arg(long, value_name = "FILE")]
    pub new_password_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Back up files and directories.
    Files(BackupFilesArgs),
    /// Back up an S3 bucket ([buckets.NAME]): only objects whose ETag or size changed are read.
    Bucket(crate::cmd::bucket::BackupBucketArgs),
}

#[derive(Debug, Args)]
pub struct BackupFilesArgs {
    /// Paths to back up (or use --set).
    pub paths: Vec<PathBuf>,
    /// Back up the [files.NAME] set from the configuration.
    #[arg(long, value_name = "NAME")]
    pub set: Option<String>,
    /// Tag the snapshot (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
    /// Leave out matching files and directories: a name glob (`node_modules`, `*.tmp`) or an absolute path glob.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file, one per line.
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// Leave out directories that contain a file with this name (e.g. CACHEDIR.TAG).
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Compare with this snapshot instead of the latest one of the same paths.
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent: Option<String>,
    /// Read every file, even those unchanged since the parent snapshot.
    #[arg(long)]
    pub force: bool,
    /// Host name recorded in the snapshot.
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RestoreCmd {
    /// Restore files from a snapshot below a target directory.
    Files(RestoreFilesArgs),
    /// Write a bucket snapshot's objects, with their headers and metadata, into a bucket.
    Bucket(crate::cmd::bucket::RestoreBucketArgs),
}

#[derive(Debug, Args)]
pub struct RestoreFilesArgs {
    /// Snapshot id, unique prefix, or `latest`.
    pub snapshot: String,
    /// Target directory; nothing is written outside it.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Only snapshots with this tag.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Only snapshots of this kind (files, ...).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RedisCmd {
    /// Take an RDB snapshot over the replication protocol, check its CRC, and store it.
    Backup(RedisBackupArgs),
    /// List Redis backups.
    Backups,
    /// Restore a backup: dump.rdb into a directory, or into a running Redis (HOST:PORT).
    Restore(RedisRestoreArgs),
    /// Make the group's Sentinels monitor it with the configured quorum, down-after,
    /// failover-timeout and parallel-syncs. Changes nothing unless every Sentinel and
    /// member answers and exactly one master is found.
    Configure(RedisConfigureArgs),
    /// Planned switchover: pause writes, let the new master catch up, fail over through
    /// Sentinel, fence the old master. No acknowledged write is lost.
    Switchover(RedisSwitchoverArgs),
    /// Fail over now through Sentinel, also when the loss limit holds the failover back.
    Failover(RedisFailoverArgs),
    /// Watch a group in the foreground (what `cirkel serve` does for every group): follow the
    /// Sentinels, enforce the loss limit, record failovers, health-check members.
    Watch(GroupArg),
}

#[derive(Debug, Args, Clone)]
pub struct GroupArg {
    /// The group: a [redis.NAME] table of the configuration (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
}

#[derive(Debug, Args)]
pub struct RedisConfigureArgs {
    #[command(flatten)]
    pub group: GroupArg,
    /// Show the Sentinel commands without sending them.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RedisSwitchoverArgs {
    #[command(flatten)]
    pub group: GroupArg,
    /// The replica to promote, HOST:PORT (default: the most advanced one).
    #[arg(long, value_name = "HOST:PORT")]
    pub to: Option<String>,
    /// Longest write pause to accept while the new master catches up.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub max_pause: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct RedisFailoverArgs {
    #[command(flatten)]
    pub group: GroupArg,
    /// Required: acknowledged writes the replicas never received are lost.
    #[arg(long)]
    pub allow_data_loss: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this Redis group.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Only this PostgreSQL cluster.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct AlarmsArgs {
    #[command(subcommand)]
    pub cmd: Option<AlarmsCmd>,
}

#[derive(Debug, Subcommand)]
pub enum AlarmsCmd {
    /// Every recorded state change of one alarm, oldest first.
    History {
        /// The alarm's name (`rpo-exposure`, or a `[alarms.NAME]`).
        name: String,
        /// Only the last N changes.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
    },
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    /// Also resolved and acknowledged alerts.
    #[arg(long)]
    pub all: bool,
    #[command(subcommand)]
    pub cmd: Option<AlertsCmd>,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCmd {
    /// Acknowledge an alert: its escalation stops (PagerDuty hears of it too).
    Ack {
        id: i64,
        /// Who acknowledges (default: the login name).
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SilenceCmd {
    /// Silence alerts whose labels match every --match for a while.
    Add {
        /// LABEL=VALUE or LABEL!=VALUE (labels: source, cluster, alertname, and the alarm's own).
        #[arg(long = "match", value_name = "MATCHER", required = true)]
        matchers: Vec<String>,
        /// How long, e.g. 2h.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Why, for the record.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// The silences in force.
    List,
    /// End a silence now.
    Expire { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum IncidentCmd {
    /// Open incidents (`--all`: every one).
    List {
        #[arg(long)]
        all: bool,
    },
    /// One incident with its timeline.
    Show { id: i64 },
    /// Add a note to the timeline.
    Note {
        id: i64,
        text: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Move to a phase: detection, assessment, containment, recovery, resolved, postmortem.
    Phase {
        id: i64,
        phase: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Mark resolved.
    Resolve {
        id: i64,
        #[arg(long)]
        by: Option<String>,
    },
    /// The post-mortem in Markdown: summary, timeline, impact with the measured RTO and data lost.
    Postmortem { id: i64 },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this source (`redis/NAME`).
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// Only events of this kind (`failover`, `failover-held`, `member-down`, …).
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only events of this severity or a more urgent one (`critical`, `high`, `medium`, `low`).
    #[arg(long, value_name = "LEVEL")]
    pub severity: Option<cirkel_state::Severity>,
    /// Only the last N events.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
}

#[derive(Debug, Subcommand)]
pub enum DrillCmd {
    /// Rebuild everything the second region's repository holds into a scratch directory on this
    /// host, check it (PostgreSQL started: rows, amcheck; Redis keys; files), remove it, keep the
    /// report with the measured RTO and RPO.
    Region(crate::cmd::recover::RegionDrillArgs),
    /// Kill the PostgreSQL primary under a canary writer on the endpoint; measure RTO and lost
    /// writes; start it again and wait until `cirkel serve` has rejoined it as a standby.
    Failover(PgDrillArgs),
    /// Every drill run, newest first, with its RTO against its target and writes lost; per
    /// drill the worst recovery and the trend (`--json` for scripts).
    History(DrillHistoryArgs),
    /// Run a configured [drills.NAME] now, as `cirkel serve` would on its schedule.
    Run(DrillRunArgs),
    /// Ask `cirkel serve` for a planned PostgreSQL switchover under a canary writer on the endpoint;
    /// measure the write pause clients see and lost writes; wait until the old primary streams again.
    Switchover(PgSwitchoverDrillArgs),
    /// Kill the Redis master under a canary writer; measure RTO and lost writes; rejoin it.
    RedisFailover(RedisDrillArgs),
    /// One of the plan's five failures, rehearsed and measured against its RTO: app-instance,
    /// redis-master, pg-primary, zone, region.
    Scenario(crate::cmd::scenario::ScenarioArgs),
    /// All five scenarios in turn, each on a quiet estate, and one report: scenario, plan RTO,
    /// measured RTO, data lost, pass or fail.
    Suite(crate::cmd::scenario::SuiteArgs),
    /// Degrade a PostgreSQL member's network for a while (packets lost, every byte delayed, or a
    /// standby cut off) under a canary writer on the endpoint: the cluster must ride it out, with
    /// no failover and no write lost, and be healthy again once the network is. Needs root and
    /// nftables, and members reached over TCP.
    Network(NetworkDrillArgs),
}

#[derive(Debug, Args)]
pub struct NetworkDrillArgs {
    /// The cluster: a [postgres.NAME] table with members and proxy_listen (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The member whose network is degraded (default: the primary).
    #[arg(long, value_name = "MEMBER")]
    pub member: Option<String>,
    /// `loss=PCT%` (that share of the packets to and from the member dropped at random, each
    /// way), `latency=DURATION` (every byte to and from it held back that long, each way) or
    /// `partition` (a standby cut off: every packet to and from its address and port dropped).
    #[arg(long, value_name = "FAULT", value_parser = |s: &str| s.parse::<cirkel_config::NetFault>())]
    pub fault: cirkel_config::NetFault,
    /// How long the fault stays.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub hold: std::time::Duration,
    /// Longest wait for the cluster to be healthy again once the network is back.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub record: DrillRecordArgs,
}

#[derive(Debug, Args)]
pub struct PgDrillArgs {
    /// The cluster: a [postgres.NAME] table with members and proxy_listen (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Longest wait for the failover (and twice this for the rejoin).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// The fault: `kill` (SIGKILL of the postmaster; started again at the end), `stop` (SIGSTOP:
    /// a hung primary, alive but silent; continued at the end), `zone` (every member in the
    /// primary's zone, or --zone, frozen with all its processes; continued at the end) or
    /// `disk-full` (the primary's WAL volume filled, at most 4 GiB of it, until PostgreSQL stops;
    /// freed and started again at the end) or `partition` (the primary cut off from the network:
    /// every packet to and from its address and port dropped with nftables, as root, for a member
    /// reached over TCP; reconnected at the end and rewound by `cirkel serve`). Ignored by the
    /// switchover drill.
    #[arg(long, value_name = "FAULT", default_value = "kill", value_parser = ["kill", "stop", "zone", "disk-full", "partition"])]
    pub fault: String,
    /// With `--fault zone`: the zone to cut off (default: the primary's).
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    #[command(flatten)]
    pub record: DrillRecordArgs,
}

/// How a drill's run is recorded in the drill history.
#[derive(Debug, Args, Clone, Default)]
pub struct DrillRecordArgs {
    /// Record the run under this name (a [drills.NAME]; default: the drill's kind).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// A recovery slower than this fails the drill (default: the plan's target for its kind:
    /// 60 s for PostgreSQL, 15 s for Redis, 15 min for a restore).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub rto_target: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct DrillHistoryArgs {
    /// Only this drill's runs.
    pub name: Option<String>,
    /// How many runs to show (and to judge the worst and the trend on).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub last: usize,
}

#[derive(Debug, Args)]
pub struct DrillRunArgs {
    /// The [drills.NAME] to run.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct PgSwitchoverDrillArgs {
    #[command(flatten)]
    pub drill: PgDrillArgs,
    /// The standby to promote (default: the one a failover would choose).
    #[arg(long, value_name = "MEMBER")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct RedisDrillArgs {
    #[command(flatten)]
    pub group: GroupArg,
    /// Time between canary writes.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// Longest wait for the failover, and for the old master's rejoin.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub record: DrillRecordArgs,
}

#[derive(Debug, Args)]
pub struct RedisBackupArgs {
    /// Redis host (a master or a replica; default 127.0.0.1, or with --group a healthy replica).
    #[arg(long)]
    pub host: Option<String>,
    /// Redis port (default 6379).
    #[arg(long)]
    pub port: Option<u16>,
    /// The group: with a [redis.NAME] table, back up from its healthy replica (else its master)
    /// with its tags; the name is recorded with the backup either way.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Tag the backup (repeatable).
    #[arg(long, value_name = "TAG")]
    pub tag: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RedisRestoreArgs {
    /// Backup id, prefix, or `latest`.
    pub snapshot: String,
    /// Directory to write dump.rdb into, or HOST:PORT of a running, empty Redis to load it into.
    #[arg(long, value_name = "DIR|HOST:PORT")]
    pub to: PathBuf,
    /// Replace an existing dump.rdb, or the keys of a running target.
    #[arg(long)]
    pub force: bool,
}
