//! `cirkel recover --from REPO --to DIR`: the estate a repository holds,
//! rebuilt in one command from it alone. The plan takes the newest backup of
//! every source in the repository: each PostgreSQL system (its base backup
//! and WAL, to the newest point or `--target-time`), each Redis group's
//! newest RDB, each file set's newest snapshot, each bucket's newest
//! snapshot (`buckets.rs`: as files below the directory, or into a live
//! bucket with `--bucket-to`). Each step is the command a
//! person would type, run as a child process and timed; the report, with
//! the data's age (the RPO it implies) and the measured time of each step
//! and of the whole (the RTO), is kept in the state directory. Then, unless
//! `--no-start`, `start.rs` brings the estate up: PostgreSQL promoted with a
//! standby per configured member, Redis serving its RDB. `standby.rs`
//! spreads the estate over several hosts, recover running on each: some
//! sources only, standbys and replicas copied from primaries elsewhere.

mod buckets;
mod standby;
mod start;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use chrono::{DateTime, Utc};
use cirkel_repo::{Id, Repository, Snapshot};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use cirkel_config::Config;

use crate::cli::Global;
use crate::context::{load_config, resolve, state_dir};
use crate::output::{human_bytes, print_json, user_error};

/// Restore throughput assumed by `--dry-run` when none was measured.
const ASSUMED_BYTES_PER_S: f64 = 150e6;

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The repository to rebuild from: a [repositories.NAME], a path or s3://BUCKET/PREFIX.
    #[arg(long, value_name = "REPO")]
    pub from: String,
    /// Where to rebuild on this host: PostgreSQL data directories, Redis RDBs and file sets go
    /// below it, one directory per source; buckets' objects as files in buckets/NAME/.
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// PostgreSQL to this time instead of the newest point (RFC 3339, or local time).
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Print the plan: the data each step would use, its age and a predicted duration.
    #[arg(long)]
    pub dry_run: bool,
    /// Rebuild into a directory that already holds something (each source's own
    /// directory must still be new: nothing is ever overwritten or deleted); write a bucket
    /// into a --bucket-to target that holds objects (those of the same keys are replaced).
    #[arg(long)]
    pub force: bool,
    /// Only restore the files: start neither PostgreSQL, its standbys nor Redis.
    #[arg(long)]
    pub no_start: bool,
    /// Port of the (first) recovered PostgreSQL primary (default: a free one; standbys get free ones).
    #[arg(long, value_name = "PORT")]
    pub pg_port: Option<u16>,
    /// Port of the (first) recovered Redis server (default: a free one).
    #[arg(long, value_name = "PORT")]
    pub redis_port: Option<u16>,
    /// Address the started services listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    pub listen: String,
    /// How long PostgreSQL may take to replay the WAL and promote (and a standby to stream, Redis to load).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Recover only this part of the estate (repeatable): postgres, redis, files, bucket, or one
    /// source: postgres/SYSTEM (its id or its [postgres.NAME]), redis/GROUP, files/PATHS,
    /// bucket/NAME.
    #[arg(long, value_name = "SOURCE")]
    pub only: Vec<String>,
    /// Do not restore this PostgreSQL system here: clone a standby of its primary, recovered on
    /// another host, at HOST:PORT, start it and wait until it streams. SYSTEM=HOST:PORT when the
    /// repository holds several systems (repeatable).
    #[arg(long, value_name = "[SYSTEM=]HOST:PORT", value_parser = standby::parse_standby_of)]
    pub standby_of: Vec<standby::StandbyOf>,
    /// Do not restore this Redis group here: start a replica of its server, recovered on another
    /// host, at HOST:PORT and wait until it is in sync. GROUP=HOST:PORT when the repository holds
    /// several (repeatable).
    #[arg(long, value_name = "[GROUP=]HOST:PORT", value_parser = standby::parse_standby_of)]
    pub replica_of: Vec<standby::StandbyOf>,
    /// With --standby-of: the name the standby streams under (its application_name on the
    /// primary; default: this host's name).
    #[arg(long, value_name = "NAME", requires = "standby_of")]
    pub member: Option<String>,
    /// Let hosts in this network (CIDR, or one address) clone standbys from the recovered primary:
    /// replication with a password, opened once it is promoted (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = standby::parse_cidr)]
    pub allow: Vec<String>,
    /// Start each PostgreSQL primary without cloning its configured members as standbys on this
    /// host (they are recovered on their own hosts with --standby-of).
    #[arg(long)]
    pub no_standbys: bool,
    /// Write bucket NAME into this S3 bucket (reached with its [buckets.NAME.s3] settings), or
    /// into the configured [buckets.OTHER] (NAME=OTHER: its url and settings), instead of files
    /// below --to; refused when it holds objects, unless --force (repeatable).
    #[arg(long = "bucket-to", value_name = "NAME=s3://BUCKET[/PREFIX]|OTHER")]
    pub bucket_to: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Step {
    /// `postgres/SYSTEM`, `redis/GROUP`, `files/PATHS`, `bucket/NAME`.
    source: String,
    snapshot: Id,
    /// The newest data this step brings back.
    data_time: DateTime<Utc>,
    /// Seconds of history lost if this were the real thing: now minus data_time.
    rpo_s: f64,
    bytes: u64,
    predicted_s: f64,
    /// Directory below --to (none for a bucket written into a bucket).
    #[serde(skip_serializing_if = "String::is_empty")]
    dir: String,
    /// Buckets: the s3:// URL or the configured bucket written into (`--bucket-to`) instead of
    /// a directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// PostgreSQL: the configured members re-created as standbys of the recovered primary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    standbys: Vec<String>,
    /// PostgreSQL: the database user that clones the standbys.
    #[serde(skip)]
    pg_user: String,
    /// PostgreSQL: the `[postgres.NAME]` this system is.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    /// PostgreSQL: the member the recovered primary stands in for.
    #[serde(skip)]
    primary_member: Option<String>,
    /// Not restored here but copied from this primary on another host: a
    /// PostgreSQL standby (`--standby-of`) or a Redis replica (`--replica-of`).
    #[serde(skip_serializing_if = "Option::is_none")]
    standby_of: Option<standby::StandbyOf>,
    #[serde(skip)]
    argv: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn newest<'a>(snaps: impl Iterator<Item = &'a (Id, Snapshot)>) -> Option<&'a (Id, Snapshot)> {
    snaps.filter(|(_, s)| !s.incomplete).max_by_key(|(_, s)| s.time)
}

