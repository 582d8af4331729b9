//! The agent's care of a member on its own host (`node = "…"` names this
//! agent), when agents on several hosts share a cluster through etcd.
//!
//! The leader decides; the keeper does what only the member's host can do,
//! by rules that need no leader at all:
//! - its postmaster exits while it is a primary: the exit is reported in
//!   etcd (`gone-MEMBER`) at once, so the leader fails over without waiting
//!   for more failed checks, and the keeper does not start it again while
//!   the route may move;
//! - a stopped standby is started again;
//! - a primary's data directory (stopped, or running as a primary) while the
//!   route names another member: rewound into a standby of that member
//!   (`pg_rewind`, never by deleting data);
//! - a running primary while the route names nobody (a failover away from
//!   it is under way): stopped at once;
//! - a running primary whose agent has had no word from etcd for
//!   `fence_after` and does not see every other member: stopped at once
//!   (self-fenced), because the majority may be promoting another. While it
//!   sees every member it keeps running: an etcd outage alone stops nothing;
//! - a primary it stopped, which the route names again: started again.
//!
//! Every decision reads the route it acts on from etcd (or knows it is
//! stale), so a keeper partitioned from etcd only ever stops its primary.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use cirkel_config::PostgresConfig;
use cirkel_state::{Event, EventKind, StateDir};
use serde_json::json;

use cirkel_failover::keep::{KeepAction, KeepObs, RouteSeen, keep};

use crate::coord::{Coord, Gone, Route};
use crate::failover;

/// How often the postmaster is looked at: the postmaster-killed RTO is
/// this plus the leader's reaction.
const TICK: Duration = Duration::from_millis(50);
/// How long the answer of the other members' probes is reused.
const PROBE_FOR: Duration = Duration::from_millis(500);
/// The least time between two attempts of the same repair.
const RETRY: Duration = Duration::from_secs(5);

/// Whether the postmaster of `pgdata` runs: its pid file names a live
/// process.
pub fn postmaster_alive(pgdata: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else { return false };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()).filter(|p| *p > 0) else {
        return false;
    };
    // A killed postmaster stays a zombie until its parent reaps it, which
    // may take a while: it counts as gone.
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        return !matches!(state, Some("Z" | "X" | "x"));
    }
    // Without /proc: signal 0 checks the process exists; EPERM means it
    // does, as another user.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Waits until a killed postmaster's zombie is reaped (PostgreSQL will
/// not start, even in single-user mode for `pg_rewind`, while its pid
/// file names a process that exists), at most `limit`.
fn wait_reaped(pgdata: &Path, limit: Duration) {
    let Ok(text) = std::fs::read_to_string(pgdata.join("postmaster.pid")) else { return };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else { return };
    let until = Instant::now() + limit;
    while Path::new(&format!("/proc/{pid}")).exists() && !postmaster_alive(pgdata) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Standby,
}

/// One member kept by the agent on its host.
pub struct Keeper {
    member: String,
    c: PostgresConfig,
    coord: Coord,
    state: StateDir,
    pgdata: PathBuf,
    source: String,
    /// The route as last read, and when it was read.
    route: Option<Route>,
    route_read: Option<Instant>,
    /// What the member was when last seen running.
    role: Option<Role>,
    /// This keeper stopped it (fenced); it may start it again.
    fenced: bool,
    /// Its exit is reported in etcd.
    gone: Option<Instant>,
    last_attempt: Option<Instant>,
    next_check: Instant,
    /// The last rejoin failure, recorded once.
    rejoin_failed: Option<String>,
    /// Whether every other member answered, and when that was asked.
    probed: Option<(Instant, bool)>,
    /// The last switchover this keeper stopped its primary for.
    handed_off: Option<String>,
    /// The cluster is paused: nothing is started, stopped or rewound.
    paused: bool,
}

