//! Resolving what a command works on: configuration, repository, passphrase.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cirkel_config::{Config, RepositoryConfig};
use cirkel_repo::backend::{self, BackendOptions, S3Options};
use cirkel_repo::{Backend, Repository};

use crate::cli::Global;
use crate::output::user_error;

const DEFAULT_CONFIG: &str = "/etc/cirkel/cirkel.toml";

/// Loads the configuration named by --config / CIRKEL_CONFIG, or the
/// default file if present, or an empty one.
pub fn load_config(global: &Global) -> anyhow::Result<Config> {
    let path = match &global.config {
        Some(p) => p.clone(),
        None if Path::new(DEFAULT_CONFIG).exists() => PathBuf::from(DEFAULT_CONFIG),
        None => return Ok(Config::default()),
    };
    Ok(Config::load(&path)?)
}

/// A repository to open: where it is, how to reach it, its passphrase.
pub struct RepoTarget {
    pub location: String,
    /// The passphrase file, when the passphrase came from one.
    pub password_file: Option<PathBuf>,
    pub backend_opts: BackendOptions,
    pub password: Option<String>,
    pub compression_level: Option<i32>,
}

fn s3_options(rc: Option<&RepositoryConfig>) -> S3Options {
    let env_timeout = std::env::var("CIRKEL_S3_RETRY_TIMEOUT").ok().and_then(|s| humantime::parse_duration(&s).ok());
    let Some(rc) = rc else {
        return S3Options { retry_timeout: env_timeout, ..Default::default() };
    };
    S3Options {
        endpoint: rc.s3.endpoint.clone(),
        region: rc.s3.region.clone(),
        access_key_id: rc.s3.access_key_id.clone(),
        secret_access_key: rc.s3.secret_access_key.as_ref().map(|s| s.expose().to_string()),
        allow_http: rc.s3.allow_http,
        retry_timeout: rc.s3.retry_timeout.or(env_timeout),
    }
}

/// The longest passphrase file read; anything longer is not a passphrase
/// file (`/dev/zero`, a log, a disk image).
const PASSWORD_FILE_MAX: u64 = 4096;

/// Reads a passphrase file: at most [`PASSWORD_FILE_MAX`] bytes, one line,
/// with a warning when users other than its owner may read it.
pub fn read_password_file(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.is_file()
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            "password file {} can be read by other users (mode {:o}); `chmod 600` it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let s = cirkel_config::read_bounded(path, PASSWORD_FILE_MAX).map_err(|e| {
        user_error(
            format!("cannot read password file {}: {e}", path.display()),
            "a password file holds one line, the passphrase; check --password-file / CIRKEL_PASSWORD_FILE",
        )
    })?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

/// Resolves a repository spec (flag value, or None for the configured
/// default) with an explicit password file (or None for the defaults).
pub fn resolve(cfg: &Config, spec: Option<&str>, password_file: Option<&Path>) -> anyhow::Result<RepoTarget> {
    let (location, rc) = match spec {
        Some(s) => match cfg.repositories.get(s) {
            Some(rc) => (rc.url.clone(), Some(rc)),
            None => {
                // A URL the configuration names (as a restored cluster's
                // restore_command does) takes its settings: endpoint, keys.
                let same = cfg.repository.as_ref().filter(|rc| rc.url == s);
                let mut named = cfg.repositories.values().filter(|rc| rc.url == s);
                let one_named = match (named.next(), named.next()) {
                    (Some(rc), None) => Some(rc),
                    _ => None,
                };
                (s.to_string(), same.or(one_named))
            }
        },
        None => match &cfg.repository {
            Some(rc) => (rc.url.clone(), Some(rc)),
            None => {
                return Err(user_error(
                    "no repository given",
                    "pass --repo PATH|s3://BUCKET/PREFIX, set CIRKEL_REPO, or add [repository] url = ... to the config",
                ));
            }
        },
    };
    let mut used_file = None;
    let password = if let Some(f) = password_file {
        used_file = Some(std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf()));
        Some(read_password_file(f)?)
    } else if let Ok(p) = std::env::var("CIRKEL_PASSWORD") {
        Some(p)
    } else {
        // A --repo the configuration does not name still takes the
        // configuration's passphrase, as --password-file's help promises.
        let pw = rc.or(cfg.repository.as_ref());
        used_file = pw.and_then(|rc| rc.password_file.clone());
        pw.and_then(|rc| rc.password.as_ref()).map(|s| s.expose().to_string())
    };
    Ok(RepoTarget {
        location,
        password_file: used_file,
        backend_opts: BackendOptions { s3: s3_options(rc) },
        password,
        compression_level: rc.and_then(|rc| rc.compression_level),
    })
}

