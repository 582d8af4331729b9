//! `cirkel drill scenario NAME` and `cirkel drill suite`: the plan's five
//! failures (§2), each injected for real on a running estate and measured
//! against the plan's recovery-time objective and cirkel's own (a third
//! of it or less).
//!
//! - `app-instance`: the process behind an HTTP or TCP check is killed;
//!   measured until the check is down (out of rotation) and its alarm
//!   raised, then the service is started again with the check's
//!   `restart_command`.
//! - `redis-master`, `pg-primary`: `cirkel drill redis-failover` and
//!   `cirkel drill failover`, run as children and read back.
//! - `zone`: every PostgreSQL member of the primary's zone frozen at once
//!   (`cirkel drill failover --fault zone`).
//! - `region`: `cirkel drill region` rebuilds everything from the second
//!   region's repository, told that the main one is where nothing is (with
//!   `--cut-main` a local main repository is moved aside for everyone);
//!   the data's age there is the data a region loss would lose.
//!
//! Each scenario runs under the drill lock and is recorded in the drill
//! history as `scenario-NAME`; the suite runs them in turn, each only on a
//! quiet estate (no serious alarm or open incident beyond what its own
//! earlier scenarios caused), and keeps one report.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cirkel_config::{CheckKindConfig, Config, Scenario};
use cirkel_server::faults::{self, Fault};
use cirkel_state::{EventKind, StateDir};
use clap::Args;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{DrillRecordArgs, Global};
use crate::context::{load_config, state_dir};
use crate::output::{print_json, user_error};

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// The failure: app-instance, redis-master, pg-primary, zone or region.
    #[arg(value_name = "SCENARIO", value_parser = ["app-instance", "redis-master", "pg-primary", "zone", "region"])]
    pub scenario: String,
    #[command(flatten)]
    pub opts: ScenarioOpts,
    #[command(flatten)]
    pub record: DrillRecordArgs,
}

/// What every scenario may be told.
#[derive(Debug, Args, Clone, Default)]
pub struct ScenarioOpts {
    /// app-instance: the [checks.NAME] whose service dies (default: the only one).
    #[arg(long, value_name = "NAME")]
    pub check: Option<String>,
    /// zone: the zone to cut off (default: the primary's).
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// region: the second region's repository (default: the only [repositories.NAME]).
    #[arg(long, value_name = "REPO")]
    pub from: Option<String>,
    /// region: move a local main repository aside while the rebuild runs, so that nothing at
    /// all reaches it (production's archiving and backups fail meanwhile, and catch up after).
    /// Without it only the rebuild is cut off from the main repository.
    #[arg(long)]
    pub cut_main: bool,
    /// Longest wait for the recovery (a region: for the whole rebuild).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// Only these scenarios, in the suite's order (comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Longest wait before each scenario for the estate to be quiet again.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Also write the report as a Markdown table to this file.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    #[command(flatten)]
    pub opts: ScenarioOpts,
}

/// One scenario's outcome, the same shape for all five.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub started: DateTime<Utc>,
    /// The plan's recovery-time objective, and cirkel's (a third of it or less).
    pub plan_rto_s: f64,
    pub target_rto_s: f64,
    /// What the measured RTO runs from and to.
    pub measures: &'static str,
    pub rto_s: Option<f64>,
    /// Acknowledged writes missing afterwards (the canary's), where a
    /// writer runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_lost: Option<usize>,
    /// The age of the newest data recovered: what losing the region now
    /// would lose.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpo_s: Option<f64>,
    /// Redis: replication bytes the new master lacked, at least.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<u64>,
    /// Ran to its end, recovered, and within the plan's objective.
    pub passed: bool,
    /// Within cirkel's own target as well.
    pub within_target: bool,
    pub failures: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Why it did not run, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why it was stopped before its end (something real happened
    /// meanwhile), its fault undone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The underlying drill's own report.
    pub report: Value,
}

impl Outcome {
    fn new(s: Scenario, measures: &'static str) -> Outcome {
        Outcome {
            scenario: s.name(),
            started: Utc::now(),
            plan_rto_s: s.plan_rto().as_secs_f64(),
            target_rto_s: s.target_rto().as_secs_f64(),
            measures,
            rto_s: None,
            writes_lost: None,
            rpo_s: None,
            lost_bytes: None,
            passed: false,
            within_target: false,
            failures: Vec::new(),
            notes: Vec::new(),
            skipped: None,
            aborted: None,
            report: Value::Null,
        }
    }

