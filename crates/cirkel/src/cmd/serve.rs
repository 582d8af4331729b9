//! `cirkel serve`: the daemon. It watches every Redis group and runs the
//! scheduled backups of the configuration (files sets, Redis groups,
//! PostgreSQL clusters), each followed by its copies to second repositories
//! and its retention, until SIGINT or SIGTERM.
//!
//! SIGHUP reloads the configuration file: a file that does not load keeps
//! the running one (an event says why); one that does replaces the
//! scheduled jobs. The watchers keep running with the configuration they
//! started with (a change to a group or cluster needs a restart). Under
//! systemd (`Type=notify`) it reports readiness, watchdog pings and stopping
//! through `NOTIFY_SOCKET`.
//!
//! A scheduled job runs cirkel's own commands as child processes, so a
//! failing or crashing job never takes the daemon down, and what runs is
//! exactly what a person would type.
//!
//! Commands reach the daemon through its control socket
//! (`cirkel_state::control`); requests for a PostgreSQL cluster go to its
//! watcher over a channel, which answers when it is done.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_config::cron::Schedule;
use cirkel_config::{Config, RetentionConfig};
use cirkel_pg::watch::Command as WatchCommand;
use cirkel_redis::group::Group;
use cirkel_state::control::{Reply, Request, Server};
use cirkel_state::{Event, EventKind, Severity, StateDir};
use serde_json::json;

use crate::cli::{Global, LogFormat};
use crate::context::{load_config, state_dir};
use crate::output::user_error;
use crate::scheduler::{Clock, ScaledClock, SystemClock, run_schedule};
use crate::systemd::Notifier;

/// A scheduled job: cirkel commands run one after the other.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: Schedule,
    pub steps: Vec<Vec<String>>,
}

fn retention_args(r: &RetentionConfig) -> Vec<String> {
    let mut a = Vec::new();
    for (flag, n) in [
        ("--keep-last", r.keep_last),
        ("--keep-hourly", r.keep_hourly),
        ("--keep-daily", r.keep_daily),
        ("--keep-weekly", r.keep_weekly),
        ("--keep-monthly", r.keep_monthly),
        ("--keep-yearly", r.keep_yearly),
    ] {
        if n > 0 {
            a.extend([flag.to_string(), n.to_string()]);
        }
    }
    if let Some(d) = r.keep_within {
        a.extend(["--keep-within".to_string(), cirkel_config::duration_to_string(d).replace(' ', "")]);
    }
    for t in &r.keep_tags {
        a.extend(["--keep-tag".to_string(), t.clone()]);
    }
    a
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The scheduled jobs a configuration asks for.
pub fn jobs(cfg: &Config) -> anyhow::Result<Vec<Job>> {
    let parse = |s: &str| Schedule::parse(s).map_err(anyhow::Error::msg);
    let mut out = Vec::new();
    // Copies and retention after a backup; retention is scoped to the
    // job's first tag so it never judges other backups.
    let follow_up = |steps: &mut Vec<Vec<String>>, copy_to: &[String], tags: &[String], r: Option<&RetentionConfig>| {
        for repo in copy_to {
            let mut s = args(&["repo", "copy", "--to", repo]);
            if let Some(t) = tags.first() {
                s.extend(["--tag".to_string(), t.clone()]);
            }
            steps.push(s);
        }
        if let (Some(r), Some(t)) = (r, tags.first()) {
            let mut s = args(&["repo", "prune", "--tag", t]);
            s.extend(retention_args(r));
            steps.push(s);
        }
    };
    for (name, set) in &cfg.files {
        let Some(s) = &set.schedule else { continue };
        let mut steps = vec![args(&["backup", "files", "--set", name])];
        follow_up(&mut steps, &set.copy_to, &set.tags, set.retention.as_ref());
        out.push(Job { name: format!("files/{name}"), schedule: parse(s)?, steps });
    }
    for (name, g) in &cfg.redis {
        let Some(s) = &g.schedule else { continue };
        let mut steps = vec![args(&["redis", "backup", "--group", name])];
        follow_up(&mut steps, &g.copy_to, &g.tags, g.retention.as_ref());
        out.push(Job { name: format!("redis/{name}"), schedule: parse(s)?, steps });
    }
    for (name, p) in &cfg.postgres {
        if let Some(s) = &p.schedule {
            let steps = vec![args(&["pg", "backup", "--cluster", name, "--tag", "daily"]), args(&["pg", "expire"])];
            out.push(Job { name: format!("postgres/{name}/daily"), schedule: parse(s)?, steps });
        }
        if let Some(s) = &p.weekly_schedule {
            let mut steps = vec![args(&["pg", "backup", "--cluster", name, "--type", "full", "--tag", "weekly"])];
            for repo in &p.copy_to {
                steps.push(args(&["repo", "copy", "--to", repo, "--tag", "weekly"]));
            }
            steps.push(args(&["pg", "expire"]));
            out.push(Job { name: format!("postgres/{name}/weekly"), schedule: parse(s)?, steps });
        }
    }
    Ok(out)
}

/// The flags a child command needs to see what this process sees.
fn global_args(global: &Global, cfg: &Config) -> Vec<String> {
    let mut a = vec!["-q".to_string()];
    if let Some(c) = global.config.as_ref().or(cfg.source.as_ref()) {
        a.extend(["--config".to_string(), c.display().to_string()]);
    }
    if let Some(r) = &global.repo {
        a.extend(["--repo".to_string(), r.clone()]);
    }
    if let Some(p) = &global.password_file {
        a.extend(["--password-file".to_string(), p.display().to_string()]);
    }
    a
}

fn run_job(exe: &PathBuf, global: &[String], job: &Job, state: &StateDir) {
    let source = format!("schedule/{}", job.name);
    let start = Instant::now();
    for step in &job.steps {
        // The service manager's variables are the daemon's alone.
        let out = Command::new(exe)
            .args(global)
            .args(step)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .output();
        let failed = match &out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some((o.status.code(), String::from_utf8_lossy(&o.stderr).trim().to_string())),
            Err(e) => Some((None, e.to_string())),
        };
        if let Some((code, stderr)) = failed {
            // A backup that saved what it could (exit 3) still goes on to its copies.
            let tail: String =
                stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            let event = Event::new(
                &source,
                EventKind::JobFailed,
                format!("`cirkel {}` failed (exit {code:?}): {}", step.join(" "), tail.lines().next().unwrap_or("")),
            )
            .with(json!({ "job": job.name, "step": step, "exit_code": code, "stderr": tail }));
            record(state, &event);
            if code != Some(3) {
                return;
            }
        }
    }
    let event =
        Event::new(&source, EventKind::JobDone, format!("{} done in {:.1} s", job.name, start.elapsed().as_secs_f64()))
            .with(json!({ "job": job.name, "steps": job.steps, "seconds": start.elapsed().as_secs_f64() }));
    record(state, &event);
}