impl RepoTarget {
    pub fn backend(&self) -> anyhow::Result<std::sync::Arc<dyn Backend>> {
        Ok(backend::open(&self.location, &self.backend_opts)?)
    }

    /// Opens with the master-key cache (see `Repository::open_cached`), for
    /// commands PostgreSQL runs once per WAL file.
    pub fn open_cached(&self) -> anyhow::Result<Repository> {
        match cache_dir() {
            Some(dir) => Repository::open_cached(self.backend()?, self.password.as_deref().map(str::as_bytes), &dir)
                .with_context(|| format!("open repository {}", self.location)),
            None => self.open(),
        }
    }

    pub fn open(&self) -> anyhow::Result<Repository> {
        Repository::open(self.backend()?, self.password.as_deref().map(str::as_bytes))
            .with_context(|| format!("open repository {}", self.location))
    }
}

/// The repository of --repo / --password-file / config.
pub fn main_repo(global: &Global, cfg: &Config) -> anyhow::Result<RepoTarget> {
    resolve(cfg, global.repo.as_deref(), global.password_file.as_deref())
}

pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
}

/// Where cirkel keeps per-user caches: CIRKEL_CACHE_DIR, else ~/.cache/cirkel.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("CIRKEL_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME")?;
    let dir = PathBuf::from(home).join(".cache/cirkel");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A flag that turns true on SIGINT or SIGTERM, for long-running commands.
pub fn stop_on_signal() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::Ordering;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        while !SIGNALLED.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

static HUNG_UP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_hangup(_: libc::c_int) {
    HUNG_UP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A flag that turns true on SIGHUP (the daemon's "reload your
/// configuration"); whoever acts on it sets it back to false.
pub fn hangup_flag() -> &'static std::sync::atomic::AtomicBool {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGHUP, on_hangup as *const () as libc::sighandler_t);
    }
    &HUNG_UP
}

/// cirkel's state directory (events, reports).
pub fn state_dir(cfg: &cirkel_config::Config) -> cirkel_state::StateDir {
    cirkel_state::StateDir::resolve(cfg.state.dir.as_deref())
}

/// What a drill found, for its stored report and event.
pub struct DrillOutcome<'a> {
    pub source: &'a str,
    pub kind: &'a str,
    pub what: &'a str,
    pub passed: bool,
    pub rto_s: Option<f64>,
    pub writes_lost: usize,
    /// Bytes a restore drill restored: with `rto_s`, its throughput.
    pub bytes: Option<u64>,
    /// The cluster, group or backup drilled.
    pub target: &'a str,
    /// How it is recorded: its name and target (`cirkel drill --name`).
    pub record: &'a crate::cli::DrillRecordArgs,
    /// The drill kind whose plan target applies without `--rto-target`.
    pub plan: cirkel_config::DrillKind,
    pub started: chrono::DateTime<chrono::Utc>,
    /// Stopped before its end (SIGTERM, a guardrail), its fault undone.
    pub aborted: Option<String>,
    pub failures: &'a [String],
}

impl DrillOutcome<'_> {
    /// How the run ended against its target.
    pub fn outcome(&self) -> cirkel_notify::drills::Outcome {
        use cirkel_notify::drills::Outcome;
        let target = self.record.rto_target.unwrap_or_else(|| self.plan.plan_rto()).as_secs_f64();
        if self.aborted.is_some() {
            Outcome::Aborted
        } else if !self.passed {
            Outcome::Failed
        } else if self.rto_s.is_some_and(|r| r > target) {
            Outcome::OverTarget
        } else {
            Outcome::Passed
        }
    }
}

/// Takes the state directory's drill lock for the life of the returned
/// file: never two drills at once, by hand or by `cirkel serve`.
/// The lock names the source drilled, so that the daemon does not page
/// anyone for what the drill does to it.
/// A state directory this user cannot use holds no lock and no drill
/// history: the drill runs, with a warning.
pub fn drill_lock(cfg: &cirkel_config::Config, source: &str) -> anyhow::Result<Option<std::fs::File>> {
    use std::io::Write;
    let state = state_dir(cfg);
    let mut f = match state.open_private("drill.lock", false) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("no drill lock and no drill history: {e:#}");
            return Ok(None);
        }
    };
    match f.try_lock() {
        Ok(()) => {
            f.set_len(0)?;
            write!(f, "{} {source}", std::process::id())?;
            Ok(Some(f))
        }
        // A drill started by the drill holding the lock (a scenario runs
        // `cirkel drill failover` as its child) runs under its parent's.
        Err(std::fs::TryLockError::WouldBlock) if held_by_parent(&state) => Ok(None),
        Err(std::fs::TryLockError::WouldBlock) => Err(crate::output::user_error(
            "another drill is running (its lock is drill.lock in the state directory)",
            "wait for it to finish (`cirkel drill history` shows it when done); two drills at once would measure each other",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!("cannot take the drill lock: {e}")),
    }
}

