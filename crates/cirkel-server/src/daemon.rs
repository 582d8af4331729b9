//! `cirkel serve`: the daemon. One multi-threaded tokio runtime carries
//! every part, each a supervised worker (`crate::supervisor`): the control
//! socket, a watcher per Redis group and per PostgreSQL cluster, and a
//! worker per scheduled job. The runtime is also the process's shared one
//! (`cirkel_repo::runtime`), so repositories and PostgreSQL connections
//! used by the workers run their I/O on it instead of on runtimes of their
//! own.
//!
//! SIGHUP reloads the configuration file: a file that does not load keeps
//! the running one (an event says why); one that does replaces the
//! scheduled jobs. The watchers keep running with the configuration they
//! started with (a change to a group or cluster needs a restart). Under
//! systemd (`Type=notify`) it reports readiness, watchdog pings and stopping
//! through `NOTIFY_SOCKET`.
//!
//! Every event is published on a broadcast channel once it is in the log,
//! for the daemon's parts that react to events.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_config::Config;
use cirkel_pg::watch::Command as WatchCommand;
use cirkel_redis::group::Group;
use cirkel_state::control::{Reply, Request, Server};
use cirkel_state::{Event, EventKind, StateDir};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::jobs::{Job, Runner, jobs};
use crate::lead::Leading;
use crate::metrics::Metrics;
use crate::monitor::{Access, AlarmLoop, Collector, EventMetrics};
use crate::supervisor::{Backoff, Report, Supervisor};
use crate::systemd::Notifier;

/// What the daemon is started with.
pub struct Options {
    pub config: Config,
    /// Reads the configuration file again, for SIGHUP.
    pub reload: Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>,
    /// The file the configuration came from, for `cirkel status`.
    pub config_path: Option<PathBuf>,
    pub state: StateDir,
    /// The control socket, already bound (binding is how a second daemon
    /// of the same state directory is refused before anything starts).
    pub control: Server,
    /// Runs the scheduled jobs.
    pub runner: Runner,
    /// Turns true on SIGINT or SIGTERM.
    pub stop: Arc<AtomicBool>,
    /// Turns true on SIGHUP; the daemon resets it.
    pub hangup: &'static AtomicBool,
    /// Print the one-line summary on standard error at start.
    pub announce: bool,
    /// Opens repositories and reaches servers for the metrics.
    pub access: Arc<dyn Access>,
}

/// How often the collector asks the sources and repositories, and the
/// alarm engine samples the metrics and evaluates (each alarm changes
/// state only at the end of its period; sampling every second lets a
/// check's alarm with a short period follow its probes).
const COLLECT_EVERY: Duration = Duration::from_secs(10);
const EVALUATE_EVERY: Duration = Duration::from_secs(1);

/// Runs the daemon until `stop`.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(2, 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("cirkel-serve")
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("start the daemon's runtime: {e}"))?;
    if !cirkel_repo::runtime::install(rt.handle().clone()) {
        tracing::debug!("the shared runtime was already started; the daemon's I/O runs on it");
    }
    let result = rt.block_on(serve(opts));
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Requests for a cluster go to its watcher over a channel; a watcher that
/// is restarted replaces its sender here.
type Inboxes = Arc<Mutex<HashMap<String, Sender<WatchCommand>>>>;