impl Keeper {
    pub fn new(member: &str, c: &PostgresConfig, coord: Coord, state: &StateDir) -> anyhow::Result<Keeper> {
        let pgdata = c
            .members
            .get(member)
            .and_then(|m| m.pgdata.clone())
            .ok_or_else(|| anyhow::anyhow!("member {member} names this agent as its node but has no pgdata"))?;
        let source = format!("postgres/{}", coord.scope.trim_start_matches("postgres-"));
        Ok(Keeper {
            source,
            member: member.to_string(),
            c: c.clone(),
            coord,
            state: state.clone(),
            pgdata,
            route: None,
            route_read: None,
            role: None,
            fenced: false,
            gone: None,
            last_attempt: None,
            next_check: Instant::now(),
            rejoin_failed: None,
            probed: None,
            handed_off: None,
            paused: false,
        })
    }

    fn record(&self, kind: EventKind, message: String) {
        let e = Event::new(&self.source, kind, message).with(json!({ "member": self.member, "node": self.coord.node }));
        tracing::warn!("{}: {}", e.source, e.message);
        if let Err(err) = self.state.record(&e) {
            tracing::error!("cannot record an event: {err:#}");
        }
    }

    /// Keeps the member until `stop`.
    pub fn run(mut self, stop: &AtomicBool) {
        let mut alive = postmaster_alive(&self.pgdata);
        while !stop.load(Ordering::Relaxed) {
            let now = postmaster_alive(&self.pgdata);
            let died = alive && !now;
            alive = now;
            if died || Instant::now() >= self.next_check {
                self.next_check = Instant::now() + self.c.health.interval;
                self.check(alive);
            } else if alive && self.role == Some(Role::Primary) && !self.paused && !self.fresh() {
                // The deadline is kept to the tick, not to the next check:
                // the leader promotes another once it has passed.
                self.act(alive);
            }
            std::thread::sleep(TICK);
        }
    }

    /// Reports this keeper alive (`keeper-MEMBER`, which the leader watches
    /// to know until when this host could still hear from etcd) and reads
    /// the route; either succeeding is word from etcd.
    fn read_route(&mut self) {
        let beat = serde_json::json!({ "node": self.coord.node, "at": Utc::now() }).to_string();
        if self.coord.quick.put(&self.coord.scope, &format!("keeper-{}", self.member), beat.as_bytes()).is_ok() {
            self.route_read = Some(Instant::now());
        }
        match self.coord.route() {
            Ok(r) => {
                self.route = r;
                self.route_read = Some(Instant::now());
            }
            Err(e) => tracing::debug!("{}: cannot read the route: {e}", self.source),
        }
    }

    /// Whether the route was read within `fence_after`.
    fn fresh(&self) -> bool {
        self.route_read.is_some_and(|t| t.elapsed() < self.coord.fence_after(&self.c))
    }

    /// Every other member's PostgreSQL port takes a connection now: the
    /// host still sees its cluster, even if not etcd.
    fn sees_everyone(&mut self) -> bool {
        if let Some((at, seen)) = self.probed
            && at.elapsed() < PROBE_FOR
        {
            return seen;
        }
        let timeout = self.c.health.timeout.min(Duration::from_millis(300));
        let seen = std::thread::scope(|s| {
            let probes: Vec<_> = self
                .c
                .members
                .iter()
                .filter(|(n, _)| **n != self.member)
                .map(|(_, m)| {
                    s.spawn(move || {
                        use std::net::ToSocketAddrs;
                        let Ok(mut addrs) = (m.host.as_str(), m.port).to_socket_addrs() else { return false };
                        addrs.next().is_some_and(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok())
                    })
                })
                .collect();
            probes.into_iter().all(|p| p.join().unwrap_or(false))
        });
        self.probed = Some((Instant::now(), seen));
        seen
    }

    fn local_role(&self) -> Option<Role> {
        let m = self.c.members.get(&self.member)?;
        let asked = crate::conn::PgConn::connect(Some(&failover::member_conninfo(&self.c, m, self.c.health.timeout)))
            .and_then(|conn| Ok(conn.query_one("SELECT pg_is_in_recovery()")?.get::<_, bool>(0)));
        match asked {
            Ok(true) => Some(Role::Standby),
            Ok(false) => Some(Role::Primary),
            Err(e) => {
                tracing::warn!("{}: cannot ask {} its role: {e:#}", self.source, self.member);
                None
            }
        }
    }

