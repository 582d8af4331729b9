//! What the agent on a member's host does with that member, as a pure
//! function: the rules of `cirkel_pg::keeper`, with its observations in and
//! one action out, so that they are tested without a cluster.
//!
//! The rules, in order:
//! - paused: nothing, except a clean stop a switchover asks for;
//! - a running primary with no word from etcd for the fencing time is
//!   stopped unless every other member still answers (asked only then);
//! - a running primary is stopped cleanly when a switchover asks for it,
//!   at once when the route names nobody (a failover away from it), and
//!   rewound when the route names another member;
//! - a stopped standby is started;
//! - a stopped primary's data directory is rewound when the route names
//!   another member, and started when the route names it and either this
//!   agent stopped it or it has been gone so long that no failover comes.
//!
//! The invariants the property test checks: without fresh word from etcd
//! nothing is ever started or rewound (only a primary is stopped); a
//! primary's data directory is started only when the route names it; a
//! paused member is only ever stopped for a switchover.

/// The route as the agent last read it, when it is fresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSeen<'a> {
    /// The member the endpoints route to; `None` while a failover or a
    /// switchover runs.
    pub primary: Option<&'a str>,
    /// A switchover under way asks this member to stop cleanly.
    pub handoff_from_me: bool,
}

/// What the agent sees of its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepObs<'a> {
    pub me: &'a str,
    /// Its postmaster runs.
    pub alive: bool,
    /// It was a primary when last seen running.
    pub primary: bool,
    /// Its data directory is a standby's (`standby.signal`).
    pub standby_data: bool,
    /// Word from etcd within the fencing time.
    pub fresh: bool,
    /// The route, when fresh and ever published.
    pub route: Option<RouteSeen<'a>>,
    pub paused: bool,
    /// This agent stopped it (fenced it, or for a switchover).
    pub stopped_by_me: bool,
    /// Its exit was reported long enough ago that no failover is coming.
    pub gone_long: bool,
    /// Every other member answered just now; `None` until asked.
    pub sees_everyone: Option<bool>,
    /// The switchover that asks for a stop was already answered.
    pub handoff_done: bool,
}

/// What the agent does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepAction {
    Nothing,
    /// Ask whether every other member answers, then decide again.
    Probe,
    /// Stop it at once: it must take no more writes.
    Fence(String),
    /// Stop it cleanly for the switchover, and answer.
    HandOff,
    /// Rewind it into a standby of this member.
    Rejoin(String),
    /// Start it.
    Start(String),
}