    /// Judges the run against both objectives.
    fn judge(mut self) -> Outcome {
        let rto = self.rto_s;
        if rto.is_none() && self.failures.is_empty() && self.skipped.is_none() && self.aborted.is_none() {
            self.failures.push("no recovery was measured".into());
        }
        let lost = self.writes_lost.unwrap_or(0);
        self.passed = self.failures.is_empty()
            && self.skipped.is_none()
            && self.aborted.is_none()
            && rto.is_some_and(|r| r <= self.plan_rto_s);
        self.within_target = self.passed && rto.is_some_and(|r| r <= self.target_rto_s) && lost == 0;
        self
    }

    fn data_lost(&self) -> String {
        match (self.writes_lost, self.rpo_s, self.lost_bytes) {
            (Some(w), _, Some(b)) => format!("{w} writes (≥ {b} bytes behind)"),
            (Some(w), _, None) => format!("{w} writes"),
            (None, Some(r), _) => format!("{r:.0} s of history"),
            _ => "none (stateless)".into(),
        }
    }
}

/// Something real happening while a scenario runs stops it: an alarm of
/// severity high or above or an incident that was not there when it began,
/// on anything but what this scenario (or, in a suite, an earlier one)
/// drills.
struct Watch {
    state: StateDir,
    exclude: BTreeSet<String>,
    before: BTreeSet<String>,
    signalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watch {
    fn new(state: &StateDir, drilled: &BTreeSet<String>, source: &str) -> Watch {
        let mut exclude = drilled.clone();
        exclude.insert(source.to_string());
        let before = cirkel_server::guard::blockers_except(state, &exclude);
        let signalled = crate::context::stop_on_signal();
        Watch { state: state.clone(), exclude, before, signalled }
    }

    /// Why the scenario must stop now, if it must.
    fn tripped(&self) -> Option<String> {
        if self.signalled.load(std::sync::atomic::Ordering::Relaxed) {
            return Some("stopped by a signal".into());
        }
        let now = cirkel_server::guard::blockers_except(&self.state, &self.exclude);
        let new: Vec<String> = now.difference(&self.before).cloned().collect();
        (!new.is_empty()).then(|| new.join("; "))
    }
}

fn scenario_of(name: &str) -> anyhow::Result<Scenario> {
    Scenario::parse(name).ok_or_else(|| {
        user_error(format!("`{name}` is not a scenario"), format!("the plan's five are: {}", Scenario::names()))
    })
}

pub fn run(global: &Global, a: &ScenarioArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let s = scenario_of(&a.scenario)?;
    let out = run_one(global, &cfg, s, &a.opts, &a.record, &BTreeSet::new())?;
    if global.json {
        print_json(&out);
    } else {
        print_table(std::slice::from_ref(&out));
        for f in &out.failures {
            println!("  failure: {f}");
        }
        for n in &out.notes {
            println!("  note: {n}");
        }
    }
    Ok(if out.passed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// The source a scenario disturbs, as events and alarms name it.
fn subject(cfg: &Config, s: Scenario, opts: &ScenarioOpts) -> anyhow::Result<String> {
    let only = |names: Vec<&String>, what: &str| -> anyhow::Result<String> {
        match names.as_slice() {
            [one] => Ok(one.to_string()),
            [] => Err(user_error(format!("no {what} is configured"), format!("the scenario needs a {what}"))),
            _ => Err(user_error(format!("{} {what}s are configured", names.len()), "name the one to drill")),
        }
    };
    Ok(match s {
        Scenario::AppInstance => format!(
            "check/{}",
            match &opts.check {
                Some(c) => c.clone(),
                None => only(cfg.checks.keys().collect(), "[checks.NAME] check")?,
            }
        ),
        Scenario::RedisMaster => format!("redis/{}", only(cfg.redis.keys().collect(), "[redis.NAME] group")?),
        Scenario::PgPrimary | Scenario::Zone => format!(
            "postgres/{}",
            only(
                cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, _)| n).collect(),
                "[postgres.NAME] cluster with members"
            )?
        ),
        Scenario::Region => "region".into(),
    })
}

/// Runs one scenario under the drill lock and records it.
fn run_one(
    global: &Global,
    cfg: &Config,
    s: Scenario,
    opts: &ScenarioOpts,
    record: &DrillRecordArgs,
    drilled: &BTreeSet<String>,
) -> anyhow::Result<Outcome> {
    let source = subject(cfg, s, opts)?;
    let _lock = crate::context::drill_lock(cfg, &source)?;
    let watch = Watch::new(&state_dir(cfg), drilled, &source);
    crate::context::undo_drill_leftover(cfg)?;
    let record = DrillRecordArgs {
        name: Some(record.name.clone().unwrap_or_else(|| format!("scenario-{}", s.name()))),
        rto_target: Some(record.rto_target.unwrap_or_else(|| s.plan_rto())),
    };
    if !global.quiet && !global.json {
        eprintln!(
            "scenario {}: plan RTO {:.0} s, target {:.0} s…",
            s.name(),
            s.plan_rto().as_secs_f64(),
            s.target_rto().as_secs_f64()
        );
    }
    let state = state_dir(cfg);
    let timeout = opts.timeout.unwrap_or(match s {
        Scenario::Region => Duration::from_secs(30 * 60),
        _ => Duration::from_secs(120),
    });
    let out = match s {
        Scenario::AppInstance => {
            let check = source.trim_start_matches("check/").to_string();
            let out = app_instance(cfg, &state, &check, timeout, &watch)?.judge();
            store(cfg, &out, &source, &check, &record)?;
            out
        }
        Scenario::RedisMaster => {
            let mut o = Outcome::new(s, "kill of the master → first write acknowledged by the new one");
            let v = child(global, &record, &["drill", "redis-failover", "--timeout", &secs(timeout)], &mut o, &watch);
            o.writes_lost = v["writes_lost"].as_u64().map(|n| n as usize);
            o.lost_bytes = v["lost_bytes_at_least"].as_u64();
            o.rto_s = v["rto_s"].as_f64();
            o.report = v;
            o.judge()
        }
        Scenario::PgPrimary | Scenario::Zone => {
            let zone = s == Scenario::Zone;
            let mut o = Outcome::new(
                s,
                if zone {
                    "zone cut off → first write acknowledged by a member outside it, through the endpoint"
                } else {
                    "kill of the primary → first write acknowledged by the new one, through the endpoint"
                },
            );
            let mut args = vec!["drill", "failover", "--timeout"];
            let t = secs(timeout);
            args.push(&t);
            if zone {
                args.extend(["--fault", "zone"]);
                if let Some(z) = &opts.zone {
                    args.extend(["--zone", z]);
                }
            }
            let v = child(global, &record, &args, &mut o, &watch);
            o.writes_lost = v["writes_lost"].as_u64().map(|n| n as usize);
            o.rto_s = v["rto_s"].as_f64();
            if let Some(members) = v["cut_off"].as_array() {
                let names: Vec<&str> = members.iter().filter_map(Value::as_str).collect();
                o.notes.push(format!("cut off in zone {}: {}", v["zone"].as_str().unwrap_or("?"), names.join(", ")));
            }
            o.report = v;
            o.judge()
        }
        Scenario::Region => region(global, cfg, &state, opts, &record, timeout, &watch)?.judge(),
    };
    Ok(out)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// Runs a drill command as a child with this one's global flags and reads
/// its JSON report; a child that fails adds its error to `o`.
fn child(global: &Global, record: &DrillRecordArgs, args: &[&str], o: &mut Outcome, watch: &Watch) -> Value {
    child_with(global, record, args, o, watch, None)
}

/// [`child`], with `main` standing in for the main repository.
fn child_with(
    global: &Global,
    record: &DrillRecordArgs,
    args: &[&str],
    o: &mut Outcome,
    watch: &Watch,
    main: Option<&std::path::Path>,
) -> Value {
    let mut c = match std::env::current_exe() {
        Ok(exe) => Command::new(exe),
        Err(e) => {
            o.failures.push(format!("cannot find the cirkel executable: {e}"));
            return Value::Null;
        }
    };
    if let Some(p) = &global.config {
        c.arg("--config").arg(p);
    }
    if let Some(m) = main {
        c.arg("--repo").arg(m);
    } else if let Some(r) = &global.repo {
        c.arg("--repo").arg(r);
    }
    if let Some(p) = &global.password_file {
        c.arg("--password-file").arg(p);
    }
    c.args(["--json", "--quiet"]).args(args);
    if let Some(n) = &record.name {
        c.args(["--name", n]);
    }
    if let Some(t) = record.rto_target {
        c.args(["--rto-target", &format!("{}ms", t.as_millis())]);
    }
    let spawned = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut running = match spawned {
        Ok(ch) => ch,
        Err(e) => {
            o.failures.push(format!("cannot run `cirkel {}`: {e}", args.join(" ")));
            return Value::Null;
        }
    };
    // Its output is read as it comes, so a full pipe never stalls it.
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = read(running.stdout.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
    let stderr = read(running.stderr.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>));
    // The drill undoes its fault on SIGTERM; a Redis drill is short and
    // finishes what it started.
    let stoppable = args.get(1).is_some_and(|a| *a != "redis-failover");
    let mut last = Instant::now();
    let status = loop {
        match running.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(_) => break None,
        }
        if o.aborted.is_none() && stoppable && last.elapsed() > Duration::from_millis(500) {
            last = Instant::now();
            if let Some(why) = watch.tripped() {
                // SAFETY: kill(2) with SIGTERM on our own child.
                unsafe { libc::kill(running.id() as libc::pid_t, libc::SIGTERM) };
                o.aborted = Some(why);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    struct Out {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        ok: bool,
    }
    let out = Out {
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        ok: status.is_some_and(|s| s.success()),
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if let Some(fs) = v["failures"].as_array() {
        o.failures.extend(fs.iter().filter_map(Value::as_str).map(str::to_string));
    }
    if !out.ok && o.aborted.is_none() && (v.is_null() || o.failures.is_empty()) {
        let err = String::from_utf8_lossy(&out.stderr);
        let why = err.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join(" ");
        o.failures.push(format!("`cirkel {}` failed: {}", args[..2].join(" "), why.trim()));
    }
    v
}

/// Records an in-process scenario (the app-instance one) in the history.
fn store(cfg: &Config, o: &Outcome, source: &str, target: &str, record: &DrillRecordArgs) -> anyhow::Result<()> {
    let outcome = crate::context::DrillOutcome {
        source,
        kind: "scenario",
        what: &format!("{} scenario", o.scenario),
        passed: o.passed,
        rto_s: o.rto_s,
        writes_lost: o.writes_lost.unwrap_or(0),
        bytes: None,
        target,
        record,
        plan: cirkel_config::DrillKind::Scenario,
        started: o.started,
        aborted: o.aborted.clone(),
        failures: &o.failures,
    };
    crate::context::store_drill(cfg, &outcome, &serde_json::to_value(o)?)?;
    Ok(())
}

/// §2.1: the service behind a check is killed; measured until the check
/// is down and its alarm raised; then started again and seen up.
fn app_instance(
    cfg: &Config,
    state: &StateDir,
    check: &str,
    timeout: Duration,
    watch: &Watch,
) -> anyhow::Result<Outcome> {
    let mut o =
        Outcome::new(Scenario::AppInstance, "kill of the service → its check down and the check-down alarm raised");
    let c = cfg
        .checks
        .get(check)
        .ok_or_else(|| user_error(format!("no check `{check}` is configured"), "name a [checks.NAME] with --check"))?;
    let address = match &c.kind {
        CheckKindConfig::Tcp { address } => address.clone(),
        CheckKindConfig::Http { url, .. } => {
            let rest = url.trim_start_matches("http://");
            let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
            if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") }
        }
    };
    let restart = c.restart_command.clone().ok_or_else(|| {
        user_error(
            format!("check `{check}` has no restart_command"),
            "the scenario kills the service and must start it again: add restart_command = \"…\" to its [checks.NAME]",
        )
    })?;
    let port: u16 = address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).ok_or_else(|| {
        user_error(format!("cannot read a port from `{address}`"), "the check's target must be host:port")
    })?;
    if cirkel_state::control::Client::connect(state)?.is_none() {
        return Err(user_error(
            "no `cirkel serve` answers on this state directory's control socket",
            "the scenario measures what the daemon's checks and alarms see: start `cirkel serve` first",
        ));
    }
    let pids = faults::listeners(port);
    if pids.is_empty() {
        return Err(user_error(
            format!("nothing on this host listens on port {port} ({address})"),
            "run the scenario on the service's host, with the service up",
        ));
    }
    let fault =
        Fault::ServiceKilled { check: check.to_string(), address: address.clone(), restart_command: restart.clone() };
    faults::record(state, "app-instance", &fault)?;
    let since = Utc::now();
    let killed_at = Instant::now();
    for p in &pids {
        // SAFETY: kill(2) with SIGKILL on the processes serving the check's port.
        unsafe { libc::kill(*p as libc::pid_t, libc::SIGKILL) };
    }
    let (mut down, mut alarmed) = (None, None);
    while killed_at.elapsed() < timeout && (down.is_none() || alarmed.is_none()) {
        if let Some(why) = watch.tripped() {
            o.aborted = Some(why);
            break;
        }
        for e in state.events().unwrap_or_default().iter().filter(|e| e.time >= since) {
            let at = || (e.time - since).num_milliseconds() as f64 / 1000.0;
            if e.kind == EventKind::CheckDown && e.details["check"] == check && down.is_none() {
                down = Some(at());
            }
            if e.kind == EventKind::AlarmRaised
                && e.details["alarm"] == "check-down"
                && e.details["labels"]["check"] == check
                && alarmed.is_none()
            {
                alarmed = Some(at());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match (down, alarmed) {
        _ if o.aborted.is_some() => {}
        (Some(d), Some(a)) => o.rto_s = Some(d.max(a)),
        (None, _) => o.failures.push(format!("check {check} was not seen down within {}", secs(timeout))),
        (_, None) => {
            o.failures.push(format!("the check-down alarm for {check} was not raised within {}", secs(timeout)))
        }
    }
    // Back in rotation.
    let restarted = Utc::now();
    let mut up = None;
    match faults::undo(&fault) {
        Ok(_) => {
            let t = Instant::now();
            while t.elapsed() < timeout && up.is_none() {
                up = state
                    .events()
                    .unwrap_or_default()
                    .iter()
                    .find(|e| e.time >= restarted && e.kind == EventKind::CheckUp && e.details["check"] == check)
                    .map(|e| (e.time - restarted).num_milliseconds() as f64 / 1000.0);
                // Stopped before the check saw it down: it stays up once
                // the service answers again.
                if up.is_none() && down.is_none() && faults::answers(&address, Duration::from_millis(500)) {
                    up = Some(t.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if up.is_none() {
                o.failures.push(format!("check {check} was not up again within {} of the restart", secs(timeout)));
            }
        }
        Err(e) => o.failures.push(format!("the service could not be started again: {e:#}")),
    }
    faults::clear(state);
    o.report = json!({
        "check": check, "address": address, "killed_pids": pids,
        "down_s": down, "alarmed_s": alarmed, "up_after_restart_s": up, "restart_command": restart,
    });
    o.writes_lost = None;
    Ok(o)
}

/// §2.5: the main repository out of reach while everything is rebuilt
/// from the second region's.
fn region(
    global: &Global,
    cfg: &Config,
    state: &StateDir,
    opts: &ScenarioOpts,
    record: &DrillRecordArgs,
    timeout: Duration,
    watch: &Watch,
) -> anyhow::Result<Outcome> {
    let mut o = Outcome::new(
        Scenario::Region,
        "start of the rebuild from the second region → every source restored, PostgreSQL replayed and checked",
    );
    let from = match &opts.from {
        Some(f) => f.clone(),
        None => match cfg.repositories.keys().collect::<Vec<_>>().as_slice() {
            [one] => one.to_string(),
            [] => {
                return Err(user_error(
                    "no second repository is configured",
                    "add a [repositories.NAME] the main repository copies to, or pass --from",
                ));
            }
            _ => return Err(user_error("several repositories are configured", "name the second region's with --from")),
        },
    };
    // The main repository, unreachable meanwhile: for the rebuild, which
    // is told it is at a path where nothing is; with --cut-main for
    // everything, a local one being moved aside.
    let main = cfg.repository.as_ref().map(|r| r.url.clone());
    let mut moved = None;
    let nowhere = state.root().join("main-repository-unreachable-during-drill");
    match main.as_deref() {
        _ if !opts.cut_main => {
            o.notes.push("the rebuild was cut off from the main repository (it was told it is where nothing is)".into())
        }
        Some(url) if !url.contains("://") && std::path::Path::new(url).is_dir() => {
            let path = PathBuf::from(url);
            let to = path.with_file_name(format!(
                "{}.cirkel-drill-unreachable",
                path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
            ));
            let fault = Fault::RepositoryMoved { from: path.clone(), to };
            faults::record(state, "region", &fault)?;
            match faults::move_aside(&path) {
                Ok(_) => moved = Some(fault),
                Err(e) => {
                    faults::clear(state);
                    o.failures.push(format!("could not make the main repository unreachable: {e:#}"));
                }
            }
        }
        Some(url) => {
            o.notes.push(format!("the main repository ({url}) stayed reachable: only a local one is moved aside"))
        }
        None => o.notes.push("no main repository is configured".into()),
    }
    let began = Instant::now();
    let v = if o.failures.is_empty() {
        let args = ["drill", "region", "--from", &from, "--timeout", &secs(timeout)];
        child_with(global, record, &args, &mut o, watch, (!opts.cut_main).then_some(nowhere.as_path()))
    } else {
        Value::Null
    };
    let wall = began.elapsed().as_secs_f64();
    if let Some(fault) = moved {
        match faults::undo(&fault) {
            Ok(_) => {
                faults::clear(state);
                o.notes.push("the main repository was unreachable during the rebuild, and is back".into());
            }
            Err(e) => o.failures.push(format!("the main repository could not be put back: {e:#}")),
        }
    }
    let d = &v["drill"];
    // The whole drill, checks included: the restore alone is `rto_s` in
    // its report.
    o.rto_s = d["rto_s"].as_f64().map(|_| wall);
    o.rpo_s = d["rpo_s"].as_f64();
    let ages: Vec<String> = d["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some(format!("{} {:.1} s", s["source"].as_str()?, s["rpo_s"].as_f64()?)))
        .collect();
    if !ages.is_empty() {
        o.notes.push(format!("age of the newest data in the second region: {}", ages.join(", ")));
    }
    if d["passed"] == false && o.failures.is_empty() {
        o.failures.push("the rebuild's checks failed (see the report)".into());
    }
    o.report = v;
    Ok(o)
}

pub fn suite(global: &Global, a: &SuiteArgs) -> anyhow::Result<ExitCode> {
    let cfg = load_config(global)?;
    let state = state_dir(&cfg);
    let chosen: Vec<Scenario> = if a.only.is_empty() {
        Scenario::ALL.iter().map(|(_, s)| *s).collect()
    } else {
        let wanted: Vec<Scenario> = a.only.iter().map(|n| scenario_of(n.trim())).collect::<anyhow::Result<_>>()?;
        Scenario::ALL.iter().map(|(_, s)| *s).filter(|s| wanted.contains(s)).collect()
    };
    let started = Utc::now();
    let mut drilled = BTreeSet::new();
    let mut results = Vec::new();
    for s in chosen {
        let source = subject(&cfg, s, &a.opts).ok();
        // A quiet estate first: nothing serious firing beyond what this
        // suite's own earlier scenarios caused.
        let until = Instant::now() + a.settle;
        let held = loop {
            let held = cirkel_server::guard::blockers_except(&state, &drilled);
            if held.is_empty() || Instant::now() > until {
                break held;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        let out = if !held.is_empty() {
            let mut o = Outcome::new(s, "");
            o.skipped = Some(held.into_iter().collect::<Vec<_>>().join("; "));
            o.judge()
        } else {
            match run_one(global, &cfg, s, &a.opts, &DrillRecordArgs::default(), &drilled) {
                Ok(o) => o,
                Err(e) => {
                    let mut o = Outcome::new(s, "");
                    o.failures.push(format!("{e:#}"));
                    o.judge()
                }
            }
        };
        if !global.quiet && !global.json {
            eprintln!(
                "  {:<13} {}  RTO {}",
                out.scenario,
                verdict(&out),
                out.rto_s.map(|r| format!("{r:.2} s")).unwrap_or_else(|| "-".into())
            );
        }
        drilled.extend(source);
        let signalled = out.aborted.as_deref() == Some("stopped by a signal");
        results.push(out);
        if signalled {
            break;
        }
    }
    let passed = results.iter().all(|o| o.passed);
    let report = json!({
        "started": started,
        "finished": Utc::now(),
        "passed": passed,
        "within_targets": results.iter().all(|o| o.within_target),
        "scenarios": results,
    });
    let path = state.save_report("drill-suite", &report)?;
    if let Some(md) = &a.markdown {
        std::fs::write(md, markdown(&results)).map_err(|e| {
            user_error(format!("cannot write {}: {e}", md.display()), "check the directory exists and is writable")
        })?;
    }
    if global.json {
        print_json(&json!({ "report": path, "suite": report }));
    } else {
        print_table(&results);
        for o in &results {
            for f in &o.failures {
                println!("  {}: {f}", o.scenario);
            }
            if let Some(why) = &o.skipped {
                println!("  {}: skipped: {why}", o.scenario);
            }
        }
        println!("suite {}; report {}", if passed { "passed" } else { "FAILED" }, path.display());
    }
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

fn verdict(o: &Outcome) -> &'static str {
    match (o.skipped.is_some(), o.passed, o.within_target) {
        (true, ..) => "SKIPPED",
        _ if o.aborted.is_some() => "ABORTED",
        (_, true, true) => "PASS",
        (_, true, false) => "PASS (over cirkel's target)",
        _ => "FAIL",
    }
}

fn fmt_s(s: f64) -> String {
    if s >= 120.0 { format!("{:.0} min", s / 60.0) } else { format!("{s:.0} s") }
}

fn print_table(results: &[Outcome]) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["Scenario", "Plan RTO", "Target", "Measured RTO", "Data lost", "Result"]);
    for o in results {
        t.add_row([
            o.scenario.to_string(),
            fmt_s(o.plan_rto_s),
            fmt_s(o.target_rto_s),
            o.rto_s.map(|r| format!("{r:.2} s")).unwrap_or_else(|| "-".into()),
            o.data_lost(),
            verdict(o).to_string(),
        ]);
    }
    println!("{t}");
}

fn markdown(results: &[Outcome]) -> String {
    let mut s = String::from(
        "| scenario | plan RTO | cirkel target | measured RTO | data lost | result |\n|---|---|---|---|---|---|\n",
    );
    for o in results {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            o.scenario,
            fmt_s(o.plan_rto_s),
            fmt_s(o.target_rto_s),
            o.rto_s.map(|r| format!("{r:.2} s")).unwrap_or_else(|| "-".into()),
            o.data_lost(),
            verdict(o)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_passes_within_the_plan_and_meets_its_target_only_without_loss() {
        let mut o = Outcome::new(Scenario::PgPrimary, "x");
        o.rto_s = Some(8.0);
        o.writes_lost = Some(0);
        let o = o.judge();
        assert!(o.passed && o.within_target);
        let mut o = Outcome::new(Scenario::PgPrimary, "x");
        o.rto_s = Some(20.0);
        let o = o.judge();
        assert!(o.passed && !o.within_target, "within the plan's 60 s, over cirkel's 10 s");
        let mut o = Outcome::new(Scenario::RedisMaster, "x");
        o.rto_s = Some(2.0);
        o.writes_lost = Some(3);
        let o = o.judge();
        assert!(o.passed && !o.within_target, "lost writes miss the target");
        let mut o = Outcome::new(Scenario::Zone, "x");
        o.rto_s = Some(1.0);
        o.failures.push("did not rejoin".into());
        assert!(!o.judge().passed);
        let o = Outcome::new(Scenario::Region, "x").judge();
        assert!(!o.passed && o.failures[0].contains("no recovery"), "{:?}", o.failures);
        let mut o = Outcome::new(Scenario::AppInstance, "x");
        o.skipped = Some("alarm x".into());
        let o = o.judge();
        assert!(!o.passed && o.failures.is_empty() && verdict(&o) == "SKIPPED");
    }

    #[test]
    fn the_markdown_report_has_a_row_per_scenario() {
        let mut o = Outcome::new(Scenario::Region, "x");
        o.rto_s = Some(42.0);
        o.rpo_s = Some(3.0);
        let md = markdown(&[o.judge()]);
        assert!(md.contains("| region | 30 min | 10 min | 42.00 s | 3 s of history | PASS |"), "{md}");
    }
}