    fn may_attempt(&mut self) -> bool {
        if self.last_attempt.is_some_and(|t| t.elapsed() < RETRY) {
            return false;
        }
        self.last_attempt = Some(Instant::now());
        true
    }

    fn check(&mut self, alive: bool) {
        self.read_route();
        // Paused (`cirkel pg pause`): hands off, as the leader is; a gone
        // postmaster is still reported.
        if let Ok(Some(rec)) = self.coord.load_record_quick() {
            self.paused = rec.paused;
        }
        if alive {
            if let Some(r) = self.local_role() {
                self.role = Some(r);
            }
            if self.gone.take().is_some()
                && let Err(e) = self.coord.report_gone(&self.member, None)
            {
                tracing::debug!("{}: {e}", self.source);
            }
        } else if self.role == Some(Role::Primary) && self.gone.is_none() && !self.fenced {
            let report = Gone { at: Utc::now(), node: self.coord.node.clone() };
            let reported = match self.coord.report_gone(&self.member, Some(&report)) {
                Ok(()) => "reported to the leader".to_string(),
                Err(e) => format!("not reported ({e})"),
            };
            self.gone = Some(Instant::now());
            self.record(
                EventKind::PostmasterGone,
                format!("the postmaster of primary {} exited; {reported}", self.member),
            );
        }
        self.act(alive);
    }

    /// Decides by the keeper's rules (`cirkel_failover::keep`) and acts.
    fn act(&mut self, alive: bool) {
        let mut sees_everyone = None;
        loop {
            let fresh = self.fresh();
            let handoff = self.route.as_ref().and_then(|r| r.handoff.clone());
            let route = self.route.as_ref().filter(|_| fresh).map(|r| RouteSeen {
                primary: r.primary.as_deref(),
                handoff_from_me: r.primary.is_none() && handoff.as_ref().is_some_and(|h| h.old == self.member),
            });
            let o = KeepObs {
                me: &self.member,
                alive,
                // Only a member seen answering as a primary is treated as
                // one while it runs; a stopped one is judged by its data
                // directory (standby.signal or not).
                primary: self.role == Some(Role::Primary),
                standby_data: self.pgdata.join("standby.signal").exists(),
                fresh,
                route,
                paused: self.paused,
                stopped_by_me: self.fenced,
                gone_long: self.gone.is_some_and(|t| t.elapsed() > self.coord.ttl * 3),
                sees_everyone,
                handoff_done: handoff.as_ref().is_some_and(|h| self.handed_off.as_deref() == Some(h.id.as_str())),
            };
            let action = keep(&o);
            match action {
                KeepAction::Probe => {
                    sees_everyone = Some(self.sees_everyone());
                    continue;
                }
                KeepAction::Nothing => {}
                KeepAction::Fence(why) => {
                    let since =
                        self.route_read.map_or("its start".into(), |t| format!("{:.1} s", t.elapsed().as_secs_f64()));
                    self.stop(format!("{why} (last word from etcd {since} ago)"));
                }
                KeepAction::HandOff => {
                    if let Some(h) = handoff {
                        self.hand_off(&h);
                    }
                }
                KeepAction::Rejoin(p) => self.rejoin_soon(&p),
                KeepAction::Start(why) => {
                    if self.may_attempt() {
                        self.start(why);
                    }
                }
            }
            return;
        }
    }

