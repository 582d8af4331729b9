//! `cirkel wal-push`, `cirkel wal-fetch` and `cirkel pg stream-wal`: the
//! commands PostgreSQL runs to archive and fetch WAL, how they are written
//! into its settings, and the streamer that archives WAL as it is written.

use std::path::PathBuf;
use std::process::ExitCode;

use cirkel_pg::wal::Fetched;
use serde_json::json;

use super::{cluster, pg_error};
use crate::cli::{Global, StreamWalArgs, WalFetchArgs, WalPushArgs};
use crate::context::{load_config, main_repo};
use crate::output::{print_json, user_error};

/// The restore_command PostgreSQL runs to fetch WAL from this repository.
pub(super) fn restore_command(
    global: &Global,
    target: &crate::context::RepoTarget,
    repo: &cirkel_repo::Repository,
) -> anyhow::Result<String> {
    Ok(wal_command(global, &repo.location(), target.password_file.as_deref(), "wal-fetch %f %p"))
}

/// `cirkel --repo LOCATION ... SUBCOMMAND`, as PostgreSQL runs it.
pub(super) fn wal_command(
    global: &Global,
    location: &str,
    password_file: Option<&std::path::Path>,
    sub: &str,
) -> String {
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

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=@".contains(c)) {
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

pub(super) fn stream_wal(global: &Global, a: &StreamWalArgs) -> anyhow::Result<ExitCode> {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn shell_quote_leaves_plain_words_alone() {
        for plain in ["/var/lib/cirkel", "s3://bucket/pre-fix_1.x", "user@host:5432", "a=b"] {
            assert_eq!(shell_quote(plain), plain);
        }
    }

    #[test]
    fn shell_quote_quotes_everything_a_shell_would_read() {
        assert_eq!(shell_quote("/srv/my repo"), "'/srv/my repo'");
        assert_eq!(shell_quote("$HOME;rm -rf /"), "'$HOME;rm -rf /'");
        assert_eq!(shell_quote("*"), "'*'");
        // A quote inside ends the quoted word, is escaped, and opens another.
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        // An empty argument stays an argument.
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn wal_command_names_the_repository_passphrase_and_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("my config.toml");
        std::fs::write(&config, "").unwrap();
        let cli = Cli::try_parse_from(["cirkel", "--config", config.to_str().unwrap(), "pg", "backups"]).unwrap();
        let cmd = wal_command(&cli.global, "/srv/my repo", Some(std::path::Path::new("/etc/pass word")), "wal-push %p");
        assert!(cmd.contains(" --repo '/srv/my repo'"), "{cmd}");
        assert!(cmd.contains(" --password-file '/etc/pass word'"), "{cmd}");
        let canonical = std::fs::canonicalize(&config).unwrap();
        assert!(cmd.contains(&format!(" --config '{}'", canonical.display())), "{cmd}");
        assert!(cmd.ends_with(" wal-push %p"), "{cmd}");
    }

    #[test]
    fn wal_command_leaves_out_what_is_not_given() {
        let mut global = Cli::try_parse_from(["cirkel", "pg", "backups"]).unwrap().global;
        // CIRKEL_CONFIG may be set where the tests run.
        global.config = None;
        let cmd = wal_command(&global, "/srv/repo", None, "wal-fetch %f %p");
        assert!(cmd.contains(" --repo /srv/repo wal-fetch %f %p"), "{cmd}");
        assert!(!cmd.contains("--password-file") && !cmd.contains("--config"), "{cmd}");
    }
}
