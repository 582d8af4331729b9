//! Failover decisions for a PostgreSQL cluster, as a pure state machine.
//!
//! The decider is fed health probes (one round per check interval) and
//! answers with a [`Decision`]; it performs no I/O and reads no clock, so
//! every rule is tested without processes. An executor (not here) carries a
//! decision out: fence the old primary, promote the candidate, repoint the
//! others, and then tells the decider with [`Decider::promoted`].
//!
//! Rules:
//! - the primary is declared down only after `unhealthy_threshold`
//!   consecutive failed probes; one good probe resets the count (a flapping
//!   check never fails over);
//! - the candidate is the healthy replica with the most WAL received, among
//!   those allowed to be promoted (priority > 0, not `no_failover`) and within
//!   `max_lag_bytes` of the last LSN the primary was seen at; ties go to the
//!   higher priority, then to the name;
//! - in synchronous mode only a member of the synchronous set may be
//!   promoted, and only when enough of the set answers that one of the
//!   answering members must hold every acknowledged commit;
//! - paused, nothing happens; two primaries at bootstrap is a
//!   misconfiguration, and nothing happens either.
//!
//! The rules around the decider (health events, routing, alarms, the
//! read-only endpoint, what to carry out in each round) are a pure
//! function too: [`round`].
//!
//! Who runs the decider is a separate question ([`Leadership`]): one
//! `cirkel serve` acts for a cluster at a time, under a lease whose epoch
//! fences every action it takes (`election`).

pub mod election;
pub mod keep;
pub mod loss;
pub mod round;

pub use election::{ElectionError, EpochGate, Leadership, Lease, MemoryElection, StaleEpoch};

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Consecutive-result health of one member, in the plan's form: it turns
/// healthy after `healthy_threshold` good checks in a row and unhealthy after
/// `unhealthy_threshold` bad ones, so a flapping check changes nothing.
#[derive(Debug, Default)]
pub struct HealthCounter {
    healthy: Option<bool>,
    good: u32,
    bad: u32,
}

impl HealthCounter {
    /// The state it turned to last (`None`: not yet decided).
    pub fn healthy(&self) -> Option<bool> {
        self.healthy
    }

    /// Feeds one probe result; returns the new state when it changed.
    pub fn observe(&mut self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        if ok {
            self.good += 1;
            self.bad = 0;
        } else {
            self.bad += 1;
            self.good = 0;
        }
        let next = if self.good >= healthy_after {
            true
        } else if self.bad >= unhealthy_after {
            false
        } else {
            return None;
        };
        (self.healthy != Some(next)).then(|| {
            self.healthy = Some(next);
            next
        })
    }
}

/// A cluster member as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub zone: String,
    /// 0 means never promote; higher wins ties.
    pub priority: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Role {
    Primary,
    Replica,
}

/// One health probe of one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub member: String,
    /// The check succeeded (connected, answered in time).
    pub ok: bool,
    /// Known only when `ok`.
    pub role: Option<Role>,
    /// Primary: current write LSN. Replica: last WAL received.
    pub lsn: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub unhealthy_threshold: u32,
    pub max_lag_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { unhealthy_threshold: 3, max_lag_bytes: 16 * 1024 * 1024 }
    }
}

/// Why a replica cannot be promoted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub member: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// Everything as it should be.
    Steady { primary: String },
    /// The primary failed a probe; not yet enough to act.
    Suspect { primary: String, failures: u32, threshold: u32 },
    /// Fence `old`, promote `new`. `lost_bytes` is the WAL the old primary
    /// had written that the candidate had not received when last seen.
    Failover { old: String, new: String, lost_bytes: u64 },
    /// The primary is down and no replica may take over.
    NoCandidate { old: String, rejections: Vec<Rejection> },
    /// Maintenance mode: observations are recorded, nothing is decided.
    Paused,
    /// The cluster is not in a state cirkel acts on.
    Misconfigured(String),
}

/// Synchronous replication as the primary enforces it: a commit is
/// acknowledged once `k` members of `members` have flushed it. The set is
/// what the executor recorded, a superset of what the primary was ever
/// told since the last promotion: members join the record before the
/// primary waits for them, and leave it only after the others have caught up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncSet {
    pub members: BTreeSet<String>,
    pub k: u32,
}

#[derive(Clone, Debug, Default)]
struct Seen {
    ok: bool,
    role: Option<Role>,
    lsn: u64,
}

/// The decider's memory between rounds.
#[derive(Clone, Debug)]
pub struct Decider {
    members: Vec<Member>,
    policy: Policy,
    primary: Option<String>,
    failures: u32,
    /// The highest LSN the primary was seen at.
    primary_lsn: u64,
    last: BTreeMap<String, Seen>,
    paused: bool,
    sync: Option<SyncSet>,
}

