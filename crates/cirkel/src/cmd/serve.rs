//! `cirkel serve`: checks that there is something to serve, binds the
//! control socket and hands over to the daemon (`cirkel_server`).

use std::process::ExitCode;
use std::sync::Arc;

use cirkel_config::Config;
use cirkel_server::daemon::{self, Options};
use cirkel_server::jobs::{Runner, jobs};
use cirkel_server::scheduler::{Clock, ScaledClock, SystemClock};
use cirkel_state::control::Server;

use crate::cli::{Global, LogFormat, ServeArgs};
use crate::context::{load_config, main_repo, resolve, state_dir};
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

/// What the daemon's collector may open and reach, as the commands would.
struct Access {
    global: Global,
    cfg: Config,
}

impl cirkel_server::monitor::Access for Access {
    fn repository(&self, name: Option<&str>) -> anyhow::Result<cirkel_repo::Repository> {
        let target = match name {
            None => main_repo(&self.global, &self.cfg)?,
            Some(n) => resolve(&self.cfg, Some(n), self.global.password_file.as_deref())?,
        };
        target.open_cached()
    }

    fn conninfo(&self, cluster: &str) -> anyhow::Result<Option<String>> {
        Ok(self.cfg.postgres.get(cluster).map(|c| c.conninfo()).filter(|s| !s.is_empty()))
    }
}

/// The configuration with this agent's name (`--node`) in `[coordination]`.
fn with_node(mut cfg: Config, node: Option<&str>) -> anyhow::Result<Config> {
    let Some(node) = node else { return Ok(cfg) };
    let Some(coord) = cfg.coordination.as_mut() else {
        return Err(user_error(
            format!("--node {node} names an agent, but the configuration has no [coordination] table"),
            "agents on several hosts agree through etcd: add [coordination] etcd = [\"http://HOST:2379\"], or drop --node to run one daemon on its own",
        ));
    };
    cirkel_config::coordination::check_node_name(node)
        .map_err(|e| user_error(format!("--node: {e}"), "name the agent after its host, e.g. --node db-1"))?;
    coord.node = Some(node.to_string());
    Ok(cfg)
}

pub fn serve(global: &Global, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = with_node(load_config(global)?, args.node.as_deref())?;
    if let Some(coord) = &cfg.coordination
        && coord.node.is_none()
    {
        return Err(user_error(
            "this agent has no name: with [coordination], every agent names itself",
            "pass --node NAME (the name the members' `node` uses for this host), or set [coordination] node",
        ));
    }
    let has_cluster = cfg.postgres.values().any(|c| !c.members.is_empty());
    let watches = !cfg.checks.is_empty()
        || !cfg.scrape.is_empty()
        || cfg.server.listen.is_some()
        || cfg.repositories.values().any(|r| r.continuous);
    if cfg.redis.is_empty() && jobs(&cfg)?.is_empty() && !has_cluster && !watches {
        return Err(user_error(
            "nothing to serve: no [redis.NAME] group, no cluster with members, no schedule, no [checks.NAME] and no [server] listen is configured",
            "add a schedule = \"0 2 * * *\" to a [files.NAME], [redis.NAME] or [postgres.NAME] table, a Redis group, a check, or [server] listen = \"127.0.0.1:9187\"",
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
    let runner = Runner {
        exe: std::env::current_exe()?,
        global: global_args(global, &cfg),
        state: state.clone(),
        clock,
        leading: cirkel_server::lead::Leading::always(),
    };
    let reload_global = global.clone();
    let reload_node = args.node.clone();
    let access = Arc::new(Access { global: global.clone(), cfg: cfg.clone() });
    daemon::run(Options {
        config_path: global.config.clone().or_else(|| cfg.source.clone()),
        config: cfg,
        reload: Box::new(move || with_node(load_config(&reload_global)?, reload_node.as_deref())),
        state,
        control,
        runner,
        stop: crate::context::stop_on_signal(),
        hangup: crate::context::hangup_flag(),
        access,
        announce: !global.quiet && !global.json && global.log_format == LogFormat::Text,
    })?;
    Ok(ExitCode::SUCCESS)
}
