//! `cirkel pg restore`: a backup plus WAL up to a target, written into a data
//! directory, and what the restored cluster then archives (nothing unless
//! told, so a copy never writes into the repository it came from).

use std::path::PathBuf;
use std::process::ExitCode;

use cirkel_pg::restore::{Archiving, Target};
use serde_json::json;

use super::wal::{restore_command, wal_command};
use super::{parse_time, pg_error};
use crate::cli::{Global, PgRestoreArgs};
use crate::context::{load_config, main_repo, threads};
use crate::output::{bytes_bar, print_json, user_error};

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

pub(super) fn restore(global: &Global, a: &PgRestoreArgs) -> anyhow::Result<ExitCode> {
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

#[cfg(test)]
mod tests {
    use cirkel_pg::backup::{BackupMeta, Tablespace};
    use cirkel_pg::restore::Plan;
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command, PgCmd};

    fn restore_args(extra: &[&str]) -> anyhow::Result<PgRestoreArgs> {
        let mut argv = vec!["cirkel", "pg", "restore", "--to", "/restore/here"];
        argv.extend(extra);
        match Cli::try_parse_from(argv)?.command {
            Command::Pg(PgCmd::Restore(a)) => Ok(a),
            other => anyhow::bail!("parsed as {other:?}"),
        }
    }

    fn target(extra: &[&str]) -> anyhow::Result<Target> {
        parse_target(&restore_args(extra)?)
    }

    #[test]
    fn parse_target_takes_the_flag_given() {
        let t = "2026-11-26T08:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        assert_eq!(target(&["--target-time", "2026-11-26T09:00:00+01:00"]).unwrap(), Target::Time(t));
        assert_eq!(target(&["--target-lsn", "0/3000060"]).unwrap(), Target::Lsn("0/3000060".into()));
        assert_eq!(target(&["--target-xid", "1234"]).unwrap(), Target::Xid("1234".into()));
        assert_eq!(target(&["--target-name", "before-deploy"]).unwrap(), Target::Name("before-deploy".into()));
        assert_eq!(target(&["--immediate"]).unwrap(), Target::Immediate);
    }

    #[test]
    fn parse_target_replays_everything_without_a_target() {
        assert_eq!(target(&[]).unwrap(), Target::Latest);
        assert_eq!(target(&["--latest"]).unwrap(), Target::Latest);
    }

    #[test]
    fn parse_target_refuses_what_is_not_an_lsn_or_a_time() {
        let e = target(&["--target-lsn", "3000060"]).unwrap_err();
        let f = crate::output::Failure::from(&e);
        assert!(f.error.contains("`3000060` is not an LSN"), "{}", f.error);
        assert!(f.hint.unwrap_or_default().contains("0/3000060"));
        let e = target(&["--target-time", "yesterday"]).unwrap_err();
        assert!(e.to_string().contains("`yesterday` is not a time"), "{e}");
    }

    #[test]
    fn same_location_ignores_trailing_slashes_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&repo, &link).unwrap();
        let repo_s = repo.display().to_string();
        assert!(same_location(&repo_s, &format!("{repo_s}/")));
        assert!(same_location(&link.display().to_string(), &repo_s));
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        assert!(!same_location(&other.display().to_string(), &repo_s));
    }

    #[test]
    fn same_location_compares_what_is_not_a_local_path_as_written() {
        assert!(same_location("s3://bucket/prefix", "s3://bucket/prefix/"));
        assert!(!same_location("s3://bucket/prefix", "s3://bucket/other"));
    }

    fn plan_with_tablespaces(tablespaces: Vec<Tablespace>) -> Plan {
        let now = chrono::Utc::now();
        Plan {
            backup: cirkel_repo::Id::of(b"backup"),
            meta: BackupMeta {
                system_id: "7300000000000000001".into(),
                pg_version: 150000,
                timeline: 1,
                start_lsn: "0/2000028".into(),
                stop_lsn: "0/2000100".into(),
                start_wal: "000000010000000000000002".into(),
                stop_wal: "000000010000000000000002".into(),
                start_time: now,
                stop_time: now,
                label: "test".into(),
                backup_type: "full".into(),
                wal_segment_size: 16 << 20,
                pgdata: "/var/lib/postgresql/15/main".into(),
                from_standby: false,
                owner_uid: 0,
                owner_gid: 0,
                checksum_errors: Vec::new(),
                checksum_error_count: 0,
                data_checksums: true,
                tablespaces,
            },
            target: Target::Latest,
            wal_from: "000000010000000000000002".into(),
            wal_to: None,
            wal_gaps: Vec::new(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn tablespace_lines_say_where_each_tablespace_goes() {
        let plan = plan_with_tablespaces(vec![
            Tablespace { oid: "16414".into(), location: "/srv/ts1".into() },
            Tablespace { oid: "16415".into(), location: "/srv/ts2".into() },
        ]);
        let moves = vec![("16414".to_string(), PathBuf::from("/restore/ts1"))];
        assert_eq!(
            tablespace_lines(&plan, &moves),
            vec![
                "tablespace 16414 (was /srv/ts1) into /restore/ts1".to_string(),
                "tablespace 16415 (was /srv/ts2) into pg_tblspc/16415 of the data directory \
                 (allow_in_place_tablespaces = on)"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn tablespace_lines_are_empty_without_tablespaces() {
        assert!(tablespace_lines(&plan_with_tablespaces(Vec::new()), &[]).is_empty());
    }
}