impl Decider {
    pub fn new(members: Vec<Member>, policy: Policy) -> Result<Self, String> {
        if members.is_empty() {
            return Err("a cluster needs at least one member".into());
        }
        let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("member names must be unique".into());
        }
        if policy.unhealthy_threshold == 0 {
            return Err("unhealthy_threshold must be at least 1".into());
        }
        Ok(Decider {
            members,
            policy,
            primary: None,
            failures: 0,
            primary_lsn: 0,
            last: BTreeMap::new(),
            paused: false,
            sync: None,
        })
    }

    pub fn primary(&self) -> Option<&str> {
        self.primary.as_deref()
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Synchronous mode on (with the recorded set) or off.
    pub fn set_sync(&mut self, sync: Option<SyncSet>) {
        self.sync = sync;
    }

    /// Starts from a primary known from an earlier run (persisted state),
    /// rather than from the one member seen as primary.
    pub fn assume_primary(&mut self, name: &str) {
        if self.members.iter().any(|m| m.name == name) {
            self.primary = Some(name.to_string());
        }
    }

    /// The executor promoted `new`: it is the primary from now on.
    pub fn promoted(&mut self, new: &str) {
        self.primary = Some(new.to_string());
        self.failures = 0;
        self.primary_lsn = self.last.get(new).map(|s| s.lsn).unwrap_or(0);
    }

    /// The primary `name` is known to be down (its own host saw its
    /// postmaster exit): the next failed probe is the last one counted.
    pub fn declare_down(&mut self, name: &str) {
        if self.primary.as_deref() == Some(name) {
            self.failures = self.failures.max(self.policy.unhealthy_threshold.saturating_sub(1));
        }
    }

    /// Feeds one round of probes and decides.
    pub fn observe(&mut self, probes: &[Probe]) -> Decision {
        for p in probes {
            if self.members.iter().any(|m| m.name == p.member) {
                self.last.insert(p.member.clone(), Seen { ok: p.ok, role: p.role, lsn: p.lsn });
            }
        }
        let primaries: Vec<&String> =
            self.last.iter().filter(|(_, s)| s.ok && s.role == Some(Role::Primary)).map(|(n, _)| n).collect();
        let Some(current) = self.primary.clone() else {
            return match primaries.as_slice() {
                [one] => {
                    let one = (*one).clone();
                    self.promoted(&one);
                    Decision::Steady { primary: one }
                }
                [] => Decision::Misconfigured("no member is a primary".into()),
                many => Decision::Misconfigured(format!(
                    "{} members claim to be primary ({}); refusing to act",
                    many.len(),
                    many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )),
            };
        };
        let seen = self.last.get(&current).cloned().unwrap_or_default();
        if seen.ok && seen.role == Some(Role::Primary) {
            self.failures = 0;
            self.primary_lsn = self.primary_lsn.max(seen.lsn);
            if let Some(other) = primaries.iter().find(|n| ***n != current) {
                return Decision::Misconfigured(format!("{other} claims to be primary besides {current}"));
            }
            return Decision::Steady { primary: current };
        }
        self.failures += 1;
        if self.paused {
            return Decision::Paused;
        }
        if self.failures < self.policy.unhealthy_threshold {
            return Decision::Suspect {
                primary: current,
                failures: self.failures,
                threshold: self.policy.unhealthy_threshold,
            };
        }
        match self.choose(&current) {
            Ok((new, lost_bytes)) => Decision::Failover { old: current, new, lost_bytes },
            Err(rejections) => Decision::NoCandidate { old: current, rejections },
        }
    }

    /// The best replica to promote instead of `old`, or why there is none.
    pub fn choose(&self, old: &str) -> Result<(String, u64), Vec<Rejection>> {
        let mut rejections = Vec::new();
        let mut best: Option<(&Member, u64)> = None;
        // Synchronous mode: an acknowledged commit is on k members of the
        // set; unless fewer than k of them are silent, the one holding it
        // may be among the silent.
        let sync_block = self.sync.as_ref().and_then(|s| {
            let silent = s
                .members
                .iter()
                .filter(|n| n.as_str() != old && !self.last.get(*n).is_some_and(|x| x.ok))
                .count();
            if s.members.iter().all(|n| n == old) {
                Some("synchronous mode: no standby is known to hold every acknowledged commit".to_string())
            } else if silent as u32 >= s.k.max(1) {
                Some(format!(
                    "synchronous mode: {silent} member(s) of the synchronous set do not answer, and may hold acknowledged commits the others lack"
                ))
            } else {
                None
            }
        });
        for m in self.members.iter().filter(|m| m.name != old) {
            let reject = |r: &str| Rejection { member: m.name.clone(), reason: r.to_string() };
            if let Some(why) = &sync_block {
                rejections.push(reject(why));
                continue;
            }
            let in_sync_set = self.sync.as_ref().map(|s| s.members.contains(&m.name));
            if in_sync_set == Some(false) {
                rejections.push(reject("not in the synchronous set, so it may lack acknowledged commits"));
                continue;
            }
            let Some(s) = self.last.get(&m.name) else {
                rejections.push(reject("never observed"));
                continue;
            };
            if !s.ok {
                rejections.push(reject("unhealthy"));
                continue;
            }
            if s.role != Some(Role::Replica) {
                rejections.push(reject("not a replica"));
                continue;
            }
            if m.priority == 0 {
                rejections.push(reject("never-promote (priority 0)"));
                continue;
            }
            // A member of the synchronous set lacks no acknowledged commit,
            // however far behind the primary's unacknowledged WAL it is.
            let lag = self.primary_lsn.saturating_sub(s.lsn);
            if lag > self.policy.max_lag_bytes && in_sync_set.is_none() {
                rejections
                    .push(reject(&format!("{lag} bytes behind, over the {} byte limit", self.policy.max_lag_bytes)));
                continue;
            }
            let better = match best {
                None => true,
                Some((b, blsn)) => {
                    (s.lsn, m.priority, std::cmp::Reverse(&m.name)) > (blsn, b.priority, std::cmp::Reverse(&b.name))
                }
            };
            if better {
                best = Some((m, s.lsn));
            }
        }
        match best {
            Some((m, lsn)) => Ok((m.name.clone(), self.primary_lsn.saturating_sub(lsn))),
            None => Err(rejections),
        }
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;

    #[test]
    fn health_needs_consecutive_results() {
        let mut h = HealthCounter::default();
        assert_eq!(h.observe(true, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), Some(true));
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(true, 2, 3), None, "a flap resets the count");
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), None);
        assert_eq!(h.observe(false, 2, 3), Some(false));
        assert_eq!(h.observe(false, 2, 3), None, "reported once");
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn members() -> Vec<Member> {
        vec![
            Member { name: "a".into(), zone: "z1".into(), priority: 1 },
            Member { name: "b".into(), zone: "z2".into(), priority: 1 },
            Member { name: "c".into(), zone: "z3".into(), priority: 1 },
        ]
    }

    fn up(m: &str, role: Role, lsn: u64) -> Probe {
        Probe { member: m.into(), ok: true, role: Some(role), lsn }
    }

    fn down(m: &str) -> Probe {
        Probe { member: m.into(), ok: false, role: None, lsn: 0 }
    }

    fn healthy(d: &mut Decider) {
        let r = d.observe(&[up("a", Role::Primary, 1000), up("b", Role::Replica, 900), up("c", Role::Replica, 1000)]);
        assert_eq!(r, Decision::Steady { primary: "a".into() });
    }

    #[test]
    fn fails_over_to_the_most_advanced_replica_after_the_threshold() {
        let mut d = Decider::new(members(), Policy { unhealthy_threshold: 3, max_lag_bytes: 1 << 20 }).unwrap();
        healthy(&mut d);
        let round = [down("a"), up("b", Role::Replica, 900), up("c", Role::Replica, 1000)];
        assert!(matches!(d.observe(&round), Decision::Suspect { failures: 1, .. }));
        assert!(matches!(d.observe(&round), Decision::Suspect { failures: 2, .. }));
        assert_eq!(d.observe(&round), Decision::Failover { old: "a".into(), new: "c".into(), lost_bytes: 0 });
        d.promoted("c");
        let r = d.observe(&[down("a"), up("b", Role::Replica, 1000), up("c", Role::Primary, 1100)]);
        assert_eq!(r, Decision::Steady { primary: "c".into() });
    }

    #[test]
    fn a_flapping_check_never_fails_over() {
        let mut d = Decider::new(members(), Policy { unhealthy_threshold: 2, ..Default::default() }).unwrap();
        healthy(&mut d);
        for _ in 0..50 {
            assert!(matches!(d.observe(&[down("a")]), Decision::Suspect { .. }));
            assert!(matches!(d.observe(&[up("a", Role::Primary, 1000)]), Decision::Steady { .. }));
        }
    }

    #[test]
    fn lagging_and_never_promote_replicas_are_rejected() {
        let mut ms = members();
        ms[2].priority = 0;
        let mut d = Decider::new(ms, Policy { unhealthy_threshold: 1, max_lag_bytes: 50 }).unwrap();
        healthy(&mut d);
        let r = d.observe(&[down("a"), up("b", Role::Replica, 900), up("c", Role::Replica, 1000)]);
        let Decision::NoCandidate { rejections, .. } = r else { panic!("{r:?}") };
        assert_eq!(rejections.len(), 2);
        assert!(rejections[0].reason.contains("over the 50 byte limit"), "{rejections:?}");
        assert!(rejections[1].reason.contains("never-promote"), "{rejections:?}");
    }

    #[test]
    fn paused_holds_still_and_two_primaries_are_refused() {
        let mut d = Decider::new(members(), Policy { unhealthy_threshold: 1, ..Default::default() }).unwrap();
        healthy(&mut d);
        d.set_paused(true);
        assert_eq!(d.observe(&[down("a"), up("b", Role::Replica, 1000)]), Decision::Paused);
        let mut fresh = Decider::new(members(), Policy::default()).unwrap();
        let r = fresh.observe(&[up("a", Role::Primary, 1), up("b", Role::Primary, 1)]);
        assert!(matches!(r, Decision::Misconfigured(ref s) if s.contains("2 members claim")), "{r:?}");
        assert!(Decider::new(vec![], Policy::default()).is_err());
    }

    fn sync(members: &[&str]) -> Option<SyncSet> {
        Some(SyncSet { members: members.iter().map(|m| m.to_string()).collect(), k: 1 })
    }

    #[test]
    fn synchronous_mode_promotes_only_a_member_of_the_set() {
        let mut d = Decider::new(members(), Policy { unhealthy_threshold: 1, max_lag_bytes: 10 }).unwrap();
        healthy(&mut d);
        d.set_sync(sync(&["b"]));
        // c is further ahead but not in the set; b is beyond the lag limit
        // but holds every acknowledged commit.
        let r = d.observe(&[down("a"), up("b", Role::Replica, 900), up("c", Role::Replica, 1000)]);
        assert_eq!(r, Decision::Failover { old: "a".into(), new: "b".into(), lost_bytes: 100 });
        let why = {
            let mut d = d.clone();
            d.set_sync(sync(&["c"]));
            d.choose("a")
        };
        assert_eq!(why, Ok(("c".into(), 0)));
    }

    #[test]
    fn synchronous_mode_waits_while_a_member_of_the_set_is_silent() {
        let mut d = Decider::new(members(), Policy { unhealthy_threshold: 1, ..Default::default() }).unwrap();
        healthy(&mut d);
        d.set_sync(sync(&["b", "c"]));
        // c may hold a commit b lacks: nobody is promoted.
        let r = d.observe(&[down("a"), up("b", Role::Replica, 1000), down("c")]);
        let Decision::NoCandidate { rejections, .. } = r else { panic!("{r:?}") };
        assert!(rejections.iter().all(|r| r.reason.contains("do not answer")), "{rejections:?}");
        // With both answering, the one further ahead is promoted.
        let r = d.observe(&[down("a"), up("b", Role::Replica, 1000), up("c", Role::Replica, 990)]);
        assert_eq!(r, Decision::Failover { old: "a".into(), new: "b".into(), lost_bytes: 0 });
        // An empty set (no standby ever confirmed) promotes nobody.
        d.set_sync(sync(&[]));
        let r = d.observe(&[down("a"), up("b", Role::Replica, 1000), up("c", Role::Replica, 990)]);
        assert!(matches!(r, Decision::NoCandidate { .. }), "{r:?}");
    }

    proptest! {
        /// Whatever the probes, a failover only ever promotes a healthy,
        /// promotable replica within the lag limit, and only after the
        /// primary failed `threshold` rounds in a row.
        #[test]
        fn failover_is_always_justified(
            rounds in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec((any::<bool>(), 0u64..2000), 2)), 1..40),
            threshold in 1u32..4,
            max_lag in 0u64..1500,
        ) {
            let mut d = Decider::new(members(), Policy { unhealthy_threshold: threshold, max_lag_bytes: max_lag }).unwrap();
            healthy(&mut d);
            let mut streak = 0;
            for (primary_ok, replicas) in rounds {
                let mut probes = vec![if primary_ok { up("a", Role::Primary, 1000) } else { down("a") }];
                for (i, (ok, lsn)) in replicas.iter().enumerate() {
                    let name = ["b", "c"][i];
                    probes.push(if *ok { up(name, Role::Replica, *lsn) } else { down(name) });
                }
                streak = if primary_ok { 0 } else { streak + 1 };
                if let Decision::Failover { new, lost_bytes, .. } = d.observe(&probes) {
                    prop_assert!(streak >= threshold);
                    let p = probes.iter().find(|p| p.member == new).unwrap();
                    prop_assert!(p.ok && p.role == Some(Role::Replica));
                    prop_assert!(lost_bytes <= max_lag);
                    prop_assert_eq!(lost_bytes, 1000u64.saturating_sub(p.lsn));
                    break;
                }
            }
        }
    }
}
