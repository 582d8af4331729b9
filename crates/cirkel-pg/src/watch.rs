//! `cirkel serve` for one PostgreSQL cluster: health checks every
//! interval, the decision core's verdict, and the executor that carries it
//! out (fence, promote, repoint, rejoin), the endpoints, planned
//! switchovers and synchronous replication.
//!
//! Each round gathers what it sees (the members' status, the record, the
//! lease, the commands waiting) into `cirkel_failover::round::Observations`,
//! lets the pure round decide, and carries out its actions (`execute`):
//! the rules live where they are tested without a cluster, the I/O here.
//!
//! Commands reach the watcher as [`Command`]s over a channel from the
//! daemon's control socket; each is answered on its own reply channel once
//! done, so a switchover's caller learns its outcome without polling.
//!
//! The watcher acts only under the cluster's lease, checked at the top of
//! every round: the moment it is lost the watcher stops acting (no
//! promotion, no router switch, no rejoin), cuts its own endpoint, and
//! only watches until it holds a lease again. Every action carries the
//! lease's epoch and is refused when a newer one was recorded.

mod agents;
mod execute;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use chrono::Utc;
use std::collections::HashMap;

use cirkel_config::{CoordinationConfig, PostgresConfig};
use cirkel_failover::round::{self, MemberSeen, Observations, PendingSwitchover, RoundState, WatchPolicy};
use cirkel_failover::{Decision, Leadership, Lease, SyncSet};
use cirkel_state::control::Reply;
use cirkel_state::election::acquire_or_stand_by;
use cirkel_state::{Event, EventKind, StateDir};
use serde_json::json;

use crate::coord::Coord;
use crate::ha::{self, Record, SwitchoverRequest};
use crate::members::{ClusterStatus, probes, role, status};
use crate::proxy::Router;
use agents::{Shared, forward_commands, route_read_only, spawn_route_follower, take_over, take_requests};
use execute::{Scene, Watch};

/// What the daemon hands a cluster's watcher, with where to answer.
pub enum Command {
    /// Pause (`true`) or resume automatic action; answered at once.
    Pause(bool, Sender<Reply>),
    /// A planned switchover; answered with its outcome (or, with `at`,
    /// once scheduled).
    Switchover(SwitchoverRequest, Sender<Reply>),
}

/// A switchover waiting for its time or for a steady cluster, and who
/// waits for its outcome.
struct Pending {
    req: SwitchoverRequest,
    reply: Option<Sender<Reply>>,
}

/// Whether `to` can take over in a planned switchover.
pub fn check_target(c: &PostgresConfig, st: &ClusterStatus, to: &str) -> Result<(), String> {
    let m = st.members.iter().find(|m| m.name == to).ok_or_else(|| format!("no member `{to}`"))?;
    if !m.reachable || m.role.as_deref() != Some("standby") {
        return Err(format!("{to} is not a reachable standby"));
    }
    if !m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming")) {
        return Err(format!("{to} is not streaming ({})", m.receiver.as_deref().unwrap_or("no WAL receiver")));
    }
    if c.members.get(to).is_some_and(|m| m.priority == 0) {
        return Err(format!("{to} has priority 0 (never promote)"));
    }
    Ok(())
}

