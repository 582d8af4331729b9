//! One round of a PostgreSQL cluster's watcher, as a pure function.
//!
//! The watcher probes the members, reads its record, its lease and the
//! commands waiting, and hands all of it to [`round`] as plain
//! [`Observations`]; the round applies the watcher's rules and answers with
//! the [`Action`]s an executor carries out. Keeping the rules here, with no
//! I/O and no clock (the time is an observation), lets every rule be tested
//! round by round without a process, and lets a property test drive
//! thousands of rounds: the endpoint never routes to a fenced or unreachable
//! member, nothing is promoted without the lease, an alarm is raised once.
//!
//! The rules:
//! - health: each member turns down or up after the configured number of
//!   consecutive checks (`HealthCounter`), whether or not the lease is held;
//! - without the lease nothing else happens: no routing, no promotion;
//! - after a restart, a failover recorded in flight is finished when its new
//!   primary runs as one, else abandoned, and the recorded primary is taken
//!   as the primary unless it is a standby or another member is a primary;
//! - the fenced old primary is invisible to the decision core until it is a
//!   standby again, and then it is unfenced;
//! - steady: the endpoint routes to the primary; a due switchover runs;
//!   else (acting and not paused) the fenced old primary, back as a primary,
//!   is rejoined and stray standbys are repointed; the synchronous set is
//!   kept up (or cleared when synchronous mode was turned off);
//! - the primary down: the first failure is remembered as the time it was
//!   detected, and the decision core's verdict is acted on or alarmed about;
//! - the read-only endpoint keeps its standby while it streams within the
//!   lag limit, else takes another, else follows the primary;
//! - an alarm is raised once per kind and subject: the same alarm with a
//!   new message (a lag that grew) is not raised again until it clears.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Decider, Decision, HealthCounter, Probe, Role, SyncSet};

/// Milliseconds since the Unix epoch, as the executor read its clock.
pub type Millis = i64;

/// How long a standby may stream from elsewhere before it is repointed: a
/// standby repointed by a failover needs a moment to reconnect.
const STRAY_GRACE_MS: u64 = 5_000;
/// Early after the watcher starts, strays (left by a failover cirkel was
/// stopped in) are repointed at once.
const FRESH_MS: u64 = 3_000;
/// Repoints after which a standby that still does not stream is rewound:
/// its history went past the new primary's fork (it received WAL the
/// promoted standby had not), which only `pg_rewind` undoes.
pub const REPOINTS_BEFORE_REWIND: u32 = 2;

/// One member as a round saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSeen {
    pub name: String,
    pub zone: String,
    /// It answered the probe in time.
    pub reachable: bool,
    /// Known only when reachable.
    pub role: Option<Role>,
    /// A standby whose WAL receiver is streaming.
    pub streaming: bool,
    /// Primary: current write LSN. Standby: last WAL received.
    pub lsn: u64,
    /// A standby's bytes of WAL behind the primary, when both are known.
    pub lag_bytes: Option<u64>,
    /// A primary whose `synchronous_standby_names` is not empty.
    pub waits_for_standbys: bool,
    /// A primary's replication connections, by `application_name`.
    pub replicas: Vec<String>,
    /// Why the probe failed.
    pub error: Option<String>,
    /// Its own host's agent saw its postmaster exit (and will not restart
    /// it as a primary): down at once, without waiting for more checks.
    pub gone: bool,
}

/// A failover recorded as started, before its promotion was recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub old: String,
    pub new: String,
}

/// A planned switchover waiting to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSwitchover {
    /// When it was asked for (`None`: as soon as the cluster is steady).
    pub at: Option<Millis>,
}

/// Everything one round decides on, as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observations {
    pub members: Vec<MemberSeen>,
    /// This watcher holds the cluster's lease this round.
    pub lease_held: bool,
    pub paused: bool,
    /// The record: the primary, the fenced old primary, a failover in
    /// flight, the synchronous set (`None`: never recorded).
    pub recorded_primary: Option<String>,
    pub fenced: Option<String>,
    pub in_flight: Option<InFlight>,
    pub sync_recorded: Option<BTreeSet<String>>,
    pub switchover: Option<PendingSwitchover>,
    /// The wall clock when the round started.
    pub now: Millis,
    /// Monotonic milliseconds since the watcher started.
    pub uptime_ms: u64,
}

