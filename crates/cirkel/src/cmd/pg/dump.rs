//! `cirkel pg dump` and `dump-restore`: one table exported with `pg_dump`
//! and loaded back, for the restore that needs a table rather than a cluster.

use std::process::ExitCode;

use serde_json::json;

use crate::cli::{Global, PgDumpArgs, PgDumpRestoreArgs};
use crate::context::{load_config, main_repo};
use crate::output::{human_bytes, print_json, user_error};

pub(super) fn dump(global: &Global, a: &PgDumpArgs) -> anyhow::Result<ExitCode> {
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

pub(super) fn dump_restore(global: &Global, a: &PgDumpRestoreArgs) -> anyhow::Result<ExitCode> {
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
