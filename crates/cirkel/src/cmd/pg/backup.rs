//! `cirkel pg backup`, `backups`, `info`, `check` and `expire`: taking base
//! backups, listing them, saying how far back a restore can reach (and
//! whether the server's archiving keeps it so), and applying retention.

use std::process::ExitCode;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use super::{cluster, pg_error};
use crate::cli::{BackupType, Global, PgBackupArgs, PgExpireArgs};
use crate::context::{load_config, main_repo, threads};
use crate::output::{human_bytes, print_json, spinner, user_error};

pub(super) fn backup(global: &Global, a: &PgBackupArgs) -> anyhow::Result<ExitCode> {
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

pub(super) fn backups(global: &Global) -> anyhow::Result<ExitCode> {
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

pub(super) fn info(global: &Global, a: &crate::cli::PgServerArgs, strict: bool) -> anyhow::Result<ExitCode> {
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

pub(super) fn expire(global: &Global, a: &PgExpireArgs) -> anyhow::Result<ExitCode> {
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