/// The newest complete backup of every source the repository holds.
fn plan(repo: &Repository, cfg: &Config, args: &RecoverArgs, now: DateTime<Utc>) -> anyhow::Result<Vec<Step>> {
    let snaps = repo.snapshots()?;
    let streams = cirkel_repo::runtime::block_on(repo.backend().list("streams/"))??;
    let mut steps = Vec::new();
    let mut pg_members = Vec::new();
    let mut step = |source: String, (id, s): &(Id, Snapshot), data_time: DateTime<Utc>, argv: Vec<String>| {
        let dir = safe(&source.replace('/', "-"));
        steps.push(Step {
            rpo_s: ((now - data_time).num_milliseconds() as f64 / 1000.0).max(0.0),
            bytes: s.summary.bytes,
            predicted_s: s.summary.bytes as f64 / ASSUMED_BYTES_PER_S + 2.0,
            snapshot: *id,
            data_time,
            dir,
            target: None,
            source,
            argv,
            standbys: Vec::new(),
            pg_user: String::new(),
            cluster: None,
            primary_member: None,
            standby_of: None,
            seconds: None,
            error: None,
        });
    };
    // PostgreSQL: one step per system; the newest WAL it has is its data's age.
    let mut systems: BTreeMap<String, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for e in snaps.iter().filter(|(_, s)| s.kind == cirkel_pg::KIND) {
        if let Some(m) = cirkel_pg::backup::BackupMeta::of(&e.1) {
            systems.entry(m.system_id).or_default().push(e);
        }
    }
    for (system, list) in &systems {
        let Some(e) = newest(list.iter().copied()) else { continue };
        let stop = cirkel_pg::backup::BackupMeta::of(&e.1).map(|m| m.stop_time).unwrap_or(e.1.time);
        let wal = streams.iter().filter(|o| o.key.contains(system.as_str())).filter_map(|o| o.modified).max();
        let data_time = match (&args.target_time, wal) {
            (Some(_), _) => stop,
            (None, Some(w)) => w.max(stop),
            (None, None) => stop,
        };
        let mut argv = vec!["pg".into(), "restore".into(), "--system-id".into(), system.clone()];
        match &args.target_time {
            Some(t) => argv.extend(["--target-time".into(), t.clone()]),
            None => argv.push("--latest".into()),
        }
        pg_members.push(topology(cfg, cirkel_pg::backup::BackupMeta::of(&e.1).map(|m| m.pgdata)));
        step(format!("postgres/{system}"), e, data_time, argv);
    }
    // Redis: one step per group (or server).
    let mut groups: BTreeMap<String, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for e in snaps.iter().filter(|(_, s)| s.kind == cirkel_redis::KIND) {
        let m: Option<cirkel_redis::RedisMeta> = serde_json::from_value(e.1.meta.clone()).ok();
        let name = m.map(|m| m.group.unwrap_or(format!("{}:{}", m.host, m.port))).unwrap_or_default();
        groups.entry(name).or_default().push(e);
    }
    for (group, list) in &groups {
        let Some(e) = newest(list.iter().copied()) else { continue };
        let argv = vec!["redis".into(), "restore".into(), e.0.to_string()];
        step(format!("redis/{group}"), e, e.1.time, argv);
    }
    // File sets: one step per set of paths.
    let mut sets: BTreeMap<String, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for e in snaps.iter().filter(|(_, s)| s.kind == cirkel_files::KIND) {
        sets.entry(e.1.paths.join(",")).or_default().push(e);
    }
    for (paths, list) in &sets {
        let Some(e) = newest(list.iter().copied()) else { continue };
        let argv = vec!["restore".into(), "files".into(), e.0.to_string()];
        step(format!("files/{paths}"), e, e.1.time, argv);
    }
    steps.extend(buckets::steps(&snaps, cfg, args, &repo.location(), now)?);
    let postgres = steps.iter_mut().filter(|s| s.source.starts_with("postgres/"));
    for (s, t) in postgres.zip(pg_members) {
        s.standbys = t.standbys;
        s.pg_user = t.user;
        s.cluster = t.cluster;
        s.primary_member = t.primary;
    }
    Ok(steps)
}

