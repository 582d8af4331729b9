//! How late probes start: the gap between the instant a probe was scheduled
//! and the instant it began, kept for the newest [`LAG_RING`] probes, so a
//! benchmark or the daemon can tell how precise the scheduling is.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many of the newest probe lags are kept: a minute of 1,000 checks at a
/// 10 s interval is 6,000 probes; 64 KiB.
pub const LAG_RING: usize = 16_384;

/// Start lags in microseconds, newest [`LAG_RING`] of them.
#[derive(Default)]
pub(crate) struct LagRing {
    ring: Mutex<Ring>,
    total: AtomicU64,
    max_us: AtomicU64,
}

#[derive(Default)]
struct Ring {
    lags_us: Vec<u32>,
    next: usize,
}

/// Start-lag percentiles over the probes kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LagSummary {
    /// Probes started since the engine began.
    pub total: u64,
    /// Probes the percentiles are taken over (at most [`LAG_RING`]).
    pub kept: usize,
    pub p50: Duration,
    pub p99: Duration,
    /// Largest over every probe since the engine began.
    pub max: Duration,
}

impl LagRing {
    pub(crate) fn record(&self, lag: Duration) {
        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let v = u32::try_from(us).unwrap_or(u32::MAX);
        if r.lags_us.len() < LAG_RING {
            r.lags_us.push(v);
        } else {
            let at = r.next;
            r.lags_us[at] = v;
        }
        r.next = (r.next + 1) % LAG_RING;
    }

    pub(crate) fn lags(&self) -> Vec<Duration> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.lags_us.iter().map(|&us| Duration::from_micros(u64::from(us))).collect()
    }

    pub(crate) fn summary(&self) -> LagSummary {
        let mut lags = self.lags();
        lags.sort_unstable();
        let at = |q: f64| {
            if lags.is_empty() {
                Duration::ZERO
            } else {
                let i = ((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len()) - 1;
                lags[i]
            }
        };
        LagSummary {
            total: self.total.load(Ordering::Relaxed),
            kept: lags.len(),
            p50: at(0.50),
            p99: at(0.99),
            max: Duration::from_micros(self.max_us.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_newest_lags() {
        let ring = LagRing::default();
        assert_eq!(ring.summary(), LagSummary::default());
        for ms in 1..=100 {
            ring.record(Duration::from_millis(ms));
        }
        let s = ring.summary();
        assert_eq!((s.total, s.kept), (100, 100));
        assert_eq!(
            (s.p50, s.p99, s.max),
            (Duration::from_millis(50), Duration::from_millis(99), Duration::from_millis(100))
        );
    }

    #[test]
    fn the_ring_keeps_the_newest_and_the_max_stays() {
        let ring = LagRing::default();
        ring.record(Duration::from_secs(3));
        for _ in 0..LAG_RING {
            ring.record(Duration::from_micros(7));
        }
        let s = ring.summary();
        assert_eq!((s.total, s.kept), (LAG_RING as u64 + 1, LAG_RING));
        assert_eq!((s.p99, s.max), (Duration::from_micros(7), Duration::from_secs(3)));
    }
}