fn record(state: &StateDir, event: &Event) {
    // One log line per event, with its kind as a field for JSON logs.
    match event.severity {
        Severity::Low => {
            tracing::info!(kind = %event.kind, severity = %event.severity, "{}: {}", event.source, event.message)
        }
        _ => tracing::warn!(kind = %event.kind, severity = %event.severity, "{}: {}", event.source, event.message),
    }
    if let Err(e) = state.record(event) {
        tracing::error!("cannot record an event: {e:#}");
    }
}

/// Runs `job` at each time its schedule names until `stop`.
fn schedule_loop(
    exe: PathBuf,
    global: Vec<String>,
    job: Job,
    state: StateDir,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
) {
    run_schedule(&job.schedule, clock.as_ref(), &stop, |_| run_job(&exe, &global, &job, &state));
}

/// What every scheduled job's thread needs, whatever the configuration.
#[derive(Clone)]
struct Runner {
    exe: PathBuf,
    global: Vec<String>,
    state: StateDir,
    clock: Arc<dyn Clock>,
}

impl Runner {
    /// Starts one thread per job; they stop when `stop` turns true (a
    /// running job finishes first).
    fn spawn<'scope>(&self, s: &'scope std::thread::Scope<'scope, '_>, jobs: &[Job], stop: &Arc<AtomicBool>) {
        for job in jobs {
            let (r, job, stop) = (self.clone(), job.clone(), stop.clone());
            s.spawn(move || schedule_loop(r.exe, r.global, job, r.state, r.clock, stop));
        }
    }

    fn job_list(&self, jobs: &[Job]) -> serde_json::Value {
        let now = self.clock.now();
        json!(
            jobs.iter()
                .map(
                    |j| json!({ "job": j.name, "schedule": j.schedule.to_string(), "next": j.schedule.next_after(now) })
                )
                .collect::<Vec<_>>()
        )
    }
}

/// The jobs of the configuration file as it reads now.
fn reload(global: &Global) -> anyhow::Result<Vec<Job>> {
    let cfg = load_config(global)?;
    jobs(&cfg)
}

