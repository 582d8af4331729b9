//! `cirkel alerts`, `cirkel silence` and `cirkel incident`: the alert store
//! (`cirkel.db` in the state directory) that `cirkel serve` fills and
//! delivers from. Commands write to it directly; the daemon's outbox worker
//! sends what they queue (a PagerDuty acknowledgement, say).

use std::process::ExitCode;

use chrono::Utc;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use cirkel_notify::incident::Phase;
use cirkel_notify::route::Matcher;
use cirkel_notify::{Notifier, Receivers, Settings, Store};

use crate::cli::{AlertsArgs, AlertsCmd, Global, IncidentCmd, SilenceCmd};
use crate::context::{load_config, state_dir};
use crate::output::{print_json, user_error};

fn store(global: &Global) -> anyhow::Result<(cirkel_config::Config, Store)> {
    let cfg = load_config(global)?;
    let state = state_dir(&cfg);
    state.ensure()?;
    let store = Store::open_in(state.root()).map_err(|e| {
        user_error(
            format!("cannot open the alert store: {e}"),
            "check the state directory (CIRKEL_STATE_DIR, [state] dir)",
        )
    })?;
    Ok((cfg, store))
}

/// Who acts, for the records: `--by`, else the login name.
fn who(by: &Option<String>) -> String {
    by.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into())
}

pub fn alerts(global: &Global, a: &AlertsArgs) -> anyhow::Result<ExitCode> {
    let (cfg, store) = store(global)?;
    match &a.cmd {
        Some(AlertsCmd::Ack { id, by }) => {
            let settings = Settings::from_config(&cfg.notifications)
                .map_err(|e| user_error(format!("notifications: {e}"), "fix the [notify.NAME] tables"))?;
            let mut notifier = Notifier::new(store.into(), Receivers::new(settings.receivers.clone()).into());
            settings.apply(&mut notifier);
            let row = notifier.acknowledge(*id, &who(by), Utc::now()).map_err(|e| {
                user_error(format!("cannot acknowledge alert {id}: {e}"), "`cirkel alerts` lists the open alerts")
            })?;
            if global.json {
                print_json(&row);
            } else {
                println!("alert {id} acknowledged by {}: escalation stops", row.acknowledged_by.unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let rows = store.alerts(a.all)?;
            let failing = store.failing()?;
            if global.json {
                print_json(&json!({ "alerts": rows, "failing_deliveries": failing }));
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            t.set_header(["ID", "Severity", "Status", "Alert", "Source", "Since", "Level", "Acknowledged", "Incident"]);
            for r in &rows {
                t.add_row([
                    r.id.to_string(),
                    r.severity.as_str().to_string(),
                    format!("{:?}", r.status).to_lowercase(),
                    r.summary.clone(),
                    r.source.clone(),
                    r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    r.level.to_string(),
                    r.acknowledged_by.clone().unwrap_or_default(),
                    r.incident_id.map(|i| i.to_string()).unwrap_or_default(),
                ]);
            }
            println!("{t}");
            for f in &failing {
                println!("delivery to {} failing: {}", f.receiver, f.last_error.clone().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn silence(global: &Global, cmd: &SilenceCmd) -> anyhow::Result<ExitCode> {
    let (_, store) = store(global)?;
    let now = Utc::now();
    match cmd {
        SilenceCmd::Add { matchers, duration, reason, by } => {
            let parsed: Vec<Matcher> =
                matchers.iter().map(|m| Matcher::parse(m)).collect::<Result<_, _>>().map_err(|e| {
                    user_error(format!("bad --match: {e}"), "write LABEL=VALUE or LABEL!=VALUE, e.g. cluster=main")
                })?;
            if parsed.is_empty() {
                return Err(user_error("a silence needs at least one --match", "e.g. --match cluster=main"));
            }
            let until = now + chrono::Duration::from_std(*duration)?;
            let id = store.add_silence(&parsed, until, reason, &who(by), now)?;
            if global.json {
                print_json(&json!({ "id": id, "until": until }));
            } else {
                println!("silence {id} until {}", until.format("%Y-%m-%d %H:%M:%S UTC"));
            }
        }
        SilenceCmd::List => {
            let rows = store.silences(now)?;
            if global.json {
                print_json(&rows);
            } else {
                for r in rows {
                    let m: Vec<String> = r
                        .matchers
                        .iter()
                        .map(|m| format!("{}{}{}", m.label, if m.negate { "!=" } else { "=" }, m.value))
                        .collect();
                    println!(
                        "{}  until {}  {}  ({}, by {})",
                        r.id,
                        r.until.format("%Y-%m-%d %H:%M"),
                        m.join(" "),
                        r.reason,
                        r.by
                    );
                }
            }
        }
        SilenceCmd::Expire { id } => {
            store.expire_silence(*id, now)?;
            if !global.json {
                println!("silence {id} expired");
            } else {
                print_json(&json!({ "id": id, "expired": true }));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn incident(global: &Global, cmd: &IncidentCmd) -> anyhow::Result<ExitCode> {
    let (_, store) = store(global)?;
    let now = Utc::now();
    let missing = |id: i64, e: cirkel_notify::Error| {
        user_error(format!("incident {id}: {e}"), "`cirkel incident list --all` lists the incidents")
    };
    match cmd {
        IncidentCmd::List { all } => {
            let rows = store.incidents(*all)?;
            if global.json {
                print_json(&rows);
            } else {
                for i in rows {
                    println!(
                        "{}  {}  {:<12} {}  {}",
                        i.id,
                        i.priority.as_str(),
                        i.phase.as_str(),
                        i.opened_at.format("%Y-%m-%d %H:%M:%S"),
                        i.title
                    );
                }
            }
        }
        IncidentCmd::Show { id } => {
            let i = store.incident(*id).map_err(|e| missing(*id, e))?;
            let timeline = store.timeline(*id).map_err(|e| missing(*id, e))?;
            if global.json {
                print_json(&json!({ "incident": i, "timeline": timeline }));
            } else {
                println!("incident {} ({}, {}): {}", i.id, i.priority.as_str(), i.phase.as_str(), i.title);
                for e in timeline {
                    println!("  {}  {:<12} {}", e.at.format("%Y-%m-%d %H:%M:%S%.3f"), e.kind, e.text);
                }
            }
        }
        IncidentCmd::Note { id, text, by } => {
            store.note(*id, &who(by), text, now).map_err(|e| missing(*id, e))?;
            done(global, *id, "note added");
        }
        IncidentCmd::Phase { id, phase, by } => {
            let p = Phase::parse(phase).ok_or_else(|| {
                user_error(
                    format!("`{phase}` is not a phase"),
                    "use detection, assessment, containment, recovery, resolved or postmortem",
                )
            })?;
            store.set_phase(*id, p, &who(by), now).map_err(|e| missing(*id, e))?;
            done(global, *id, &format!("phase {}", p.as_str()));
        }
        IncidentCmd::Resolve { id, by } => {
            store.resolve_incident(*id, &who(by), now).map_err(|e| missing(*id, e))?;
            done(global, *id, "resolved");
        }
        IncidentCmd::Postmortem { id } => {
            let md = store.postmortem(*id).map_err(|e| missing(*id, e))?;
            if global.json {
                print_json(&json!({ "id": id, "markdown": md }));
            } else {
                print!("{md}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn done(global: &Global, id: i64, what: &str) {
    if global.json {
        print_json(&json!({ "id": id, "done": what }));
    } else {
        println!("incident {id}: {what}");
    }
}
