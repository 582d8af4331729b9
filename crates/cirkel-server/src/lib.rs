//! cirkel's daemon (`cirkel serve`): one tokio runtime, every long-running
//! part a supervised worker, the control socket, the scheduled jobs, and
//! the events they publish.

pub mod api;
pub mod copylag;
pub mod daemon;
pub mod faults;
pub mod guard;
pub mod http;
pub mod jobs;
pub mod lead;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod scheduler;
pub mod supervisor;
pub mod systemd;
pub mod tls;

use cirkel_state::{Event, Severity, StateDir};

/// Appends `event` to the log (which publishes it inside the daemon) and
/// writes it as one log line, with its kind and severity as fields for JSON
/// logs.
pub fn record(state: &StateDir, event: &Event) {
    match event.severity {
        Severity::Low => {
            tracing::info!(kind = %event.kind, severity = %event.severity, "{}: {}", event.source, event.message)
        }
        _ => tracing::warn!(kind = %event.kind, severity = %event.severity, "{}: {}", event.source, event.message),
    }
    if let Err(e) = state.record(event) {
        tracing::error!("cannot record an event: {e:#}");
    }
}
