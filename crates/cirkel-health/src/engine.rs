//! The engine: one task per check on a shared runtime.
//!
//! Scheduling. A check's probes fall on `origin + offset + k × interval`,
//! where `offset` is a hash of the check's name folded into the interval:
//! deterministic (a restart or a reload keeps every check's phase) and
//! spread out (a thousand checks do not fire in the same millisecond). The
//! ticker skips ticks a stalled runtime missed instead of firing them in a
//! burst ([`MissedTickBehavior::Skip`]), keeping the phase.
//!
//! Overlap. A probe runs under its own timeout, which a spec guarantees is
//! shorter than the interval: a probe still running at its timeout is
//! dropped (its connection closed) and counts as a failed probe, so the
//! next probe of the same check is never late because of it, and a
//! hanging target costs only its own task a socket.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::runtime::Handle;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::lag::{LagRing, LagSummary};
use crate::probe::Target;
use crate::spec::{CheckSpec, SpecError};
use crate::tracker::{State, Tracker};

/// One check as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckStatus {
    pub name: String,
    pub state: State,
    /// When the check entered `state` (for `Unknown`: when the engine started).
    pub since: SystemTime,
    /// How long the last probe took; `None` before the first.
    pub last_latency: Option<Duration>,
    /// Why the last probe failed; `None` when it passed.
    pub last_error: Option<String>,
    pub consecutive_ok: u32,
    pub consecutive_fail: u32,
    pub probes_total: u64,
    pub failures_total: u64,
}

/// A change of a check's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub name: String,
    pub from: State,
    pub to: State,
    pub at: SystemTime,
    /// The failure of the probe that made the check `Down`.
    pub error: Option<String>,
    /// The check's probes, and failed ones, including the one that caused this.
    pub probes_total: u64,
    pub failures_total: u64,
}

struct Shared {
    slots: Vec<Mutex<CheckStatus>>,
    by_name: HashMap<String, usize>,
    lags: LagRing,
}

/// Checks validated and ready to run.
pub struct Engine {
    specs: Vec<CheckSpec>,
    transitions: broadcast::Sender<Transition>,
}

/// The running engine.
pub struct EngineHandle {
    shared: Arc<Shared>,
    transitions: broadcast::Sender<Transition>,
    tasks: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Validates every spec and refuses duplicate names; reports every
    /// problem, not only the first.
    pub fn new(specs: Vec<CheckSpec>) -> Result<Engine, Vec<SpecError>> {
        let mut errors = Vec::new();
        let mut names = HashSet::new();
        for spec in &specs {
            if let Err(e) = spec.validate() {
                errors.push(e);
            }
            if !names.insert(spec.name.as_str()) {
                errors.push(SpecError::Duplicate(spec.name.clone()));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Room for every check to change state a few times before a slow
        // subscriber lags; the snapshot stays the authority either way.
        let (transitions, _) = broadcast::channel((specs.len() * 4).max(1024));
        Ok(Engine { specs, transitions })
    }

    /// Transitions from the first probe on: subscribe here, before
    /// [`Engine::start`], to miss none.
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.transitions.subscribe()
    }

    /// Starts every check on `runtime`. They run until `cancel` is
    /// cancelled; [`EngineHandle::stopped`] waits for them to end.
    pub fn start(self, runtime: &Handle, cancel: CancellationToken) -> EngineHandle {
        let now = SystemTime::now();
        let shared = Arc::new(Shared {
            slots: self
                .specs
                .iter()
                .map(|s| {
                    Mutex::new(CheckStatus {
                        name: s.name.clone(),
                        state: State::Unknown,
                        since: now,
                        last_latency: None,
                        last_error: None,
                        consecutive_ok: 0,
                        consecutive_fail: 0,
                        probes_total: 0,
                        failures_total: 0,
                    })
                })
                .collect(),
            by_name: self.specs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect(),
            lags: LagRing::default(),
        });
        let origin = Instant::now();
        let tasks = self
            .specs
            .into_iter()
            .enumerate()
            .map(|(slot, spec)| {
                let check = Check {
                    target: Target::new(&spec.kind),
                    tracker: Tracker::new(spec.healthy_threshold, spec.unhealthy_threshold),
                    spec,
                    slot,
                    shared: shared.clone(),
                    transitions: self.transitions.clone(),
                };
                runtime.spawn(check.run(origin, cancel.clone()))
            })
            .collect();
        EngineHandle { shared, transitions: self.transitions, tasks }
    }
}

impl EngineHandle {
    /// Every check's state, in the order the specs were given.
    pub fn snapshot(&self) -> Vec<CheckStatus> {
        self.shared.slots.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
    }