/// Watches a cluster until `stop`: health checks with the configured
/// thresholds, primary changes, split brain, and the decision core's
/// verdict, each recorded as an event. With `auto_failover` (the default)
/// it also acts: the endpoint stops routing to a primary declared down
/// (fencing it for every client of the endpoint), the chosen standby is
/// promoted, the others follow it, and an old primary that comes back is
/// rewound into a standby. With `proxy_listen` it serves the read-write
/// endpoint. Only one watcher acts per cluster: per state directory alone,
/// per etcd prefix with `[coordination]`, where every agent serves the
/// endpoints (following the route the leader publishes) and keeps the
/// members on its own host (`crate::keeper`).
pub fn watch(
    cluster: &str,
    c: &PostgresConfig,
    state: &StateDir,
    coordination: Option<&CoordinationConfig>,
    stop: Arc<AtomicBool>,
    commands: Receiver<Command>,
) -> anyhow::Result<()> {
    let source = format!("postgres/{cluster}");
    let coord = match coordination {
        Some(cc) => {
            let quick = (c.health.interval / 2).clamp(Duration::from_millis(100), Duration::from_millis(500));
            Some(Coord::connect(cc, cluster, quick).map_err(|e| anyhow::anyhow!("{source}: {e}"))?)
        }
        None => None,
    };
    let mut election: Box<dyn Leadership> = match (&coord, coordination) {
        (Some(k), Some(cc)) => {
            let mut e = k.election(cc).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
            e.set_acquire_timeout(Duration::from_millis(500).max(c.health.interval / 2));
            Box::new(e)
        }
        _ => Box::new(ha::local_lease(state, cluster)),
    };
    let interval = c.health.interval.max(Duration::from_millis(200));
    // Alone, a second daemon of the same state directory waits here; with
    // etcd every agent serves its endpoints and follows the leader.
    let first = if coord.is_some() {
        None
    } else {
        let waited = acquire_or_stand_by(&mut *election, state, &source, interval, &stop, || {
            // Another process acts: pausing only changes the record it reads,
            // and a switchover is its to make.
            while let Ok(cmd) = commands.try_recv() {
                let _ = match cmd {
                    Command::Pause(paused, reply) => reply.send(match ha::set_paused(state, cluster, paused) {
                        Ok(()) => Reply::Done {
                            message: format!("cluster {cluster} {}", if paused { "paused" } else { "resumed" }),
                        },
                        Err(e) => Reply::Error { message: format!("{e:#}") },
                    }),
                    Command::Switchover(_, reply) => reply.send(Reply::Error {
                        message: format!("this cirkel serve waits while another acts on {cluster}; ask that one"),
                    }),
                };
            }
        })?;
        match waited {
            Some(l) => Some(l),
            None => return Ok(()),
        }
    };
    let mut decider = crate::members::decider(c)?;
    let router = Router::new();
    let listen = |addr: &Option<String>, what: &str, router: &Arc<Router>| -> anyhow::Result<_> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the {what} of {cluster}: {e}"))?;
        let (router, stop) = (router.clone(), stop.clone());
        let cap = c.proxy_max_connections;
        Ok(Some(std::thread::spawn(move || crate::proxy::run(listener, router, stop, cap))))
    };
    let proxy = listen(&c.proxy_listen, "endpoint", &router)?;
    let ro_router = Router::new();
    let proxy_ro = listen(&c.proxy_listen_ro, "read-only endpoint", &ro_router)?;
    let view: crate::api::SharedView = Default::default();
    let mut apis = Vec::new();
    for (name, m) in &c.members {
        // With agents on several hosts, a member's health endpoints are
        // served on its own host.
        if coord.as_ref().is_some_and(|k| !k.is_local(c, name)) {
            continue;
        }
        if let Some(addr) = &m.api_listen {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for the health endpoints of {name}: {e}"))?;
            let (name, view, stop) = (name.clone(), view.clone(), stop.clone());
            apis.push(std::thread::spawn(move || crate::api::run(listener, name, view, stop)));
        }
    }
    let keepers = match &coord {
        Some(k) => crate::keeper::spawn_keepers(c, k, state, &stop)?,
        None => Vec::new(),
    };
    let leading = Arc::new(AtomicBool::new(false));
    let follower = match &coord {
        Some(k) => Some(spawn_route_follower(k.clone(), c.clone(), router.clone(), leading.clone(), stop.clone())?),
        None => None,
    };
    let rec = match &coord {
        Some(_) => Record::default(),
        None => Record::load(state, cluster)?,
    };
    let epoch = first.as_ref().map_or(0, |l| l.epoch);
    let mut w = Watch { cluster, c, state, source, router, rec, epoch, coord, published: None, heard: HashMap::new() };
    let mut lease = first;
    // A switchover scheduled before a restart is still due.
    let mut pending: Option<Pending> = w.rec.scheduled.clone().map(|req| Pending { req, reply: None });
    let legacy = crate::members::legacy_pause_flag(state, cluster);
    if w.coord.is_none() && legacy.exists() {
        w.rec.paused = true;
        w.save();
        let _ = std::fs::remove_file(&legacy);
    }
    let policy = watch_policy(c);
    let mut rounds = RoundState::default();
    let mut shared = Shared::new();
    let watch_started = Instant::now();
    w.record(
        w.event(EventKind::WatchStarted, format!("watching {} members", c.members.len()))
            .with(json!({ "epoch": w.epoch, "node": w.coord.as_ref().map(|k| k.node.clone()) })),
    );
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let st = status(cluster, c);
        if let Ok(mut v) = view.lock() {
            v.status = Some(st.clone());
            v.seen = Some(Instant::now());
        }
        let was_held = lease.is_some();
        let mut held = hold(&mut w, &mut election, &mut lease, &mut shared);
        leading.store(held, Ordering::Relaxed);
        if held && !was_held && w.coord.is_some() {
            // Taken over from another agent: the record as it left it.
            match take_over(&mut w, &mut decider, &mut rounds, &mut pending) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!("{}: {e}; the lease is given back", w.source);
                    if let Some(l) = lease.take() {
                        election.release(l);
                    }
                    held = false;
                    leading.store(false, Ordering::Relaxed);
                }
            }
        }
        if held {
            w.take_commands(&commands, &mut pending);
        } else {
            forward_commands(&w, &commands, election.holder());
        }
        let mut obs = observations(&st, &w.rec, held, pending.as_ref(), watch_started);
        if let Some(k) = &w.coord {
            shared.heartbeat(k, &st);
            w.heard = shared.keepers.iter().map(|(m, (_, at))| (m.clone(), *at)).collect();
            if held {
                take_requests(&mut w, &mut shared, &mut pending);
            }
            if held {
                for m in &mut obs.members {
                    m.gone = shared.gone.contains(&m.name);
                }
            }
        }
        let decided = round::round(&obs, &mut rounds, &mut decider, &policy);
        let mut scene = Scene { st: &st, decider: &mut decider, pending: &mut pending, ro_router: &ro_router };
        let mut alarm = decided.alarm;
        for action in &decided.actions {
            if let Err(why) = w.execute(action, &mut scene)
                && let Some(failed) = action.failure(why)
            {
                alarm = Some(failed);
            }
        }
        if decided.decided {
            if let Some(action) = rounds.settle(alarm) {
                // Raising or clearing an alarm does not fail.
                let _ = w.execute(&action, &mut scene);
            }
            if let Ok(mut v) = view.lock() {
                v.primary = w.router.target().and(decider.primary().map(str::to_string));
            }
        } else if w.coord.is_some() {
            let routed = shared.follow(&w, &st, &decided.actions);
            route_read_only(&w, &st, &ro_router, routed.as_deref());
            if let Ok(mut v) = view.lock() {
                v.primary = routed;
            }
        }
        tracing::debug!(cluster, round_ms = started.elapsed().as_secs_f64() * 1000.0, "watch round");
        rest(&mut w, started, &stop, &commands, &mut pending, &decider, held);
    }
    if let Some(l) = lease.take() {
        election.release(l);
    }
    for t in [proxy, proxy_ro].into_iter().flatten() {
        let _ = t.join();
    }
    for a in apis {
        let _ = a.join();
    }
    for k in keepers.into_iter().chain(follower) {
        let _ = k.join();
    }
    Ok(())
}

