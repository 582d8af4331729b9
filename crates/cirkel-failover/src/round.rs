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
            actions.push(Action::RepairFollower { member: m.name.clone(), primary: primary.to_string() });
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
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Member, Policy};

    fn decider() -> Decider {
        let ms = ["a", "b", "c"].map(|n| Member { name: n.into(), zone: format!("z-{n}"), priority: 1 });
        Decider::new(ms.to_vec(), Policy { unhealthy_threshold: 2, max_lag_bytes: 100 }).unwrap()
    }

    fn policy() -> WatchPolicy {
        WatchPolicy {
            auto_failover: true,
            synchronous: false,
            max_lag_bytes: 100,
            healthy_threshold: 1,
            unhealthy_threshold: 2,
            promotable: ["a", "b", "c"].map(String::from).into(),
        }
    }

    fn primary(name: &str, replicas: &[&str]) -> MemberSeen {
        MemberSeen {
            name: name.into(),
            zone: format!("z-{name}"),
            reachable: true,
            role: Some(Role::Primary),
            lsn: 1000,
            replicas: replicas.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        }
    }

    fn standby(name: &str, lag: u64) -> MemberSeen {
        MemberSeen {
            name: name.into(),
            zone: format!("z-{name}"),
            reachable: true,
            role: Some(Role::Replica),
            streaming: true,
            lsn: 1000 - lag,
            lag_bytes: Some(lag),
            ..Default::default()
        }
    }

    fn down(name: &str) -> MemberSeen {
        MemberSeen { name: name.into(), zone: format!("z-{name}"), error: Some("refused".into()), ..Default::default() }
    }

    /// A healthy cluster: a primary, b and c streaming from it.
    fn healthy() -> Observations {
        Observations {
            members: vec![primary("a", &["b", "c"]), standby("b", 0), standby("c", 10)],
            lease_held: true,
            recorded_primary: Some("a".into()),
            now: 1_000_000,
            uptime_ms: 60_000,
            ..Default::default()
        }
    }

    struct Watcher {
        state: RoundState,
        decider: Decider,
        policy: WatchPolicy,
    }

    impl Watcher {
        fn new() -> Watcher {
            Watcher { state: RoundState::default(), decider: decider(), policy: policy() }
        }

        /// A round whose actions all succeed, with its alarm settled.
        fn round(&mut self, obs: &Observations) -> Vec<Action> {
            let r = round(obs, &mut self.state, &mut self.decider, &self.policy);
            let mut actions = r.actions;
            for a in &actions {
                if let Action::Failover { new, .. } = a {
                    self.decider.promoted(new);
                }
            }
            if r.decided {
                actions.extend(self.state.settle(r.alarm));
            }
            actions
        }
    }

    fn events(actions: &[Action]) -> Vec<(EventKind, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record(e) => Some((e.kind, e.message.clone())),
                _ => None,
            })
            .collect()
    }

    fn alarms(actions: &[Action]) -> Vec<Alarm> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::RaiseAlarm(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    fn has(actions: &[Action], want: &Action) -> bool {
        actions.contains(want)
    }

    #[test]
    fn a_steady_cluster_routes_to_its_primary_and_its_freshest_standby() {
        let mut w = Watcher::new();
        let a = w.round(&healthy());
        assert!(has(&a, &Action::Route(Some("a".into()))), "{a:?}");
        assert!(has(&a, &Action::RouteReadOnly(ReadOnly::Standby("b".into()))), "{a:?}");
        assert!(alarms(&a).is_empty());
        assert!(!a.iter().any(|a| matches!(a, Action::RecordPrimary(_))), "the recorded primary stands");
    }

    #[test]
    fn health_changes_are_recorded_once_after_their_threshold() {
        let mut w = Watcher::new();
        let ups = events(&w.round(&healthy()));
        assert_eq!(ups.len(), 3, "{ups:?}");
        assert!(ups.iter().all(|(k, _)| *k == EventKind::MemberUp));
        let mut obs = healthy();
        obs.members[2] = down("c");
        assert!(events(&w.round(&obs)).is_empty(), "one failed check is not enough");
        let downs = events(&w.round(&obs));
        assert_eq!(downs, vec![(EventKind::MemberDown, "member c failed 2 checks: refused".into())]);
        assert!(events(&w.round(&obs)).is_empty(), "recorded once");
        let back = events(&w.round(&healthy()));
        assert_eq!(back, vec![(EventKind::MemberUp, "member c is healthy".into())]);
    }

    #[test]
    fn without_the_lease_only_health_is_recorded() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        obs.lease_held = false;
        obs.recorded_primary = None;
        obs.switchover = Some(PendingSwitchover { at: None });
        let r = round(&obs, &mut w.state, &mut w.decider, &w.policy);
        assert!(!r.decided);
        assert!(r.actions.iter().all(|a| matches!(a, Action::Record(_))), "{:?}", r.actions);
        assert_eq!(w.decider.primary(), None, "the decision core was not fed");
    }

    #[test]
    fn a_new_primary_is_recorded_and_its_change_told() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        obs.recorded_primary = None;
        let a = w.round(&obs);
        assert!(has(&a, &Action::RecordPrimary("a".into())));
        assert!(events(&a).iter().all(|(k, _)| *k != EventKind::PrimaryChanged), "nothing changed from");
        let mut obs = healthy();
        obs.recorded_primary = Some("c".into());
        let mut w = Watcher::new();
        let a = w.round(&obs);
        assert!(events(&a).contains(&(EventKind::PrimaryChanged, "primary is now a (was c)".into())), "{a:?}");
        assert!(has(&a, &Action::RecordPrimary("a".into())));
    }

    #[test]
    fn a_switchover_runs_when_due_and_only_then() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        obs.switchover = Some(PendingSwitchover { at: Some(obs.now + 1) });
        assert!(!has(&w.round(&obs), &Action::Switchover), "not yet");
        obs.now += 1;
        let a = w.round(&obs);
        assert!(has(&a, &Action::Switchover), "{a:?}");
        assert!(!a.iter().any(|a| matches!(a, Action::SyncRound { .. } | Action::RepairFollower { .. })));
        obs.switchover = Some(PendingSwitchover { at: None });
        assert!(has(&w.round(&obs), &Action::Switchover), "at once");
        // Not while the primary is down.
        obs.members[0] = down("a");
        assert!(!has(&w.round(&obs), &Action::Switchover));
    }

    #[test]
    fn the_fenced_old_primary_is_hidden_rejoined_and_unfenced() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        // b was promoted; a came back as a primary.
        obs.members = vec![primary("a", &[]), primary("b", &["c"]), standby("c", 0)];
        obs.recorded_primary = Some("b".into());
        obs.fenced = Some("a".into());
        let a = w.round(&obs);
        assert!(has(&a, &Action::Route(Some("b".into()))), "{a:?}");
        assert!(has(&a, &Action::Rejoin { old: "a".into(), new: "b".into() }), "{a:?}");
        assert!(!has(&a, &Action::Unfence("a".into())));
        // Paused or without auto_failover: not rejoined.
        obs.paused = true;
        assert!(!w.round(&obs).iter().any(|a| matches!(a, Action::Rejoin { .. })));
        obs.paused = false;
        w.policy.auto_failover = false;
        assert!(!w.round(&obs).iter().any(|a| matches!(a, Action::Rejoin { .. })));
        // A standby again: unfenced.
        obs.members[0] = standby("a", 0);
        let a = w.round(&obs);
        assert!(has(&a, &Action::Unfence("a".into())), "{a:?}");
    }

    #[test]
    fn two_primaries_with_one_fenced_say_so() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        obs.members = vec![primary("a", &[]), primary("b", &[]), standby("c", 0)];
        obs.recorded_primary = None;
        obs.fenced = None;
        let a = w.round(&obs);
        let al = alarms(&a);
        assert_eq!(al.len(), 1, "{a:?}");
        assert_eq!(al[0].key, AlarmKey { kind: AlarmKind::ClusterMisconfigured, subject: "a,b".into() });
        assert!(!a.iter().any(|a| matches!(a, Action::Route(_))), "{a:?}");
        // Once a primary is known, the fenced one running as a primary is named.
        let mut w = Watcher::new();
        w.decider.assume_primary("b");
        obs.fenced = Some("a".into());
        obs.members = vec![primary("a", &[]), primary("b", &[]), primary("c", &[])];
        let al = alarms(&w.round(&obs));
        assert_eq!(al.len(), 1);
        assert!(al[0].message.contains("a runs as a primary but was fenced"), "{al:?}");
    }

    #[test]
    fn stray_standbys_are_repointed_after_a_grace_period_or_at_once_at_start() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        obs.members[0].replicas = vec!["b".into()];
        let a = w.round(&obs);
        assert!(!a.iter().any(|a| matches!(a, Action::RepairFollower { .. })), "c gets time to reconnect");
        obs.uptime_ms += STRAY_GRACE_MS - 1;
        assert!(!w.round(&obs).iter().any(|a| matches!(a, Action::RepairFollower { .. })));
        obs.uptime_ms += 1;
        let repair = Action::RepairFollower { member: "c".into(), primary: "a".into() };
        assert!(has(&w.round(&obs), &repair));
        assert!(!has(&w.round(&obs), &repair), "and again only after another grace period");
        obs.uptime_ms += STRAY_GRACE_MS;
        assert!(has(&w.round(&obs), &repair));
        // Streaming from the primary again: forgotten.
        obs.members[0].replicas = vec!["b".into(), "c".into()];
        assert!(!has(&w.round(&obs), &repair));
        // Right after a start, at once.
        let mut w = Watcher::new();
        obs.members[0].replicas = vec!["b".into()];
        obs.uptime_ms = 100;
        assert!(has(&w.round(&obs), &repair));
        // Never while paused.
        let mut w = Watcher::new();
        obs.paused = true;
        assert!(!has(&w.round(&obs), &repair));
    }

    #[test]
    fn the_synchronous_set_is_kept_up_or_cleared() {
        let mut w = Watcher::new();
        w.policy.synchronous = true;
        w.policy.auto_failover = false;
        let mut obs = healthy();
        obs.paused = true;
        assert!(has(&w.round(&obs), &Action::SyncRound { primary: "a".into() }), "even paused");
        let mut w = Watcher::new();
        obs.paused = false;
        obs.sync_recorded = Some(["b".to_string()].into());
        assert!(!w.round(&obs).iter().any(|a| matches!(a, Action::ClearSyncSet { .. })), "a waits for nobody");
        obs.members[0].waits_for_standbys = true;
        assert!(has(&w.round(&obs), &Action::ClearSyncSet { primary: "a".into() }));
        obs.sync_recorded = None;
        assert!(!w.round(&obs).iter().any(|a| matches!(a, Action::ClearSyncSet { .. })));
    }

    fn primary_down(obs: &mut Observations) {
        obs.members[0] = down("a");
    }

    #[test]
    fn a_failover_carries_the_time_the_first_failure_was_seen() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        w.round(&obs);
        primary_down(&mut obs);
        obs.now = 2_000_000;
        let a = w.round(&obs);
        assert!(!a.iter().any(|a| matches!(a, Action::Failover { .. })), "suspect only");
        obs.now = 2_001_000;
        let a = w.round(&obs);
        let want = Action::Failover { old: "a".into(), new: "b".into(), lost_bytes: 0, detected: 2_000_000 };
        assert!(has(&a, &want), "{a:?}");
        assert!(!a.iter().any(|a| matches!(a, Action::Route(_))), "the executor routes as it promotes");
    }

    #[test]
    fn a_steady_round_forgets_a_suspicion() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        w.round(&obs);
        primary_down(&mut obs);
        obs.now = 5;
        w.round(&obs);
        w.round(&healthy());
        obs.now = 7;
        w.round(&obs);
        obs.now = 9;
        let a = w.round(&obs);
        assert!(a.iter().any(|a| matches!(a, Action::Failover { detected: 7, .. })), "{a:?}");
    }

    #[test]
    fn without_auto_failover_a_needed_failover_is_alarmed_once() {
        let mut w = Watcher::new();
        w.policy.auto_failover = false;
        let mut obs = healthy();
        w.round(&obs);
        primary_down(&mut obs);
        w.round(&obs);
        let a = w.round(&obs);
        assert!(!a.iter().any(|a| matches!(a, Action::Failover { .. })));
        let al = alarms(&a);
        assert_eq!(al.len(), 1);
        assert_eq!(al[0].key.kind, AlarmKind::FailoverNeeded);
        assert!(al[0].message.contains("would promote b"), "{al:?}");
        // The standby falls behind: the message changes, the alarm stands.
        obs.members[1].lsn = 950;
        assert!(alarms(&w.round(&obs)).is_empty());
        // The primary returns: cleared (nothing raised), and raised again
        // when it fails again.
        let a = w.round(&healthy());
        assert!(has(&a, &Action::ClearAlarm(AlarmKey { kind: AlarmKind::FailoverNeeded, subject: "a".into() })));
        w.round(&obs);
        assert_eq!(alarms(&w.round(&obs)).len(), 1);
    }

    #[test]
    fn paused_and_no_candidate_alarms() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        w.round(&obs);
        obs.paused = true;
        primary_down(&mut obs);
        let al = alarms(&w.round(&obs));
        assert_eq!(al.len(), 1);
        assert_eq!(al[0].key, AlarmKey { kind: AlarmKind::PausedPrimaryDown, subject: "a".into() });
        assert!(al[0].message.contains("resume"));
        obs.paused = false;
        obs.members[1] = down("b");
        obs.members[2] = standby("c", 500);
        let al = alarms(&w.round(&obs));
        assert_eq!(al.len(), 1, "{al:?}");
        assert_eq!(al[0].key.kind, AlarmKind::NoFailoverCandidate);
        assert!(al[0].message.contains("b unhealthy") && al[0].message.contains("c 500 bytes behind"), "{al:?}");
    }

    #[test]
    fn a_failed_action_raises_its_alarm_by_subject() {
        let rejoin = Action::Rejoin { old: "a".into(), new: "b".into() };
        let al = rejoin.failure("pg_rewind failed".into()).unwrap();
        assert_eq!(al.key, AlarmKey { kind: AlarmKind::RejoinFailed, subject: "a".into() });
        let failover = Action::Failover { old: "a".into(), new: "b".into(), lost_bytes: 0, detected: 0 };
        assert_eq!(failover.failure("x".into()).unwrap().key.kind, AlarmKind::FailoverFailed);
        let sync = Action::SyncRound { primary: "b".into() };
        assert_eq!(sync.failure("x".into()).unwrap().key.kind, AlarmKind::SynchronousSetFailed);
        assert_eq!(Action::Route(None).failure("x".into()), None);
        let mut st = RoundState::default();
        assert!(matches!(st.settle(rejoin.failure("one".into())), Some(Action::RaiseAlarm(_))));
        assert_eq!(st.settle(rejoin.failure("another message".into())), None);
        assert!(matches!(st.settle(sync.failure("x".into())), Some(Action::RaiseAlarm(_))), "another alarm");
        assert!(matches!(st.settle(None), Some(Action::ClearAlarm(_))));
        assert_eq!(st.settle(None), None);
        assert_eq!(st.alarm(), None);
    }

    #[test]
    fn the_read_only_endpoint_keeps_its_standby_while_it_qualifies() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        w.round(&obs);
        assert_eq!(w.state.read_only(), Some("b"));
        // c is as good now; b stays.
        obs.members[2] = standby("c", 0);
        w.round(&obs);
        assert_eq!(w.state.read_only(), Some("b"));
        // b falls beyond the lag limit: c.
        obs.members[1] = standby("b", 101);
        w.round(&obs);
        assert_eq!(w.state.read_only(), Some("c"));
        // c stops streaming, b is still behind: the primary.
        obs.members[2].streaming = false;
        let a = w.round(&obs);
        assert!(has(&a, &Action::RouteReadOnly(ReadOnly::Primary)));
        assert_eq!(w.state.read_only(), None);
    }

    #[test]
    fn a_restart_finishes_a_promoted_failover() {
        let mut w = Watcher::new();
        w.policy.synchronous = true;
        let mut obs = healthy();
        obs.members = vec![primary("a", &[]), primary("b", &["c"]), standby("c", 0)];
        obs.recorded_primary = Some("a".into());
        obs.fenced = None;
        obs.in_flight = Some(InFlight { old: "a".into(), new: "b".into() });
        let a = w.round(&obs);
        assert_eq!(a.first(), Some(&Action::FinishFailover { old: "a".into(), new: "b".into() }));
        assert!(has(&a, &Action::Route(Some("b".into()))), "a is fenced: {a:?}");
        assert!(has(&a, &Action::Rejoin { old: "a".into(), new: "b".into() }));
        assert_eq!(w.decider.primary(), Some("b"));
        // Only in the first round.
        let a = w.round(&obs);
        assert!(!a.iter().any(|a| matches!(a, Action::FinishFailover { .. })));
    }

    #[test]
    fn a_restart_abandons_a_failover_that_promoted_nobody() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        obs.members[0] = down("a");
        obs.in_flight = Some(InFlight { old: "a".into(), new: "b".into() });
        let a = w.round(&obs);
        assert_eq!(a.first(), Some(&Action::AbandonFailover { old: "a".into(), new: "b".into() }));
        assert_eq!(w.decider.primary(), Some("a"), "the recorded primary, down, is still failed over");
        obs.now += 1;
        let a = w.round(&obs);
        assert!(a.iter().any(|a| matches!(a, Action::Failover { .. })), "{a:?}");
    }

    #[test]
    fn a_restart_does_not_assume_a_recorded_primary_now_a_standby() {
        let mut w = Watcher::new();
        let mut obs = healthy();
        obs.recorded_primary = Some("b".into());
        w.round(&obs);
        assert_eq!(w.decider.primary(), Some("a"));
    }

    fn member_strategy(name: &'static str) -> impl Strategy<Value = MemberSeen> {
        (any::<bool>(), 0u8..3, any::<bool>(), 0u64..300, any::<bool>(), 0u8..4).prop_map(
            move |(reachable, role, streaming, lag, waits, replicas)| MemberSeen {
                name: name.into(),
                zone: String::new(),
                reachable,
                role: if !reachable { None } else { [None, Some(Role::Primary), Some(Role::Replica)][role as usize] },
                streaming: reachable && streaming && role == 2,
                lsn: 1000 - lag,
                lag_bytes: (role == 2).then_some(lag),
                waits_for_standbys: waits,
                replicas: ["a", "b", "c"].iter().take(replicas as usize).map(|s| s.to_string()).collect(),
                error: None,
            },
        )
    }

    fn obs_strategy() -> impl Strategy<Value = Observations> {
        (
            (member_strategy("a"), member_strategy("b"), member_strategy("c")),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(0usize..3),
            proptest::option::of(0usize..3),
            proptest::option::of(proptest::option::of(0i64..20)),
        )
            .prop_map(|((a, b, c), lease_held, paused, fenced, recorded, switchover)| {
                let name = |i: usize| ["a", "b", "c"][i].to_string();
                Observations {
                    members: vec![a, b, c],
                    lease_held,
                    paused,
                    recorded_primary: recorded.map(name),
                    fenced: fenced.map(name),
                    switchover: switchover.map(|at| PendingSwitchover { at }),
                    ..Default::default()
                }
            })
    }

    proptest! {
        /// Whatever the rounds bring: the endpoint routes only to a
        /// reachable primary that is not fenced, nothing acts on the
        /// primary without the lease, an alarm is raised once until it
        /// clears, and the read-only endpoint is a reachable streaming
        /// standby within the lag limit, or the primary.
        #[test]
        fn every_round_keeps_the_invariants(
            rounds in proptest::collection::vec(obs_strategy(), 1..40),
            auto_failover in any::<bool>(),
            synchronous in any::<bool>(),
        ) {
            let mut w = Watcher::new();
            w.policy.auto_failover = auto_failover;
            w.policy.synchronous = synchronous;
            let mut standing: Option<AlarmKey> = None;
            for (i, mut obs) in rounds.into_iter().enumerate() {
                obs.now = i as i64 * 1000;
                obs.uptime_ms = i as u64 * 1000;
                let actions = w.round(&obs);
                let seen = |n: &str| obs.members.iter().find(|m| m.name == n).unwrap();
                for a in &actions {
                    if !obs.lease_held {
                        prop_assert!(matches!(a, Action::Record(_)), "acted without the lease: {a:?}");
                    }
                    match a {
                        Action::Route(Some(m)) => {
                            prop_assert!(Some(m) != obs.fenced.as_ref(), "routed to fenced {m}");
                            prop_assert!(seen(m).reachable && seen(m).role == Some(Role::Primary));
                        }
                        Action::Failover { new, old, .. } => {
                            prop_assert!(auto_failover);
                            prop_assert!(Some(new) != obs.fenced.as_ref());
                            prop_assert!(seen(new).reachable && seen(new).role == Some(Role::Replica));
                            prop_assert!(new != old);
                        }
                        Action::Switchover => prop_assert!(obs.switchover.is_some()),
                        Action::Rejoin { old, .. } => {
                            prop_assert!(Some(old) == obs.fenced.as_ref() && !obs.paused && auto_failover);
                        }
                        Action::RaiseAlarm(al) => {
                            prop_assert!(standing.as_ref() != Some(&al.key), "raised twice: {al:?}");
                            standing = Some(al.key.clone());
                        }
                        Action::ClearAlarm(k) => {
                            prop_assert_eq!(standing.as_ref(), Some(k));
                            standing = None;
                        }
                        Action::RouteReadOnly(ReadOnly::Standby(m)) => {
                            let m = seen(m);
                            prop_assert!(m.reachable && m.role == Some(Role::Replica) && m.streaming);
                            prop_assert!(m.lag_bytes.is_some_and(|l| l <= w.policy.max_lag_bytes));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}
