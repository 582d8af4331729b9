//! `cirkel pg failover --explain`, `switchover`, `pause` and `resume`: the
//! commands that steer a replicated cluster, through the running
//! `cirkel serve` when there is one and directly when there is not.

use std::process::ExitCode;

use chrono::Utc;
use serde_json::json;

use super::parse_time;
use crate::cli::Global;
use crate::context::load_config;
use crate::output::{print_json, user_error};

/// The cluster `--cluster` names, or the only one with members.
pub fn member_cluster(
    cfg: &cirkel_config::Config,
    name: Option<&str>,
) -> anyhow::Result<(String, cirkel_config::PostgresConfig)> {
    let with_members: Vec<&String> =
        cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, _)| n).collect();
    let name = crate::context::only_or_given(
        name,
        &with_members,
        ("PostgreSQL cluster with members", "PostgreSQL clusters with members"),
        "--cluster",
        "add [postgres.NAME.members.M] tables (host, port, zone, priority) to the configuration",
    )?;
    match cfg.postgres.get(&name) {
        Some(c) if !c.members.is_empty() => Ok((name, c.clone())),
        Some(_) => Err(user_error(format!("cluster `{name}` has no members"), "add [postgres.NAME.members.M] tables")),
        None => Err(user_error(format!("no cluster `{name}` in the configuration"), "add a [postgres.NAME] table")),
    }
}

