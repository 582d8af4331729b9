//! When scheduled jobs run, apart from what they run: the daemon's scheduler
//! asks a [`Clock`] for the time and to wait, so the same loop runs against
//! the wall clock in `cirkel serve` and against simulated time in tests
//! (a day of `*/15` slots in microseconds instead of a day).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cirkel_config::cron::Schedule;

/// The time, and a way to wait for a later one.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Waits until `t`; false when `stop` turned true first (or, for a
    /// simulated clock, when `t` lies past the end of the simulation).
    fn sleep_until(&self, t: DateTime<Utc>, stop: &AtomicBool) -> bool;
}

/// How often a waiting scheduler looks at its stop flag.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let left = (t - Utc::now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(STOP_CHECK));
        }
    }
}

/// A clock that starts at a chosen instant and runs `speed` times faster
/// than the wall clock. Only for tests of the real daemon: it lets
/// `cirkel serve` reach its schedule's next slots in seconds
/// (`CIRKEL_TEST_CLOCK_START`, `CIRKEL_TEST_CLOCK_SPEED`).
pub struct ScaledClock {
    start: DateTime<Utc>,
    real_start: Instant,
    speed: f64,
}

impl ScaledClock {
    pub fn new(start: DateTime<Utc>, speed: f64) -> ScaledClock {
        ScaledClock { start, real_start: Instant::now(), speed: speed.max(f64::MIN_POSITIVE) }
    }

    /// The clock the environment asks for: the wall clock unless the test
    /// variables are set.
    pub fn from_env() -> anyhow::Result<Option<ScaledClock>> {
        let start = std::env::var("CIRKEL_TEST_CLOCK_START").ok();
        let speed = std::env::var("CIRKEL_TEST_CLOCK_SPEED").ok();
        if start.is_none() && speed.is_none() {
            return Ok(None);
        }
        let start = match start {
            Some(s) => DateTime::parse_from_rfc3339(&s)
                .map_err(|e| anyhow::anyhow!("CIRKEL_TEST_CLOCK_START {s:?}: {e}"))?
                .with_timezone(&Utc),
            None => Utc::now(),
        };
        let speed = match speed {
            Some(s) => match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => v,
                _ => anyhow::bail!("CIRKEL_TEST_CLOCK_SPEED {s:?} is not a positive number"),
            },
            None => 1.0,
        };
        Ok(Some(ScaledClock::new(start, speed)))
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> DateTime<Utc> {
        let real = self.real_start.elapsed().as_secs_f64() * self.speed;
        self.start + chrono::Duration::microseconds((real * 1e6) as i64)
    }

    fn sleep_until(&self, t: DateTime<Utc>, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let left = (t - self.now()).to_std().unwrap_or_default();
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.div_f64(self.speed).min(STOP_CHECK));
        }
    }
}

/// Runs `run` at each slot of `schedule` until `stop` (or the clock says
/// so). The next slot is counted from when the previous run ended: a run
/// that overruns its next slot is not followed by a second run at once for
/// the slot it missed, and runs of one job never overlap.
pub fn run_schedule(schedule: &Schedule, clock: &dyn Clock, stop: &AtomicBool, run: impl FnMut(DateTime<Utc>)) {
    run_schedule_reporting(schedule, clock, stop, run, |_| {});
}

/// [`run_schedule`], telling `missed` of the slots that passed while a run
/// still went on (they are skipped, never queued).
pub fn run_schedule_reporting(
    schedule: &Schedule,
    clock: &dyn Clock,
    stop: &AtomicBool,
    mut run: impl FnMut(DateTime<Utc>),
    mut missed: impl FnMut(&[DateTime<Utc>]),
) {
    while !stop.load(Ordering::Relaxed) {
        let Some(next) = schedule.next_after(clock.now()) else { return };
        if !clock.sleep_until(next, stop) {
            return;
        }
        run(next);
        let now = clock.now();
        let mut skipped = Vec::new();
        let mut t = next;
        // Bounded: a run that took years does not list every minute.
        while skipped.len() < 1000
            && let Some(s) = schedule.next_after(t)
            && s <= now
        {
            skipped.push(s);
            t = s;
        }
        if !skipped.is_empty() {
            missed(&skipped);
        }
    }
}

/// Simulated time for tests: waiting moves the time forward at once, and a
/// run takes as long as the test says by advancing it.
#[cfg(test)]
pub struct SimClock {
    now: std::sync::Mutex<DateTime<Utc>>,
    end: DateTime<Utc>,
}

#[cfg(test)]
impl SimClock {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> SimClock {
        SimClock { now: std::sync::Mutex::new(start), end }
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().unwrap();
        *now += by;
    }
}

