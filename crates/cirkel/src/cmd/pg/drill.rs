//! `cirkel pg verify` and `cirkel drill failover|switchover` for PostgreSQL:
//! drills that prove a backup restores and a cluster fails over, rather than
//! trusting that they would.

use std::process::ExitCode;

use super::ha::member_cluster;
use super::pg_error;
use super::wal::restore_command;
use crate::cli::{Global, PgVerifyArgs};
use crate::context::{load_config, main_repo, threads};
use crate::output::{human_bytes, print_json, spinner, user_error};

pub fn verify(global: &Global, a: &PgVerifyArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let _lock = crate::context::drill_lock(&cfg, "restore")?;
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
    let started = chrono::Utc::now();
    let report = cirkel_pg::verify::verify(&repo, &opts).map_err(pg_error)?;
    bar.finish_and_clear();
    // Recorded as a drill: its throughput predicts how long a restore of
    // today's backup takes. The source names the backup's system
    // identifier; the daemon knows which cluster that is.
    let system = report.backup.and_then(|id| {
        cirkel_pg::catalog::backups(&repo).ok()?.into_iter().find(|b| b.id == id).map(|b| b.meta.system_id)
    });
    if let Some(system) = system {
        let target = report.backup.map(|b| b.short()).unwrap_or_default();
        let outcome = crate::context::DrillOutcome {
            source: &format!("postgres@{system}"),
            kind: "restore-drill",
            what: "restore drill",
            passed: report.ok,
            rto_s: Some(report.total_seconds),
            writes_lost: 0,
            bytes: Some(report.bytes),
            target: &target,
            record: &a.record,
            plan: cirkel_config::DrillKind::Restore,
            started,
            aborted: None,
            failures: &report.problems,
        };
        let value = serde_json::to_value(&report)?;
        if let Err(e) = crate::context::store_drill(&cfg, &outcome, &value) {
            tracing::warn!("the restore drill's report was not stored: {e:#}");
        }
    }
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

pub fn failover_drill(
    global: &Global,
    a: &crate::cli::PgDrillArgs,
    switchover: Option<Option<String>>,
) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let (name, c) = member_cluster(&cfg, a.cluster.as_deref())?;
    let _lock = crate::context::drill_lock(&cfg, &format!("postgres/{name}"))?;
    let state = crate::context::state_dir(&cfg);
    let (fault, kind, what) = match switchover {
        None if a.fault == "stop" => (cirkel_pg::drill::Fault::Stop, "postgres-failover", "failover drill (SIGSTOP)"),
        None if a.fault == "disk-full" => {
            (cirkel_pg::drill::Fault::DiskFull, "postgres-failover", "failover drill (WAL volume full)")
        }
        None if a.fault == "partition" => (
            cirkel_pg::drill::Fault::Partition,
            "postgres-failover",
            "failover drill (primary cut off from the network)",
        ),
        None if a.fault == "zone" => {
            (cirkel_pg::drill::Fault::Zone(a.zone.clone()), "postgres-failover", "failover drill (zone cut off)")
        }
        None => (cirkel_pg::drill::Fault::Kill, "postgres-failover", "failover drill"),
        Some(to) => {
            (cirkel_pg::drill::Fault::Switchover { state: &state, to }, "postgres-switchover", "switchover drill")
        }
    };
    if !global.quiet && !global.json {
        match fault {
            cirkel_pg::drill::Fault::Stop => {
                eprintln!("drill: stopping (SIGSTOP) the primary of `{name}` under a canary writer on the endpoint…")
            }
            cirkel_pg::drill::Fault::Kill => {
                eprintln!("drill: killing the primary of `{name}` under a canary writer on the endpoint…")
            }
            cirkel_pg::drill::Fault::DiskFull => {
                eprintln!("drill: filling the WAL volume of `{name}`'s primary under a canary writer on the endpoint…")
            }
            cirkel_pg::drill::Fault::Zone(_) => {
                eprintln!("drill: cutting off the primary's zone of `{name}` under a canary writer on the endpoint…")
            }
            cirkel_pg::drill::Fault::Partition => {
                eprintln!(
                    "drill: cutting the primary of `{name}` off the network under a canary writer on the endpoint…"
                )
            }
            _ => eprintln!("drill: switching `{name}` over under a canary writer on the endpoint…"),
        }
    }
    let started = chrono::Utc::now();
    // SIGTERM (from `cirkel serve` when a guardrail trips, or a person)
    // aborts the drill: its fault is undone, and it is recorded as such.
    let abort = crate::context::stop_on_signal();
    crate::context::undo_drill_leftover(&cfg)?;
    let report =
        cirkel_pg::drill::run_drill(&name, &c, a.timeout, fault, &abort, Some((&state, a.record.name.clone())))
            .map_err(|e| {
                user_error(
                    format!("the drill did not run: {e:#}"),
                    "run `cirkel status`; `cirkel serve` must be watching the cluster",
                )
            })?;
    let value = serde_json::to_value(&report)?;
    let aborted = abort
        .load(std::sync::atomic::Ordering::Relaxed)
        .then(|| "stopped by a signal before the end; the old primary was started again".to_string());
    let outcome = crate::context::DrillOutcome {
        source: &format!("postgres/{name}"),
        kind,
        what,
        passed: report.passed,
        rto_s: report.rto_s,
        writes_lost: report.writes_lost,
        bytes: None,
        target: &name,
        record: &a.record,
        plan: if kind == "postgres-failover" {
            cirkel_config::DrillKind::Failover
        } else {
            cirkel_config::DrillKind::Switchover
        },
        started,
        aborted,
        failures: &report.failures,
    };
    let path = crate::context::store_drill(&cfg, &outcome, &value)?;
    if global.json {
        print_json(&value);
    } else {
        println!("{what} of `{name}`: {}", if report.passed { "PASSED" } else { "FAILED" });
        println!(
            "  old primary     {}{}",
            report.engine.old_primary,
            if report.engine.killed.is_some() {
                " (killed with SIGKILL)".to_string()
            } else if report.engine.stopped.is_some() {
                " (stopped with SIGSTOP, continued)".to_string()
            } else if let Some(b) = report.engine.balloon_bytes {
                format!(" (its WAL volume filled with {} MiB, then freed)", b >> 20)
            } else if report.engine.partitioned.is_some() {
                " (cut off from the network, reconnected)".to_string()
            } else if !report.engine.cut_off.is_empty() {
                format!(" (zone cut off: {})", report.engine.cut_off.join(", "))
            } else {
                " (switched over)".to_string()
            }
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
    Ok(if outcome.outcome() == cirkel_notify::drills::Outcome::Passed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// `cirkel drill network`: a member's network degraded for a while; the
/// cluster must ride it out.
pub fn network_drill(global: &Global, a: &crate::cli::NetworkDrillArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let (name, c) = member_cluster(&cfg, a.cluster.as_deref())?;
    let _lock = crate::context::drill_lock(&cfg, &format!("postgres/{name}"))?;
    let state = crate::context::state_dir(&cfg);
    let who = a.member.clone().unwrap_or_else(|| "the primary".into());
    if !global.quiet && !global.json {
        eprintln!(
            "drill: {} on {who} of `{name}` for {} under a canary writer on the endpoint…",
            a.fault,
            humantime::format_duration(a.hold)
        );
    }
    let started = chrono::Utc::now();
    let abort = crate::context::stop_on_signal();
    crate::context::undo_drill_leftover(&cfg)?;
    let d = cirkel_pg::drill::network::NetworkDrill {
        member: a.member.as_deref(),
        fault: a.fault,
        hold: a.hold,
        timeout: a.timeout,
    };
    let report = cirkel_pg::drill::network::run(&name, &c, &d, &abort, Some((&state, a.record.name.clone())))
        .map_err(|e| {
            user_error(
                format!("the drill did not run: {e:#}"),
                "run `cirkel status`; `cirkel serve` must be watching the cluster, and network faults need root and nftables",
            )
        })?;
    let value = serde_json::to_value(&report)?;
    let what = format!("network drill ({})", a.fault);
    let outcome = crate::context::DrillOutcome {
        source: &format!("postgres/{name}"),
        kind: "postgres-network",
        what: &what,
        passed: report.passed,
        rto_s: report.rto_s,
        writes_lost: report.writes_lost,
        bytes: None,
        target: &name,
        record: &a.record,
        plan: cirkel_config::DrillKind::Network,
        started,
        aborted: abort
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| "stopped by a signal before the end; the network fault was removed".to_string()),
        failures: &report.failures,
    };
    let path = crate::context::store_drill(&cfg, &outcome, &value)?;
    if global.json {
        print_json(&value);
    } else {
        let e = &report.engine;
        let ms = |p: &Option<cirkel_pg::drill::network::Percentiles>| {
            p.map(|p| format!("p50 {:.1} ms, p99 {:.1} ms ({} writes)", p.p50, p.p99, p.n))
                .unwrap_or_else(|| "none".into())
        };
        println!("{what} of `{name}`: {}", if report.passed { "PASSED" } else { "FAILED" });
        println!("  member          {} ({}, held {:.1} s)", e.member, e.fault, e.held_s);
        println!(
            "  primary         {} → {}{}",
            e.primary_before,
            e.primary_after.as_deref().unwrap_or("none"),
            if e.failed_over { " (FAILED OVER)" } else { " (no failover)" }
        );
        println!("  writes before   {}", ms(&e.write_ms_before));
        println!("  writes during   {}", ms(&e.write_ms_during));
        if let Some(p) = e.write_pause_s {
            println!("  write pause     {p:.3} s (longest gap between acknowledged writes)");
        }
        println!(
            "  writes          {} acknowledged, {} failed, {} lost",
            report.writes_acknowledged, report.writes_failed, report.writes_lost
        );
        if let Some(l) = e.max_lag_bytes {
            println!("  standby lag     at most {}", human_bytes(l));
        }
        if let Some(s) = e.healthy_after_s {
            println!("  healthy         {s:.2} s after the network came back");
        }
        for f in &report.failures {
            println!("  failure: {f}");
        }
        println!("  report          {}", path.display());
    }
    Ok(if outcome.outcome() == cirkel_notify::drills::Outcome::Passed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
