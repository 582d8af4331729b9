//! `cirkel redis ...`.

use std::process::ExitCode;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use cirkel_config::Config;
use cirkel_redis::group::{Group, GroupStatus};
use cirkel_redis::resp::Addr;

use crate::cli::{
    DrillCmd, EventsArgs, Global, GroupArg, RedisBackupArgs, RedisCmd, RedisConfigureArgs, RedisDrillArgs,
    RedisFailoverArgs, RedisRestoreArgs, RedisSwitchoverArgs, StatusArgs,
};
use crate::context::{load_config, main_repo, state_dir};
use crate::output::{human_bytes, print_json, user_error};

pub fn run(global: &Global, cmd: &RedisCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        RedisCmd::Backup(a) => backup(global, a),
        RedisCmd::Backups => backups(global),
        RedisCmd::Restore(a) => restore(global, a),
        RedisCmd::Configure(a) => configure(global, a),
        RedisCmd::Switchover(a) => switchover(global, a),
        RedisCmd::Failover(a) => failover(global, a),
        RedisCmd::Watch(a) => watch(global, a),
    }
}

/// The group `--group` names, or the only one configured.
fn group(cfg: &Config, arg: &GroupArg) -> anyhow::Result<Group> {
    let names: Vec<&String> = cfg.redis.keys().collect();
    let name = crate::context::only_or_given(
        arg.group.as_deref(),
        &names,
        ("Redis group", "Redis groups"),
        "--group",
        "add a [redis.NAME] table with members and sentinels to the configuration (--config)",
    )?;
    let c = cfg.redis.get(&name).ok_or_else(|| {
        user_error(format!("no Redis group `{name}` in the configuration"), "add a [redis.NAME] table, or fix --group")
    })?;
    Group::from_config(&name, c)
}

