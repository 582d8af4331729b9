//! A check's state as a pure function of its probe results: the thresholds
//! come from [`HealthCounter`], the machinery every member check in cirkel
//! uses, and the counters the engine publishes are kept beside it. No clock
//! and no I/O, so every sequence can be tested directly.

use cirkel_failover::HealthCounter;

/// What a check is known to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not yet `healthy_threshold` good or `unhealthy_threshold` bad probes
    /// in a row since the engine started: never counted as healthy.
    Unknown,
    Up,
    Down,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// One check's thresholds and counters.
#[derive(Debug)]
pub struct Tracker {
    counter: HealthCounter,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    pub state: State,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub probes_total: u64,
    pub failures_total: u64,
}

impl Tracker {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Tracker {
        Tracker {
            counter: HealthCounter::default(),
            healthy_threshold,
            unhealthy_threshold,
            state: State::Unknown,
            consecutive_ok: 0,
            consecutive_fail: 0,
            probes_total: 0,
            failures_total: 0,
        }
    }

    /// Feeds one probe result; returns `(from, to)` when the state changed.
    pub fn observe(&mut self, ok: bool) -> Option<(State, State)> {
        self.probes_total += 1;
        if ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_fail = 0;
        } else {
            self.failures_total += 1;
            self.consecutive_fail = self.consecutive_fail.saturating_add(1);
            self.consecutive_ok = 0;
        }
        let healthy = self.counter.observe(ok, self.healthy_threshold, self.unhealthy_threshold)?;
        let from = self.state;
        self.state = if healthy { State::Up } else { State::Down };
        Some((from, self.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &mut Tracker, probes: &str) -> Vec<(u64, State)> {
        probes.chars().filter_map(|c| t.observe(c == '+').map(|(_, to)| (t.probes_total, to))).collect()
    }

    #[test]
    fn unknown_until_a_threshold_is_reached() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(run(&mut t, "+"), vec![]);
        assert_eq!(t.state, State::Unknown, "one good probe is not healthy");
        assert_eq!(run(&mut t, "-+-"), vec![]);
        assert_eq!(t.state, State::Unknown);
        assert_eq!(run(&mut t, "--"), vec![(6, State::Down)]);
    }

    #[test]
    fn thresholds_count_consecutive_probes_only() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(run(&mut t, "++"), vec![(2, State::Up)]);
        assert_eq!(run(&mut t, "--+--+"), vec![], "a flapping target stays up");
        assert_eq!(run(&mut t, "---"), vec![(11, State::Down)]);
        assert_eq!(run(&mut t, "-----"), vec![], "a state is reported once");
        assert_eq!(run(&mut t, "+-++"), vec![(20, State::Up)]);
        assert_eq!((t.probes_total, t.failures_total), (20, 13));
        assert_eq!((t.consecutive_ok, t.consecutive_fail), (2, 0));
    }

    #[test]
    fn transitions_name_where_they_came_from() {
        let mut t = Tracker::new(1, 1);
        assert_eq!(t.observe(false), Some((State::Unknown, State::Down)));
        assert_eq!(t.observe(true), Some((State::Down, State::Up)));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), Some((State::Up, State::Down)));
    }

    #[test]
    fn every_sequence_matches_a_plain_count() {
        // All sequences of 12 probes against a direct reading of the rule.
        for bits in 0u32..(1 << 12) {
            let (h, u) = (2, 3);
            let mut t = Tracker::new(h, u);
            let mut expect = State::Unknown;
            let mut run_len = (0, 0);
            for i in 0..12 {
                let ok = bits & (1 << i) != 0;
                run_len = if ok { (run_len.0 + 1, 0) } else { (0, run_len.1 + 1) };
                if run_len.0 >= h {
                    expect = State::Up;
                } else if run_len.1 >= u {
                    expect = State::Down;
                }
                t.observe(ok);
                assert_eq!(t.state, expect, "{bits:012b} at {i}");
            }
        }
    }
}
