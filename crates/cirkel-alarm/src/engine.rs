//! Every alarm's instances, their samples and their states, driven by a
//! clock the caller passes in.
//!
//! A selector that matches several series makes one instance per label
//! set, as Prometheus alerts do, so `rpo-exposure` alarms per source.
//! Each alarm is evaluated at most once per period boundary its clock
//! crosses: a clock that leaps ahead gives one evaluation (the periods it
//! skipped have no samples, so they are missing), and a clock that goes
//! back gives none until it passes the last boundary evaluated again.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::evaluate::{Reason, evaluate, evaluation_range};
use crate::series::{Series, boundary, from_millis, millis};
use crate::{AlarmSpec, AlarmState, Error, Severity};

/// A series' labels.
pub type Labels = BTreeMap<String, String>;

/// Instances one alarm keeps at most: a broad selector over a scraped
/// endpoint with many series must not take the daemon's memory.
pub const MAX_INSTANCES: usize = 1000;
/// Samples one instance keeps at most, whatever the rate they come at.
pub const MAX_SAMPLES: usize = 65_536;
/// An instance without samples that has been INSUFFICIENT_DATA this long
/// is forgotten: its series is gone.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A change of state of one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub alarm: String,
    pub labels: Labels,
    pub severity: Severity,
    pub from: AlarmState,
    pub to: AlarmState,
    pub reason: Reason,
    pub at: SystemTime,
}

/// Where one instance stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    pub alarm: String,
    pub labels: Labels,
    pub severity: Severity,
    pub state: AlarmState,
    pub reason: Reason,
    /// When it entered `state`.
    pub since: SystemTime,
}

/// What the daemon persists across restarts: states and the last
/// boundary each alarm was evaluated at. Samples are not kept; periods
/// while the daemon was down are missing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub instances: Vec<InstanceState>,
    pub evaluated: BTreeMap<String, SystemTime>,
}

struct Instance {
    state: AlarmState,
    reason: Reason,
    since: SystemTime,
    series: Series,
    /// The previous raw sample of a counter, for its rate.
    last: Option<(SystemTime, f64)>,
}

impl Instance {
    fn new(now: SystemTime) -> Instance {
        Instance {
            state: AlarmState::InsufficientData,
            reason: Reason::new("new series; not evaluated yet"),
            since: now,
            series: Series::new(),
            last: None,
        }
    }
}

struct Alarm {
    spec: AlarmSpec,
    /// The last boundary evaluated, in ms since the epoch.
    evaluated: Option<u64>,
    instances: BTreeMap<Labels, Instance>,
}

/// The alarms and everything they remember.
pub struct Engine {
    alarms: Vec<Alarm>,
    refused: u64,
}

impl Engine {
    /// An engine over `specs`; each is validated and names are unique.
    pub fn new(specs: Vec<AlarmSpec>) -> Result<Engine, Error> {
        let mut alarms: Vec<Alarm> = Vec::with_capacity(specs.len());
        for spec in specs {
            spec.validate()?;
            if alarms.iter().any(|a| a.spec.name == spec.name) {
                return Err(Error::Spec {
                    name: spec.name,
                    message: "two alarms have this name; give each its own".into(),
                });
            }
            alarms.push(Alarm { spec, evaluated: None, instances: BTreeMap::new() });
        }
        Ok(Engine { alarms, refused: 0 })
    }

    pub fn specs(&self) -> impl Iterator<Item = &AlarmSpec> {
        self.alarms.iter().map(|a| &a.spec)
    }

    /// Samples of series no alarm had room for (see [`MAX_INSTANCES`]).
    pub fn refused_samples(&self) -> u64 {
        self.refused
    }