pub(super) fn failover(global: &Global, a: &crate::cli::PgFailoverArgs) -> anyhow::Result<ExitCode> {
    if !a.explain {
        return Err(user_error(
            "`cirkel pg failover` only explains for now",
            "pass --explain to see whom a failover would promote and why",
        ));
    }
    let cfg = load_config(global)?;
    let (name, c) = member_cluster(&cfg, a.cluster.as_deref())?;
    let (status, ex) = cirkel_pg::members::explain(&name, &c)?;
    if global.json {
        print_json(&json!({ "explanation": ex, "status": status }));
    } else {
        println!("cluster {name}: primary {}", ex.primary.as_deref().unwrap_or("none"));
        println!("would promote: {}", ex.reason);
        for r in &ex.rejections {
            println!("  not {}: {}", r.member, r.reason);
        }
    }
    Ok(if ex.candidate.is_some() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

pub(super) fn switchover(global: &Global, a: &crate::cli::PgSwitchoverArgs) -> anyhow::Result<ExitCode> {
    use cirkel_state::control::{Reply, Request};
    let cfg = load_config(global)?;
    let (name, c) = member_cluster(&cfg, a.cluster.as_deref())?;
    let state = crate::context::state_dir(&cfg);
    let at = a.at.as_deref().map(parse_time).transpose()?;
    if at.is_some_and(|t| t < Utc::now() - chrono::Duration::minutes(1)) {
        return Err(user_error("--at is in the past", "give a time to come, or leave --at out to switch over now"));
    }
    let st = cirkel_pg::members::status(&name, &c);
    let Some(primary) = st.primary.clone() else {
        return Err(user_error(
            format!("cluster {name} has no single primary: {}", st.problems.join("; ")),
            "a switchover needs a healthy primary; `cirkel status` shows the cluster",
        ));
    };
    if let Some(to) = &a.to {
        if *to == primary {
            return Err(user_error(format!("{to} is already the primary"), "name a standby with --to"));
        }
        cirkel_pg::watch::check_target(&c, &st, to)
            .map_err(|e| user_error(e, "name a streaming standby with --to; `cirkel status` lists them"))?;
    }
    let daemon = cirkel_state::control::Client::connect(&state)?;
    let outcome = if let Some(mut daemon) = daemon {
        let req = Request::Switchover { cluster: name.clone(), to: a.to.clone(), at };
        let timeout = if at.is_some() { std::time::Duration::from_secs(60) } else { a.timeout };
        match daemon.call(&req, Some(timeout)).map_err(|e| {
            user_error(format!("{e:#}"), "`cirkel events --kind switchover` shows whether it happened since")
        })? {
            Reply::Outcome { event } => event,
            Reply::Scheduled { at } => {
                if global.json {
                    print_json(&json!({ "cluster": name, "scheduled": at, "to": a.to }));
                } else {
                    println!("switchover of {name} scheduled for {at} (cirkel serve carries it out)");
                }
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(refused_by_daemon(other)),
        }
    } else {
        if at.is_some() {
            return Err(user_error(
                "--at needs a running `cirkel serve` watching the cluster",
                "start `cirkel serve`, or switch over now without --at",
            ));
        }
        let req = cirkel_pg::ha::SwitchoverRequest {
            id: format!("{}-{}", Utc::now().timestamp_nanos_opt().unwrap_or_default(), std::process::id()),
            to: a.to.clone(),
            at,
            requested: Utc::now(),
        };
        match cirkel_pg::watch::switchover_now(&name, &c, &state, &req)? {
            Ok(event) => event,
            Err(why) => {
                return Err(user_error(format!("switchover failed: {why}"), "`cirkel status` shows the cluster now"));
            }
        }
    };
    if global.json {
        print_json(&serde_json::to_value(&outcome)?);
    } else {
        println!("{}", outcome.message);
        if let Some(s) = outcome.details["rejoin_s"].as_f64() {
            println!("{} rejoined as a standby in {s:.1} s", outcome.details["old_primary"].as_str().unwrap_or("?"));
        }
        if let Some(e) = outcome.details["rejoin_error"].as_str() {
            println!("rejoin failed: {e}");
        }
        if let Some(node) = outcome.details["rejoin_by_agent"].as_str() {
            let old = outcome.details["old_primary"].as_str().unwrap_or("?");
            println!("{old} is rewound into a standby by the agent on its host ({node}); `cirkel status` shows when");
        }
    }
    Ok(if outcome.kind == "switchover" { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// A reply that is not the answer asked for, as the error to show.
fn refused_by_daemon(reply: cirkel_state::control::Reply) -> anyhow::Error {
    use cirkel_state::control::Reply;
    match reply {
        Reply::Refused { message } => user_error(
            format!("cirkel serve refused: {message}"),
            "run the command as the user `cirkel serve` runs as, or as root",
        ),
        Reply::Error { message } => {
            user_error(format!("cirkel serve: {message}"), "`cirkel events` and the daemon's log say more")
        }
        other => anyhow::anyhow!("cirkel serve answered {other:?}"),
    }
}

pub(super) fn pause(global: &Global, a: &crate::cli::PgClusterArg, paused: bool) -> anyhow::Result<ExitCode> {
    use cirkel_state::control::{Client, Reply, Request};
    let cfg = load_config(global)?;
    let (name, _) = member_cluster(&cfg, a.cluster.as_deref())?;
    let state = crate::context::state_dir(&cfg);
    let (what, kind) = if paused {
        ("paused", cirkel_state::EventKind::Paused)
    } else {
        ("resumed", cirkel_state::EventKind::Resumed)
    };
    if let Some(mut daemon) = Client::connect(&state)? {
        // The watcher changes its record and records the event.
        let req =
            if paused { Request::Pause { cluster: name.clone() } } else { Request::Resume { cluster: name.clone() } };
        match daemon.call(&req, Some(std::time::Duration::from_secs(120)))? {
            Reply::Done { .. } => {}
            other => return Err(refused_by_daemon(other)),
        }
    } else {
        cirkel_pg::ha::set_paused(&state, &name, paused).map_err(|e| {
            user_error(
                format!("cannot record that {name} is {what}: {e:#}"),
                "cirkel serve and this command must share a writable state directory: set CIRKEL_STATE_DIR or [state] dir",
            )
        })?;
        state.record(&cirkel_state::Event::new(
            &format!("postgres/{name}"),
            kind,
            format!("cluster {name} {what}: automatic action {}", if paused { "off" } else { "on" }),
        ))?;
    }
    if global.json {
        print_json(&json!({ "cluster": name, "paused": paused }));
    } else {
        println!("cluster {name} {what}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Failure;
    use cirkel_state::control::Reply;

    fn config(text: &str) -> cirkel_config::Config {
        cirkel_config::Config::parse(text, "c.toml", None).unwrap()
    }

    const TWO_WITH_MEMBERS: &str = "[postgres.a.members.m1]\nhost = \"h1\"\n\
                                    [postgres.b.members.m1]\nhost = \"h2\"\n\
                                    [postgres.plain]\nhost = \"h3\"\n";

    fn error_of(r: anyhow::Result<(String, cirkel_config::PostgresConfig)>) -> Failure {
        match r {
            Ok((name, _)) => panic!("chose {name}"),
            Err(e) => Failure::from(&e),
        }
    }

    #[test]
    fn member_cluster_takes_the_only_cluster_with_members() {
        let cfg = config("[postgres.a.members.m1]\nhost = \"h1\"\n[postgres.plain]\nhost = \"h3\"\n");
        let (name, c) = member_cluster(&cfg, None).unwrap();
        assert_eq!(name, "a");
        assert_eq!(c.members.len(), 1);
    }

    #[test]
    fn member_cluster_takes_the_one_named() {
        let (name, _) = member_cluster(&config(TWO_WITH_MEMBERS), Some("b")).unwrap();
        assert_eq!(name, "b");
    }

    #[test]
    fn member_cluster_asks_which_when_several_have_members() {
        let f = error_of(member_cluster(&config(TWO_WITH_MEMBERS), None));
        assert_eq!(f.error, "2 PostgreSQL clusters with members are configured");
        assert_eq!(f.hint.as_deref(), Some("name one with --cluster: a, b"));
    }

    #[test]
    fn member_cluster_refuses_none_unknown_and_memberless_clusters() {
        let f = error_of(member_cluster(&config("[postgres.plain]\nhost = \"h3\"\n"), None));
        assert_eq!(f.error, "no PostgreSQL cluster with members is configured");
        let f = error_of(member_cluster(&config(TWO_WITH_MEMBERS), Some("plain")));
        assert_eq!(f.error, "cluster `plain` has no members");
        let f = error_of(member_cluster(&config(TWO_WITH_MEMBERS), Some("nope")));
        assert_eq!(f.error, "no cluster `nope` in the configuration");
    }

    #[test]
    fn refused_by_daemon_says_why_and_what_to_do() {
        let f = Failure::from(&refused_by_daemon(Reply::Refused { message: "not your cluster".into() }));
        assert_eq!(f.error, "cirkel serve refused: not your cluster");
        assert!(f.hint.unwrap_or_default().contains("as root"));
        let f = Failure::from(&refused_by_daemon(Reply::Error { message: "no watcher".into() }));
        assert_eq!(f.error, "cirkel serve: no watcher");
        assert!(f.hint.unwrap_or_default().contains("cirkel events"));
        let e = refused_by_daemon(Reply::Done { message: "ok".into() });
        assert!(e.to_string().starts_with("cirkel serve answered Done"), "{e}");
    }
}