/// The cluster's configuration as the round's rules read it.
fn watch_policy(c: &PostgresConfig) -> WatchPolicy {
    WatchPolicy {
        auto_failover: c.auto_failover,
        synchronous: c.synchronous,
        max_lag_bytes: c.max_lag_bytes,
        healthy_threshold: c.health.healthy_threshold,
        unhealthy_threshold: c.health.unhealthy_threshold,
        promotable: c.members.iter().filter(|(_, m)| m.priority > 0).map(|(n, _)| n.clone()).collect(),
    }
}

/// What one round saw, as the pure round reads it.
fn observations(
    st: &ClusterStatus,
    rec: &Record,
    lease_held: bool,
    pending: Option<&Pending>,
    watch_started: Instant,
) -> Observations {
    let members = st
        .members
        .iter()
        .map(|m| MemberSeen {
            name: m.name.clone(),
            zone: m.zone.clone(),
            reachable: m.reachable,
            role: role(m),
            streaming: m.receiver.as_deref().is_some_and(|r| r.starts_with("streaming")),
            lsn: m.lsn_bytes.unwrap_or(0),
            lag_bytes: m.lag_bytes,
            waits_for_standbys: m.synchronous_standby_names.as_deref().is_some_and(|n| !n.is_empty()),
            replicas: m.replicas.iter().map(|l| l.name.clone()).collect(),
            error: m.error.clone(),
            gone: false,
        })
        .collect();
    Observations {
        members,
        lease_held,
        paused: rec.paused,
        recorded_primary: rec.primary.clone(),
        fenced: rec.fenced.clone(),
        in_flight: rec.failover.as_ref().map(|f| round::InFlight { old: f.old.clone(), new: f.new.clone() }),
        sync_recorded: rec.sync.clone(),
        switchover: pending.map(|p| PendingSwitchover { at: p.req.at.map(|t| t.timestamp_millis()) }),
        now: Utc::now().timestamp_millis(),
        uptime_ms: u64::try_from(watch_started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// Sleeps out the rest of a round, taking commands as they come. A leader
/// with etcd also looks every 100 ms whether the primary's agent reported
/// its postmaster gone, and starts the next round at once if so.
fn rest(
    w: &mut Watch,
    round: Instant,
    stop: &AtomicBool,
    commands: &Receiver<Command>,
    pending: &mut Option<Pending>,
    decider: &cirkel_failover::Decider,
    held: bool,
) {
    let left = w.c.health.interval.saturating_sub(round.elapsed());
    let until = Instant::now() + left;
    let mut next_look = Instant::now() + Duration::from_millis(100);
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(left.min(Duration::from_millis(25)));
        if held {
            w.take_commands(commands, pending);
        }
        if held
            && Instant::now() >= next_look
            && let (Some(k), Some(p)) = (&w.coord, decider.primary())
        {
            next_look = Instant::now() + Duration::from_millis(100);
            if k.gone(p).ok().flatten().is_some() {
                return;
            }
        }
    }
}

/// Checks the lease at the top of a round: whether this watcher may act
/// in it. A lease that is lost, or that cannot be checked, stops every
/// action at once and cuts this watcher's endpoint (its clients must not
/// write to a primary another holder may be failing over); the watcher
/// then tries each round to take a new lease, under a new epoch.
fn hold(w: &mut Watch, election: &mut impl Leadership, lease: &mut Option<Lease>, shared: &mut Shared) -> bool {
    if let Some(l) = lease.as_ref() {
        let why = match election.still_held(l) {
            Ok(true) => return true,
            Ok(false) => "it was lost".to_string(),
            Err(e) => format!("it cannot be checked: {e}"),
        };
        let msg = format!(
            "the lease on {} (epoch {}) is no longer held: {why}; no action until it is taken again",
            w.cluster, l.epoch
        );
        w.record(w.event(EventKind::LeadershipLost, msg).with(json!({ "epoch": l.epoch })));
        // Alone, the endpoint is cut at once; with etcd it follows the
        // route the next leader publishes (or is cut for want of one).
        if w.coord.is_none() {
            w.router.set(None);
        } else {
            shared.route_read = None;
        }
        *lease = None;
    }
    // While etcd does not answer, a try every other round: each waits for
    // its timeout, and the rounds must go on meanwhile.
    if shared.retry_at.is_some_and(|t| Instant::now() < t) {
        return false;
    }
    match election.acquire() {
        Ok(Some(l)) => {
            w.epoch = l.epoch;
            let msg = match &w.coord {
                Some(k) => format!("agent {} leads {} (lease epoch {})", k.node, w.cluster, l.epoch),
                None => format!("this cirkel serve acts on {} again (lease epoch {})", w.cluster, l.epoch),
            };
            w.record(w.event(EventKind::LeadershipAcquired, msg).with(json!({ "epoch": l.epoch })));
            *lease = Some(l);
            true
        }
        Ok(None) => {
            shared.retry_at = None;
            false
        }
        Err(e) => {
            tracing::warn!("{}: cannot take the lease: {e}", w.source);
            if w.coord.is_some() {
                shared.retry_at = Some(Instant::now() + w.c.health.interval);
            }
            false
        }
    }
}

/// A planned switchover when no `cirkel serve` watches the cluster: the
/// same steps, without an endpoint to move. Holds the cluster's lease
/// meanwhile, so that a watcher starting now waits.
pub fn switchover_now(
    cluster: &str,
    c: &PostgresConfig,
    state: &StateDir,
    req: &SwitchoverRequest,
) -> anyhow::Result<Result<Event, String>> {
    let mut election = ha::local_lease(state, cluster);
    let Some(lease) = election.acquire()? else {
        anyhow::bail!(
            "a cirkel serve ({}) acts on {cluster} but does not answer on its control socket",
            election.holder().unwrap_or_default()
        );
    };
    let mut decider = crate::members::decider(c)?;
    let mut w = Watch {
        cluster,
        c,
        state,
        source: format!("postgres/{cluster}"),
        router: Router::new(),
        rec: Record::load(state, cluster)?,
        epoch: lease.epoch,
        coord: None,
        published: None,
        heard: HashMap::new(),
    };
    let st = status(cluster, c);
    decider.set_sync(c.synchronous.then(|| SyncSet { members: w.rec.sync_set(c, st.primary.as_deref()), k: 1 }));
    if let Decision::Misconfigured(why) = decider.observe(&probes(&st)) {
        return Ok(Err(why));
    }
    let outcome = w.switchover(&mut decider, &st, req);
    if let Err(why) = &outcome {
        w.record(
            w.event(EventKind::SwitchoverFailed, format!("switchover refused or failed: {why}"))
                .with(json!({ "id": req.id })),
        );
    }
    election.release(lease);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Target;
    use cirkel_failover::round::{Action, ReadOnly};
    use cirkel_failover::{MemoryElection, Role};

    fn config() -> PostgresConfig {
        let text = "[postgres.main]\n[postgres.main.members.a]\nhost = \"127.0.0.1\"\nport = 5432\n";
        let mut cfg = cirkel_config::Config::parse(text, "c.toml", None).unwrap();
        cfg.postgres.remove("main").unwrap()
    }

    fn kinds(state: &StateDir) -> Vec<String> {
        state.events().unwrap().into_iter().map(|e| e.kind.to_string()).collect()
    }

    #[test]
    fn a_stale_lease_epoch_stops_a_promotion() {
        let t = tempfile::tempdir().unwrap();
        let state = StateDir::new(t.path().join("state"));
        let c = config();
        let election = MemoryElection::new();
        let (mut a, mut b) = (election.contender("a"), election.contender("b"));
        let la = a.acquire().unwrap().unwrap();
        let watch = |epoch| Watch {
            cluster: "main",
            c: &c,
            state: &state,
            source: "postgres/main".into(),
            router: Router::new(),
            rec: Record::default(),
            epoch,
            coord: None,
            published: None,
            heard: HashMap::new(),
        };
        let mut wa = watch(la.epoch);
        let mut lease = Some(la.clone());
        assert!(hold(&mut wa, &mut a, &mut lease, &mut Shared::new()), "the holder acts");
        wa.admit("failover").expect("its epoch is the newest");
        wa.route(wa.target_of("a"));
        assert!(wa.router.target().is_some());
        // The lease goes to b, which acts and records its epoch.
        let lb = election.hand_to("b");
        let mut wb = watch(lb.epoch);
        let mut lease_b = Some(lb);
        assert!(hold(&mut wb, &mut b, &mut lease_b, &mut Shared::new()));
        wb.admit("failover").unwrap();
        assert_eq!(Record::load(&state, "main").unwrap().epoch, election.epoch());
        // a, before its next check, would promote: refused, and recorded.
        assert!(wa.admit("failover a → b").is_err());
        assert!(kinds(&state).contains(&"stale-epoch".to_string()));
        // At its next round a sees the lease lost, cuts its endpoint and
        // does not act while b holds it.
        assert!(!hold(&mut wa, &mut a, &mut lease, &mut Shared::new()));
        assert!(lease.is_none());
        assert_eq!(wa.router.target(), None);
        assert!(kinds(&state).contains(&"leadership-lost".to_string()));
        assert!(!hold(&mut wa, &mut a, &mut lease, &mut Shared::new()), "b still holds it");
        // Revoked from b, it is a's again under a newer epoch.
        election.revoke();
        assert!(hold(&mut wa, &mut a, &mut lease, &mut Shared::new()));
        assert!(!hold(&mut wb, &mut b, &mut lease_b, &mut Shared::new()), "b sees it lost, and a holds it");
        assert!(wa.epoch > la.epoch);
        wa.admit("failover").expect("a newer epoch acts again");
    }

    #[test]
    fn observations_carry_what_the_rules_read() {
        use crate::members::{MemberState, ReplicaLink};
        let member = |name: &str| MemberState { name: name.into(), zone: format!("z-{name}"), ..Default::default() };
        let st = ClusterStatus {
            cluster: "main".into(),
            primary: Some("a".into()),
            healthy: false,
            problems: Vec::new(),
            members: vec![
                MemberState {
                    reachable: true,
                    role: Some("primary".into()),
                    lsn_bytes: Some(1000),
                    synchronous_standby_names: Some("ANY 1 (\"b\")".into()),
                    replicas: vec![ReplicaLink { name: "b".into(), ..Default::default() }],
                    ..member("a")
                },
                MemberState {
                    reachable: true,
                    role: Some("standby".into()),
                    lsn_bytes: Some(990),
                    lag_bytes: Some(10),
                    receiver: Some("streaming from 127.0.0.1:5432".into()),
                    ..member("b")
                },
                MemberState {
                    reachable: true,
                    role: Some("standby".into()),
                    receiver: Some("stopping from ?:?".into()),
                    ..member("c")
                },
                MemberState { error: Some("no answer within 1s".into()), ..member("d") },
            ],
        };
        let at = Utc::now() + chrono::Duration::hours(1);
        let rec = Record {
            primary: Some("a".into()),
            fenced: Some("d".into()),
            failover: Some(ha::InFlight { old: "d".into(), new: "a".into(), started: Utc::now() }),
            sync: Some(["b".to_string()].into()),
            paused: true,
            ..Default::default()
        };
        let req = SwitchoverRequest { id: "x".into(), to: None, at: Some(at), requested: Utc::now() };
        let pending = Pending { req, reply: None };
        let obs = observations(&st, &rec, true, Some(&pending), Instant::now());
        let [a, b, c, d] = &obs.members[..] else { panic!("{obs:?}") };
        assert_eq!((a.role, a.lsn, a.waits_for_standbys), (Some(Role::Primary), 1000, true));
        assert_eq!(a.replicas, vec!["b".to_string()]);
        assert_eq!((b.role, b.streaming, b.lag_bytes), (Some(Role::Replica), true, Some(10)));
        assert!(!c.streaming && !c.waits_for_standbys);
        assert_eq!((d.reachable, d.role, d.error.as_deref()), (false, None, Some("no answer within 1s")));
        assert_eq!(d.zone, "z-d");
        assert!(obs.lease_held && obs.paused);
        assert_eq!(obs.fenced.as_deref(), Some("d"));
        assert_eq!(obs.in_flight, Some(round::InFlight { old: "d".into(), new: "a".into() }));
        assert_eq!(obs.sync_recorded, rec.sync);
        assert_eq!(obs.switchover, Some(PendingSwitchover { at: Some(at.timestamp_millis()) }));
        assert!(obs.now <= Utc::now().timestamp_millis());
    }

    struct Bench {
        _dir: tempfile::TempDir,
        state: StateDir,
        c: PostgresConfig,
        st: ClusterStatus,
        ro: Arc<Router>,
    }

    fn bench() -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("state"));
        let st = ClusterStatus {
            cluster: "main".into(),
            primary: None,
            healthy: true,
            problems: Vec::new(),
            members: Vec::new(),
        };
        Bench { _dir: dir, state, c: config(), st, ro: Router::new() }
    }

    impl Bench {
        fn watch(&self, epoch: u64) -> Watch<'_> {
            Watch {
                cluster: "main",
                c: &self.c,
                state: &self.state,
                source: "postgres/main".into(),
                router: Router::new(),
                rec: Record::default(),
                epoch,
                coord: None,
                published: None,
                heard: HashMap::new(),
            }
        }

        fn run(&self, w: &mut Watch, action: &Action) -> Result<(), String> {
            let mut decider = crate::members::decider(&self.c).unwrap();
            decider.assume_primary("a");
            let mut pending = None;
            let mut scene = Scene { st: &self.st, decider: &mut decider, pending: &mut pending, ro_router: &self.ro };
            w.execute(action, &mut scene)
        }
    }

    #[test]
    fn events_and_alarms_are_recorded_under_the_logs_kinds() {
        let b = bench();
        let mut w = b.watch(1);
        let down = round::Event {
            kind: round::EventKind::MemberDown,
            message: "member a failed 3 checks: refused".into(),
            details: vec![("member", "a".into()), ("zone", "z1".into())],
        };
        b.run(&mut w, &Action::Record(down)).unwrap();
        let alarm = round::Alarm {
            key: round::AlarmKey { kind: round::AlarmKind::NoFailoverCandidate, subject: "a".into() },
            message: "primary a is down and no standby qualifies".into(),
        };
        b.run(&mut w, &Action::RaiseAlarm(alarm.clone())).unwrap();
        b.run(&mut w, &Action::ClearAlarm(alarm.key)).unwrap();
        let events = b.state.events().unwrap();
        let kinds: Vec<String> = events.iter().map(|e| e.kind.to_string()).collect();
        assert_eq!(kinds, ["member-down", "no-failover-candidate"], "a cleared alarm records nothing");
        assert_eq!(events[0].details["member"], "a");
        assert_eq!(events[0].details["zone"], "z1");
        assert_eq!(events[1].message, "primary a is down and no standby qualifies");
    }

    #[test]
    fn unfencing_and_a_new_primary_are_saved() {
        let b = bench();
        let mut w = b.watch(1);
        w.rec.fenced = Some("b".into());
        b.run(&mut w, &Action::Unfence("b".into())).unwrap();
        b.run(&mut w, &Action::RecordPrimary("a".into())).unwrap();
        let rec = Record::load(&b.state, "main").unwrap();
        assert_eq!((rec.fenced, rec.primary.as_deref()), (None, Some("a")));
        // Nothing pending: a switchover is nothing to do.
        b.run(&mut w, &Action::Switchover).unwrap();
        assert!(b.state.events().unwrap().is_empty());
    }

    #[test]
    fn the_read_only_endpoint_follows_the_primary_only_while_it_is_routed() {
        let b = bench();
        let mut w = b.watch(1);
        b.ro.set(Some(Target::new("127.0.0.1", 1)));
        b.run(&mut w, &Action::RouteReadOnly(ReadOnly::Primary)).unwrap();
        assert_eq!(b.ro.target(), None, "the read-write endpoint routes nowhere");
        b.run(&mut w, &Action::Route(Some("a".into()))).unwrap();
        b.run(&mut w, &Action::RouteReadOnly(ReadOnly::Primary)).unwrap();
        assert_eq!(b.ro.target(), Some(Target::new("127.0.0.1", 5432)));
        b.run(&mut w, &Action::RouteReadOnly(ReadOnly::Standby("nobody".into()))).unwrap();
        assert_eq!(b.ro.target(), None, "an unknown member is no target");
    }

    #[test]
    fn a_rejoin_under_a_stale_epoch_fails_into_its_alarm() {
        let b = bench();
        Record { epoch: 5, ..Default::default() }.save(&b.state, "main").unwrap();
        let mut w = b.watch(4);
        let rejoin = Action::Rejoin { old: "a".into(), new: "b".into() };
        let why = b.run(&mut w, &rejoin).unwrap_err();
        assert!(why.contains("refused"), "{why}");
        let alarm = rejoin.failure(why).unwrap();
        assert_eq!(alarm.key.kind, round::AlarmKind::RejoinFailed);
        assert!(kinds(&b.state).contains(&"stale-epoch".to_string()));
        let failover = Action::Failover { old: "a".into(), new: "b".into(), lost_bytes: 0, detected: 0 };
        let why = b.run(&mut w, &failover).unwrap_err();
        assert!(why.contains("refused"), "{why}");
        assert_eq!(b.ro.target(), None);
    }
}