async fn serve(opts: Options) -> anyhow::Result<()> {
    let Options { config: cfg, reload, config_path, state, control, runner, stop, hangup, announce, access } = opts;
    let (bus, _) = broadcast::channel::<Event>(1024);
    let state = {
        let bus = bus.clone();
        state.with_listener(Arc::new(move |e: &Event| {
            let _ = bus.send(e.clone());
        }))
    };
    // With agents on several hosts, the once-per-estate duties run on the
    // holder of the daemon's lease only (`crate::lead`).
    let leading = match cfg.coordination {
        Some(_) => Leading::contended(),
        None => Leading::always(),
    };
    let runner = Runner { state: state.clone(), leading: leading.clone(), ..runner };
    let metrics = Arc::new(Metrics::default());
    metrics.set("cirkel_up", Default::default(), 1.0);
    // What the event log says so far, then what comes.
    let event_metrics = Arc::new(Mutex::new(EventMetrics::default()));
    // The newest events stay in memory for the API.
    let ring: Arc<Mutex<crate::api::view::EventRing>> = Arc::default();
    let events_file = state.root().join("events.jsonl");
    let (past, read_to) = crate::api::tail::read_from(&events_file, 0);
    let read_to = Arc::new(std::sync::atomic::AtomicU64::new(read_to));
    if let (Ok(mut em), Ok(mut r)) = (event_metrics.lock(), ring.lock()) {
        for e in past {
            em.observe(&e, &metrics);
            r.push(e);
        }
    }
    // What the API's event stream carries: the log as it grows.
    let (logged, _) = broadcast::channel::<Event>(1024);
    // A drill killed in the middle left its fault: undone before anything
    // watches the cluster it broke.
    // Logged when it cannot: the next drill tries again, and refuses to
    // run on top of it.
    let _ = crate::guard::undo_drill_leftover(&state, &cfg.postgres);
    let jobs_now = jobs(&cfg)?;
    let clusters: Vec<(String, cirkel_config::PostgresConfig)> =
        cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, c)| (n.clone(), c.clone())).collect();
    let groups: Vec<Group> = cfg.redis.iter().map(|(n, c)| Group::from_config(n, c)).collect::<anyhow::Result<_>>()?;

    let sup = {
        let state = state.clone();
        Supervisor::new(CancellationToken::new(), Backoff::default(), move |r| crate::record(&state, &report_event(r)))
    };
    let summary = format!(
        "watching {} redis group(s) and {} postgres cluster(s), {} scheduled job(s)",
        groups.len(),
        clusters.len(),
        jobs_now.len()
    );
    crate::record(
        &state,
        &Event::new("serve", EventKind::ServeStarted, summary.clone())
            .with(json!({ "jobs": runner.job_list(&jobs_now) })),
    );
    if announce {
        eprintln!("cirkel serve: {summary}; events go to {}", state.root().display());
    }

    // The control socket.
    let inboxes: Inboxes = Arc::default();
    let status = Reply::Status {
        pid: std::process::id(),
        config: config_path,
        clusters: clusters.iter().map(|(n, _)| n.clone()).collect(),
        groups: groups.iter().map(|g| g.name.clone()).collect(),
    };
    {
        let (control, inboxes, state, status) = (Arc::new(control), inboxes.clone(), state.clone(), status.clone());
        sup.spawn_blocking("control-socket", sup.token(), move |stop| {
            let handle = |req: Request| answer(req, &inboxes, &status);
            let refused = |pid: u32, uid: u32| {
                let msg = format!("refused a control connection from uid {uid} (pid {pid})");
                crate::record(
                    &state,
                    &Event::new("serve", EventKind::ControlRefused, msg).with(json!({ "pid": pid, "uid": uid })),
                );
            };
            control.run(stop, &handle, &refused);
            Ok(())
        });
    }

    if let Some(cc) = cfg.coordination.clone() {
        let (state, leading) = (state.clone(), leading.clone());
        sup.spawn_blocking("lead", sup.token(), move |stop| {
            crate::lead::contend(&cc, &state, &leading, Duration::from_secs(1), &stop)
        });
    }

    // The watchers.
    let coordination = cfg.coordination.clone();
    for g in groups {
        let (state, coordination) = (state.clone(), coordination.clone());
        sup.spawn_blocking(format!("watch/{}", g.source()), sup.token(), move |stop| {
            cirkel_redis::watch::watch(&g, &state, coordination.as_ref(), stop)
        });
    }
    for (name, c) in clusters {
        let (state, inboxes, coordination) = (state.clone(), inboxes.clone(), coordination.clone());
        sup.spawn_blocking(format!("watch/postgres/{name}"), sup.token(), move |stop| {
            let (tx, rx) = mpsc::channel();
            if let Ok(mut m) = inboxes.lock() {
                m.insert(name.clone(), tx);
            }
            cirkel_pg::watch::watch(&name, &c, &state, coordination.as_ref(), stop, rx)
        });
    }

    // Detection: events into metrics, checks, the collector, scrapes, alarms.
    {
        // The log, not the channel: commands run beside the daemon (drills,
        // backups) record into it too.
        let (metrics, em, ring, logged) = (metrics.clone(), event_metrics.clone(), ring.clone(), logged.clone());
        let drill_state = state.clone();
        sup.spawn("metrics/events", sup.token(), move |cancel| {
            let (metrics, em, ring, logged, path, read_to) =
                (metrics.clone(), em.clone(), ring.clone(), logged.clone(), events_file.clone(), read_to.clone());
            let drill_state = drill_state.clone();
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tick.tick() => {}
                    }
                    let (new, to) = crate::api::tail::read_from(&path, read_to.load(Ordering::Relaxed));
                    read_to.store(to, Ordering::Relaxed);
                    for e in new {
                        if let Ok(mut em) = em.lock() {
                            // A failover while a drill of its source runs is the drill's.
                            if crate::guard::drilling(&drill_state).as_deref() == Some(e.source.as_str()) {
                                em.observe_drilled(&e, &metrics);
                            } else {
                                em.observe(&e, &metrics);
                            }
                        }
                        if let Ok(mut r) = ring.lock() {
                            r.push(e.clone());
                        }
                        let _ = logged.send(e);
                    }
                }
            }
        });
    }
    let published_checks: Arc<Mutex<Vec<crate::monitor::PublishedCheck>>> = Arc::default();
    if !cfg.checks.is_empty() {
        let (cfg, state, metrics, checks) =
            (Arc::new(cfg.clone()), state.clone(), metrics.clone(), published_checks.clone());
        sup.spawn("checks", sup.token(), move |cancel| {
            let (cfg, state, metrics, checks) = (cfg.clone(), state.clone(), metrics.clone(), checks.clone());
            async move { crate::monitor::run_checks(&cfg, state, metrics, checks, cancel).await }
        });
    }
    let estate: crate::api::estate::Shared = Arc::default();
    {
        let (cfg, metrics, em, estate) =
            (Arc::new(cfg.clone()), metrics.clone(), event_metrics.clone(), estate.clone());
        sup.spawn_blocking("collector", sup.token(), move |stop| {
            let mut collector = Collector::default();
            collector.estate = estate.clone();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                collector.collect(&cfg, access.as_ref(), &metrics, &em);
                while started.elapsed() < COLLECT_EVERY && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Ok(())
        });
    }
    // The copies' lag on its own loop: it reads only the followers' local
    // records, and must keep growing while the collector waits on a second
    // region whose server accepts connections and never answers.
    {
        let (cfg, metrics, state) = (Arc::new(cfg.clone()), metrics.clone(), state.clone());
        sup.spawn_blocking("copy-lag", sup.token(), move |stop| {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                crate::copylag::collect(&cfg, &state, &metrics, chrono::Utc::now());
                while started.elapsed() < COLLECT_EVERY && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Ok(())
        });
    }
    // Notifications: alerts from events, the outbox, escalation.
    let notify = crate::notify::Notify::from_config(&cfg, &state, leading.clone())?.map(Arc::new);
    if let Some(n) = &notify {
        let n1 = n.clone();
        sup.spawn("notify/outbox", sup.token(), move |cancel| {
            let n = n1.clone();
            async move { n.deliver(cancel).await }
        });
        let (n2, rx, log) = (n.clone(), bus.subscribe(), logged.subscribe());
        sup.spawn("notify/events", sup.token(), move |cancel| {
            let (n, rx, log) = (n2.clone(), rx.resubscribe(), log.resubscribe());
            async move { n.follow(rx, log, cancel).await }
        });
        let n3 = n.clone();
        sup.spawn("notify/escalation", sup.token(), move |cancel| {
            let n = n3.clone();
            async move { n.escalate(cancel).await }
        });
    }
    let alarms = AlarmLoop::new(&cfg, &state)?;
    for (name, sc) in &cfg.scrape {
        let (name, sc, scraped, metrics) = (name.clone(), sc.clone(), alarms.scraped.clone(), metrics.clone());
        sup.spawn(format!("scrape/{name}"), sup.token(), move |cancel| {
            crate::monitor::scrape(name.clone(), sc.clone(), scraped.clone(), metrics.clone(), cancel)
        });
    }
    {
        let alarms = Arc::new(Mutex::new(alarms));
        let (state, metrics, em, checks) =
            (state.clone(), metrics.clone(), event_metrics.clone(), published_checks.clone());
        let (notify, leading) = (notify.clone(), leading.clone());
        sup.spawn("alarms", sup.token(), move |cancel| {
            let (alarms, state, metrics, em, checks, notify) =
                (alarms.clone(), state.clone(), metrics.clone(), em.clone(), checks.clone(), notify.clone());
            let leading = leading.clone();
            async move {
                let mut tick = tokio::time::interval(EVALUATE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tick.tick() => {}
                    }
                    let (alarms, state, metrics, em, checks, notify) =
                        (alarms.clone(), state.clone(), metrics.clone(), em.clone(), checks.clone(), notify.clone());
                    let leading = leading.now();
                    tokio::task::spawn_blocking(move || {
                        if let Ok(em) = em.lock() {
                            em.tick(Utc::now(), &metrics);
                        }
                        if let Some(n) = &notify {
                            n.export(&metrics);
                        }
                        if leading && let Ok(mut a) = alarms.lock() {
                            a.step(std::time::SystemTime::now(), &state, &metrics, &checks);
                        }
                    })
                    .await?;
                }
            }
        });
    }
    if let Some(addr) = cfg.server.listen {
        let listener = Arc::new(crate::http::bind(addr)?);
        let tls = match (&cfg.server.tls_cert_file, &cfg.server.tls_key_file) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let metrics = metrics.clone();
        let control: crate::api::Control = {
            let inboxes = inboxes.clone();
            Arc::new(move |req: Request| answer(req, &inboxes, &status))
        };
        let mut api = crate::api::Api::new(
            Arc::new(cfg.clone()),
            estate.clone(),
            metrics.clone(),
            state.clone(),
            ring.clone(),
            logged.clone(),
            control,
            notify.as_ref().map(|n| n.notifier.clone()),
            published_checks.clone(),
        );
        api.drill = Some((runner.exe.clone(), runner.global.clone()));
        let api = Arc::new(api);
        sup.spawn("http", sup.token(), move |cancel| {
            let (listener, metrics, api, tls) = (listener.clone(), metrics.clone(), api.clone(), tls.clone());
            async move {
                let l = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
                crate::http::serve(l, metrics, Some(api), tls, cancel).await
            }
        });
    }

    // WAL streaming, for clusters that ask for it: the same command a
    // person would run, supervised (restarted when it exits).
    for (name, c) in &cfg.postgres {
        if !c.stream_wal {
            continue;
        }
        let (exe, mut argv) = (runner.exe.clone(), runner.global.clone());
        argv.extend(["pg", "stream-wal", "--cluster", name].map(String::from));
        let leading = leading.clone();
        sup.spawn_blocking(format!("stream-wal/postgres/{name}"), sup.token(), move |stop| {
            crate::lead::while_leading(&leading, &stop, |halt| crate::jobs::run_until_stopped(&exe, &argv, halt))
        });
    }

    // Continuous copies to the second region: the same command a person
    // would run, supervised.
    for (name, r) in &cfg.repositories {
        if !r.continuous {
            continue;
        }
        let (exe, mut argv) = (runner.exe.clone(), runner.global.clone());
        argv.extend(["repo", "copy", "--to", name, "--follow"].map(String::from));
        sup.spawn_blocking(format!("copy/{name}"), sup.token(), move |stop| {
            crate::jobs::run_until_stopped(&exe, &argv, &stop)
        });
    }

    // The scheduled jobs of the configuration in force; a reload cancels
    // them (a running job finishes first) and starts the new ones.
    let start_jobs = |jobs: Vec<Job>| {
        let token = sup.token().child_token();
        for job in jobs {
            let runner = runner.clone();
            sup.spawn_blocking(format!("schedule/{}", job.name), &token, move |stop| {
                runner.run_schedule(&job, &stop);
                Ok(())
            });
        }
        token
    };
    let mut jobs_token = start_jobs(jobs_now);

    let notifier = Notifier::from_env();
    let watchdog = Notifier::watchdog_interval();
    notifier.notify(&format!("READY=1\nSTATUS={summary}"));
    let mut pinged = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if hangup.swap(false, Ordering::Relaxed) {
            notifier.notify("RELOADING=1");
            match reload().and_then(|c| jobs(&c)) {
                Ok(new) => {
                    jobs_token.cancel();
                    let list = runner.job_list(&new);
                    let message = format!("configuration reloaded: {} scheduled job(s)", new.len());
                    jobs_token = start_jobs(new);
                    crate::record(
                        &state,
                        &Event::new("serve", EventKind::ConfigReloaded, message).with(json!({ "jobs": list })),
                    );
                }
                Err(e) => {
                    let message = format!("the configuration was not reloaded, the running one stays: {e:#}");
                    crate::record(
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
    }
    notifier.notify("STOPPING=1");
    // A running backup job is a child process that finishes on its own; the
    // watchers stop within a round.
    if !sup.shutdown(Duration::from_secs(60)).await {
        tracing::warn!("some workers did not stop within 60 s");
    }
    Ok(())
}

fn report_event(r: Report) -> Event {
    match r {
        Report::Failed { worker, error, failures, backoff } => Event::new(
            "serve",
            EventKind::WorkerFailed,
            format!("worker {worker} failed: {error}; restarting in {} s", backoff.as_secs_f64()),
        )
        .with(
            json!({ "worker": worker, "error": error, "failures": failures, "backoff_seconds": backoff.as_secs_f64() }),
        ),
        Report::Restarted { worker, failures } => {
            Event::new("serve", EventKind::WorkerRestarted, format!("worker {worker} started again"))
                .with(json!({ "worker": worker, "failures": failures }))
        }
    }
}

/// Answers one control request; those for a cluster are its watcher's to answer.
fn answer(req: Request, inboxes: &Inboxes, status: &Reply) -> Reply {
    let ask = |cluster: &str, cmd: Box<dyn FnOnce(Sender<Reply>) -> WatchCommand>| {
        let Some(w) = inboxes.lock().ok().and_then(|m| m.get(cluster).cloned()) else {
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
        let inboxes: Inboxes = Arc::new(Mutex::new(HashMap::from([("main".to_string(), tx)])));
        assert_eq!(answer(Request::Status, &inboxes, &status), status);
        let r = answer(Request::Pause { cluster: "other".into() }, &inboxes, &status);
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
        let r = answer(Request::Resume { cluster: "main".into() }, &inboxes, &status);
        assert_eq!(r, Reply::Done { message: "paused false".into() });
        let r =
            answer(Request::Switchover { cluster: "main".into(), to: Some("b".into()), at: None }, &inboxes, &status);
        assert!(matches!(r, Reply::Error { message } if message.contains("stopped before answering")));
        assert_eq!(watcher.join().unwrap(), [false, true]);
        let r = answer(Request::Pause { cluster: "main".into() }, &inboxes, &status);
        assert!(matches!(r, Reply::Error { message } if message.contains("has stopped")));
    }
}
