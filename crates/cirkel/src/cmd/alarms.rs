//! `cirkel alarms`: the state of every alarm and health check as the
//! running daemon last published it (`alarms.json` in the state
//! directory), and `cirkel alarms history NAME`, an alarm's transitions from
//! the event log.

use std::process::ExitCode;

use chrono::Utc;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;

use cirkel_server::monitor::{ALARMS_FILE, Published, PublishedCheck};
use cirkel_state::{EventKind, StateDir};

use crate::cli::{AlarmsArgs, AlarmsCmd, Global};
use crate::context::{load_config, state_dir};
use crate::output::{print_json, user_error};

/// How old the published states may be before they are called stale: the
/// daemon publishes every few seconds.
const STALE_AFTER_S: i64 = 60;

/// What the daemon last published, and a warning when that is old or absent.
pub fn published(state: &StateDir) -> (Published, Option<String>) {
    match state.load_json::<Published>(ALARMS_FILE) {
        Ok(Some(p)) => {
            let age = p.updated.map(|u| (Utc::now() - u).num_seconds()).unwrap_or(i64::MAX);
            let warning = (age > STALE_AFTER_S)
                .then(|| format!("these states are {age} s old: is `cirkel serve` running with this state directory?"));
            (p, warning)
        }
        Ok(None) => {
            (Published::default(), Some("no alarm or check state yet: `cirkel serve` publishes it once it runs".into()))
        }
        Err(e) => (Published::default(), Some(format!("cannot read {ALARMS_FILE}: {e:#}"))),
    }
}

pub fn run(global: &Global, a: &AlarmsArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let state = state_dir(&cfg);
    if let Some(AlarmsCmd::History { name, last }) = &a.cmd {
        return history(global, &state, name, *last);
    }
    let (p, warning) = published(&state);
    // Alarms the configuration defines that the daemon has not judged yet
    // (no series matched their metric so far).
    let judged: Vec<&str> = p.alarms.iter().map(|x| x.alarm.as_str()).collect();
    let waiting: Vec<String> =
        cfg.alarm_specs().into_iter().map(|s| s.name).filter(|n| !judged.contains(&n.as_str())).collect();
    let firing = p.alarms.iter().filter(|x| x.state == "ALARM").count();
    if global.json {
        print_json(&json!({
            "updated": p.updated,
            "warning": warning,
            "firing": firing,
            "alarms": p.alarms,
            "no_data_yet": waiting,
            "checks": p.checks,
        }));
    } else {
        if let Some(w) = &warning {
            eprintln!("warning: {w}");
        }
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(["Alarm", "Labels", "Severity", "State", "Since", "Why"]);
        for x in &p.alarms {
            let labels = x.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            t.add_row([
                x.alarm.clone(),
                labels,
                x.severity.clone(),
                x.state.clone(),
                x.since.format("%Y-%m-%d %H:%M:%S").to_string(),
                x.reason.clone(),
            ]);
        }
        println!("{t}");
        if !waiting.is_empty() {
            println!("no data yet: {}", waiting.join(", "));
        }
        if !p.checks.is_empty() {
            print_checks(&p.checks);
        }
    }
    Ok(if firing > 0 { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

pub fn print_checks(checks: &[PublishedCheck]) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["Check", "State", "Since", "Latency", "Probes", "Failures", "Error"]);
    for c in checks {
        t.add_row([
            c.name.clone(),
            c.state.to_uppercase(),
            c.since.format("%Y-%m-%d %H:%M:%S").to_string(),
            c.latency_ms.map(|l| format!("{l:.1} ms")).unwrap_or_default(),
            c.probes.to_string(),
            c.failures.to_string(),
            c.error.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
}

fn history(global: &Global, state: &StateDir, name: &str, last: Option<usize>) -> anyhow::Result<ExitCode> {
    let kinds = [EventKind::AlarmRaised, EventKind::AlarmCleared, EventKind::AlarmInsufficientData];
    let mut events: Vec<_> = state
        .events()?
        .into_iter()
        .filter(|e| kinds.contains(&e.kind) && e.details.get("alarm").and_then(|a| a.as_str()) == Some(name))
        .collect();
    if let Some(n) = last {
        let skip = events.len().saturating_sub(n);
        events.drain(..skip);
    }
    if global.json {
        print_json(&events);
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        return Err(user_error(
            format!("alarm `{name}` has no recorded transition"),
            "`cirkel alarms` lists the alarms and their states; an alarm is recorded when its state changes",
        ));
    }
    for e in &events {
        println!("{}  {:<10} {}", e.time.format("%Y-%m-%d %H:%M:%S"), e.severity.as_str(), e.message);
    }
    Ok(ExitCode::SUCCESS)
}