impl Observations {
    fn member(&self, name: &str) -> Option<&MemberSeen> {
        self.members.iter().find(|m| m.name == name)
    }

    fn role_of(&self, name: &str) -> Option<Role> {
        self.member(name).and_then(|m| m.role)
    }
}

/// The cluster's configuration, as far as the rules use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchPolicy {
    pub auto_failover: bool,
    pub synchronous: bool,
    pub max_lag_bytes: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Members with a priority above 0.
    pub promotable: BTreeSet<String>,
}

/// What a round tells the event log, mapped to the log's own kinds by the
/// executor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    MemberDown,
    MemberUp,
    PrimaryChanged,
}

/// An event to record: its kind, its message and details (string fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub message: String,
    pub details: Vec<(&'static str, String)>,
}

/// The conditions that need someone's attention while they last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlarmKind {
    FailoverNeeded,
    FailoverFailed,
    PausedPrimaryDown,
    NoFailoverCandidate,
    ClusterMisconfigured,
    RejoinFailed,
    SynchronousSetFailed,
}

/// What makes two alarms the same alarm.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlarmKey {
    pub kind: AlarmKind,
    /// The member (or members) it is about; empty for the whole cluster.
    pub subject: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alarm {
    pub key: AlarmKey,
    pub message: String,
}

impl Alarm {
    fn new(kind: AlarmKind, subject: impl Into<String>, message: impl Into<String>) -> Alarm {
        Alarm { key: AlarmKey { kind, subject: subject.into() }, message: message.into() }
    }
}

/// Where the read-only endpoint goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOnly {
    /// A standby streaming within the lag limit.
    Standby(String),
    /// The primary the read-write endpoint routes to, or nowhere when it
    /// routes nowhere.
    Primary,
}

/// What the executor carries out, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Record(Event),
    /// After a restart: the failover in flight is finished (its new primary
    /// runs as one), recorded as such.
    FinishFailover {
        old: String,
        new: String,
    },
    /// After a restart: the failover in flight never promoted; forget it.
    AbandonFailover {
        old: String,
        new: String,
    },
    /// The fenced old primary is a standby again.
    Unfence(String),
    /// The read-write endpoint routes to this member, or to nothing.
    Route(Option<String>),
    /// The record's primary becomes this member.
    RecordPrimary(String),
    /// Run the pending switchover now.
    Switchover,
    /// Rewind the fenced old primary into a standby of `new`.
    Rejoin {
        old: String,
        new: String,
    },
    /// Point `member` at `primary`.
    RepairFollower {
        member: String,
        primary: String,
    },
    /// Rewind `member`, a standby that repointing did not make stream,
    /// from `primary` and start it as its standby.
    RewindFollower {
        member: String,
        primary: String,
    },
    /// One round of synchronous-set upkeep on `primary`.
    SyncRound {
        primary: String,
    },
    /// Synchronous mode was turned off: `primary` stops waiting.
    ClearSyncSet {
        primary: String,
    },
    /// Fence `old`, promote `new`, repoint the others.
    Failover {
        old: String,
        new: String,
        lost_bytes: u64,
        detected: Millis,
    },
    RouteReadOnly(ReadOnly),
    RaiseAlarm(Alarm),
    /// The alarm's condition is over (nothing is recorded).
    ClearAlarm(AlarmKey),
}

impl Action {
    /// The alarm an action's failure raises, with the executor's message.
    pub fn failure(&self, message: String) -> Option<Alarm> {
        match self {
            Action::Failover { old, .. } => Some(Alarm::new(AlarmKind::FailoverFailed, old.clone(), message)),
            Action::Rejoin { old, .. } => Some(Alarm::new(AlarmKind::RejoinFailed, old.clone(), message)),
            Action::RewindFollower { member, .. } => Some(Alarm::new(AlarmKind::RejoinFailed, member.clone(), message)),
            Action::SyncRound { primary } => {
                Some(Alarm::new(AlarmKind::SynchronousSetFailed, primary.clone(), message))
            }
            _ => None,
        }
    }
}

