//! The continuous copies' lag, from the records their followers keep in
//! the state directory (`copy-NAME.json`, written after every pass).

use chrono::{DateTime, Utc};
use cirkel_config::Config;
use cirkel_repo::follow::{FollowState, record_name};
use cirkel_state::StateDir;

use crate::metrics::{Metrics, labels};

/// Sets `cirkel_copy_lag_seconds` and `cirkel_copy_lag_bytes` for every
/// named repository a copy follows (a record exists); the seconds keep
/// growing while the follower or either repository is down.
pub fn collect(cfg: &Config, state: &StateDir, m: &Metrics, now: DateTime<Utc>) {
    for name in cfg.repositories.keys() {
        let l = labels(&[("repository", name)]);
        match state.load_json::<FollowState>(&record_name(name)) {
            Ok(Some(f)) => {
                m.set("cirkel_copy_lag_seconds", l.clone(), f.lag_seconds(now));
                m.set("cirkel_copy_lag_bytes", l, f.pending_bytes as f64);
            }
            Ok(None) => {
                m.remove("cirkel_copy_lag_seconds", &l);
                m.remove("cirkel_copy_lag_bytes", &l);
            }
            Err(e) => tracing::debug!("collect: copy record of {name}: {e:#}"),
        }
    }
}
