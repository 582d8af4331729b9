//! Raw samples of one time series turned into one datapoint per period.
//!
//! Periods are aligned to multiples of their length since the Unix epoch
//! (a 60 s period starts at every whole minute), so every alarm with the
//! same period sees the same datapoints whatever time it started. A
//! period is `[start, start + period)`; one without samples is missing.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Statistic;

/// Milliseconds since the Unix epoch; times before it count as the epoch.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The inverse of [`millis`].
pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The start of the period containing `t`, which is also the end of the
/// last complete one.
pub fn boundary(t_ms: u64, period: Duration) -> u64 {
    let p = period_ms(period);
    t_ms - t_ms % p
}

fn period_ms(period: Duration) -> u64 {
    u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The samples of one series, oldest first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    samples: VecDeque<(u64, f64)>,
}

impl Series {
    pub fn new() -> Series {
        Series::default()
    }

    /// Adds a sample. NaN carries no value to compare and is dropped.
    /// Samples usually arrive in time order; one that does not is put in
    /// its place.
    pub fn push(&mut self, at: SystemTime, value: f64) {
        if value.is_nan() {
            return;
        }
        let t = millis(at);
        match self.samples.back() {
            Some(&(last, _)) if last > t => {
                let i = self.samples.partition_point(|&(s, _)| s <= t);
                self.samples.insert(i, (t, value));
            }
            _ => self.samples.push_back((t, value)),
        }
    }

    /// Drops the samples older than `before`.
    pub fn prune(&mut self, before: SystemTime) {
        let t = millis(before);
        while self.samples.front().is_some_and(|&(s, _)| s < t) {
            self.samples.pop_front();
        }
    }

    /// Drops the `n` oldest samples.
    pub fn drop_oldest(&mut self, n: usize) {
        let n = n.min(self.samples.len());
        self.samples.drain(..n);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `count` datapoints of the periods ending at `end` (a period
    /// boundary), oldest first.
    pub fn datapoints(
        &self,
        statistic: Statistic,
        period: Duration,
        end: SystemTime,
        count: usize,
    ) -> Vec<Option<f64>> {
        let p = period_ms(period);
        let end = boundary(millis(end), period);
        let mut out = Vec::with_capacity(count);
        let mut values = Vec::new();
        for k in (1..=count as u64).rev() {
            let Some(start) = k.checked_mul(p).and_then(|back| end.checked_sub(back)) else {
                out.push(None);
                continue;
            };
            let stop = start + p;
            let from = self.samples.partition_point(|&(s, _)| s < start);
            values.clear();
            values.extend(self.samples.iter().skip(from).take_while(|&&(s, _)| s < stop).map(|&(_, v)| v));
            out.push(aggregate(statistic, &mut values));
        }
        out
    }
}

/// One period's datapoint from its sample values; `None` without samples.
/// Percentiles take the nearest rank: the smallest value with at least
/// p % of the samples at or below it.
pub fn aggregate(statistic: Statistic, values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    Some(match statistic {
        Statistic::Average => values.iter().sum::<f64>() / n,
        Statistic::Sum => values.iter().sum(),
        Statistic::Minimum => values.iter().copied().fold(f64::INFINITY, f64::min),
        Statistic::Maximum => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        Statistic::SampleCount => n,
        Statistic::Percentile(p) => {
            values.sort_unstable_by(f64::total_cmp);
            let rank = (p * n / 100.0).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn samples_fall_in_aligned_periods_and_empty_periods_are_missing() {
        let mut s = Series::new();
        // Periods of 60 s: [600, 660) [660, 720) [720, 780) [780, 840).
        s.push(at(600), 1.0);
        s.push(at(659), 5.0);
        s.push(at(660), 2.0);
        s.push(at(780), 7.0);
        s.push(at(840), 100.0); // the current, incomplete period
        let p = Duration::from_secs(60);
        assert_eq!(s.datapoints(Statistic::Maximum, p, at(845), 4), vec![Some(5.0), Some(2.0), None, Some(7.0)]);
        assert_eq!(s.datapoints(Statistic::Sum, p, at(840), 4), vec![Some(6.0), Some(2.0), None, Some(7.0)]);
        assert_eq!(s.datapoints(Statistic::SampleCount, p, at(840), 2), vec![None, Some(1.0)]);
        assert_eq!(s.datapoints(Statistic::Minimum, p, at(720), 1), vec![Some(2.0)]);
        assert_eq!(s.datapoints(Statistic::Average, p, at(660), 1), vec![Some(3.0)]);
        // Periods before the epoch are missing, not an overflow.
        assert_eq!(s.datapoints(Statistic::Sum, p, at(60), 3), vec![None, None, None]);
        s.prune(at(700));
        assert_eq!(s.datapoints(Statistic::Sum, p, at(840), 4), vec![None, None, None, Some(7.0)]);
    }

    #[test]
    fn out_of_order_samples_and_nan() {
        let mut s = Series::new();
        s.push(at(130), 3.0);
        s.push(at(70), 1.0);
        s.push(at(100), f64::NAN);
        assert_eq!(s.len(), 2);
        let p = Duration::from_secs(60);
        assert_eq!(s.datapoints(Statistic::Maximum, p, at(180), 2), vec![Some(1.0), Some(3.0)]);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(aggregate(Statistic::Percentile(99.0), &mut v), Some(99.0));
        assert_eq!(aggregate(Statistic::Percentile(50.0), &mut v), Some(50.0));
        assert_eq!(aggregate(Statistic::Percentile(100.0), &mut v), Some(100.0));
        assert_eq!(aggregate(Statistic::Percentile(0.1), &mut v), Some(1.0));
        assert_eq!(aggregate(Statistic::Percentile(99.0), &mut [7.0]), Some(7.0));
        assert_eq!(aggregate(Statistic::Percentile(99.0), &mut []), None);
    }
}