/// How a system backed up from `pgdata` was configured: the
/// `[postgres.NAME]` whose data directory (or one of whose members') it is,
/// else the only cluster configured; the member it was backed up from (else
/// the first), the others (to re-create as standbys), and the database user.
#[derive(Debug, Default)]
struct Topology {
    cluster: Option<String>,
    primary: Option<String>,
    standbys: Vec<String>,
    user: String,
}

fn topology(cfg: &Config, pgdata: Option<String>) -> Topology {
    let pgdata = pgdata.map(PathBuf::from);
    let ours = |(_, c): &(&String, &cirkel_config::PostgresConfig)| {
        pgdata.is_some() && (c.pgdata == pgdata || c.members.values().any(|m| m.pgdata.is_some() && m.pgdata == pgdata))
    };
    let cluster =
        cfg.postgres.iter().find(ours).or(if cfg.postgres.len() == 1 { cfg.postgres.iter().next() } else { None });
    let Some((name, cluster)) = cluster else { return Topology { user: "postgres".into(), ..Topology::default() } };
    let primary = cluster
        .members
        .iter()
        .find(|(_, m)| m.pgdata.is_some() && m.pgdata == pgdata)
        .or(cluster.members.iter().next())
        .map(|(n, _)| n.clone());
    Topology {
        cluster: Some(name.clone()),
        standbys: cluster.members.keys().filter(|n| Some(*n) != primary.as_ref()).cloned().collect(),
        primary,
        user: cluster.user.clone().unwrap_or_else(|| "postgres".into()),
    }
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

pub fn run(global: &Global, args: &RecoverArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let target = resolve(&cfg, Some(&args.from), global.password_file.as_deref())?;
    let repo = target.open()?;
    let now = Utc::now();
    let mut steps = plan(&repo, &cfg, args, now)?;
    if steps.is_empty() {
        return Err(user_error(
            format!("{} holds no complete backup to recover from", repo.location()),
            "check --from names the second region's repository; `cirkel --repo REPO snapshots` lists what it holds",
        ));
    }
    standby::select(&mut steps, &args.only)?;
    standby::assign(&mut steps, &args.standby_of, standby::Kind::Postgres)?;
    standby::assign(&mut steps, &args.replica_of, standby::Kind::Redis)?;
    if (!args.standby_of.is_empty() || !args.replica_of.is_empty()) && args.no_start {
        return Err(user_error(
            "--standby-of and --replica-of start what they copy: they cannot go with --no-start",
            "leave out --no-start, or those options to restore from the repository",
        ));
    }
    // A standby's data is its primary's: what this host restores dates the rest.
    let restored = || steps.iter().filter(|s| s.standby_of.is_none());
    let predicted: f64 = restored().map(|s| s.predicted_s).sum();
    let rpo = restored().map(|s| s.rpo_s).fold(0.0, f64::max);
    if args.dry_run {
        if global.json {
            print_json(&json!({
                "from": repo.location(), "steps": steps, "rpo_s": rpo, "predicted_s": predicted, "start": !args.no_start
            }));
        } else {
            println!("recover from {}: {} step(s)", repo.location(), steps.len());
            for s in &steps {
                println!(
                    "  {:<40} snapshot {} of {} ({} old), {}, ~{:.0} s",
                    s.source,
                    s.snapshot.short(),
                    s.data_time.format("%Y-%m-%d %H:%M:%S UTC"),
                    humantime::format_duration(std::time::Duration::from_secs(s.rpo_s as u64)),
                    human_bytes(s.bytes),
                    s.predicted_s
                );
            }
            if !args.no_start {
                for s in &steps {
                    if let Some(up) = &s.standby_of {
                        let copy =
                            if s.source.starts_with("redis/") { "a replica of" } else { "a standby cloned from" };
                        println!(
                            "  {} not restored: {copy} its primary at {} on {}",
                            s.source,
                            up.address(),
                            args.listen
                        );
                    } else if s.source.starts_with("postgres/") {
                        let standbys = match s.standbys.len() {
                            _ if args.no_standbys => "no standby here (--no-standbys)".to_string(),
                            0 => "no standby (no other member of a [postgres.NAME] configured)".to_string(),
                            _ => format!("standbys {} cloned from it", s.standbys.join(", ")),
                        };
                        println!("  then start {}: primary on {}, {standbys}", s.source, args.listen);
                    } else if s.source.starts_with("redis/") {
                        println!("  then start {}: redis-server on {} with the RDB", s.source, args.listen);
                    }
                }
            }
            for s in steps.iter().filter(|s| s.source.starts_with("bucket/")) {
                println!("{}", buckets::describe(s, args.to.as_deref()));
            }
            println!(
                "implied RPO {} (the oldest of the newest data), predicted duration ~{:.0} s at {} MB/s",
                humantime::format_duration(std::time::Duration::from_secs(rpo as u64)),
                predicted,
                ASSUMED_BYTES_PER_S / 1e6
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(to) = &args.to else {
        return Err(user_error(
            "recover needs --to DIR (where to rebuild on this host)",
            "pass --to /srv/recover, or --dry-run to see the plan first",
        ));
    };
    if !is_empty_dir(to) && !args.force {
        return Err(user_error(
            format!("{} already holds data", to.display()),
            "recover into an empty directory, or pass --force to use it anyway (each source's directory below it must still be new; nothing is overwritten or deleted)",
        ));
    }
    for dir in steps.iter().flat_map(|s| made_dirs(s, args.no_start, args.no_standbys)) {
        if to.join(&dir).exists() {
            return Err(user_error(
                format!("{} already exists", to.join(&dir).display()),
                "recover into another directory; recover never writes over a source's earlier rebuild",
            ));
        }
    }
    buckets::check_targets(&cfg, &steps, args.force)?;
    let waited = standby::wait_reachable(&steps, args.timeout)?;
    std::fs::create_dir_all(to)
        .map_err(|e| user_error(format!("create {}: {e}", to.display()), "check the path and its permissions"))?;
    // PostgreSQL reads relative paths in its settings from its data directory.
    let to = &std::fs::canonicalize(to)
        .map_err(|e| user_error(format!("resolve {}: {e}", to.display()), "check the path and its permissions"))?;
    let started = Instant::now();
    let mut ok = execute(global, &args.from, to, &mut steps)?;
    let services = if args.no_start { Vec::new() } else { start_services(global, args, to, &steps)? };
    ok &= services.iter().all(|s| s.error.is_none());
    let rto = started.elapsed().as_secs_f64();
    // The age, when the recovery began, of the newest commit the recovered
    // primaries replayed: the commits a loss of the first region loses.
    let rpo_commit = services
        .iter()
        .filter_map(|s| s.last_commit)
        .map(|c| ((now - c).num_milliseconds() as f64 / 1000.0).max(0.0))
        .reduce(f64::max);
    let report = json!({
        "from": repo.location(),
        "to": to,
        "target_time": args.target_time,
        "started": now,
        "ok": ok,
        "rto_s": rto,
        "waited_for_primaries_s": waited.map(|w| w.as_secs_f64()),
        "rpo_s": rpo,
        "rpo_commit_s": rpo_commit,
        "predicted_s": predicted,
        "steps": steps,
        "services": services,
    });
    let path = state_dir(&cfg).save_report("recover", &report)?;
    // Each recovered primary is a role change: DNS and secrets follow it.
    let mut hooks_failed: Vec<String> = Vec::new();
    for s in steps.iter().filter(|s| s.error.is_none()) {
        let Some(cluster) = &s.cluster else { continue };
        let Some(cmd) = cfg.postgres.get(cluster).and_then(|c| c.on_role_change.as_ref()) else { continue };
        let started =
            services.iter().find(|v| v.source == s.source && v.role == start::Role::Primary && v.error.is_none());
        if let Some(primary) = started
            && let Some(why) = run_role_hook(cmd, cluster, s.primary_member.as_deref().unwrap_or(""), primary)
        {
            hooks_failed.push(format!("on_role_change of {cluster} failed: {why}"));
        }
    }
    let hook = cfg.repositories.get(&args.from).and_then(|r| r.on_recovered.clone());
    let hook_failed = match (&hook, ok) {
        (Some(cmd), true) => run_hook(cmd, to, &path).map(|why| format!("on_recovered failed: {why}")),
        _ => None,
    };
    if global.json {
        print_json(&json!({ "report": path, "recover": report }));
    } else {
        for s in steps.iter().filter(|s| s.standby_of.is_none()) {
            println!(
                "  {:<40} {:>7.1} s  {}",
                s.source,
                s.seconds.unwrap_or(0.0),
                s.error.as_deref().unwrap_or("restored")
            );
        }
        for s in &services {
            let what = match (&s.role, &s.member) {
                (start::Role::Standby, Some(m)) => format!("standby {m}"),
                (role, _) => {
                    serde_json::to_value(role).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
                }
            };
            match &s.error {
                None => println!(
                    "  {:<40} {:>7.1} s  {what} running on {}{}{}; stop: {}",
                    s.source,
                    s.seconds,
                    s.address,
                    s.upstream.as_ref().map(|u| format!(", streaming from {u}")).unwrap_or_default(),
                    s.keys.map(|k| format!(" ({k} keys)")).unwrap_or_default(),
                    s.stop
                ),
                Some(e) if s.stop.is_empty() => println!("  {:<40} {:>7.1} s  {what} FAILED: {e}", s.source, s.seconds),
                Some(e) => println!(
                    "  {:<40} {:>7.1} s  {what} FAILED: {e}; if it still runs, stop it: {}",
                    s.source, s.seconds, s.stop
                ),
            }
        }
        // A host of standbys only restored nothing: its data's age is its primaries'.
        let age = match steps.iter().all(|s| s.standby_of.is_some()) {
            true => format!(
                "standbys of primaries on other hosts (waited {:.1} s for them first)",
                waited.unwrap_or_default().as_secs_f64()
            ),
            false => format!(
                "data {} old (RPO){}",
                humantime::format_duration(std::time::Duration::from_secs(rpo as u64)),
                rpo_commit.map(|r| format!(", newest commit {r:.1} s old")).unwrap_or_default()
            ),
        };
        println!(
            "recovered from {} into {} in {:.1} s (RTO), {age}; report {}",
            repo.location(),
            to.display(),
            rto,
            path.display()
        );
    }
    hooks_failed.extend(hook_failed);
    if ok && !hooks_failed.is_empty() {
        return Err(user_error(
            format!("everything was recovered, but {}", hooks_failed.join("; ")),
            format!(
                "fix the hook and run it by hand (CIRKEL_EVENT=recovered; CIRKEL_RECOVER_DIR={}, CIRKEL_RECOVER_REPORT={}: the report names each service's address)",
                to.display(),
                path.display()
            ),
        ));
    }
    for why in &hooks_failed {
        eprintln!("warning: {why}");
    }
    if let Some(why) = standby::failed(&services) {
        return Err(why);
    }
    let failed_services = services.iter().filter(|s| s.error.is_some()).count();
    if failed_services > 0 && steps.iter().all(|s| s.error.is_none()) {
        return Err(user_error(
            format!(
                "{failed_services} service(s) did not start (listed above); the data is restored and what started runs"
            ),
            "read the log named in the report, fix the cause, then start it by hand (pg_ctl -D DIR start, redis-server), or recover again into a new directory",
        ));
    }
    if !ok {
        return Err(user_error(
            "some steps of the recovery failed (listed above); the others are in place",
            "fix the cause and recover the failed sources again into a new directory",
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// The directories below `--to` a step makes: its own, and for PostgreSQL
/// (when started) the run directory and one per standby.
fn made_dirs(s: &Step, no_start: bool, no_standbys: bool) -> Vec<String> {
    if s.source.starts_with("bucket/") {
        return buckets::made_paths(s);
    }
    let mut dirs = vec![s.dir.clone()];
    if s.source.starts_with("postgres/") && !no_start {
        dirs.push(format!("{}.run", s.dir));
        if s.standby_of.is_none() && !no_standbys {
            dirs.extend(s.standbys.iter().map(|m| format!("{}.{}", s.dir, safe(m))));
        }
    }
    dirs
}

/// Starts what the restored steps hold: each PostgreSQL system with its
/// standbys, then each Redis server. A step that failed starts nothing.
fn start_services(
    global: &Global,
    args: &RecoverArgs,
    to: &Path,
    steps: &[Step],
) -> anyhow::Result<Vec<start::Service>> {
    let mut services = Vec::new();
    let mut pg_port = args.pg_port;
    let mut redis_port = args.redis_port;
    for s in steps.iter().filter(|s| s.error.is_none()) {
        let opts = start::StartOptions {
            listen: args.listen.clone(),
            timeout: args.timeout,
            pg_user: if s.pg_user.is_empty() { "postgres".into() } else { s.pg_user.clone() },
            allow: args.allow.clone(),
        };
        if let Some(up) = s.standby_of.as_ref().filter(|_| s.source.starts_with("postgres/")) {
            let member = args.member.clone().unwrap_or_else(standby::host_name);
            if !global.quiet && !global.json {
                eprintln!("recover: cloning {} as standby {member} of {}", s.source, up.address());
            }
            let clone = standby::StandbyClone {
                source: &s.source,
                up,
                member: &member,
                data: &to.join(&s.dir),
                run_dir: &to.join(format!("{}.run", s.dir)),
                port: pg_port.take(),
            };
            services.push(clone.start(&opts));
        } else if s.source.starts_with("postgres/") {
            let standbys: Vec<(String, PathBuf)> = match args.no_standbys {
                true => Vec::new(),
                false => s.standbys.iter().map(|m| (m.clone(), to.join(format!("{}.{}", s.dir, safe(m))))).collect(),
            };
            let pg = start::Postgres {
                source: &s.source,
                data: &to.join(&s.dir),
                run_dir: &to.join(format!("{}.run", s.dir)),
                standbys: &standbys,
                port: pg_port.take(),
            };
            if !global.quiet && !global.json {
                eprintln!("recover: starting {} ({} standby(s))", s.source, standbys.len());
            }
            services.extend(pg.start(&opts));
        } else if s.source.starts_with("redis/") {
            if !global.quiet && !global.json {
                eprintln!("recover: starting {}", s.source);
            }
            let replica_of = s.standby_of.as_ref();
            services.push(start::start_redis(&s.source, &to.join(&s.dir), redis_port.take(), &opts, replica_of));
        }
    }
    Ok(services)
}

/// Runs each step into its directory below `to`; returns whether all succeeded.
fn execute(global: &Global, from: &str, to: &Path, steps: &mut [Step]) -> anyhow::Result<bool> {
    let exe = std::env::current_exe()?;
    let mut ok = true;
    for s in steps.iter_mut().filter(|s| s.standby_of.is_none()) {
        let dir = to.join(&s.dir);
        let mut cmd = Command::new(&exe);
        cmd.args(["-q", "--repo", from]);
        if let Some(c) = &global.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(p) = &global.password_file {
            cmd.arg("--password-file").arg(p);
        }
        cmd.args(&s.argv);
        if s.source.starts_with("bucket/") {
            cmd.args(buckets::destination(s, &dir));
        } else {
            cmd.arg("--to").arg(&dir);
        }
        if !global.quiet && !global.json {
            let into = s.target.clone().unwrap_or_else(|| dir.display().to_string());
            eprintln!("recover: {} from snapshot {} into {into}", s.source, s.snapshot.short());
        }
        let t = Instant::now();
        let out =
            cmd.output().map_err(|e| user_error(format!("run {}: {e}", exe.display()), "check the cirkel binary"))?;
        s.seconds = Some(t.elapsed().as_secs_f64());
        if !out.status.success() {
            ok = false;
            let err = String::from_utf8_lossy(&out.stderr);
            s.error = Some(
                err.lines()
                    .filter(|l| l.starts_with("error:"))
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(500)
                    .collect(),
            );
        }
    }
    Ok(ok)
}

#[derive(Debug, Args)]
pub struct RegionDrillArgs {
    /// The repository to rebuild from (the second region's).
    #[arg(long, value_name = "REPO")]
    pub from: String,
    /// How long PostgreSQL may take to replay and accept writes.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[command(flatten)]
    pub record: crate::cli::DrillRecordArgs,
}

/// What a drill found in one rebuilt source.
#[derive(Debug, Default, Serialize)]
struct Checked {
    source: String,
    ok: bool,
    /// PostgreSQL: rows per table; Redis: keys; files: files restored.
    counts: BTreeMap<String, i64>,
    problems: Vec<String>,
}

/// Rows and amcheck of a rebuilt PostgreSQL data directory.
fn check_postgres(data: &Path, work: &Path, timeout: std::time::Duration) -> Checked {
    use std::os::unix::fs::MetadataExt;
    let mut c = Checked::default();
    let (uid, gid) = match std::fs::metadata(data) {
        Ok(m) => (m.uid(), m.gid()),
        Err(e) => {
            c.problems.push(format!("{}: {e}", data.display()));
            return c;
        }
    };
    let opts = cirkel_pg::verify::VerifyOptions {
        backup: None,
        query: None,
        bindir: cirkel_pg::stream::find_bindir(),
        restore_command: String::new(),
        threads: 1,
        timeout,
    };
    let mut r = cirkel_pg::verify::VerifyReport::default();
    if let Err(e) = cirkel_pg::verify::check_started(data, work, uid, gid, &opts, &mut r) {
        r.problems.push(format!("{e:#}"));
    }
    for t in &r.tables {
        c.counts.insert(format!("{}.{}", t.database, t.table), t.rows);
    }
    c.counts.insert("indexes_checked".into(), r.indexes_checked as i64);
    c.problems = r.problems;
    c.ok = c.problems.is_empty();
    c
}

/// Keys of a rebuilt RDB, loaded by a private redis-server.
fn check_redis(dir: &Path) -> Checked {
    let mut c = Checked::default();
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => {
            c.problems.push(format!("no free port: {e}"));
            return c;
        }
    };
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let server = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .args(["--dbfilename", "dump.rdb"])
        .stdout(std::process::Stdio::null())
        .spawn();
    let mut server = match server {
        Ok(s) => s,
        Err(e) => {
            c.problems.push(format!("start redis-server: {e}; install redis-server"));
            return c;
        }
    };
    let start = Instant::now();
    while cli(&["PING"]) != "PONG" && start.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    match cli(&["DBSIZE"]).parse::<i64>() {
        Ok(n) => {
            c.counts.insert("keys".into(), n);
        }
        Err(_) => c.problems.push("the rebuilt RDB did not load into redis-server".into()),
    }
    let _ = server.kill();
    let _ = server.wait();
    c.ok = c.problems.is_empty();
    c
}

fn count_files(dir: &Path) -> i64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += count_files(&e.path()),
            Ok(t) if t.is_file() => n += 1,
            _ => {}
        }
    }
    n
}

/// `cirkel drill region`: `recover` into a scratch directory, each source
/// checked (PostgreSQL started: rows and amcheck; Redis loaded: keys; files
/// counted against the snapshot), then removed; the report is kept.
pub fn drill(global: &Global, args: &RegionDrillArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let _lock = crate::context::drill_lock(&cfg, "region")?;
    let repo = resolve(&cfg, Some(&args.from), global.password_file.as_deref())?.open()?;
    let now = Utc::now();
    let rargs = RecoverArgs {
        from: args.from.clone(),
        to: None,
        target_time: None,
        dry_run: false,
        force: false,
        no_start: true,
        pg_port: None,
        redis_port: None,
        listen: "127.0.0.1".into(),
        timeout: args.timeout,
        only: Vec::new(),
        standby_of: Vec::new(),
        replica_of: Vec::new(),
        member: None,
        allow: Vec::new(),
        no_standbys: false,
        bucket_to: Vec::new(),
    };
    let mut steps = plan(&repo, &cfg, &rargs, now)?;
    if steps.is_empty() {
        return Err(user_error(
            format!("{} holds no complete backup to drill", repo.location()),
            "check --from names the second region's repository",
        ));
    }
    let scratch = std::env::temp_dir().join(format!("cirkel-drill-region-{}", std::process::id()));
    std::fs::create_dir(&scratch)
        .map_err(|e| user_error(format!("create {}: {e}", scratch.display()), "check the temporary directory"))?;
    let rebuilt = scratch.join("rebuilt");
    let started = Instant::now();
    let result = execute(global, &args.from, &rebuilt, &mut steps);
    let rto = started.elapsed().as_secs_f64();
    let mut checks = Vec::new();
    if matches!(result, Ok(true)) {
        for s in &steps {
            let dir = rebuilt.join(&s.dir);
            let mut c = if s.source.starts_with("postgres/") {
                check_postgres(&dir, &scratch, args.timeout)
            } else if s.source.starts_with("redis/") {
                check_redis(&dir)
            } else if s.source.starts_with("bucket/") {
                buckets::check(&repo, s, &dir)
            } else {
                let files = count_files(&dir);
                let want = repo.load_snapshot(&s.snapshot).map(|x| x.summary.files as i64).unwrap_or(-1);
                let mut c = Checked::default();
                c.counts.insert("files".into(), files);
                if files != want {
                    c.problems.push(format!("{files} files restored, the snapshot holds {want}"));
                }
                c.ok = c.problems.is_empty();
                c
            };
            c.source = s.source.clone();
            checks.push(c);
        }
    }
    let removed = std::fs::remove_dir_all(&scratch);
    let ran = result?;
    let passed = ran && checks.iter().all(|c| c.ok);
    let rpo = steps.iter().map(|s| s.rpo_s).fold(0.0, f64::max);
    let bytes: u64 = steps.iter().map(|s| s.bytes).sum();
    let report = json!({
        "from": repo.location(),
        "started": now,
        "passed": passed,
        "rto_s": rto,
        "rpo_s": rpo,
        "steps": steps,
        "checks": checks,
        "scratch_removed": removed.is_ok(),
    });
    let failures: Vec<String> = checks.iter().flat_map(|c| c.problems.iter().cloned()).collect();
    let outcome = crate::context::DrillOutcome {
        source: "region",
        kind: "region",
        what: "region drill",
        passed,
        rto_s: Some(rto),
        writes_lost: 0,
        bytes: Some(bytes),
        target: &args.from,
        record: &args.record,
        plan: cirkel_config::DrillKind::Region,
        started: now,
        aborted: None,
        failures: &failures,
    };
    let path = crate::context::store_drill(&cfg, &outcome, &report)?;
    if global.json {
        print_json(&json!({ "report": path, "drill": report }));
    } else {
        for c in &checks {
            let counts: Vec<String> = c.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "  {:<40} {}  {}",
                c.source,
                if c.ok { "ok" } else { "FAILED" },
                if c.ok { counts.join(" ") } else { c.problems.join("; ") }
            );
        }
        println!(
            "region drill {}: rebuilt from {} in {rto:.1} s, data {} old; report {}",
            if passed { "passed" } else { "FAILED" },
            repo.location(),
            humantime::format_duration(std::time::Duration::from_secs(rpo as u64)),
            path.display()
        );
    }
    if !passed {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a cluster's `on_role_change` hook for its recovered primary, as a
/// failover does; returns why it failed, if it did.
fn run_role_hook(cmd: &str, cluster: &str, member: &str, primary: &start::Service) -> Option<String> {
    let host = primary.address.rsplit_once(':').map(|(h, _)| h).unwrap_or(&primary.address);
    let out = Command::new("sh")
        .args(["-c", cmd])
        .env("CIRKEL_EVENT", "recovered")
        .env("CIRKEL_CLUSTER", cluster)
        .env("CIRKEL_MEMBER", member)
        .env("CIRKEL_PRIMARY", member)
        .env("CIRKEL_PRIMARY_HOST", host)
        .env("CIRKEL_PRIMARY_PORT", primary.port.to_string())
        .output();
    hook_outcome(out)
}

/// Runs the repository's `on_recovered` hook; returns why it failed, if it did.
fn run_hook(cmd: &str, to: &Path, report: &Path) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .env("CIRKEL_EVENT", "recovered")
        .env("CIRKEL_RECOVER_DIR", to)
        .env("CIRKEL_RECOVER_REPORT", report)
        .output();
    hook_outcome(out)
}

fn hook_outcome(out: std::io::Result<std::process::Output>) -> Option<String> {
    match out {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "exit {}: {}",
            o.status.code().map_or("by signal".into(), |c| c.to_string()),
            String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("")
        )),
        Err(e) => Some(e.to_string()),
    }
}
