//! `cirkel redis ...`.

use std::process::ExitCode;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use crate::cli::{Global, RedisBackupArgs, RedisCmd, RedisRestoreArgs};
use crate::context::{load_config, main_repo};
use crate::output::{human_bytes, print_json, user_error};

pub fn run(global: &Global, cmd: &RedisCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RedisCmd::Backup(a) => backup(global, a),
        RedisCmd::Backups => backups(global),
        RedisCmd::Restore(a) => restore(global, a),
    }
}

fn backup(global: &Global, a: &RedisBackupArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let source =
        cirkel_redis::Source { host: a.host.clone(), port: a.port, group: a.group.clone(), tags: a.tag.clone() };
    let (id, snap) = cirkel_redis::backup(&repo, &source).map_err(|e| {
        let msg = format!("{e:#}");
        if e.downcast_ref::<cirkel_redis::rdb::RdbError>().is_some() {
            user_error(msg, "the snapshot was not stored; check the server's disk and memory, then back up again")
        } else {
            user_error(msg, "check that Redis runs at --host/--port and that redis-cli (redis-tools) is installed")
        }
    })?;
    if global.json {
        print_json(&json!({ "id": id, "snapshot": snap }));
    } else {
        println!(
            "redis backup {} of {}:{} saved: {} ({} added)",
            id.short(),
            a.host,
            a.port,
            human_bytes(snap.summary.bytes),
            human_bytes(snap.summary.bytes_added)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn backups(global: &Global) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let list = cirkel_redis::list(&repo)?;
    if global.json {
        let v: Vec<_> = list
            .iter()
            .map(|(id, s, m)| json!({ "id": id, "short_id": id.short(), "time": s.time, "tags": s.tags, "meta": m }))
            .collect();
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["ID", "Time (UTC)", "Server", "Group", "RDB", "Size", "Tags"]);
    for (id, s, m) in &list {
        t.add_row([
            id.short(),
            s.time.format("%Y-%m-%d %H:%M:%S").to_string(),
            format!("{}:{}", m.host, m.port),
            m.group.clone().unwrap_or_default(),
            m.rdb_version.to_string(),
            human_bytes(m.bytes),
            s.tags.join(","),
        ]);
    }
    println!("{t}");
    println!("{} backup(s)", list.len());
    Ok(ExitCode::SUCCESS)
}

fn restore(global: &Global, a: &RedisRestoreArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let repo = main_repo(global, &cfg)?.open()?;
    let (id, snap) = repo.find_snapshot(&a.snapshot, Some(cirkel_redis::KIND))?;
    if let Some((host, port)) = server_target(&a.to) {
        let n = cirkel_redis::restore_to_server(&repo, &snap, &host, port, a.force).map_err(|e| {
            let msg = format!("{e:#}");
            if e.downcast_ref::<cirkel_redis::TargetHasData>().is_some() {
                user_error(msg, "restore into an empty Redis, or pass --force to replace its keys")
            } else {
                user_error(msg, "the target must run and be able to connect back to this host")
            }
        })?;
        if global.json {
            print_json(&json!({ "id": id, "bytes": n, "server": format!("{host}:{port}") }));
        } else {
            println!("restored redis backup {} ({}) into {host}:{port}", id.short(), human_bytes(n));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let n = cirkel_redis::restore_to_dir(&repo, &snap, &a.to, a.force).map_err(|e| {
        let msg = format!("{e:#}");
        if e.downcast_ref::<cirkel_redis::TargetHasData>().is_some() {
            user_error(msg, "restore into an empty directory, or pass --force to replace it")
        } else {
            user_error(msg, "run `cirkel repo verify --read-data`; restore an older backup")
        }
    })?;
    if global.json {
        print_json(&json!({ "id": id, "bytes": n, "file": a.to.join("dump.rdb") }));
    } else {
        println!(
            "restored redis backup {} ({}) to {}; start it with: redis-server --dir {} --dbfilename dump.rdb",
            id.short(),
            human_bytes(n),
            a.to.join("dump.rdb").display(),
            a.to.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `HOST:PORT` (when no such path exists) names a running server.
fn server_target(to: &std::path::Path) -> Option<(String, u16)> {
    if to.exists() {
        return None;
    }
    let s = to.to_str()?;
    let (host, port) = s.rsplit_once(':')?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((host.trim_matches(['[', ']']).to_string(), port.parse().ok()?))
}
