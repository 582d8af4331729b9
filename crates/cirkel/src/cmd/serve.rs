//! `cirkel serve`: checks that there is something to serve, binds the
//! control socket and hands over to the daemon (`cirkel_server`).

use std::process::ExitCode;
use std::sync::Arc;

use cirkel_config::Config;
use cirkel_server::daemon::{self, Options};
use cirkel_server::jobs::{Runner, jobs};
use cirkel_server::scheduler::{Clock, ScaledClock, SystemClock};
use cirkel_state::control::Server;

use crate::cli::{Global, LogFormat};
use crate::context::{load_config, state_dir};
use crate::output::user_error;

/// The flags a child command needs to see what this process sees.
fn global_args(global: &Global, cfg: &Config) -> Vec<String> {
    let mut a = vec!["-q".to_string()];
    if let Some(c) = global.config.as_ref().or(cfg.source.as_ref()) {
        a.extend(["--config".to_string(), c.display().to_string()]);
    }
    if let Some(r) = &global.repo {
        a.extend(["--repo".to_string(), r.clone()]);
    }
    if let Some(p) = &global.password_file {
        a.extend(["--password-file".to_string(), p.display().to_string()]);
    }
    a
}

pub fn serve(global: &Global) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let has_cluster = cfg.postgres.values().any(|c| !c.members.is_empty());
    if cfg.redis.is_empty() && jobs(&cfg)?.is_empty() && !has_cluster {
        return Err(user_error(
            "nothing to serve: no [redis.NAME] group, no cluster with members and no schedule is configured",
            "add a schedule = \"0 2 * * *\" to a [files.NAME], [redis.NAME] or [postgres.NAME] table, or a Redis group",
        ));
    }
    let state = state_dir(&cfg);
    let control = Server::bind(&state).map_err(|e| {
        user_error(
            format!("cannot open the control socket: {e:#}"),
            "stop the other `cirkel serve` of this state directory, or give this one its own (CIRKEL_STATE_DIR)",
        )
    })?;
    let clock: Arc<dyn Clock> = match ScaledClock::from_env()? {
        Some(c) => Arc::new(c),
        None => Arc::new(SystemClock),
    };
    let runner =
        Runner { exe: std::env::current_exe()?, global: global_args(global, &cfg), state: state.clone(), clock };
    let reload_global = global.clone();
    daemon::run(Options {
        config_path: global.config.clone().or_else(|| cfg.source.clone()),
        config: cfg,
        reload: Box::new(move || load_config(&reload_global)),
        state,
        control,
        runner,
        stop: crate::context::stop_on_signal(),
        hangup: crate::context::hangup_flag(),
        announce: !global.quiet && !global.json && global.log_format == LogFormat::Text,
    })?;
    Ok(ExitCode::SUCCESS)
}