/// What persists from one round to the next.
#[derive(Debug, Default)]
pub struct RoundState {
    health: BTreeMap<String, HealthCounter>,
    read_only: Option<String>,
    alarm: Option<AlarmKey>,
    first_failure: Option<Millis>,
    resumed: bool,
    /// Standbys not streaming from the primary: since when (uptime), or
    /// when they were last repointed.
    strays: BTreeMap<String, u64>,
    /// How often each stray was repointed without streaming since.
    repoints: BTreeMap<String, u32>,
}

impl RoundState {
    /// The standby the read-only endpoint routes to.
    pub fn read_only(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// The alarm standing now.
    pub fn alarm(&self) -> Option<&AlarmKey> {
        self.alarm.as_ref()
    }

    /// This watcher has just taken the lease from another holder: the next
    /// round reads the record afresh (as after a restart), with the members'
    /// health as this watcher has been counting it all along, so a primary
    /// already counted down is failed over at once.
    pub fn take_over(&mut self) {
        self.resumed = false;
        self.first_failure = None;
        self.alarm = None;
    }

    /// Settles the round's alarm (the round's own, or an executor failure's)
    /// against the one standing: raised when it is new, cleared when none
    /// stands any more, nothing when the same alarm still stands.
    pub fn settle(&mut self, alarm: Option<Alarm>) -> Option<Action> {
        match alarm {
            Some(a) if self.alarm.as_ref() == Some(&a.key) => None,
            Some(a) => {
                self.alarm = Some(a.key.clone());
                Some(Action::RaiseAlarm(a))
            }
            None => self.alarm.take().map(Action::ClearAlarm),
        }
    }
}

/// What a round decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    pub actions: Vec<Action>,
    /// The condition this round alarms about, to [`RoundState::settle`]
    /// once the actions ran (an action's failure replaces it).
    pub alarm: Option<Alarm>,
    /// Whether the round decided at all: without the lease it did not, and
    /// the standing alarm is left as it is.
    pub decided: bool,
}