pub fn serve(global: &Global) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let jobs = jobs(&cfg)?;
    let clusters: Vec<(String, cirkel_config::PostgresConfig)> =
        cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, c)| (n.clone(), c.clone())).collect();
    if cfg.redis.is_empty() && jobs.is_empty() && clusters.is_empty() {
        return Err(user_error(
            "nothing to serve: no [redis.NAME] group, no cluster with members and no schedule is configured",
            "add a schedule = \"0 2 * * *\" to a [files.NAME], [redis.NAME] or [postgres.NAME] table, or a Redis group",
        ));
    }
    let state = state_dir(&cfg);
    let server = Server::bind(&state).map_err(|e| {
        user_error(
            format!("cannot open the control socket: {e:#}"),
            "stop the other `cirkel serve` of this state directory, or give this one its own (CIRKEL_STATE_DIR)",
        )
    })?;
    let stop = crate::context::stop_on_signal();
    let hangup = crate::context::hangup_flag();
    let groups: Vec<Group> = cfg.redis.iter().map(|(n, c)| Group::from_config(n, c)).collect::<anyhow::Result<_>>()?;
    let clock: Arc<dyn Clock> = match ScaledClock::from_env()? {
        Some(c) => Arc::new(c),
        None => Arc::new(SystemClock),
    };
    let runner =
        Runner { exe: std::env::current_exe()?, global: global_args(global, &cfg), state: state.clone(), clock };
    let summary = format!(
        "watching {} redis group(s) and {} postgres cluster(s), {} scheduled job(s)",
        groups.len(),
        clusters.len(),
        jobs.len()
    );
    record(
        &state,
        &Event::new("serve", EventKind::ServeStarted, summary.clone()).with(json!({ "jobs": runner.job_list(&jobs) })),
    );
    if !global.quiet && !global.json && global.log_format == LogFormat::Text {
        eprintln!("cirkel serve: {summary}; events go to {}", state.root().display());
    }
    let notifier = Notifier::from_env();
    let watchdog = Notifier::watchdog_interval();
    let mut watchers: HashMap<String, Sender<WatchCommand>> = HashMap::new();
    let mut inboxes = Vec::new();
    for (name, c) in &clusters {
        let (tx, rx) = mpsc::channel();
        watchers.insert(name.clone(), tx);
        inboxes.push((name, c, rx));
    }
    let status = Reply::Status {
        pid: std::process::id(),
        config: global.config.clone().or_else(|| cfg.source.clone()),
        clusters: clusters.iter().map(|(n, _)| n.clone()).collect(),
        groups: groups.iter().map(|g| g.name.clone()).collect(),
    };
    let handle = |req: Request| control(req, &watchers, &status);
    let refused = |pid: u32, uid: u32| {
        let msg = format!("refused a control connection from uid {uid} (pid {pid})");
        record(&state, &Event::new("serve", EventKind::ControlRefused, msg).with(json!({ "pid": pid, "uid": uid })));
    };
    std::thread::scope(|s| {
        {
            let stop = stop.clone();
            let (handle, refused) = (&handle, &refused);
            s.spawn(move || server.run(stop, handle, refused));
        }
        for g in &groups {
            let (state, stop) = (&state, stop.clone());
            s.spawn(move || {
                if let Err(e) = cirkel_redis::watch::watch(g, state, stop) {
                    tracing::error!("watcher of {} stopped: {e:#}", g.name);
                }
            });
        }
        for (name, c, inbox) in inboxes {
            let (state, stop) = (&state, stop.clone());
            s.spawn(move || {
                if let Err(e) = cirkel_pg::watch::watch(name, c, state, stop, inbox) {
                    tracing::error!("watcher of postgres cluster {name} stopped: {e:#}");
                }
            });
        }
        // The jobs of the configuration in force; a reload stops them and starts the new ones.
        let mut jobs_stop = Arc::new(AtomicBool::new(false));
        runner.spawn(s, &jobs, &jobs_stop);
        notifier.notify(&format!("READY=1\nSTATUS={summary}"));
        let mut pinged = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if hangup.swap(false, Ordering::Relaxed) {
                notifier.notify("RELOADING=1");
                match reload(global) {
                    Ok(new) => {
                        jobs_stop.store(true, Ordering::Relaxed);
                        jobs_stop = Arc::new(AtomicBool::new(false));
                        runner.spawn(s, &new, &jobs_stop);
                        let message = format!("configuration reloaded: {} scheduled job(s)", new.len());
                        record(
                            &state,
                            &Event::new("serve", EventKind::ConfigReloaded, message)
                                .with(json!({ "jobs": runner.job_list(&new) })),
                        );
                    }
                    Err(e) => {
                        let message = format!("the configuration was not reloaded, the running one stays: {e:#}");
                        record(
                            &state,
                            &Event::new("serve", EventKind::ConfigReloadFailed, message)
                                .with(json!({ "error": format!("{e:#}") })),
                        );
                    }
                }
                notifier.notify("READY=1");
            }
            if let Some(every) = watchdog
                && pinged.elapsed() >= every
            {
                notifier.notify("WATCHDOG=1");
                pinged = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        notifier.notify("STOPPING=1");
        jobs_stop.store(true, Ordering::Relaxed);
    });
    Ok(ExitCode::SUCCESS)
}