    /// Feeds one sample of the series `name{labels}` taken at `now` to
    /// every alarm whose selector matches it.
    pub fn observe(&mut self, now: SystemTime, name: &str, labels: &Labels, value: f64) {
        for alarm in &mut self.alarms {
            if !alarm.spec.metric.matches(name, labels) {
                continue;
            }
            if !alarm.instances.contains_key(labels) {
                if alarm.instances.len() >= MAX_INSTANCES {
                    self.refused += 1;
                    continue;
                }
                alarm.instances.insert(labels.clone(), Instance::new(now));
            }
            if let Some(instance) = alarm.instances.get_mut(labels) {
                let value = if alarm.spec.rate {
                    let previous = instance.last.replace((now, value));
                    let Some((then, before)) = previous else { continue };
                    let dt = now.duration_since(then).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                    if dt <= 0.0 {
                        continue;
                    }
                    // A counter that went down restarted from zero.
                    let increase = if value >= before { value - before } else { value };
                    increase / dt
                } else {
                    value
                };
                instance.series.push(now, value);
                if instance.series.len() > MAX_SAMPLES {
                    let keep_from = instance.series.len() - MAX_SAMPLES;
                    instance.series.drop_oldest(keep_from);
                }
            }
        }
    }

    /// Evaluates every alarm whose period boundary `now` has crossed since
    /// its last evaluation, and returns the changes of state. The first
    /// call only notes the boundary: the period before it was not watched.
    pub fn evaluate(&mut self, now: SystemTime) -> Vec<Transition> {
        let mut out = Vec::new();
        let now_ms = millis(now);
        for alarm in &mut self.alarms {
            let spec = &alarm.spec;
            let b = boundary(now_ms, spec.period);
            match alarm.evaluated {
                None => {
                    alarm.evaluated = Some(b);
                    continue;
                }
                Some(last) if b <= last => continue,
                Some(_) => alarm.evaluated = Some(b),
            }
            let range = evaluation_range(spec.evaluation_periods);
            let end = from_millis(b);
            let span = u64::try_from(spec.period.as_millis()).unwrap_or(u64::MAX).saturating_mul(range as u64);
            let keep_from = b.saturating_sub(span);
            alarm.instances.retain(|labels, instance| {
                let datapoints = instance.series.datapoints(spec.statistic, spec.period, end, range);
                let (state, reason) = evaluate(spec, &datapoints, instance.state);
                if state != instance.state {
                    out.push(Transition {
                        alarm: spec.name.clone(),
                        labels: labels.clone(),
                        severity: spec.severity,
                        from: instance.state,
                        to: state,
                        reason: reason.clone(),
                        at: now,
                    });
                    instance.state = state;
                    instance.since = now;
                }
                instance.reason = reason;
                instance.series.prune(from_millis(keep_from));
                let stale = instance.state == AlarmState::InsufficientData
                    && instance.series.is_empty()
                    && now.duration_since(instance.since).is_ok_and(|d| d >= FORGET_AFTER);
                !stale
            });
        }
        out
    }

    /// Every instance, by alarm then labels.
    pub fn states(&self) -> Vec<InstanceState> {
        let mut out = Vec::new();
        for alarm in &self.alarms {
            for (labels, i) in &alarm.instances {
                out.push(InstanceState {
                    alarm: alarm.spec.name.clone(),
                    labels: labels.clone(),
                    severity: alarm.spec.severity,
                    state: i.state,
                    reason: i.reason.clone(),
                    since: i.since,
                });
            }
        }
        out
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            instances: self.states(),
            evaluated: self
                .alarms
                .iter()
                .filter_map(|a| a.evaluated.map(|b| (a.spec.name.clone(), from_millis(b))))
                .collect(),
        }
    }

    /// Takes states back from a snapshot. Instances of alarms that no
    /// longer exist, or that their alarm's selector no longer matches, are
    /// left out; an alarm whose period changed starts its schedule afresh.
    pub fn restore(&mut self, snapshot: Snapshot) {
        for alarm in &mut self.alarms {
            if let Some(t) = snapshot.evaluated.get(&alarm.spec.name) {
                let ms = millis(*t);
                if boundary(ms, alarm.spec.period) == ms {
                    alarm.evaluated = Some(ms);
                }
            }
        }
        for saved in snapshot.instances {
            let Some(alarm) = self.alarms.iter_mut().find(|a| a.spec.name == saved.alarm) else {
                continue;
            };
            if !alarm.spec.metric.matches(&alarm.spec.metric.name, &saved.labels)
                || alarm.instances.len() >= MAX_INSTANCES
            {
                continue;
            }
            let instance = alarm.instances.entry(saved.labels).or_insert_with(|| Instance::new(saved.since));
            instance.state = saved.state;
            instance.reason = saved.reason;
            instance.since = saved.since;
        }
    }
}
