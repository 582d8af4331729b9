//! `cirkel pg ...`, `cirkel wal-push`, `cirkel wal-fetch`.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use cirkel_pg::restore::{Archiving, PlanError, Target};
use cirkel_pg::wal::Fetched;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use crate::cli::{
    BackupType, Global, PgBackupArgs, PgCmd, PgDumpArgs, PgDumpRestoreArgs, PgExpireArgs, PgRestoreArgs, PgVerifyArgs,
    StreamWalArgs, WalFetchArgs, WalPushArgs,
};
use crate::context::{load_config, main_repo, threads};
use crate::output::{bytes_bar, human_bytes, print_json, spinner, user_error};

pub fn run(global: &Global, cmd: &PgCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PgCmd::Backup(a) => backup(global, a),
        PgCmd::Backups => backups(global),
        PgCmd::Info(a) => info(global, a, false),
        PgCmd::Check(a) => info(global, a, true),
        PgCmd::Restore(a) => restore(global, a),
        PgCmd::StreamWal(a) => stream_wal(global, a),
        PgCmd::Dump(a) => dump(global, a),
        PgCmd::DumpRestore(a) => dump_restore(global, a),
        PgCmd::Verify(a) => verify(global, a),
        PgCmd::Expire(a) => expire(global, a),
        PgCmd::Failover(a) => failover(global, a),
        PgCmd::Switchover(a) => switchover(global, a),
        PgCmd::Pause(a) => pause(global, a, true),
        PgCmd::Resume(a) => pause(global, a, false),
    }
}