#[cfg(test)]
impl Clock for SimClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap()
    }

    fn sleep_until(&self, t: DateTime<Utc>, stop: &AtomicBool) -> bool {
        if stop.load(Ordering::Relaxed) || t >= self.end {
            return false;
        }
        let mut now = self.now.lock().unwrap();
        if t > *now {
            *now = t;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike};

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    /// The slots a schedule fires in between `start` and `end`, each run
    /// taking `takes` of simulated time.
    fn fired(schedule: &str, start: DateTime<Utc>, end: DateTime<Utc>, takes: chrono::Duration) -> Vec<DateTime<Utc>> {
        let clock = SimClock::new(start, end);
        let stop = AtomicBool::new(false);
        let mut runs = Vec::new();
        run_schedule(&Schedule::parse(schedule).unwrap(), &clock, &stop, |slot| {
            assert_eq!(clock.now(), slot, "a run starts at its slot");
            runs.push(slot);
            clock.advance(takes);
        });
        runs
    }

    #[test]
    fn every_fifteen_minutes_fires_96_times_a_day_on_the_quarter_hours() {
        let start = at(2026, 11, 26, 0, 0, 0) - chrono::Duration::seconds(1);
        let runs = fired("*/15 * * * *", start, start + chrono::Duration::days(1), chrono::Duration::seconds(40));
        assert_eq!(runs.len(), 96);
        assert_eq!(runs[0], at(2026, 11, 26, 0, 0, 0));
        assert_eq!(runs[95], at(2026, 11, 26, 23, 45, 0));
        assert!(runs.iter().all(|t| t.minute() % 15 == 0 && t.second() == 0), "{runs:?}");
        assert!(runs.windows(2).all(|w| w[1] - w[0] == chrono::Duration::minutes(15)));
    }

    #[test]
    fn a_daily_job_crosses_a_month_and_a_year_boundary() {
        let runs =
            fired("30 2 * * *", at(2026, 12, 30, 12, 0, 0), at(2027, 1, 3, 0, 0, 0), chrono::Duration::minutes(5));
        assert_eq!(runs, [at(2026, 12, 31, 2, 30, 0), at(2027, 1, 1, 2, 30, 0), at(2027, 1, 2, 2, 30, 0)]);
        let monthly =
            fired("0 0 1 * *", at(2026, 1, 15, 0, 0, 0), at(2026, 4, 15, 0, 0, 0), chrono::Duration::hours(1));
        assert_eq!(monthly.iter().map(|t| t.month()).collect::<Vec<_>>(), [2, 3, 4]);
    }

    #[test]
    fn a_run_that_overruns_its_next_slot_is_not_run_twice_at_once() {
        // Each run takes 20 minutes: the 10:15 slot falls inside the 10:00
        // run and is skipped, never queued behind it.
        let runs = fired(
            "*/15 * * * *",
            at(2026, 11, 26, 9, 59, 0),
            at(2026, 11, 26, 11, 1, 0),
            chrono::Duration::minutes(20),
        );
        assert_eq!(runs, [at(2026, 11, 26, 10, 0, 0), at(2026, 11, 26, 10, 30, 0), at(2026, 11, 26, 11, 0, 0)]);
    }

    #[test]
    fn slots_passed_during_a_run_are_reported_missed() {
        let clock = SimClock::new(at(2026, 11, 26, 9, 59, 0), at(2026, 11, 26, 11, 1, 0));
        let stop = AtomicBool::new(false);
        let mut missed = Vec::new();
        run_schedule_reporting(
            &Schedule::parse("*/15 * * * *").unwrap(),
            &clock,
            &stop,
            |_| clock.advance(chrono::Duration::minutes(20)),
            |m| missed.extend_from_slice(m),
        );
        assert_eq!(missed, [at(2026, 11, 26, 10, 15, 0), at(2026, 11, 26, 10, 45, 0), at(2026, 11, 26, 11, 15, 0)]);
    }

    #[test]
    fn a_stopped_scheduler_runs_nothing_more() {
        let clock = SimClock::new(at(2026, 1, 1, 0, 0, 0), at(2027, 1, 1, 0, 0, 0));
        let stop = AtomicBool::new(false);
        let mut runs = 0;
        run_schedule(&Schedule::parse("* * * * *").unwrap(), &clock, &stop, |_| {
            runs += 1;
            if runs == 3 {
                stop.store(true, Ordering::Relaxed);
            }
        });
        assert_eq!(runs, 3);
    }

    #[test]
    fn the_scaled_clock_runs_faster_from_its_start() {
        let start = at(2026, 1, 1, 0, 0, 0);
        let clock = ScaledClock::new(start, 600.0);
        let stop = AtomicBool::new(false);
        // A simulated minute is a tenth of a second here.
        assert!(clock.sleep_until(start + chrono::Duration::minutes(1), &stop));
        assert!(clock.now() >= start + chrono::Duration::minutes(1));
        stop.store(true, Ordering::Relaxed);
        assert!(!clock.sleep_until(start + chrono::Duration::days(1), &stop));
    }
}