/// One round: the observations in, the actions out.
pub fn round(obs: &Observations, state: &mut RoundState, decider: &mut Decider, policy: &WatchPolicy) -> Round {
    let mut out = Round::default();
    let actions = &mut out.actions;
    let mut recorded_primary = obs.recorded_primary.clone();
    let mut fenced = obs.fenced.clone();
    let mut sync_recorded = obs.sync_recorded.clone();
    let resuming = !state.resumed;
    if !state.resumed {
        state.resumed = true;
        resume(obs, decider, policy, actions, (&mut recorded_primary, &mut fenced, &mut sync_recorded));
    }
    for m in &obs.members {
        let change = state.health.entry(m.name.clone()).or_default().observe(
            m.reachable,
            policy.healthy_threshold,
            policy.unhealthy_threshold,
        );
        let details = vec![("member", m.name.clone()), ("zone", m.zone.clone())];
        let event = match change {
            Some(false) => Event {
                kind: EventKind::MemberDown,
                message: format!(
                    "member {} failed {} checks: {}",
                    m.name,
                    policy.unhealthy_threshold,
                    m.error.as_deref().unwrap_or("")
                ),
                details,
            },
            Some(true) => {
                Event { kind: EventKind::MemberUp, message: format!("member {} is healthy", m.name), details }
            }
            None => continue,
        };
        actions.push(Action::Record(event));
    }
    if !obs.lease_held {
        return out;
    }
    out.decided = true;
    decider.set_paused(obs.paused);
    decider.set_sync(policy.synchronous.then(|| SyncSet {
        members: sync_recorded.clone().unwrap_or_else(|| {
            policy.promotable.iter().filter(|n| Some(n.as_str()) != decider.primary()).cloned().collect()
        }),
        k: 1,
    }));
    // The fenced old primary is invisible to the decision core: it is never
    // routed to, promoted or counted, until it is a standby again.
    if let Some(f) = &fenced
        && obs.role_of(f) == Some(Role::Replica)
    {
        actions.push(Action::Unfence(f.clone()));
    }
    let probes: Vec<Probe> = obs
        .members
        .iter()
        .map(|m| {
            let hidden = Some(&m.name) == fenced.as_ref();
            Probe {
                member: m.name.clone(),
                ok: m.reachable && !hidden,
                role: if hidden { None } else { m.role },
                lsn: m.lsn,
            }
        })
        .collect();
    let fenced_runs_as_primary = fenced.as_ref().filter(|f| obs.role_of(f) == Some(Role::Primary));
    // Down without more checks: its own host saw its postmaster exit, or
    // it was counted down before this watcher took the lease over.
    if let Some(p) = decider.primary().map(str::to_string) {
        let gone = obs.member(&p).is_some_and(|m| m.gone && !m.reachable);
        let counted_down = resuming && state.health.get(&p).and_then(HealthCounter::healthy) == Some(false);
        if gone || counted_down {
            decider.declare_down(&p);
        }
    }
    match decider.observe(&probes) {
        Decision::Steady { primary: p } => {
            state.first_failure = None;
            actions.push(Action::Route(Some(p.clone())));
            if recorded_primary.as_deref() != Some(p.as_str()) {
                if let Some(old) = &recorded_primary {
                    actions.push(Action::Record(Event {
                        kind: EventKind::PrimaryChanged,
                        message: format!("primary is now {p} (was {old})"),
                        details: Vec::new(),
                    }));
                }
                actions.push(Action::RecordPrimary(p.clone()));
            }
            let due = obs.switchover.is_some_and(|s| s.at.is_none_or(|t| obs.now >= t));
            if due {
                actions.push(Action::Switchover);
            } else {
                if policy.auto_failover && !obs.paused {
                    if let Some(f) = fenced_runs_as_primary {
                        // The old primary is back, on its old timeline.
                        actions.push(Action::Rejoin { old: f.clone(), new: p.clone() });
                    }
                    repair_followers(obs, state, &p, actions);
                }
                // Kept up even when paused or with auto_failover off: it is
                // what keeps the primary writable when a standby stops.
                if policy.synchronous {
                    actions.push(Action::SyncRound { primary: p.clone() });
                } else if sync_recorded.is_some() && obs.member(&p).is_some_and(|m| m.waits_for_standbys) {
                    actions.push(Action::ClearSyncSet { primary: p.clone() });
                }
            }
        }
        Decision::Suspect { .. } => {
            state.first_failure.get_or_insert(obs.now);
        }
        Decision::Failover { old, new, lost_bytes } if policy.auto_failover => {
            let detected = state.first_failure.take().unwrap_or(obs.now);
            actions.push(Action::Failover { old, new, lost_bytes, detected });
        }
        Decision::Failover { old, new, lost_bytes } => {
            out.alarm = Some(Alarm::new(
                AlarmKind::FailoverNeeded,
                old.clone(),
                format!(
                    "primary {old} is down; the decision core would promote {new} ({lost_bytes} bytes behind); auto_failover is off"
                ),
            ));
        }
        Decision::Paused => {
            out.alarm = Some(Alarm::new(
                AlarmKind::PausedPrimaryDown,
                decider.primary().unwrap_or_default(),
                "the primary is down, and the cluster is paused: no automatic action (`cirkel pg resume`)",
            ));
        }
        Decision::NoCandidate { old, rejections } => {
            let why = rejections.iter().map(|r| format!("{} {}", r.member, r.reason)).collect::<Vec<_>>().join("; ");
            out.alarm = Some(Alarm::new(
                AlarmKind::NoFailoverCandidate,
                old.clone(),
                format!("primary {old} is down and no standby qualifies: {why}"),
            ));
        }
        Decision::Misconfigured(why) => {
            let why = match fenced_runs_as_primary {
                Some(f) => {
                    format!("{why}; {f} runs as a primary but was fenced after a failover, so it is never routed to")
                }
                None => why,
            };
            // The same misconfiguration is the same set of members claiming
            // to be the primary, whatever else its message says.
            let claim: Vec<&str> = obs
                .members
                .iter()
                .filter(|m| m.reachable && m.role == Some(Role::Primary))
                .map(|m| m.name.as_str())
                .collect();
            out.alarm = Some(Alarm::new(AlarmKind::ClusterMisconfigured, claim.join(","), why));
        }
    }
    let route = read_only(obs, state, policy.max_lag_bytes);
    actions.push(Action::RouteReadOnly(route));
    out
}

