//! The Redis watcher's loss limit, as a pure rule.
//!
//! When a Redis master stops answering, its replicas' offsets are final:
//! a failover now loses whatever the best of them lacks against the
//! master's last seen offset. Within the limit Sentinel is left alone;
//! beyond it the watcher either holds Sentinel back (it raises
//! `down-after-milliseconds`, so no lossy failover starts) or only warns,
//! as the group is configured. Here is the rule, with no I/O, so that every
//! case is a line of a table test; `cirkel-redis` probes and acts.

/// What to do when a failover would lose more than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnLag {
    /// Hold the failover back until the master answers or an operator
    /// forces it.
    Refuse,
    /// Let Sentinel fail over, and say how much is lost.
    Warn,
}

/// The replica a failover would most likely promote, and how far behind
/// the master's last seen offset it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Best<N> {
    pub replica: N,
    pub lag_bytes: u64,
}

/// What the master's silence calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<N> {
    /// The best replica is within the limit: Sentinel may fail over.
    Within(Best<N>),
    /// Already held back: nothing more to do.
    AlreadyHeld,
    /// Hold Sentinel back. `None`: no replica answers with an offset.
    HoldBack(Option<Best<N>>),
    /// Beyond the limit, but configured to warn only.
    Warn(Option<Best<N>>),
}

/// Judges an outage: `master_offset` is the master's last seen offset,
/// `replicas` the reachable, promotable replicas with their offsets (when
/// known), `held` whether the watcher holds Sentinel back already. Of
/// replicas at the same offset the greatest name is named, as a tie.
pub fn judge_outage<N: Ord + Clone>(
    master_offset: u64,
    replicas: &[(N, Option<u64>)],
    max_lag_bytes: u64,
    held: bool,
    on_lag: OnLag,
) -> Verdict<N> {
    let best = replicas
        .iter()
        .filter_map(|(n, o)| o.map(|o| (o, n)))
        .max()
        .map(|(o, n)| Best { replica: n.clone(), lag_bytes: master_offset.saturating_sub(o) });
    match best {
        Some(b) if b.lag_bytes <= max_lag_bytes => Verdict::Within(b),
        _ if held => Verdict::AlreadyHeld,
        best => match on_lag {
            OnLag::Refuse => Verdict::HoldBack(best),
            OnLag::Warn => Verdict::Warn(best),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best(r: &'static str, lag: u64) -> Option<Best<&'static str>> {
        Some(Best { replica: r, lag_bytes: lag })
    }

    /// What it is, the replicas, the limit, held already, the setting, the verdict.
    type Row = (&'static str, &'static [(&'static str, Option<u64>)], u64, bool, OnLag, Verdict<&'static str>);

    #[test]
    fn the_outage_table() {
        use OnLag::Refuse;
        use Verdict::{AlreadyHeld, HoldBack, Within};
        const TWO: &[(&str, Option<u64>)] = &[("r1", Some(900)), ("r2", Some(950))];
        #[rustfmt::skip]
        let table: Vec<Row> = vec![
            ("the best replica is within the limit", TWO, 100, false, Refuse, Within(Best { replica: "r2", lag_bytes: 50 })),
            ("exactly at the limit is within", TWO, 50, false, Refuse, Within(Best { replica: "r2", lag_bytes: 50 })),
            ("within even while held", TWO, 100, true, Refuse, Within(Best { replica: "r2", lag_bytes: 50 })),
            ("beyond the limit: held back", TWO, 49, false, Refuse, HoldBack(best("r2", 50))),
            ("beyond the limit, warn only", TWO, 49, false, OnLag::Warn, Verdict::Warn(best("r2", 50))),
            ("beyond and already held", TWO, 49, true, Refuse, AlreadyHeld),
            ("beyond and already held, warn only", TWO, 49, true, OnLag::Warn, AlreadyHeld),
            ("no replica answers", &[], 1 << 20, false, Refuse, HoldBack(None)),
            ("no replica knows its offset", &[("r1", None)], 1 << 20, false, OnLag::Warn, Verdict::Warn(None)),
            ("a replica ahead of the last seen offset lags 0", &[("r1", Some(1200))], 0, false, Refuse, Within(Best { replica: "r1", lag_bytes: 0 })),
            ("a tie names the greatest", &[("r1", Some(990)), ("r3", Some(990)), ("r2", Some(10))], 5, false, Refuse, HoldBack(best("r3", 10))),
        ];
        for (what, replicas, limit, held, on_lag, want) in table {
            assert_eq!(judge_outage(1000, replicas, limit, held, on_lag), want, "{what}");
        }
    }
}
