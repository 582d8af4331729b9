//! `cirkel drill history` and `cirkel drill run NAME`: the drill history in
//! the embedded store, and a configured drill run now.

use std::process::ExitCode;

use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;

use crate::cli::{DrillHistoryArgs, DrillRecordArgs, DrillRunArgs, Global, PgDrillArgs, PgVerifyArgs};
use crate::context::{load_config, state_dir};
use crate::output::{print_json, user_error};

pub fn history(global: &Global, a: &DrillHistoryArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let state = state_dir(&cfg);
    if !state.root().join(cirkel_notify::store::FILE_NAME).exists() {
        if global.json {
            print_json(&serde_json::json!({ "runs": [], "drills": [] }));
        } else {
            println!(
                "no drill has run yet: `cirkel drill failover`, `cirkel pg verify` or a [drills.NAME] schedule records one"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = cirkel_notify::Store::open_in(state.root()).map_err(|e| {
        user_error(format!("cannot open the drill history: {e}"), "check the state directory's permissions")
    })?;
    let runs = store.drills(a.name.as_deref(), a.last.max(1)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let summaries: Vec<_> = names
        .iter()
        .map(|n| {
            let mine: Vec<_> = runs.iter().filter(|r| r.name == *n).cloned().collect();
            cirkel_notify::drills::summarize(n, &mine)
        })
        .collect();
    if global.json {
        print_json(&serde_json::json!({ "runs": runs, "drills": summaries }));
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no run of {} is recorded", a.name.as_deref().unwrap_or("any drill"));
        return Ok(ExitCode::SUCCESS);
    }
    let secs = |v: Option<f64>| v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "-".into());
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["#", "Drill", "Kind", "Target", "Started", "Outcome", "RTO", "Target RTO", "Lost", "Why"]);
    for r in &runs {
        t.add_row([
            r.id.to_string(),
            r.name.clone(),
            r.kind.clone(),
            r.target.clone(),
            r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            r.outcome.as_str().to_uppercase(),
            secs(r.rto_s),
            secs(r.rto_target_s),
            r.writes_lost.to_string(),
            r.reason.chars().take(60).collect(),
        ]);
    }
    println!("{t}");
    for s in &summaries {
        let trend = match s.trend_s {
            Some(d) if d > 0.0 => format!("{d:.2} s slower than the run before"),
            Some(d) => format!("{:.2} s faster than the run before", -d),
            None => "no trend yet".into(),
        };
        println!(
            "{}: {} of {} passed; worst RTO {} (run #{}); {trend}",
            s.name,
            s.passed,
            s.runs,
            secs(s.worst_rto_s),
            s.worst_run.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(global: &Global, a: &DrillRunArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let Some(d) = cfg.drills.get(&a.name) else {
        let known: Vec<&String> = cfg.drills.keys().collect();
        return Err(user_error(
            format!("no drill `{}` is configured", a.name),
            if known.is_empty() {
                "add a [drills.NAME] table with kind = \"failover\" (or switchover, redis-failover, restore)"
                    .to_string()
            } else {
                format!("configured drills: {}", known.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
            },
        ));
    };
    let record = DrillRecordArgs { name: Some(a.name.clone()), rto_target: Some(d.rto_target) };
    use cirkel_config::DrillKind;
    match d.kind {
        DrillKind::Failover | DrillKind::Switchover => {
            let args = PgDrillArgs {
                cluster: d.target.clone(),
                timeout: d.timeout,
                fault: d.fault.clone().unwrap_or_else(|| "kill".into()),
                zone: None,
                record,
            };
            let to = (d.kind == DrillKind::Switchover).then_some(None);
            crate::cmd::pg::failover_drill(global, &args, to)
        }
        DrillKind::RedisFailover => {
            let args = crate::cli::RedisDrillArgs {
                group: crate::cli::GroupArg { group: d.target.clone() },
                interval: std::time::Duration::from_millis(10),
                timeout: d.timeout,
                record,
            };
            crate::cmd::redis::drill(global, &crate::cli::DrillCmd::RedisFailover(args))
        }
        DrillKind::Region => {
            let from = d.target.clone().or_else(|| cfg.repositories.keys().next().cloned()).unwrap_or_default();
            let args = crate::cmd::recover::RegionDrillArgs { from, timeout: d.timeout, record };
            crate::cmd::recover::drill(global, &args)
        }
        DrillKind::Scenario => {
            let args = crate::cmd::scenario::ScenarioArgs {
                scenario: d.target.clone().unwrap_or_default(),
                opts: crate::cmd::scenario::ScenarioOpts { timeout: Some(d.timeout), ..Default::default() },
                record,
            };
            crate::cmd::scenario::run(global, &args)
        }
        DrillKind::Network => {
            let fault = d.fault.as_deref().unwrap_or_default().parse::<cirkel_config::NetFault>().map_err(|e| {
                user_error(format!("drills.{}.fault: {e}", a.name), "fix the drill's `fault` in the configuration")
            })?;
            let args = crate::cli::NetworkDrillArgs {
                cluster: d.target.clone(),
                member: d.member.clone(),
                fault,
                hold: d.hold,
                timeout: d.timeout,
                record,
            };
            crate::cmd::pg::network_drill(global, &args)
        }
        DrillKind::Restore => {
            let args = PgVerifyArgs { backup: None, query: None, timeout: d.timeout, record };
            crate::cmd::pg::verify_drill(global, &args)
        }
    }
}