/// Whether the drill lock's holder, as written in it, is this process's parent.
fn held_by_parent(state: &cirkel_state::StateDir) -> bool {
    // SAFETY: getppid(2) has no failure mode.
    let parent = unsafe { libc::getppid() } as u32;
    std::fs::read_to_string(state.root().join("drill.lock"))
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        == Some(parent)
}

/// Undoes what a drill killed before it could undo it, and records the
/// drill as aborted (`cirkel_server::guard::undo_drill_leftover`).
pub fn undo_drill_leftover(cfg: &cirkel_config::Config) -> anyhow::Result<()> {
    cirkel_server::guard::undo_drill_leftover(&state_dir(cfg), &cfg.postgres).map_err(|e| {
        crate::output::user_error(
            format!("a fault an interrupted drill left is still in place, so no drill starts on top of it: {e:#}"),
            "undo it as the message says; a network fault is removed by the next drill run with CAP_NET_ADMIN (root)",
        )
    })
}

/// Stores a drill's report in the state directory, records a `drill`
/// event pointing at it (high severity when the drill failed or was slower
/// than its target, so the notification routes carry it), and adds the run
/// to the drill history; returns the report's path.
pub fn store_drill(
    cfg: &cirkel_config::Config,
    d: &DrillOutcome<'_>,
    report: &serde_json::Value,
) -> anyhow::Result<PathBuf> {
    use cirkel_notify::drills::{DrillRun, Outcome};
    let state = state_dir(cfg);
    let path = state.save_report(d.kind, report)?;
    let outcome = d.outcome();
    let target_s = d.record.rto_target.unwrap_or_else(|| d.plan.plan_rto()).as_secs_f64();
    let verdict = match outcome {
        Outcome::Passed => "passed".to_string(),
        Outcome::OverTarget => format!("was SLOWER than its target of {target_s:.0} s"),
        Outcome::Aborted => format!("was ABORTED ({})", d.aborted.as_deref().unwrap_or("")),
        _ => "FAILED".to_string(),
    };
    let message = format!(
        "{} {verdict}: RTO {}, {} lost writes",
        d.what,
        d.rto_s.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "none".into()),
        d.writes_lost
    );
    let name = d.record.name.clone().unwrap_or_else(|| d.plan.name().to_string());
    let reason = match outcome {
        Outcome::Aborted => d.aborted.clone().unwrap_or_default(),
        Outcome::OverTarget => format!("RTO over its target of {target_s:.0} s"),
        _ => d.failures.join("; "),
    };
    state.record(
        &cirkel_state::Event::new(d.source, cirkel_state::EventKind::Drill, message)
            .with_severity(if outcome.is_bad() { cirkel_state::Severity::High } else { cirkel_state::Severity::Low })
            .with(serde_json::json!({
                "report": path,
                "drill": d.kind,
                "started": d.started,
                "name": name,
                "outcome": outcome,
                "passed": d.passed,
                "rto_s": d.rto_s,
                "rto_target_s": target_s,
                "writes_lost": d.writes_lost,
                "bytes": d.bytes,
            })),
    )?;
    let run = DrillRun {
        id: 0,
        name,
        kind: d.plan.name().to_string(),
        target: d.target.to_string(),
        started_at: d.started,
        finished_at: chrono::Utc::now(),
        outcome,
        rto_s: d.rto_s,
        rto_target_s: Some(target_s),
        writes_lost: d.writes_lost as u64,
        reason,
        report: Some(path.display().to_string()),
    };
    state.ensure()?;
    let store = cirkel_notify::Store::open_in(state.root())
        .map_err(|e| anyhow::anyhow!("the drill history could not be opened: {e}"))?;
    store.record_drill(&run).map_err(|e| anyhow::anyhow!("the drill run could not be recorded: {e}"))?;
    Ok(path)
}

/// The name `given`, or the only candidate: for `--group` and `--cluster`.
/// `what` names the kind, singular and plural ("Redis group", "Redis
/// groups"), `flag` the option, `add` how to configure one.
pub fn only_or_given(
    given: Option<&str>,
    candidates: &[&String],
    what: (&str, &str),
    flag: &str,
    add: &str,
) -> anyhow::Result<String> {
    if let Some(n) = given {
        return Ok(n.to_string());
    }
    match candidates {
        [one] => Ok((*one).clone()),
        [] => Err(crate::output::user_error(format!("no {} is configured", what.0), add.to_string())),
        many => Err(crate::output::user_error(
            format!("{} {} are configured", many.len(), what.1),
            format!("name one with {flag}: {}", many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
        )),
    }
}
