//! cirkel's alarms over metrics: its own (RPO exposure, backup age,
//! replication lag, check states) and those scraped from Prometheus
//! endpoints.
//!
//! Evaluation follows Amazon CloudWatch's documented semantics (M out of
//! N datapoints, four treatments of missing data) so that alarms behave
//! the way operators already expect. Like the failover core, this crate
//! is pure: no I/O, no clock of its own, no threads. The daemon feeds the
//! [`Engine`] samples and the time, and acts on the [`Transition`]s it
//! returns.
//!
//! - [`spec`]: what an alarm is ([`AlarmSpec`] and its enums).
//! - [`evaluate()`]: one M-out-of-N evaluation over datapoints.
//! - [`series`]: samples to one datapoint per period.
//! - [`selector`]: PromQL-style metric selectors.
//! - [`engine`]: instances per label set, evaluation per period boundary.
//! - [`exposition`]: the Prometheus text format, for scraped endpoints.
//! - [`defaults()`]: the plan's built-in alarms.

pub mod catalog;
pub mod defaults;
pub mod engine;
pub mod evaluate;
pub mod exposition;
pub mod selector;
pub mod series;
pub mod spec;

pub use defaults::defaults;
pub use engine::{Engine, InstanceState, Labels, Snapshot, Transition};
pub use evaluate::{Reason, evaluate, evaluation_range};
pub use exposition::{ParseError, Sample, scraped_labels};
pub use selector::{Matcher, Selector};
pub use series::Series;
pub use spec::{AlarmSpec, AlarmState, Comparison, Severity, Statistic, TreatMissing};

/// What this crate refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A selector that does not parse; `column` counts characters from 1.
    #[error("`{selector}`, column {column}: {message}")]
    Selector { selector: String, column: usize, message: String },
    /// An alarm whose settings cannot be evaluated.
    #[error("alarm `{name}`: {message}")]
    Spec { name: String, message: String },
}
