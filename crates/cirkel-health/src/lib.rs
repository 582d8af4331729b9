//! cirkel's health-check engine: one async engine that runs every
//! configured check (`[checks.NAME]`) inside the daemon.
//!
//! The daemon must watch thousands of services without one slow or hanging
//! target holding up the others, and without all of them firing in the same
//! millisecond. So every check is its own task on one shared runtime, on its
//! own cadence, started at a fixed offset inside its interval derived from
//! its name; every probe runs under its own timeout, which is always shorter
//! than the interval, so a probe ends (and counts as failed) before the next
//! one of the same check is due. Probe results feed the same
//! [`cirkel_failover::HealthCounter`] the PostgreSQL and Redis members use,
//! through the pure [`Tracker`].
//!
//! The engine publishes what it knows three ways: [`EngineHandle::snapshot`]
//! (every check's state and counters), a broadcast of [`Transition`]s (one
//! per state change), and the lag of every probe's start behind its
//! schedule ([`EngineHandle::lag_summary`]), which is how precise the
//! scheduling is on a loaded machine.

mod engine;
mod lag;
mod probe;
mod spec;
mod tracker;

pub use engine::{CheckStatus, Engine, EngineHandle, Transition};
pub use lag::{LAG_RING, LagSummary};
pub use spec::{CheckSpec, DEFAULT_EXPECT_STATUS, Kind, SpecError, specs_from_config};
pub use tracker::{State, Tracker};