/// Answers one control request; those for a cluster are its watcher's to answer.
fn control(req: Request, watchers: &HashMap<String, Sender<WatchCommand>>, status: &Reply) -> Reply {
    let ask = |cluster: &str, cmd: Box<dyn FnOnce(Sender<Reply>) -> WatchCommand>| {
        let Some(w) = watchers.get(cluster) else {
            return Reply::Error {
                message: format!("this cirkel serve does not watch a postgres cluster `{cluster}`"),
            };
        };
        let (tx, rx) = mpsc::channel();
        if w.send(cmd(tx)).is_err() {
            return Reply::Error { message: format!("the watcher of {cluster} has stopped (see the daemon's log)") };
        }
        rx.recv()
            .unwrap_or_else(|_| Reply::Error { message: format!("the watcher of {cluster} stopped before answering") })
    };
    match req {
        Request::Status => status.clone(),
        Request::Pause { cluster } => ask(&cluster, Box::new(|r| WatchCommand::Pause(true, r))),
        Request::Resume { cluster } => ask(&cluster, Box::new(|r| WatchCommand::Pause(false, r))),
        Request::Switchover { cluster, to, at } => {
            let req = cirkel_pg::ha::SwitchoverRequest {
                id: format!("{}-{}", Utc::now().timestamp_nanos_opt().unwrap_or_default(), std::process::id()),
                to,
                at,
                requested: Utc::now(),
            };
            ask(&cluster, Box::new(move |r| WatchCommand::Switchover(req, r)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_requests_go_to_their_clusters_watcher() {
        let status = Reply::Status { pid: 1, config: None, clusters: vec!["main".into()], groups: vec![] };
        let (tx, rx) = mpsc::channel();
        let watchers = HashMap::from([("main".to_string(), tx)]);
        assert_eq!(control(Request::Status, &watchers, &status), status);
        let r = control(Request::Pause { cluster: "other".into() }, &watchers, &status);
        assert!(matches!(r, Reply::Error { message } if message.contains("does not watch")));
        let watcher = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(cmd) = rx.recv() {
                match cmd {
                    WatchCommand::Pause(p, reply) => {
                        seen.push(p);
                        reply.send(Reply::Done { message: format!("paused {p}") }).unwrap();
                    }
                    // Dropped unanswered, as a watcher that stops would.
                    WatchCommand::Switchover(req, _) => {
                        seen.push(req.to.is_some());
                        return seen;
                    }
                }
            }
            seen
        });
        let r = control(Request::Resume { cluster: "main".into() }, &watchers, &status);
        assert_eq!(r, Reply::Done { message: "paused false".into() });
        let r =
            control(Request::Switchover { cluster: "main".into(), to: Some("b".into()), at: None }, &watchers, &status);
        assert!(matches!(r, Reply::Error { message } if message.contains("stopped before answering")));
        assert_eq!(watcher.join().unwrap(), [false, true]);
        let r = control(Request::Pause { cluster: "main".into() }, &watchers, &status);
        assert!(matches!(r, Reply::Error { message } if message.contains("has stopped")));
    }

    #[test]
    fn the_plans_jobs_come_from_the_configuration() {
        let cfg = Config::parse(
            r#"
[repositories.dr]
url = "/tmp/dr"
[files.static]
paths = ["/srv/static"]
tags = ["static"]
schedule = "0 2 * * *"
copy_to = ["dr"]
[files.static.retention]
keep_daily = 35
[postgres.main]
schedule = "0 2 * * *"
weekly_schedule = "0 3 * * 0"
copy_to = ["dr"]
"#,
            "t.toml",
            None,
        )
        .unwrap();
        let jobs = jobs(&cfg).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["files/static", "postgres/main/daily", "postgres/main/weekly"]);
        assert_eq!(jobs[0].steps[1], args(&["repo", "copy", "--to", "dr", "--tag", "static"]));
        assert_eq!(jobs[0].steps[2], args(&["repo", "prune", "--tag", "static", "--keep-daily", "35"]));
        assert_eq!(jobs[2].steps[0], args(&["pg", "backup", "--cluster", "main", "--type", "full", "--tag", "weekly"]));
        assert_eq!(jobs[2].steps[1], args(&["repo", "copy", "--to", "dr", "--tag", "weekly"]));
    }
}