fn dump(global: &Global, a: &PgDumpArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let target = main_repo(global, &cfg)?;
    let _owner = crate::owner::check_writer(global, &target)?;
    let repo = target.open()?;
    let bindir = cirkel_pg::stream::find_bindir();
    let (id, snap) = cirkel_pg::dump::dump(&repo, &bindir, &a.table, a.conninfo.as_deref(), &a.tag).map_err(|e| {
        let msg = format!("{e:#}");
        user_error(msg, "check the table name (SCHEMA.TABLE) and the connection (PGHOST/PGPORT/PGUSER/PGDATABASE)")
    })?;
    if global.json {
        print_json(&json!({ "id": id, "snapshot": snap }));
    } else {
        println!(
            "export {} of {} saved: {} ({} added)",
            id.short(),
            a.table,
            human_bytes(snap.summary.bytes),
            human_bytes(snap.summary.bytes_added)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn dump_restore(global: &Global, a: &PgDumpRestoreArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let (id, snap) = repo.find_snapshot(&a.snapshot, Some(cirkel_pg::dump::KIND))?;
    let bindir = cirkel_pg::stream::find_bindir();
    let n = cirkel_pg::dump::restore(&repo, &bindir, &snap, a.conninfo.as_deref(), a.clean).map_err(|e| {
        let msg = format!("{e:#}");
        user_error(msg, "if the table exists already, add --clean to replace it")
    })?;
    if global.json {
        print_json(&json!({ "id": id, "bytes": n, "table": snap.paths.first() }));
    } else {
        println!("restored export {} ({}) of {}", id.short(), human_bytes(n), snap.paths.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(global: &Global, a: &PgVerifyArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let target = main_repo(global, &cfg)?;
    let repo = target.open()?;
    let backup = match &a.backup {
        Some(b) => Some(repo.find_snapshot(b, Some(cirkel_pg::KIND))?.0),
        None => None,
    };
    let opts = cirkel_pg::verify::VerifyOptions {
        backup,
        query: a.query.clone(),
        bindir: cirkel_pg::stream::find_bindir(),
        restore_command: restore_command(global, &target, &repo)?,
        threads: threads() * 2,
        timeout: a.timeout,
    };
    let bar = spinner(global, "restore drill");
    let report = cirkel_pg::verify::verify(&repo, &opts).map_err(pg_error)?;
    bar.finish_and_clear();
    if global.json {
        print_json(&report);
    } else {
        println!(
            "backup {}: restored {} in {:.1}s, recovered in {:.1}s (total {:.1}s); {} tables counted, {} indexes checked (amcheck {})",
            report.backup.map(|b| b.short()).unwrap_or_default(),
            human_bytes(report.bytes),
            report.restore_seconds,
            report.recovery_seconds,
            report.total_seconds,
            report.tables.len(),
            report.indexes_checked,
            report.amcheck
        );
        if let Some(q) = &report.query_result {
            println!("query result: {q}");
        }
    }
    if report.problems.is_empty()
        && let Some(q) = &report.query_error
    {
        return Err(user_error(
            format!(
                "the --query failed on the backup's state as of {} (the drill replays no WAL written after the backup): {q}",
                report.stop_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "its end".into())
            ),
            "the backup itself restored and passed its checks; objects created after it are not in it. \
             Query what the backup holds, or test later changes with `cirkel pg restore --latest`",
        ));
    }
    if !report.ok {
        for p in &report.problems {
            eprintln!("  {p}");
        }
        return Err(user_error(
            "the restore drill failed (problems listed above)",
            "the backup may be unusable: take a new one now and investigate with `cirkel repo verify --read-data`",
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn expire(global: &Global, a: &PgExpireArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let target = main_repo(global, &cfg)?;
    let _owner = if a.dry_run { None } else { crate::owner::check_writer(global, &target)? };
    let repo = target.open()?;
    let policy = cirkel_pg::expire::ExpirePolicy {
        daily: a.daily,
        weekly: a.weekly,
        pre_deploy: a.pre_deploy,
        wal_extra: a.wal,
    };
    let report = cirkel_pg::expire::expire(&repo, &policy, a.dry_run)?;
    let pruned = if a.dry_run {
        None
    } else {
        Some(cirkel_repo::prune::prune(&repo, &cirkel_repo::prune::PruneOptions::default())?)
    };
    if global.json {
        print_json(&json!({ "expire": report, "prune": pruned }));
    } else {
        for d in &report.decisions {
            println!("{} {}  {}", if d.keep { "keep  " } else { "expire" }, d.id.short(), d.why);
        }
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!("{verb} {} backup(s) and {} WAL file(s)", report.backups_removed, report.wal_removed);
        if let Some(p) = pruned {
            println!("freed {} of backup data", human_bytes(p.bytes_freed));
            if let Some(d) = p.deferred {
                println!("note: {d}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The restore_command PostgreSQL runs to fetch WAL from this repository.
fn restore_command(
    global: &Global,
    target: &crate::context::RepoTarget,
    repo: &cirkel_repo::Repository,
) -> anyhow::Result<String> {
    Ok(wal_command(global, &repo.location(), target.password_file.as_deref(), "wal-fetch %f %p"))
}

/// `cirkel --repo LOCATION ... SUBCOMMAND`, as PostgreSQL runs it.
fn wal_command(global: &Global, location: &str, password_file: Option<&std::path::Path>, sub: &str) -> String {
    let exe = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "cirkel".into());
    let mut cmd = format!("{} --repo {}", shell_quote(&exe), shell_quote(location));
    if let Some(pf) = password_file {
        cmd.push_str(&format!(" --password-file {}", shell_quote(&pf.display().to_string())));
    }
    if let Some(c) = &global.config {
        let c = std::fs::canonicalize(c).unwrap_or_else(|_| PathBuf::from(c));
        cmd.push_str(&format!(" --config {}", shell_quote(&c.display().to_string())));
    }
    if let Some(dir) = crate::context::cache_dir() {
        cmd = format!("CIRKEL_CACHE_DIR={} {cmd}", shell_quote(&dir.display().to_string()));
    }
    cmd.push(' ');
    cmd.push_str(sub);
    cmd
}

fn pg_error(e: anyhow::Error) -> anyhow::Error {
    if let Some(c) = e.downcast_ref::<cirkel_pg::conn::ConnectError>() {
        let msg = c.to_string();
        return user_error(msg, "check that PostgreSQL runs and PGHOST/PGPORT/PGUSER (or --conninfo) point at it");
    }
    if let Some(p) = e.downcast_ref::<PlanError>() {
        let (msg, hint) = (p.to_string(), p.hint());
        return user_error(msg, hint);
    }
    if let Some(l) = e.downcast_ref::<cirkel_pg::lineage::LineageError>() {
        let (msg, hint) = (l.to_string(), l.hint());
        return user_error(msg, hint);
    }
    if let Some(n) = e.downcast_ref::<cirkel_pg::restore::NotEmpty>() {
        let msg = n.to_string();
        return user_error(
            msg,
            "choose an empty or absent --to; if the old data is not needed any more, move it away first (cirkel never deletes it)",
        );
    }
    if let Some(t) = e.downcast_ref::<cirkel_pg::backup::ArchiveWaitTimeout>() {
        let msg = t.to_string();
        return user_error(
            msg,
            "fix archive_command (the server log names its error) or the repository's reachability, then take the \
             backup again; --archive-timeout waits longer",
        );
    }
    if let Some(b) = e.downcast_ref::<cirkel_pg::wal::BadWalName>() {
        let msg = b.to_string();
        return user_error(msg, "PostgreSQL passes %p to wal-push and %f %p to wal-fetch");
    }
    e
}

/// The cluster a command works on: --cluster from the configuration, then
/// explicit flags, then the libpq environment.
struct Cluster {
    conninfo: Option<String>,
    pgdata: Option<PathBuf>,
    bindir: PathBuf,
}

fn cluster(cfg: &cirkel_config::Config, a: &crate::cli::PgConnArgs) -> anyhow::Result<Cluster> {
    let named = match &a.cluster {
        Some(n) => Some(cfg.postgres.get(n).ok_or_else(|| {
            user_error(format!("no cluster named `{n}`"), "define it as [postgres.NAME] in the configuration")
        })?),
        None => None,
    };
    let conninfo = a.conninfo.clone().or_else(|| named.map(|c| c.conninfo()).filter(|s| !s.is_empty()));
    let pgdata = a.pgdata.clone().or_else(|| named.and_then(|c| c.pgdata.clone()));
    let bindir = named.and_then(|c| c.bindir.clone()).unwrap_or_else(cirkel_pg::stream::find_bindir);
    Ok(Cluster { conninfo, pgdata, bindir })
}

fn backup(global: &Global, a: &PgBackupArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let cl = cluster(&cfg, &a.conn)?;
    let target = main_repo(global, &cfg)?;
    let _owner = crate::owner::check_writer(global, &target)?;
    let repo = target.open()?;
    let mut tags = a.tag.clone();
    if let Some(l) = &a.label {
        tags.push(l.clone());
    }
    let opts = cirkel_pg::backup::PgBackupOptions {
        pgdata: cl.pgdata,
        conninfo: cl.conninfo,
        label: a.label.clone(),
        full: a.backup_type == BackupType::Full,
        tags,
        threads: threads(),
        archive_timeout: a.archive_timeout,
    };
    let bar = spinner(global, "pg backup");
    let progress = crate::cmd::files::BarProgress::new(bar.clone());
    let quiet = global.quiet;
    let notify = |m: &str| {
        if !quiet {
            bar.suspend(|| eprintln!("{m}"));
        }
    };
    let (id, snap) = cirkel_pg::backup::backup(&repo, &opts, &progress, &notify).map_err(pg_error)?;
    bar.finish_and_clear();
    let meta = cirkel_pg::backup::BackupMeta::of(&snap);
    if global.json {
        print_json(&json!({ "id": id, "snapshot": snap }));
    } else if let Some(m) = meta {
        println!(
            "backup {} of cluster {} saved: {} in {} files ({} added), WAL {} .. {}, {:.1}s",
            id.short(),
            m.system_id,
            human_bytes(snap.summary.bytes),
            snap.summary.files,
            human_bytes(snap.summary.bytes_added),
            m.start_wal,
            m.stop_wal,
            snap.summary.duration_ms as f64 / 1000.0
        );
    }
    if let Some(m) = cirkel_pg::backup::BackupMeta::of(&snap)
        && m.checksum_error_count > 0
    {
        eprintln!("warning: {} page(s) failed their checksum while being backed up:", m.checksum_error_count);
        for e in &m.checksum_errors {
            eprintln!("  {e}");
        }
        eprintln!(
            "hint: the primary's storage is corrupting data; the backup holds the pages as they are. Check the disk, run amcheck, and keep older backups"
        );
        return Ok(ExitCode::from(3));
    }
    if snap.incomplete {
        for e in &snap.errors {
            eprintln!("  {}: {}", e.path, e.message);
        }
        return Err(user_error(
            format!("backup {} is incomplete: {} file(s) could not be read", id.short(), snap.errors.len()),
            "run cirkel as the user that owns the data directory",
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn backups(global: &Global) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let list = cirkel_pg::catalog::backups(&repo)?;
    if global.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["ID", "Stop time (UTC)", "Type", "Label", "Cluster", "TLI", "Start WAL", "Size", "Added", "Took"]);
    for b in &list {
        t.add_row([
            b.short_id.clone(),
            b.meta.stop_time.format("%Y-%m-%d %H:%M:%S").to_string(),
            b.meta.backup_type.clone(),
            b.meta.label.clone(),
            b.meta.system_id.clone(),
            b.meta.timeline.to_string(),
            b.meta.start_wal.clone(),
            human_bytes(b.bytes),
            human_bytes(b.bytes_added),
            format!("{:.1}s", b.duration_ms as f64 / 1000.0),
        ]);
    }
    println!("{t}");
    println!("{} backup(s)", list.len());
    Ok(ExitCode::SUCCESS)
}

/// The archiver of the server `--cluster`/`--conninfo` names, or of the one
/// PGHOST/PGPORT point at; `None` when nothing names a server.
fn archiver(
    cfg: &cirkel_config::Config,
    a: &crate::cli::PgServerArgs,
) -> Option<Result<cirkel_pg::archiver::ArchiverHealth, String>> {
    let env_names_one = ["PGHOST", "PGPORT"].iter().any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if a.cluster.is_none() && a.conninfo.is_none() && !env_names_one {
        return None;
    }
    let conn_args = crate::cli::PgConnArgs { cluster: a.cluster.clone(), conninfo: a.conninfo.clone(), pgdata: None };
    let read = || -> anyhow::Result<cirkel_pg::archiver::ArchiverHealth> {
        let cl = cluster(cfg, &conn_args)?;
        let conn = cirkel_pg::conn::PgConn::connect(cl.conninfo.as_deref())?;
        cirkel_pg::archiver::ArchiverHealth::read(&conn)
    };
    Some(read().map_err(|e| format!("{e:#}")))
}

fn info(global: &Global, a: &crate::cli::PgServerArgs, strict: bool) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let mut clusters = cirkel_pg::catalog::info(&repo)?;
    let archiving = archiver(&cfg, a);
    let mut server_problems = Vec::new();
    match &archiving {
        Some(Ok(h)) => server_problems.extend(h.problem()),
        Some(Err(e)) if strict => server_problems.push(format!("cannot read the server's archiver: {e}")),
        _ => {}
    }
    for c in &mut clusters {
        c.problems.extend(server_problems.iter().cloned());
        match &archiving {
            Some(Ok(h)) => c.archiver = Some(h.clone()),
            Some(Err(e)) => c.archiver_error = Some(e.clone()),
            None => {}
        }
    }
    if global.json {
        print_json(&clusters);
    } else {
        match &archiving {
            Some(Ok(h)) if !h.archives() => println!(
                "server archiving: off here (archive_mode = {}{})",
                h.archive_mode,
                if h.in_recovery { ", a standby" } else { "" }
            ),
            Some(Ok(h)) => println!(
                "server archiving: {}; last archived {}; {} failed attempt(s){}",
                if h.failing { "FAILING" } else { "working" },
                h.last_archived(),
                h.failed_count,
                h.last_failed_wal.as_ref().map(|w| format!(", the last on {w}")).unwrap_or_default()
            ),
            Some(Err(e)) => println!("server archiving: unknown ({e})"),
            None => {}
        }
        if clusters.is_empty() && !server_problems.is_empty() {
            for p in &server_problems {
                println!("problem: {p}");
            }
        }
        if clusters.is_empty() {
            println!("no PostgreSQL backups in {}", repo.location());
        }
        for c in &clusters {
            println!("cluster {} in {}", c.system_id, repo.location());
            println!("  backups:          {}", c.backups);
            println!(
                "  earliest restore: {} (LSN {})",
                c.earliest_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into()),
                c.earliest_lsn.clone().unwrap_or_else(|| "-".into())
            );
            println!(
                "  latest restore:   {} (WAL stored by then)",
                c.latest_time.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
            );
            println!(
                "  latest WAL:       {}{}",
                c.latest_wal.clone().unwrap_or_else(|| "-".into()),
                c.latest_partial.as_ref().map(|p| format!(" (streaming: {p})")).unwrap_or_default()
            );
            println!("  WAL segments:     {} on timeline(s) {:?}", c.archived_segments, c.timelines);
            for p in &c.problems {
                println!("  problem: {p}");
            }
            for g in &c.gaps {
                println!("  missing: {g}");
            }
        }
    }
    let problems: usize = clusters.iter().map(|c| c.problems.len()).sum::<usize>()
        + if clusters.is_empty() { server_problems.len() } else { 0 };
    if strict && !server_problems.is_empty() {
        return Err(user_error(
            format!("archiving does not work: {}", server_problems.join("; ")),
            "every segment not archived is lost to point-in-time restore: fix archive_command (the server log \
             names its error) and check the repository is reachable and writable by the server's user",
        ));
    }
    if strict && problems > 0 {
        return Err(user_error(
            format!("{problems} problem(s) in the WAL archive (listed above)"),
            "a missing segment ends every recovery that needs it: take a new base backup now, and check archive_command / the streamer",
        ));
    }
    if !strict || global.json {
        return Ok(ExitCode::SUCCESS);
    }
    println!("WAL archive OK");
    Ok(ExitCode::SUCCESS)
}

/// A time as users write it: RFC 3339, or "YYYY-MM-DD HH:MM:SS[.f]" without
/// a zone, taken as this host's local time and said so on stderr (a silent
/// UTC would put a restore hours away from the moment meant).
fn parse_time(t: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    let naive = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f"))
        .map_err(|e| user_error(format!("`{t}` is not a time ({e})"), "use RFC 3339, e.g. 2026-11-26T08:00:00Z"))?;
    use chrono::TimeZone;
    let local = match chrono::Local.from_local_datetime(&naive) {
        chrono::LocalResult::Single(d) => d,
        _ => {
            return Err(user_error(
                format!("`{t}` does not exist or is ambiguous in this host's time zone (a daylight-saving change)"),
                "give the offset, e.g. 2026-11-26T08:00:00+01:00, or UTC with a trailing Z",
            ));
        }
    };
    let utc = local.with_timezone(&Utc);
    eprintln!(
        "note: `{t}` has no time zone; taken as this host's local time ({}), i.e. {}",
        local.format("UTC%:z"),
        utc.to_rfc3339()
    );
    Ok(utc)
}

fn parse_target(a: &PgRestoreArgs) -> anyhow::Result<Target> {
    Ok(if let Some(t) = &a.target_time {
        Target::Time(parse_time(t)?)
    } else if let Some(l) = &a.target_lsn {
        if cirkel_pg::conn::parse_lsn(l).is_none() {
            return Err(user_error(format!("`{l}` is not an LSN"), "an LSN looks like 0/3000060"));
        }
        Target::Lsn(l.clone())
    } else if let Some(x) = &a.target_xid {
        Target::Xid(x.clone())
    } else if let Some(n) = &a.target_name {
        Target::Name(n.clone())
    } else if a.immediate {
        Target::Immediate
    } else {
        Target::Latest
    })
}

fn restore(global: &Global, a: &PgRestoreArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let target_repo = main_repo(global, &cfg)?;
    let repo = target_repo.open()?;
    let target = parse_target(a)?;
    let backup = match &a.backup {
        Some(b) => Some(repo.find_snapshot(b, Some(cirkel_pg::KIND))?.0),
        None => None,
    };
    let plan = cirkel_pg::restore::plan(&repo, a.system_id.as_deref(), target, backup).map_err(pg_error)?;
    let describe = |p: &cirkel_pg::restore::Plan| {
        format!(
            "backup {} (stopped {}, LSN {}), then WAL from {} through {}",
            p.backup.short(),
            p.meta.stop_time.to_rfc3339(),
            p.meta.stop_lsn,
            p.wal_from,
            p.wal_to.clone().unwrap_or_else(|| "(none archived yet)".into())
        )
    };
    let moves = cirkel_pg::restore::map_tablespaces(&plan.meta, &a.tablespace_map).map_err(|e| {
        user_error(
            e.to_string(),
            "`cirkel pg restore --dry-run` lists the backup's tablespaces; map each to an empty or absent directory",
        )
    })?;
    if a.dry_run {
        if global.json {
            print_json(&plan);
        } else {
            println!("would restore {} into {}", describe(&plan), a.to.display());
            for line in tablespace_lines(&plan, &moves) {
                println!("would put {line}");
            }
            for n in &plan.notes {
                println!("note: {n}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let archiving = archiving(global, a, &target_repo, &repo, &plan)?;
    let recovery = cirkel_pg::restore::Recovery {
        restore_command: restore_command(global, &target_repo, &repo)?,
        archiving: archiving.clone(),
    };
    let bar = bytes_bar(global, repo.load_snapshot(&plan.backup)?.summary.bytes, "restore");
    let report =
        cirkel_pg::restore::restore(&repo, &plan, &a.to, &recovery, &a.tablespace_map, threads() * 2, &|n| bar.inc(n))
            .map_err(pg_error)?;
    bar.finish_and_clear();
    if !report.errors.is_empty() {
        for (p, e) in &report.errors {
            eprintln!("  {p}: {e}");
        }
        return Err(user_error(
            format!("{} file(s) of backup {} could not be restored", report.errors.len(), plan.backup.short()),
            "run `cirkel repo verify --read-data`; restore an older backup with --backup, or from a second repository",
        ));
    }
    if global.json {
        print_json(&json!({
            "plan": plan, "to": a.to, "files": report.files, "bytes": report.bytes, "archiving": archiving
        }));
    } else {
        println!("restored {} into {}", describe(&plan), a.to.display());
        for line in tablespace_lines(&plan, &moves) {
            println!("put {line}");
        }
        match &archiving {
            Archiving::Off => println!(
                "archiving: off (archive_mode = off), so this copy never writes into {}; --archive-to REPO archives it elsewhere",
                repo.location()
            ),
            Archiving::To(_) => {
                println!("archiving: on, into {}", a.archive_to.clone().unwrap_or_else(|| repo.location()))
            }
            Archiving::Standby { .. } => {
                println!("archiving: as the source's standby would (only with archive_mode = always)")
            }
        }
        if a.standby {
            println!("start PostgreSQL on {} to run it as a standby", a.to.display());
        } else {
            println!("start PostgreSQL on {} to replay WAL and promote", a.to.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What the restored cluster does with its WAL: nothing unless told.
fn archiving(
    global: &Global,
    a: &PgRestoreArgs,
    target: &crate::context::RepoTarget,
    repo: &cirkel_repo::Repository,
    plan: &cirkel_pg::restore::Plan,
) -> anyhow::Result<Archiving> {
    if a.standby {
        if plan.target != Target::Latest {
            return Err(user_error(
                "a standby replays to the latest WAL; a recovery target makes no sense with --standby",
                "leave out --target-*/--immediate, or restore a copy without --standby",
            ));
        }
        return Ok(Archiving::Standby { primary_conninfo: a.primary_conninfo.clone() });
    }
    let dest = match (&a.archive_to, a.take_over) {
        (Some(other), _) => {
            if same_location(other, &repo.location()) {
                return Err(user_error(
                    format!("--archive-to {other} is the repository this restore comes from"),
                    "archive a copy into another repository; if this restore replaces a primary that is gone for good, pass --take-over instead",
                ));
            }
            other.clone()
        }
        (None, true) => repo.location(),
        (None, false) => return Ok(Archiving::Off),
    };
    Ok(Archiving::To(wal_command(global, &dest, target.password_file.as_deref(), "wal-push %p")))
}

fn same_location(a: &str, b: &str) -> bool {
    let canon = |s: &str| std::fs::canonicalize(s).map(|p| p.display().to_string()).unwrap_or_else(|_| s.to_string());
    canon(a.trim_end_matches('/')) == canon(b.trim_end_matches('/'))
}

/// Where each of the plan's tablespaces goes, for a restore's report.
fn tablespace_lines(plan: &cirkel_pg::restore::Plan, moves: &[(String, PathBuf)]) -> Vec<String> {
    plan.meta
        .tablespaces
        .iter()
        .map(|t| match moves.iter().find(|(oid, _)| oid == &t.oid) {
            Some((_, new)) => format!("tablespace {} (was {}) into {}", t.oid, t.location, new.display()),
            None => format!(
                "tablespace {} (was {}) into pg_tblspc/{} of the data directory (allow_in_place_tablespaces = on)",
                t.oid, t.location, t.oid
            ),
        })
        .collect()
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn wal_push(global: &Global, a: &WalPushArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let target = main_repo(global, &cfg)?;
    let _owner = crate::owner::check_writer(global, &target)?;
    let repo = target.open_cached()?;
    let pgdata = cirkel_pg::control::find_pgdata(a.pgdata.as_deref())?;
    let ns = cirkel_pg::namespace(cirkel_pg::control::system_identifier(&pgdata)?);
    let path = if a.path.is_absolute() { a.path.clone() } else { std::env::current_dir()?.join(&a.path) };
    let system_id = cirkel_pg::control::system_identifier(&pgdata)?;
    if !a.new_lineage {
        cirkel_pg::lineage::check(&repo, &ns, &path, &pgdata, system_id).map_err(pg_error)?;
    }
    let outcome = cirkel_pg::wal::push(&repo, &ns, &path).map_err(pg_error)?;
    if global.json {
        print_json(&json!({ "file": a.path, "outcome": format!("{outcome:?}") }));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn wal_fetch(global: &Global, a: &WalFetchArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open_cached()?;
    let pgdata = cirkel_pg::control::find_pgdata(a.pgdata.as_deref())?;
    let ns = cirkel_pg::namespace(cirkel_pg::control::system_identifier(&pgdata)?);
    let dest = if a.dest.is_absolute() { a.dest.clone() } else { std::env::current_dir()?.join(&a.dest) };
    match cirkel_pg::wal::fetch(&repo, &ns, &a.name, &dest).map_err(pg_error)? {
        Fetched::NotFound => {
            // PostgreSQL asks for files that may not exist (the next timeline's
            // history, the segment after the last): a quiet non-zero exit.
            if global.json {
                print_json(&json!({ "file": a.name, "found": false }));
            } else if global.verbose > 0 {
                eprintln!("{} is not in the archive", a.name);
            }
            Ok(ExitCode::from(1))
        }
        how => {
            if global.json {
                print_json(&json!({ "file": a.name, "found": true, "from": format!("{how:?}") }));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn stream_wal(global: &Global, a: &StreamWalArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let target = main_repo(global, &cfg)?;
    let _owner = crate::owner::check_writer(global, &target)?;
    let repo = target.open()?;
    let cl = cluster(&cfg, &a.conn)?;
    let conn = cirkel_pg::conn::PgConn::connect(cl.conninfo.as_deref()).map_err(pg_error)?;
    let row = conn.query_one("SELECT system_identifier::text FROM pg_control_system()")?;
    let sys: String = row.get(0);
    drop(conn);
    let ns = cirkel_pg::namespace(sys.parse()?);
    let spool = match &a.spool {
        Some(s) => s.clone(),
        None => crate::context::cache_dir()
            .ok_or_else(|| user_error("no spool directory", "pass --spool DIR"))?
            .join(format!("spool-{sys}-{}", a.slot)),
    };
    let opts = cirkel_pg::stream::StreamOptions {
        spool,
        slot: a.slot.clone(),
        interval: a.interval,
        bindir: cl.bindir,
        conninfo: cl.conninfo,
        run_for: a.duration,
        keep_slot: a.keep_slot,
    };
    let stop = crate::context::stop_on_signal();
    if !global.quiet && !global.json {
        eprintln!("streaming WAL of cluster {sys} into {} every {:?} (slot {})", repo.location(), a.interval, a.slot);
    }
    let stats = cirkel_pg::stream::run(&repo, &ns, &opts, stop)?;
    if global.json {
        print_json(&stats);
    } else if !global.quiet {
        eprintln!(
            "stopped: {} segments archived, {} partial uploads, {} receiver restarts; slot {} {}",
            stats.segments_archived,
            stats.partial_uploads,
            stats.receiver_restarts,
            a.slot,
            if a.keep_slot { "kept (--keep-slot)" } else { "dropped" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The cluster `--cluster` names, or the only one with members.
pub fn member_cluster(
    cfg: &cirkel_config::Config,
    name: Option<&str>,
) -> anyhow::Result<(String, cirkel_config::PostgresConfig)> {
    let with_members: Vec<&String> =
        cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, _)| n).collect();
    let name = crate::context::only_or_given(
        name,
        &with_members,
        ("PostgreSQL cluster with members", "PostgreSQL clusters with members"),
        "--cluster",
        "add [postgres.NAME.members.M] tables (host, port, zone, priority) to the configuration",
    )?;
    match cfg.postgres.get(&name) {
        Some(c) if !c.members.is_empty() => Ok((name, c.clone())),
        Some(_) => Err(user_error(format!("cluster `{name}` has no members"), "add [postgres.NAME.members.M] tables")),
        None => Err(user_error(format!("no cluster `{name}` in the configuration"), "add a [postgres.NAME] table")),
    }
}

fn failover(global: &Global, a: &crate::cli::PgFailoverArgs) -> anyhow::Result<ExitCode> {
    if !a.explain {
        return Err(user_error(
            "`cirkel pg failover` only explains for now",
            "pass --explain to see whom a failover would promote and why",
        ));
    }
    let cfg = load_config(global)?;
    let (name, c) = member_cluster(&cfg, a.cluster.as_deref())?;
    let (status, ex) = cirkel_pg::members::explain(&name, &c)?;
    if global.json {
        print_json(&json!({ "explanation": ex, "status": status }));
    } else {
        println!("cluster {name}: primary {}", ex.primary.as_deref().unwrap_or("none"));
        println!("would promote: {}", ex.reason);
        for r in &ex.rejections {
            println!("  not {}: {}", r.member, r.reason);
        }
    }
    Ok(if ex.candidate.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn switchover(global: &Global, a: &crate::cli::PgSwitchoverArgs) -> anyhow::Result<ExitCode> {
    use cirkel_state::control::{Reply, Request};
    let cfg = load_config(global)?;
    let (name, c) = member_cluster(&cfg, a.cluster.as_deref())?;
    let state = crate::context::state_dir(&cfg);
    let at = a.at.as_deref().map(parse_time).transpose()?;
    if at.is_some_and(|t| t < Utc::now() - chrono::Duration::minutes(1)) {
        return Err(user_error("--at is in the past", "give a time to come, or leave --at out to switch over now"));
    }
    let st = cirkel_pg::members::status(&name, &c);
    let Some(primary) = st.primary.clone() else {
        return Err(user_error(
            format!("cluster {name} has no single primary: {}", st.problems.join("; ")),
            "a switchover needs a healthy primary; `cirkel status` shows the cluster",
        ));
    };
    if let Some(to) = &a.to {
        if *to == primary {
            return Err(user_error(format!("{to} is already the primary"), "name a standby with --to"));
        }
        cirkel_pg::watch::check_target(&c, &st, to)
            .map_err(|e| user_error(e, "name a streaming standby with --to; `cirkel status` lists them"))?;
    }
    let daemon = cirkel_state::control::Client::connect(&state)?;
    let outcome = if let Some(mut daemon) = daemon {
        let req = Request::Switchover { cluster: name.clone(), to: a.to.clone(), at };
        let timeout = if at.is_some() { std::time::Duration::from_secs(60) } else { a.timeout };
        match daemon.call(&req, Some(timeout)).map_err(|e| {
            user_error(format!("{e:#}"), "`cirkel events --kind switchover` shows whether it happened since")
        })? {
            Reply::Outcome { event } => event,
            Reply::Scheduled { at } => {
                if global.json {
                    print_json(&json!({ "cluster": name, "scheduled": at, "to": a.to }));
                } else {
                    println!("switchover of {name} scheduled for {at} (cirkel serve carries it out)");
                }
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(refused_by_daemon(other)),
        }
    } else {
        if at.is_some() {
            return Err(user_error(
                "--at needs a running `cirkel serve` watching the cluster",
                "start `cirkel serve`, or switch over now without --at",
            ));
        }
        let req = cirkel_pg::ha::SwitchoverRequest {
            id: format!("{}-{}", Utc::now().timestamp_nanos_opt().unwrap_or_default(), std::process::id()),
            to: a.to.clone(),
            at,
            requested: Utc::now(),
        };
        match cirkel_pg::watch::switchover_now(&name, &c, &state, &req)? {
            Ok(event) => event,
            Err(why) => {
                return Err(user_error(format!("switchover failed: {why}"), "`cirkel status` shows the cluster now"));
            }
        }
    };
    if global.json {
        print_json(&serde_json::to_value(&outcome)?);
    } else {
        println!("{}", outcome.message);
        if let Some(s) = outcome.details["rejoin_s"].as_f64() {
            println!("{} rejoined as a standby in {s:.1} s", outcome.details["old_primary"].as_str().unwrap_or("?"));
        }
        if let Some(e) = outcome.details["rejoin_error"].as_str() {
            println!("rejoin failed: {e}");
        }
    }
    Ok(if outcome.kind == "switchover" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A reply that is not the answer asked for, as the error to show.
fn refused_by_daemon(reply: cirkel_state::control::Reply) -> anyhow::Error {
    use cirkel_state::control::Reply;
    match reply {
        Reply::Refused { message } => user_error(
            format!("cirkel serve refused: {message}"),
            "run the command as the user `cirkel serve` runs as, or as root",
        ),
        Reply::Error { message } => {
            user_error(format!("cirkel serve: {message}"), "`cirkel events` and the daemon's log say more")
        }
        other => anyhow::anyhow!("cirkel serve answered {other:?}"),
    }
}

fn pause(global: &Global, a: &crate::cli::PgClusterArg, paused: bool) -> anyhow::Result<ExitCode> {
    use cirkel_state::control::{Client, Reply, Request};
    let cfg = load_config(global)?;
    let (name, _) = member_cluster(&cfg, a.cluster.as_deref())?;
    let state = crate::context::state_dir(&cfg);
    let (what, kind) = if paused {
        ("paused", cirkel_state::EventKind::Paused)
    } else {
        ("resumed", cirkel_state::EventKind::Resumed)
    };
    if let Some(mut daemon) = Client::connect(&state)? {
        // The watcher changes its record and records the event.
        let req =
            if paused { Request::Pause { cluster: name.clone() } } else { Request::Resume { cluster: name.clone() } };
        match daemon.call(&req, Some(std::time::Duration::from_secs(120)))? {
            Reply::Done { .. } => {}
            other => return Err(refused_by_daemon(other)),
        }
    } else {
        cirkel_pg::ha::set_paused(&state, &name, paused).map_err(|e| {
            user_error(
                format!("cannot record that {name} is {what}: {e:#}"),
                "cirkel serve and this command must share a writable state directory: set CIRKEL_STATE_DIR or [state] dir",
            )
        })?;
        state.record(&cirkel_state::Event::new(
            &format!("postgres/{name}"),
            kind,
            format!("cluster {name} {what}: automatic action {}", if paused { "off" } else { "on" }),
        ))?;
    }
    if global.json {
        print_json(&json!({ "cluster": name, "paused": paused }));
    } else {
        println!("cluster {name} {what}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn failover_drill(
    global: &Global,
    a: &crate::cli::PgDrillArgs,
    switchover: Option<Option<String>>,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let (name, c) = member_cluster(&cfg, a.cluster.as_deref())?;
    let state = crate::context::state_dir(&cfg);
    let (fault, kind, what) = match switchover {
        None => (cirkel_pg::drill::Fault::Kill, "postgres-failover", "failover drill"),
        Some(to) => {
            (cirkel_pg::drill::Fault::Switchover { state: &state, to }, "postgres-switchover", "switchover drill")
        }
    };
    if !global.quiet && !global.json {
        match fault {
            cirkel_pg::drill::Fault::Kill => {
                eprintln!("drill: killing the primary of `{name}` under a canary writer on the endpoint…")
            }
            _ => eprintln!("drill: switching `{name}` over under a canary writer on the endpoint…"),
        }
    }
    let report = cirkel_pg::drill::run_drill(&name, &c, a.timeout, fault).map_err(|e| {
        user_error(
            format!("the drill did not run: {e:#}"),
            "run `cirkel status`; `cirkel serve` must be watching the cluster",
        )
    })?;
    let value = serde_json::to_value(&report)?;
    let outcome = crate::context::DrillOutcome {
        source: &format!("postgres/{name}"),
        kind,
        what,
        passed: report.passed,
        rto_s: report.rto_s,
        writes_lost: report.writes_lost,
    };
    let path = crate::context::store_drill(&cfg, &outcome, &value)?;
    if global.json {
        print_json(&value);
    } else {
        println!("{what} of `{name}`: {}", if report.passed { "PASSED" } else { "FAILED" });
        println!(
            "  old primary     {}{}",
            report.engine.old_primary,
            if report.engine.killed.is_some() { " (killed with SIGKILL)" } else { " (stopped cleanly)" }
        );
        println!("  new primary     {}", report.engine.new_primary.as_deref().unwrap_or("none"));
        println!(
            "  RTO             {}",
            report
                .rto_s
                .map(|s| format!("{s:.3} s (fault → first acknowledged write through the endpoint)"))
                .unwrap_or_else(|| "no failover".into())
        );
        println!(
            "  writes          {} acknowledged, {} failed during the outage, {} lost",
            report.writes_acknowledged, report.writes_failed, report.writes_lost
        );
        if let Some(p) = report.engine.write_pause_s {
            println!("  write pause     {p:.3} s (longest gap between acknowledged writes)");
        }
        if let Some(r) = report.rejoin_s {
            println!("  rejoin          {r:.2} s after the fault (streaming from the new primary)");
        }
        for f in &report.failures {
            println!("  failure: {f}");
        }
        println!("  report          {}", path.display());
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