    /// A planned switchover away from this primary: a clean stop, so that
    /// its shutdown checkpoint reaches the standbys, and the answer the
    /// leader waits for (once per switchover).
    fn hand_off(&mut self, h: &crate::coord::Handoff) {
        if self.handed_off.as_deref() == Some(h.id.as_str()) {
            return;
        }
        self.handed_off = Some(h.id.clone());
        let bindir = self.c.bindir.clone().unwrap_or_else(crate::stream::find_bindir);
        let out = std::process::Command::new(bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output();
        let stopped = Utc::now();
        let answer = match out {
            Ok(o) if o.status.success() => {
                self.fenced = true;
                match failover::shutdown_checkpoint(&self.c, &self.pgdata) {
                    Ok((lsn, _)) => crate::coord::HandoffDone { final_lsn: Some(lsn), error: None, stopped },
                    Err(e) => crate::coord::HandoffDone { final_lsn: None, error: Some(format!("{e:#}")), stopped },
                }
            }
            Ok(o) => crate::coord::HandoffDone {
                final_lsn: None,
                error: Some(format!("pg_ctl stop: {}", String::from_utf8_lossy(&o.stderr).trim())),
                stopped,
            },
            Err(e) => crate::coord::HandoffDone { final_lsn: None, error: Some(format!("pg_ctl: {e}")), stopped },
        };
        self.record(
            EventKind::HandedOff,
            format!(
                "stopped primary {} cleanly for a switchover to {}: {}",
                self.member,
                h.new,
                answer.final_lsn.as_deref().or(answer.error.as_deref()).unwrap_or("")
            ),
        );
        if let Err(e) = self.coord.answer_handoff(&h.id, &answer) {
            tracing::error!("{}: cannot answer the switchover: {e}", self.source);
        }
    }

    /// Stops the primary at once (fencing it); clients lose their sessions.
    fn stop(&mut self, why: String) {
        let bindir = self.c.bindir.clone().unwrap_or_else(crate::stream::find_bindir);
        let out = std::process::Command::new(bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                self.fenced = true;
                self.record(EventKind::SelfFenced, format!("stopped primary {}: {why}", self.member));
            }
            Ok(o) => tracing::error!(
                "{}: could not stop {}: {}",
                self.source,
                self.member,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => tracing::error!("{}: could not run pg_ctl: {e}", self.source),
        }
    }

    fn start(&mut self, why: String) {
        let Some(m) = self.c.members.get(&self.member).cloned() else { return };
        let log = self.state.root().join("logs").join(format!("keeper-{}.log", self.member));
        let _ = std::fs::create_dir_all(self.state.root().join("logs"));
        match failover::start_member(&self.c, &m, &self.pgdata, &log, true) {
            Ok(()) => {
                self.fenced = false;
                self.record(EventKind::MemberStarted, format!("started {}: {why}", self.member));
            }
            Err(e) => tracing::error!("{}: could not start {}: {e:#}", self.source, self.member),
        }
    }

    /// Rejoins, unless the last attempt was too recent.
    fn rejoin_soon(&mut self, primary: &str) {
        if self.may_attempt() {
            self.rejoin(primary);
        }
    }

    fn rejoin(&mut self, primary: &str) {
        wait_reaped(&self.pgdata, Duration::from_secs(5));
        let logs = self.state.root().join("logs");
        match failover::rejoin(&self.c, &self.member, primary, &logs) {
            Ok(took) => {
                self.fenced = false;
                self.rejoin_failed = None;
                self.role = Some(Role::Standby);
                if self.gone.take().is_some() {
                    let _ = self.coord.report_gone(&self.member, None);
                }
                let e = Event::new(
                    &self.source,
                    EventKind::Rejoined,
                    format!("{} was rewound and follows {primary} ({:.1} s)", self.member, took.as_secs_f64()),
                )
                .with(json!({ "member": self.member, "primary": primary, "seconds": took.as_secs_f64(), "node": self.coord.node }));
                if let Err(err) = self.state.record(&e) {
                    tracing::error!("cannot record an event: {err:#}");
                }
            }
            Err(e) => {
                let why = format!("{e:#}");
                if self.rejoin_failed.as_deref() != Some(why.as_str()) {
                    self.record(
                        EventKind::RejoinFailed,
                        format!("rejoining {} to {primary} failed: {why}", self.member),
                    );
                    self.rejoin_failed = Some(why);
                }
            }
        }
    }
}

/// Runs a keeper for each member on this agent's host until `stop`.
pub fn spawn_keepers(
    c: &PostgresConfig,
    coord: &Coord,
    state: &StateDir,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    for name in c.members.keys().filter(|n| coord.is_local(c, n)) {
        let k = Keeper::new(name, c, coord.clone(), state)?;
        let stop = stop.clone();
        threads.push(std::thread::Builder::new().name(format!("keep-{name}")).spawn(move || k.run(&stop))?);
    }
    Ok(threads)
}
