//! The round's rules one by one, and a property test over random rounds.

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
    // Repointed twice and still not streaming: its history went past the
    // primary's, and it is rewound; then repointed afresh.
    obs.uptime_ms += STRAY_GRACE_MS;
    let rewind = Action::RewindFollower { member: "c".into(), primary: "a".into() };
    let a = w.round(&obs);
    assert!(has(&a, &rewind) && !has(&a, &repair), "{a:?}");
    obs.uptime_ms += STRAY_GRACE_MS;
    assert!(has(&w.round(&obs), &repair));
    // Streaming from the primary again: forgotten.
    obs.members[0].replicas = vec!["b".into(), "c".into()];
    assert!(!has(&w.round(&obs), &repair));
    // A stray again later is counted afresh: repointed before any rewind.
    obs.members[0].replicas = vec!["b".into()];
    obs.uptime_ms += STRAY_GRACE_MS;
    assert!(!has(&w.round(&obs), &repair), "first seen");
    obs.uptime_ms += STRAY_GRACE_MS;
    let a = w.round(&obs);
    assert!(has(&a, &repair) && !has(&a, &rewind), "{a:?}");
    obs.members[0].replicas = vec!["b".into(), "c".into()];
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
fn a_primary_its_own_host_saw_gone_is_failed_over_at_its_first_failed_check() {
    let mut w = Watcher::new();
    let mut obs = healthy();
    w.round(&obs);
    primary_down(&mut obs);
    obs.members[0].gone = true;
    let a = w.round(&obs);
    assert!(a.iter().any(|a| matches!(a, Action::Failover { old, new, .. } if old == "a" && new == "b")), "{a:?}");
}

#[test]
fn a_gone_report_is_ignored_while_the_primary_still_answers() {
    let mut w = Watcher::new();
    let mut obs = healthy();
    obs.members[0].gone = true;
    for _ in 0..3 {
        let a = w.round(&obs);
        assert!(!a.iter().any(|a| matches!(a, Action::Failover { .. })), "{a:?}");
    }
}

#[test]
fn taking_the_lease_over_fails_over_a_primary_already_counted_down() {
    let mut w = Watcher::new();
    let mut obs = healthy();
    obs.lease_held = false;
    w.round(&obs);
    // Another agent leads; this one counts the primary down meanwhile.
    primary_down(&mut obs);
    for _ in 0..2 {
        let a = w.round(&obs);
        assert!(!a.iter().any(|a| matches!(a, Action::Failover { .. })), "no lease, no action");
    }
    // The leader's lease lapsed: this one takes over, reads the record
    // afresh and does not wait for more failed checks.
    w.state.take_over();
    w.decider = decider();
    obs.lease_held = true;
    let a = w.round(&obs);
    assert!(a.iter().any(|a| matches!(a, Action::Failover { old, .. } if old == "a")), "{a:?}");
}

#[test]
fn taking_the_lease_over_with_a_healthy_primary_changes_nothing() {
    let mut w = Watcher::new();
    let mut obs = healthy();
    obs.lease_held = false;
    w.round(&obs);
    w.state.take_over();
    w.decider = decider();
    obs.lease_held = true;
    let a = w.round(&obs);
    assert!(has(&a, &Action::Route(Some("a".into()))), "{a:?}");
    assert!(!a.iter().any(|a| matches!(a, Action::Failover { .. })));
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
    (proptest::bool::weighted(0.8), 0u8..3, proptest::bool::weighted(0.8), 0u64..300, any::<bool>(), 0u8..4).prop_map(
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
            gone: false,
        },
    )
}

fn obs_strategy() -> impl Strategy<Value = Observations> {
    (
        (member_strategy("a"), member_strategy("b"), member_strategy("c")),
        proptest::bool::weighted(0.8),
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