/// The first round after a start: a failover in flight, and the primary
/// known from the record, so that a primary that died while cirkel was down
/// is still failed over.
fn resume(
    obs: &Observations,
    decider: &mut Decider,
    policy: &WatchPolicy,
    actions: &mut Vec<Action>,
    (primary, fenced, sync): (&mut Option<String>, &mut Option<String>, &mut Option<BTreeSet<String>>),
) {
    if let Some(f) = &obs.in_flight {
        if obs.role_of(&f.new) == Some(Role::Primary) {
            *primary = Some(f.new.clone());
            *fenced = Some(f.old.clone());
            if policy.synchronous {
                *sync = Some(BTreeSet::new());
            }
            actions.push(Action::FinishFailover { old: f.old.clone(), new: f.new.clone() });
        } else {
            actions.push(Action::AbandonFailover { old: f.old.clone(), new: f.new.clone() });
        }
    }
    if let Some(p) = primary.as_deref() {
        let other = obs
            .members
            .iter()
            .any(|m| m.name != p && Some(&m.name) != fenced.as_ref() && m.role == Some(Role::Primary));
        if obs.role_of(p) != Some(Role::Replica) && !other {
            decider.assume_primary(p);
        }
    }
}

/// Standbys that have not streamed from the primary (under their member
/// name, which synchronous mode relies on) for a grace period: followers of
/// a failover cirkel was stopped in, standbys made by hand.
fn repair_followers(obs: &Observations, state: &mut RoundState, primary: &str, actions: &mut Vec<Action>) {
    let Some(p) = obs.member(primary) else { return };
    let now = obs.uptime_ms;
    let fresh = now < FRESH_MS;
    for m in &obs.members {
        if m.name == primary || !m.reachable || m.role != Some(Role::Replica) {
            continue;
        }
        if p.replicas.contains(&m.name) {
            state.strays.remove(&m.name);
            state.repoints.remove(&m.name);
            continue;
        }
        let due = match state.strays.get(&m.name) {
            None if fresh => true,
            None => {
                state.strays.insert(m.name.clone(), now);
                false
            }
            Some(since) => now.saturating_sub(*since) >= STRAY_GRACE_MS,
        };
        if due {
            state.strays.insert(m.name.clone(), now);
            let (member, primary) = (m.name.clone(), primary.to_string());
            let repoints = state.repoints.entry(m.name.clone()).or_default();
            if *repoints >= REPOINTS_BEFORE_REWIND {
                *repoints = 0;
                actions.push(Action::RewindFollower { member, primary });
            } else {
                *repoints += 1;
                actions.push(Action::RepairFollower { member, primary });
            }
        }
    }
}

/// The read-only endpoint: the current standby while it streams within the
/// lag limit, else the first that does, else the primary.
fn read_only(obs: &Observations, state: &mut RoundState, max_lag_bytes: u64) -> ReadOnly {
    let eligible = |name: &str| {
        obs.member(name).is_some_and(|m| {
            m.reachable
                && m.role == Some(Role::Replica)
                && m.streaming
                && m.lag_bytes.is_some_and(|l| l <= max_lag_bytes)
        })
    };
    if !state.read_only.as_deref().is_some_and(eligible) {
        state.read_only = obs.members.iter().map(|m| m.name.clone()).find(|n| eligible(n));
    }
    match &state.read_only {
        Some(m) => ReadOnly::Standby(m.clone()),
        None => ReadOnly::Primary,
    }
}

#[cfg(test)]
mod tests;