pub fn keep(o: &KeepObs) -> KeepAction {
    if o.alive && o.primary {
        if o.paused {
            return match o.route {
                Some(r) if o.fresh && r.handoff_from_me && !o.handoff_done => KeepAction::HandOff,
                _ => KeepAction::Nothing,
            };
        }
        if !o.fresh {
            return match o.sees_everyone {
                None => KeepAction::Probe,
                Some(true) => KeepAction::Nothing,
                Some(false) => {
                    KeepAction::Fence("no word from etcd and not every member answers: another may be promoted".into())
                }
            };
        }
        return match o.route {
            // Never routed: the leader has decided nothing yet.
            None => KeepAction::Nothing,
            Some(r) if r.handoff_from_me => {
                if o.handoff_done {
                    KeepAction::Nothing
                } else {
                    KeepAction::HandOff
                }
            }
            Some(RouteSeen { primary: None, .. }) => {
                KeepAction::Fence(format!("the leader is failing over away from {}", o.me))
            }
            Some(RouteSeen { primary: Some(p), .. }) if p != o.me => KeepAction::Rejoin(p.to_string()),
            Some(_) => KeepAction::Nothing,
        };
    }
    if o.alive || o.paused || !o.fresh {
        return KeepAction::Nothing;
    }
    if o.standby_data {
        return KeepAction::Start(format!("standby {} had stopped", o.me));
    }
    match o.route.and_then(|r| r.primary) {
        Some(p) if p != o.me => KeepAction::Rejoin(p.to_string()),
        Some(_) if o.stopped_by_me || o.gone_long => KeepAction::Start(format!("the route names {} again", o.me)),
        _ => KeepAction::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn running_primary<'a>() -> KeepObs<'a> {
        KeepObs {
            me: "a",
            alive: true,
            primary: true,
            standby_data: false,
            fresh: true,
            route: Some(RouteSeen { primary: Some("a"), handoff_from_me: false }),
            paused: false,
            stopped_by_me: false,
            gone_long: false,
            sees_everyone: None,
            handoff_done: false,
        }
    }

    #[test]
    fn a_routed_primary_is_left_alone() {
        assert_eq!(keep(&running_primary()), KeepAction::Nothing);
    }

    #[test]
    fn a_primary_cut_off_from_etcd_is_fenced_unless_it_sees_everyone() {
        let o = KeepObs { fresh: false, ..running_primary() };
        assert_eq!(keep(&o), KeepAction::Probe);
        assert_eq!(keep(&KeepObs { sees_everyone: Some(true), ..o }), KeepAction::Nothing);
        assert!(matches!(keep(&KeepObs { sees_everyone: Some(false), ..o }), KeepAction::Fence(_)));
    }

    #[test]
    fn a_primary_the_route_moved_away_from_is_stopped_or_rewound() {
        let o = running_primary();
        let failing_over = KeepObs { route: Some(RouteSeen { primary: None, handoff_from_me: false }), ..o };
        assert!(matches!(keep(&failing_over), KeepAction::Fence(_)));
        let moved = KeepObs { route: Some(RouteSeen { primary: Some("b"), handoff_from_me: false }), ..o };
        assert_eq!(keep(&moved), KeepAction::Rejoin("b".into()));
        let handoff = KeepObs { route: Some(RouteSeen { primary: None, handoff_from_me: true }), ..o };
        assert_eq!(keep(&handoff), KeepAction::HandOff);
        assert_eq!(keep(&KeepObs { handoff_done: true, ..handoff }), KeepAction::Nothing);
        // Paused: only the switchover moves it.
        assert_eq!(keep(&KeepObs { paused: true, ..moved }), KeepAction::Nothing);
        assert_eq!(keep(&KeepObs { paused: true, ..handoff }), KeepAction::HandOff);
    }

    #[test]
    fn stopped_members_are_started_or_rewound_by_the_route() {
        let stopped = KeepObs { alive: false, ..running_primary() };
        assert_eq!(keep(&stopped), KeepAction::Nothing, "gone: the leader fails it over");
        assert!(matches!(keep(&KeepObs { stopped_by_me: true, ..stopped }), KeepAction::Start(_)));
        assert!(matches!(keep(&KeepObs { gone_long: true, ..stopped }), KeepAction::Start(_)));
        let moved = KeepObs { route: Some(RouteSeen { primary: Some("c"), handoff_from_me: false }), ..stopped };
        assert_eq!(keep(&moved), KeepAction::Rejoin("c".into()));
        let standby = KeepObs { primary: false, standby_data: true, ..stopped };
        assert!(matches!(keep(&standby), KeepAction::Start(_)));
        assert_eq!(keep(&KeepObs { paused: true, ..standby }), KeepAction::Nothing);
        assert_eq!(keep(&KeepObs { fresh: false, route: None, ..standby }), KeepAction::Nothing);
    }

    /// alive, primary, standby data, fresh, route, paused, stopped by me,
    /// gone long, handoff, sees everyone, handoff done.
    type Raw = (bool, bool, bool, bool, u8, bool, bool, bool, bool, Option<bool>, bool);

    fn obs_strategy() -> impl Strategy<Value = Raw> {
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0u8..5,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(any::<bool>()),
            any::<bool>(),
        )
    }

    proptest! {
        #[test]
        fn the_keepers_rules_hold(v in obs_strategy()) {
            let (alive, primary, standby_data, fresh, route, paused, stopped_by_me, gone_long, handoff, sees, done) = v;
            let route = match route {
                0 => None,
                1 => Some(RouteSeen { primary: None, handoff_from_me: handoff }),
                2 => Some(RouteSeen { primary: Some("a"), handoff_from_me: false }),
                _ => Some(RouteSeen { primary: Some("b"), handoff_from_me: false }),
            };
            // The agent only knows the route while it hears from etcd.
            let route = route.filter(|_| fresh);
            let o = KeepObs {
                me: "a", alive, primary, standby_data, fresh, route, paused, stopped_by_me, gone_long,
                sees_everyone: sees, handoff_done: done,
            };
            let action = keep(&o);
            // Without word from etcd, only a primary is ever stopped.
            if !fresh {
                prop_assert!(matches!(action, KeepAction::Nothing | KeepAction::Probe | KeepAction::Fence(_)), "{o:?} → {action:?}");
            }
            // Fencing for want of etcd needs the members asked, and not all seen.
            if !fresh && matches!(action, KeepAction::Fence(_)) {
                prop_assert_eq!(sees, Some(false));
            }
            // A primary's data directory starts only where the route names it.
            if let KeepAction::Start(_) = action && !standby_data {
                prop_assert_eq!(route.and_then(|r| r.primary), Some("a"));
            }
            // A rewind goes to the member the route names.
            if let KeepAction::Rejoin(p) = &action {
                prop_assert_eq!(route.and_then(|r| r.primary), Some(p.as_str()));
            }
            // Paused, only a switchover moves anything.
            if paused {
                prop_assert!(matches!(action, KeepAction::Nothing | KeepAction::HandOff), "{o:?} → {action:?}");
            }
            // A running standby is never touched.
            if alive && !primary {
                prop_assert_eq!(action, KeepAction::Nothing);
            }
        }
    }
}