fn backup(global: &Global, a: &RedisBackupArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let (repo, _owner) = crate::owner::open_writer(global, &main_repo(global, &cfg)?)?;
    let configured = a.group.as_ref().and_then(|g| cfg.redis.get(g).map(|c| (g, c)));
    let (host, port, mut tags) = match (configured, &a.host, a.port) {
        (Some((name, c)), None, None) => {
            let g = Group::from_config(name, c)?;
            let st = g.status();
            let from = st
                .members
                .iter()
                .filter(|m| m.role.as_deref() == Some("slave") && m.link_up == Some(true))
                .min_by_key(|m| m.lag_bytes.unwrap_or(u64::MAX))
                .or_else(|| st.members.iter().find(|m| Some(&m.addr) == st.master.as_ref() && m.reachable))
                .map(|m| m.addr.clone())
                .ok_or_else(|| {
                    user_error(
                        format!("no member of group `{name}` can be backed up: {}", st.problems.join("; ")),
                        "run `cirkel status` to see the group",
                    )
                })?;
            (from.host, from.port, c.tags.clone())
        }
        _ => (a.host.clone().unwrap_or_else(|| "127.0.0.1".into()), a.port.unwrap_or(6379), Vec::new()),
    };
    tags.extend(a.tag.iter().cloned());
    let (user, password) = match configured {
        Some((_, c)) => (c.user.clone(), c.password.as_ref().map(|s| s.expose().to_string())),
        None => (None, None),
    };
    let source = cirkel_redis::Source { host: host.clone(), port, group: a.group.clone(), tags, user, password };
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
            "redis backup {} of {host}:{port} saved: {} ({} added)",
            id.short(),
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

fn configure(global: &Global, a: &RedisConfigureArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let g = group(&cfg, &a.group)?;
    let actions = g.configure(a.dry_run).map_err(|e| {
        user_error(format!("{e:#}"), "nothing was changed; fix the group (or `members`/`sentinels`) and run it again")
    })?;
    if global.json {
        print_json(&json!({ "group": g.name, "dry_run": a.dry_run, "actions": actions }));
    } else if !global.quiet {
        for line in &actions {
            println!("{}{line}", if a.dry_run { "would run: " } else { "" });
        }
        if !a.dry_run {
            println!("sentinels of `{}` configured", g.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn switchover(global: &Global, a: &RedisSwitchoverArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let g = group(&cfg, &a.group)?;
    let to = a.to.as_deref().map(Addr::parse).transpose().map_err(|e| user_error(e, "--to takes HOST:PORT"))?;
    // Tell a running watcher that the master change it will see is planned.
    if let Some(old) = g.status().master {
        let marker = cirkel_redis::watch::PlannedSwitchover { old, requested: chrono::Utc::now() };
        if let Err(e) = state_dir(&cfg).save_json(&cirkel_redis::watch::switchover_marker(&g.name), &marker) {
            tracing::warn!("cannot mark the switchover as planned for the watcher: {e:#}");
        }
    }
    let done = g.switchover(to.as_ref(), a.max_pause).map_err(|e| {
        user_error(
            format!("switchover failed: {e:#}"),
            "run `cirkel status` to see the group; the master is unchanged unless it says otherwise",
        )
    })?;
    let event = cirkel_state::Event::new(
        &g.source(),
        cirkel_state::EventKind::Switchover,
        format!("switchover {} → {}: writes paused {} ms", done.old, done.new, done.write_pause_ms),
    )
    .with_severity(cirkel_state::Severity::Low)
    .with(serde_json::to_value(&done)?);
    state_dir(&cfg).record(&event)?;
    if global.json {
        print_json(&done);
    } else {
        println!(
            "switched over {} → {}; writes paused {} ms (caught up after {} ms); no acknowledged write lost",
            done.old, done.new, done.write_pause_ms, done.caught_up_after_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn failover(global: &Global, a: &RedisFailoverArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let g = group(&cfg, &a.group)?;
    if !a.allow_data_loss {
        return Err(user_error(
            "a forced failover may lose acknowledged writes the replicas never received",
            "use `cirkel redis switchover` while the master runs; pass --allow-data-loss to fail over anyway",
        ));
    }
    let old = g
        .current_master()
        .ok_or_else(|| user_error("the sentinels do not agree on a master", "run `cirkel status`"))?;
    let failed = g.release();
    if !failed.is_empty() {
        tracing::warn!("some sentinels were not reachable: {}", failed.join("; "));
    }
    let by = g.sentinel_failover().map_err(|e| {
        user_error(format!("SENTINEL FAILOVER failed: {e:#}"), "run `cirkel status`; a sentinel must be reachable")
    })?;
    let new =
        g.wait_for_new_master(&old, g.failover_timeout.max(std::time::Duration::from_secs(10))).ok_or_else(|| {
            user_error(format!("the sentinels still name {old}"), "run `cirkel status` and `cirkel events --last 20`")
        })?;
    state_dir(&cfg).record(&cirkel_state::Event::new(
        &g.source(),
        cirkel_state::EventKind::ForcedFailover,
        format!("forced failover {old} → {new} (asked {by}), data loss allowed"),
    ))?;
    if global.json {
        print_json(&json!({ "old_master": old, "new_master": new, "sentinel": by }));
    } else {
        println!("failed over {old} → {new}");
    }
    Ok(ExitCode::SUCCESS)
}

fn watch(global: &Global, a: &GroupArg) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let g = group(&cfg, a)?;
    let state = state_dir(&cfg);
    let stop = crate::context::stop_on_signal();
    if !global.quiet && !global.json {
        eprintln!("watching redis group `{}`; events go to {}", g.name, state.root().display());
    }
    cirkel_redis::watch::watch(&g, &state, cfg.coordination.as_ref(), stop)?;
    Ok(ExitCode::SUCCESS)
}

pub fn status(global: &Global, a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let only_pg = a.cluster.is_some() && a.group.is_none();
    let only_redis = a.group.is_some() && a.cluster.is_none();
    let redis_names: Vec<&String> = match &a.group {
        Some(n) => vec![n],
        None if only_pg => Vec::new(),
        None => cfg.redis.keys().collect(),
    };
    let pg_names: Vec<String> = match &a.cluster {
        Some(n) => vec![n.clone()],
        None if only_redis => Vec::new(),
        None => cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, _)| n.clone()).collect(),
    };
    let show_checks = !cfg.checks.is_empty() && a.group.is_none() && a.cluster.is_none();
    if redis_names.is_empty() && pg_names.is_empty() && !show_checks {
        return Err(user_error(
            "nothing to show: no Redis group, no PostgreSQL cluster with members and no [checks.NAME] is configured",
            "add a [redis.NAME] table, [postgres.NAME.members.M] tables or [checks.NAME] tables to --config",
        ));
    }
    // Checks run in the daemon; their states are what it last published.
    let (published, stale) = if show_checks {
        let (p, w) = crate::cmd::alarms::published(&state_dir(&cfg));
        (p.checks, w)
    } else {
        (Vec::new(), None)
    };
    let mut redis = Vec::new();
    for n in redis_names {
        redis.push(group(&cfg, &GroupArg { group: Some(n.clone()) })?.status());
    }
    let mut postgres = Vec::new();
    for n in &pg_names {
        let (name, c) = crate::cmd::pg::member_cluster(&cfg, Some(n))?;
        let mut st = cirkel_pg::members::status(&name, &c);
        let _ = cirkel_pg::members::check_archiving(&c, &mut st);
        postgres.push(st);
    }
    // With agents on several hosts: every agent, and who leads what.
    let coordination = cfg.coordination.as_ref().map(|cc| {
        let mut scopes = vec![cirkel_server::lead::SCOPE.to_string()];
        scopes.extend(pg_names.iter().map(|n| cirkel_pg::coord::Coord::scope_of(n)));
        scopes.extend(cfg.redis.keys().map(|n| format!("redis-{n}")));
        cirkel_pg::coord::overview(cc, &scopes).map_err(|e| e.to_string())
    });
    let coordination_ok = match &coordination {
        Some(Ok(o)) => o.agents.iter().all(|a| a.alive) && o.leaders.iter().all(|l| l.holder.is_some()),
        Some(Err(_)) => false,
        None => true,
    };
    let healthy = redis.iter().all(|s| s.healthy)
        && postgres.iter().all(|s| s.healthy)
        && published.iter().all(|c| c.state != "down")
        && coordination_ok;
    if global.json {
        let coordination = match &coordination {
            Some(Ok(o)) => json!(o),
            Some(Err(e)) => json!({ "error": e }),
            None => json!(null),
        };
        print_json(&json!({
            "healthy": healthy, "redis": redis, "postgres": postgres, "checks": published, "checks_warning": stale,
            "coordination": coordination,
        }));
    } else {
        match &coordination {
            Some(Ok(o)) => print_coordination(o),
            Some(Err(e)) => println!("coordination: UNREACHABLE: {e}"),
            None => {}
        }
        if show_checks {
            if let Some(w) = &stale {
                eprintln!("warning: checks: {w}");
            }
            crate::cmd::alarms::print_checks(&published);
        }
        for s in &postgres {
            print_pg_status(s);
        }
        for s in &redis {
            print_status(s);
        }
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn print_coordination(o: &cirkel_pg::coord::Overview) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["Agent", "State", "Last heard", "Pid", "Version", "Leads"]);
    for a in &o.agents {
        let h = &a.heartbeat;
        let leads: Vec<String> = o
            .leaders
            .iter()
            .filter(|l| l.holder.as_deref() == Some(h.node.as_str()))
            .map(|l| format!("{} (token {})", l.scope, l.epoch.unwrap_or(0)))
            .collect();
        t.add_row([
            h.node.clone(),
            if a.alive { "alive" } else { "SILENT" }.to_string(),
            format!("{:.1} s ago", a.age_s),
            h.pid.to_string(),
            h.version.clone(),
            leads.join(", "),
        ]);
    }
    println!("{t}");
    for l in &o.leaders {
        if l.holder.is_none() {
            println!("  {}: NO LEADER", l.scope);
        }
        if let Some(r) = &l.route {
            println!(
                "  {}: endpoints route to {} (token {})",
                l.scope,
                r.primary.as_deref().unwrap_or("nobody"),
                r.epoch
            );
        }
    }
}

fn print_pg_status(s: &cirkel_pg::members::ClusterStatus) {
    println!(
        "postgres cluster {}: {}, primary {}",
        s.cluster,
        if s.healthy { "healthy" } else { "DEGRADED" },
        s.primary.as_deref().unwrap_or("none")
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["Member", "Address", "Zone", "Role", "TL", "LSN", "Lag", "Receiver", "Priority"]);
    for m in &s.members {
        t.add_row([
            m.name.clone(),
            format!("{}:{}", m.host, m.port),
            m.zone.clone(),
            if m.reachable { m.role.clone().unwrap_or_default() } else { "DOWN".into() },
            m.timeline.map(|t| t.to_string()).unwrap_or_default(),
            m.lsn.clone().unwrap_or_default(),
            m.lag_bytes.map(human_bytes).unwrap_or_default(),
            m.receiver.clone().unwrap_or_default(),
            m.priority.to_string(),
        ]);
    }
    println!("{t}");
    if let Some(p) = s.members.iter().find(|m| Some(&m.name) == s.primary.as_ref()) {
        let sync: Vec<String> = p
            .replicas
            .iter()
            .filter(|l| l.sync_state != "async")
            .map(|l| format!("{} {}", l.name, l.sync_state))
            .collect();
        match p.synchronous_standby_names.as_deref() {
            Some(names) if !names.is_empty() => println!("  synchronous: {names}; {}", sync.join(", ")),
            _ => {}
        }
    }
    for p in &s.problems {
        println!("  problem: {p}");
    }
}

fn print_status(s: &GroupStatus) {
    let state = if s.held {
        "FAILOVER HELD"
    } else if s.healthy {
        "healthy"
    } else {
        "DEGRADED"
    };
    let master = s.master.as_ref().map(|m| m.to_string()).unwrap_or_else(|| "?".into());
    println!("redis group {}: {state}, master {master}, loss limit {}", s.group, human_bytes(s.max_lag_bytes));
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["Member", "Role", "Offset", "Lag", "Link", "Priority", "Latency"]);
    for m in &s.members {
        t.add_row([
            m.addr.to_string(),
            if m.reachable { m.role.clone().unwrap_or_default().replace("slave", "replica") } else { "DOWN".into() },
            m.offset.map(|o| o.to_string()).unwrap_or_default(),
            m.lag_bytes.map(human_bytes).unwrap_or_default(),
            m.link_up.map(|u| if u { "up" } else { "DOWN" }.to_string()).unwrap_or_default(),
            m.priority.map(|p| p.to_string()).unwrap_or_default(),
            m.latency_ms.filter(|_| m.reachable).map(|l| format!("{l:.1} ms")).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["Sentinel", "Master", "Flags", "Quorum", "Down after", "Others"]);
    for x in &s.sentinels {
        t.add_row([
            x.addr.to_string(),
            if x.reachable { x.master.as_ref().map(|m| m.to_string()).unwrap_or_default() } else { "DOWN".into() },
            x.flags.clone(),
            format!("{}{}", x.quorum.map(|q| q.to_string()).unwrap_or_default(), if x.quorum_ok { " ok" } else { "" }),
            x.down_after_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
            x.other_sentinels.map(|n| n.to_string()).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    for p in &s.problems {
        println!("  problem: {p}");
    }
}

pub fn events(global: &Global, a: &EventsArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let mut list: Vec<_> = state_dir(&cfg)
        .events()?
        .into_iter()
        .filter(|e| a.source.as_ref().is_none_or(|s| &e.source == s))
        .filter(|e| a.kind.as_ref().is_none_or(|k| e.kind == k.as_str()))
        .filter(|e| a.severity.is_none_or(|s| e.severity >= s))
        .collect();
    if let Some(n) = a.last {
        list = list.split_off(list.len().saturating_sub(n));
    }
    if global.json {
        print_json(&list);
    } else {
        for e in &list {
            println!(
                "{} {:8} {:14} {:22} {}",
                e.time.format("%Y-%m-%d %H:%M:%S%.3f"),
                e.severity.as_str().to_uppercase(),
                e.source,
                e.kind,
                e.message
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn drill(global: &Global, cmd: &DrillCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DrillCmd::RedisFailover(a) => redis_drill(global, a),
        DrillCmd::Region(a) => crate::cmd::recover::drill(global, a),
        DrillCmd::Failover(a) => crate::cmd::pg::failover_drill(global, a, None),
        DrillCmd::Switchover(a) => crate::cmd::pg::failover_drill(global, &a.drill, Some(a.to.clone())),
        DrillCmd::History(a) => crate::cmd::drills::history(global, a),
        DrillCmd::Run(a) => crate::cmd::drills::run(global, a),
        DrillCmd::Scenario(a) => crate::cmd::scenario::run(global, a),
        DrillCmd::Suite(a) => crate::cmd::scenario::suite(global, a),
        DrillCmd::Network(a) => crate::cmd::pg::network_drill(global, a),
    }
}

fn redis_drill(global: &Global, a: &RedisDrillArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let g = group(&cfg, &a.group)?;
    let _lock = crate::context::drill_lock(&cfg, &g.source())?;
    let opts = cirkel_redis::drill::DrillOptions { interval: a.interval, timeout: a.timeout, ..Default::default() };
    if !global.quiet && !global.json {
        eprintln!("drill: killing the master of `{}` under a canary writer…", g.name);
    }
    let started = chrono::Utc::now();
    let report = cirkel_redis::drill::drill(&g, &opts).map_err(|e| {
        user_error(format!("the drill did not run: {e:#}"), "run `cirkel status` and make the group healthy first")
    })?;
    let value = serde_json::to_value(&report)?;
    let outcome = crate::context::DrillOutcome {
        source: &g.source(),
        kind: "redis-failover",
        what: "redis failover drill",
        passed: report.passed,
        rto_s: report.rto_s,
        writes_lost: report.writes_lost,
        bytes: None,
        target: &g.name,
        record: &a.record,
        plan: cirkel_config::DrillKind::RedisFailover,
        started,
        aborted: None,
        failures: &report.failures,
    };
    let path = crate::context::store_drill(&cfg, &outcome, &value)?;
    if global.json {
        print_json(&value);
    } else {
        println!("redis failover drill of `{}`: {}", g.name, if report.passed { "PASSED" } else { "FAILED" });
        println!("  killed master      {} (pid {})", report.engine.killed, report.engine.killed_pid);
        println!(
            "  new master         {}",
            report.engine.new_master.as_ref().map(|m| m.to_string()).unwrap_or_else(|| "none".into())
        );
        println!(
            "  RTO                {}",
            report
                .rto_s
                .map(|s| format!("{s:.3} s (kill → first acknowledged write)"))
                .unwrap_or_else(|| "no failover".into())
        );
        println!(
            "  writes             {} acknowledged, {} failed during the outage, {} lost",
            report.writes_acknowledged, report.writes_failed, report.writes_lost
        );
        println!(
            "  replication loss   {} (limit {})",
            report.engine.lost_bytes_at_least.map(|b| format!("≥ {b} bytes")).unwrap_or_else(|| "unknown".into()),
            human_bytes(report.engine.max_lag_bytes)
        );
        for (k, v) in &report.timeline_s {
            println!("  {k:18} {v:.3}");
        }
        if let Some(r) = report.rejoin_s {
            println!("  rejoin             {r:.2} s (restart → replicating from the new master)");
        }
        for f in &report.failures {
            println!("  failure: {f}");
        }
        println!("  report             {}", path.display());
    }
    Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