    /// One check's state.
    pub fn status(&self, name: &str) -> Option<CheckStatus> {
        let slot = self.shared.slots.get(*self.shared.by_name.get(name)?)?;
        Some(slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Transitions from now on. A receiver that falls more than the
    /// channel's capacity behind gets `Lagged` and should re-read
    /// [`EngineHandle::snapshot`].
    pub fn subscribe(&self) -> broadcast::Receiver<Transition> {
        self.transitions.subscribe()
    }

    /// How late the newest probes started behind their schedule.
    pub fn lags(&self) -> Vec<Duration> {
        self.shared.lags.lags()
    }

    pub fn lag_summary(&self) -> LagSummary {
        self.shared.lags.summary()
    }

    /// Waits until every check has ended (after the engine's token was
    /// cancelled).
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// FNV-1a: stable across builds and platforms, unlike the std hasher, so a
/// check keeps its phase across upgrades too.
fn start_offset(name: &str, interval: Duration) -> Duration {
    let hash =
        name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let nanos = interval.as_nanos().max(1);
    Duration::from_nanos(u64::try_from(u128::from(hash) % nanos).unwrap_or(0))
}

struct Check {
    spec: CheckSpec,
    target: Target,
    tracker: Tracker,
    slot: usize,
    shared: Arc<Shared>,
    transitions: broadcast::Sender<Transition>,
}

impl Check {
    async fn run(mut self, origin: Instant, cancel: CancellationToken) {
        let mut ticks =
            tokio::time::interval_at(origin + start_offset(&self.spec.name, self.spec.interval), self.spec.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            let scheduled = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                t = ticks.tick() => t,
            };
            let started = Instant::now();
            self.shared.lags.record(started.saturating_duration_since(scheduled));
            let outcome = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                r = tokio::time::timeout(self.spec.timeout, self.target.probe()) => r,
            };
            let latency = started.elapsed();
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {:?}", self.spec.timeout)),
            };
            self.record(latency, error);
        }
    }

    fn record(&mut self, latency: Duration, error: Option<String>) {
        let change = self.tracker.observe(error.is_none());
        let t = &self.tracker;
        let now = SystemTime::now();
        {
            let mut s = self.shared.slots[self.slot].lock().unwrap_or_else(|p| p.into_inner());
            s.last_latency = Some(latency);
            s.last_error = error.clone();
            s.consecutive_ok = t.consecutive_ok;
            s.consecutive_fail = t.consecutive_fail;
            s.probes_total = t.probes_total;
            s.failures_total = t.failures_total;
            if change.is_some() {
                s.state = t.state;
                s.since = now;
            }
        }
        if let Some((from, to)) = change {
            // No subscriber is not an error: the snapshot holds the state.
            let _ = self.transitions.send(Transition {
                name: self.spec.name.clone(),
                from,
                to,
                at: now,
                error,
                probes_total: t.probes_total,
                failures_total: t.failures_total,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stable_and_spread_over_the_interval() {
        let interval = Duration::from_secs(10);
        assert_eq!(start_offset("api", interval), start_offset("api", interval));
        let mut per_second = [0u32; 10];
        for i in 0..1000 {
            let o = start_offset(&format!("check-{i}"), interval);
            assert!(o < interval);
            per_second[o.as_secs() as usize] += 1;
        }
        // Uniform would be 100 per second.
        assert!(per_second.iter().all(|&n| (50..=150).contains(&n)), "{per_second:?}");
    }
}
