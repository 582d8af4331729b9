//! `cirkel pg ...`, `cirkel wal-push`, `cirkel wal-fetch`.
//!
//! One file per responsibility, so each reads on its own: `backup` (taking,
//! listing, checking and expiring base backups), `restore`, `wal` (what
//! PostgreSQL's archive and restore commands run, and the WAL streamer),
//! `dump` (table exports), `ha` (failover, switchover, pause) and `drill`
//! (restore and failover drills). This file dispatches and holds what
//! several of them share: the cluster a command names, times as users write
//! them, and the hints for PostgreSQL's errors.

mod backup;
mod drill;
mod dump;
mod ha;
mod restore;
mod wal;

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use cirkel_pg::restore::PlanError;

use crate::cli::{Global, PgCmd};
use crate::output::user_error;

pub use drill::verify as verify_drill;
pub use drill::{failover_drill, network_drill};
pub use ha::member_cluster;
pub use wal::{wal_fetch, wal_push};

pub fn run(global: &Global, cmd: &PgCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PgCmd::Backup(a) => backup::backup(global, a),
        PgCmd::Backups => backup::backups(global),
        PgCmd::Info(a) => backup::info(global, a, false),
        PgCmd::Check(a) => backup::info(global, a, true),
        PgCmd::Restore(a) => restore::restore(global, a),
        PgCmd::StreamWal(a) => wal::stream_wal(global, a),
        PgCmd::Dump(a) => dump::dump(global, a),
        PgCmd::DumpRestore(a) => dump::dump_restore(global, a),
        PgCmd::Verify(a) => drill::verify(global, a),
        PgCmd::Expire(a) => backup::expire(global, a),
        PgCmd::Failover(a) => ha::failover(global, a),
        PgCmd::Switchover(a) => ha::switchover(global, a),
        PgCmd::Pause(a) => ha::pause(global, a, true),
        PgCmd::Resume(a) => ha::pause(global, a, false),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Failure;

    #[test]
    fn parse_time_takes_rfc3339_with_any_offset() {
        let want = "2026-11-26T07:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_time("2026-11-26T07:00:00Z").unwrap(), want);
        assert_eq!(parse_time("2026-11-26T08:00:00+01:00").unwrap(), want);
    }

    #[test]
    fn parse_time_takes_a_time_without_zone_as_local() {
        use chrono::TimeZone;
        let naive = chrono::NaiveDate::from_ymd_opt(2026, 6, 15).unwrap().and_hms_milli_opt(12, 30, 0, 500).unwrap();
        let want = chrono::Local.from_local_datetime(&naive).single().unwrap().with_timezone(&Utc);
        assert_eq!(parse_time("2026-06-15 12:30:00.5").unwrap(), want);
        assert_eq!(parse_time("2026-06-15T12:30:00.5").unwrap(), want);
    }

    #[test]
    fn parse_time_refuses_what_is_not_a_time() {
        for bad in ["yesterday", "2026-13-01 00:00:00", "2026-11-26", ""] {
            let f = Failure::from(&parse_time(bad).unwrap_err());
            assert!(f.error.contains("is not a time"), "{bad}: {}", f.error);
            assert!(f.hint.unwrap_or_default().contains("RFC 3339"), "{bad}");
        }
    }

    #[test]
    fn pg_error_gives_postgresql_errors_their_hints() {
        let cases: Vec<(anyhow::Error, &str)> = vec![
            (
                cirkel_pg::conn::ConnectError { describe: "h:5432".into(), detail: "refused".into() }.into(),
                "PGHOST/PGPORT/PGUSER",
            ),
            (PlanError::NoBackup(String::new()).into(), "cirkel pg backup"),
            (cirkel_pg::restore::NotEmpty(PathBuf::from("/restore")).into(), "cirkel never deletes it"),
            (cirkel_pg::wal::BadWalName("x".into()).into(), "%f %p"),
        ];
        for (e, hint) in cases {
            let message = e.to_string();
            let f = Failure::from(&pg_error(e));
            assert_eq!(f.error, message);
            assert!(f.hint.as_deref().unwrap_or_default().contains(hint), "{message}: {:?}", f.hint);
        }
    }

    #[test]
    fn pg_error_passes_other_errors_through() {
        let e = pg_error(anyhow::anyhow!("disk full"));
        assert_eq!(e.to_string(), "disk full");
        assert!(e.downcast_ref::<crate::output::UserError>().is_none());
    }

    fn config(text: &str) -> cirkel_config::Config {
        cirkel_config::Config::parse(text, "c.toml", None).unwrap()
    }

    fn conn_args(cluster: Option<&str>, conninfo: Option<&str>) -> crate::cli::PgConnArgs {
        crate::cli::PgConnArgs { cluster: cluster.map(Into::into), conninfo: conninfo.map(Into::into), pgdata: None }
    }

    #[test]
    fn cluster_reads_the_named_cluster_then_lets_flags_override() {
        let cfg =
            config("[postgres.main]\nhost = \"db1\"\nport = 5433\npgdata = \"/srv/pg\"\nbindir = \"/opt/pg/bin\"\n");
        let cl = cluster(&cfg, &conn_args(Some("main"), None)).unwrap();
        assert_eq!(cl.conninfo.as_deref(), Some("host='db1' port=5433"));
        assert_eq!(cl.pgdata, Some(PathBuf::from("/srv/pg")));
        assert_eq!(cl.bindir, PathBuf::from("/opt/pg/bin"));
        let cl = cluster(&cfg, &conn_args(Some("main"), Some("host=db2"))).unwrap();
        assert_eq!(cl.conninfo.as_deref(), Some("host=db2"));
    }

    #[test]
    fn cluster_without_a_name_uses_the_flags_and_the_environment() {
        let cl = cluster(&config(""), &conn_args(None, None)).unwrap();
        assert_eq!(cl.conninfo, None);
        assert_eq!(cl.pgdata, None);
        assert_eq!(cl.bindir, cirkel_pg::stream::find_bindir());
    }

    #[test]
    fn cluster_refuses_an_unknown_name() {
        let Err(e) = cluster(&config(""), &conn_args(Some("nope"), None)) else {
            panic!("an unknown cluster was accepted");
        };
        let f = Failure::from(&e);
        assert_eq!(f.error, "no cluster named `nope`");
        assert!(f.hint.unwrap_or_default().contains("[postgres.NAME]"));
    }
}
