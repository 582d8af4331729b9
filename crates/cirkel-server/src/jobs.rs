//! The scheduled jobs of a configuration, and how one runs.
//!
//! A job runs cirkel's own commands as child processes, so a failing or
//! crashing job never takes the daemon down, and what runs is exactly what
//! a person would type.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use cirkel_config::cron::Schedule;
use cirkel_config::{Config, RetentionConfig};
use cirkel_state::{Event, EventKind, StateDir};
use serde_json::json;

use crate::scheduler::{Clock, run_schedule_reporting};

/// A scheduled job: cirkel commands run one after the other.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub schedule: Schedule,
    pub steps: Vec<Vec<String>>,
    /// A drill, run under the guardrails (`crate::guard`).
    pub drill: Option<DrillJob>,
}

/// What the runner needs to know of a scheduled drill.
#[derive(Debug, Clone)]
pub struct DrillJob {
    /// The `[drills.NAME]`.
    pub name: String,
    pub kind: cirkel_config::DrillKind,
    /// The source it drills (`postgres/NAME`, `redis/NAME`), whose own
    /// alarms do not stop it.
    pub source: Option<String>,
    /// How long it may take before it is stopped.
    pub timeout: std::time::Duration,
}

fn retention_args(r: &RetentionConfig) -> Vec<String> {
    let mut a = Vec::new();
    for (flag, n) in [
        ("--keep-last", r.keep_last),
        ("--keep-hourly", r.keep_hourly),
        ("--keep-daily", r.keep_daily),
        ("--keep-weekly", r.keep_weekly),
        ("--keep-monthly", r.keep_monthly),
        ("--keep-yearly", r.keep_yearly),
    ] {
        if n > 0 {
            a.extend([flag.to_string(), n.to_string()]);
        }
    }
    if let Some(d) = r.keep_within {
        a.extend(["--keep-within".to_string(), cirkel_config::duration_to_string(d).replace(' ', "")]);
    }
    for t in &r.keep_tags {
        a.extend(["--keep-tag".to_string(), t.clone()]);
    }
    a
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The scheduled jobs a configuration asks for.
pub fn jobs(cfg: &Config) -> anyhow::Result<Vec<Job>> {
    let parse = |s: &str| Schedule::parse(s).map_err(anyhow::Error::msg);
    let mut out = Vec::new();
    // Copies and retention after a backup; retention is scoped to the
    // job's first tag so it never judges other backups.
    let follow_up = |steps: &mut Vec<Vec<String>>, copy_to: &[String], tags: &[String], r: Option<&RetentionConfig>| {
        for repo in copy_to {
            let mut s = args(&["repo", "copy", "--to", repo]);
            if let Some(t) = tags.first() {
                s.extend(["--tag".to_string(), t.clone()]);
            }
            steps.push(s);
        }
        if let (Some(r), Some(t)) = (r, tags.first()) {
            let mut s = args(&["repo", "prune", "--tag", t]);
            s.extend(retention_args(r));
            steps.push(s);
        }
    };
    for (name, set) in &cfg.files {
        let Some(s) = &set.schedule else { continue };
        let mut steps = vec![args(&["backup", "files", "--set", name])];
        follow_up(&mut steps, &set.copy_to, &set.tags, set.retention.as_ref());
        out.push(Job { name: format!("files/{name}"), schedule: parse(s)?, steps, drill: None });
    }
    for (name, g) in &cfg.redis {
        let Some(s) = &g.schedule else { continue };
        let mut steps = vec![args(&["redis", "backup", "--group", name])];
        follow_up(&mut steps, &g.copy_to, &g.tags, g.retention.as_ref());
        out.push(Job { name: format!("redis/{name}"), schedule: parse(s)?, steps, drill: None });
    }
    for (name, b) in &cfg.buckets {
        let Some(s) = &b.schedule else { continue };
        let mut steps = vec![args(&["backup", "bucket", name])];
        follow_up(&mut steps, &b.copy_to, &b.tags, b.retention.as_ref());
        out.push(Job { name: format!("buckets/{name}"), schedule: parse(s)?, steps, drill: None });
    }
    for (name, r) in &cfg.repositories {
        let Some(s) = &r.drill_schedule else { continue };
        let steps = vec![args(&["drill", "region", "--from", name])];
        out.push(Job { name: format!("drill-region/{name}"), schedule: parse(s)?, steps, drill: None });
    }
    for (name, p) in &cfg.postgres {
        if let Some(s) = &p.schedule {
            let steps = vec![args(&["pg", "backup", "--cluster", name, "--tag", "daily"]), args(&["pg", "expire"])];
            out.push(Job { name: format!("postgres/{name}/daily"), schedule: parse(s)?, steps, drill: None });
        }
        if let Some(s) = &p.weekly_schedule {
            let mut steps = vec![args(&["pg", "backup", "--cluster", name, "--type", "full", "--tag", "weekly"])];
            for repo in &p.copy_to {
                steps.push(args(&["repo", "copy", "--to", repo, "--tag", "weekly"]));
            }
            steps.push(args(&["pg", "expire"]));
            out.push(Job { name: format!("postgres/{name}/weekly"), schedule: parse(s)?, steps, drill: None });
        }
    }
    for (name, d) in &cfg.drills {
        let Some(s) = &d.schedule else { continue };
        let only = |names: Vec<&String>| if names.len() == 1 { names.first().map(|n| n.to_string()) } else { None };
        let source = match d.kind {
            k if k.targets_postgres() => d
                .target
                .clone()
                .or_else(|| only(cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, _)| n).collect()))
                .map(|t| format!("postgres/{t}")),
            cirkel_config::DrillKind::RedisFailover => {
                d.target.clone().or_else(|| only(cfg.redis.keys().collect())).map(|t| format!("redis/{t}"))
            }
            cirkel_config::DrillKind::Scenario => {
                use cirkel_config::Scenario;
                match d.target.as_deref().and_then(Scenario::parse) {
                    Some(Scenario::PgPrimary | Scenario::Zone) => {
                        only(cfg.postgres.iter().filter(|(_, c)| !c.members.is_empty()).map(|(n, _)| n).collect())
                            .map(|t| format!("postgres/{t}"))
                    }
                    Some(Scenario::RedisMaster) => only(cfg.redis.keys().collect()).map(|t| format!("redis/{t}")),
                    Some(Scenario::AppInstance) => only(cfg.checks.keys().collect()).map(|t| format!("check/{t}")),
                    _ => None,
                }
            }
            _ => None,
        };
        out.push(Job {
            name: format!("drill/{name}"),
            schedule: parse(s)?,
            steps: vec![args(&["drill", "run", name])],
            drill: Some(DrillJob { name: name.clone(), kind: d.kind, source, timeout: d.timeout }),
        });
    }
    Ok(out)
}

/// What every scheduled job needs, whatever the configuration: the cirkel
/// executable, the global flags that make a child see what the daemon sees,
/// the state directory and the clock.
#[derive(Clone)]
pub struct Runner {
    pub exe: PathBuf,
    pub global: Vec<String>,
    pub state: StateDir,
    pub clock: Arc<dyn Clock>,
    /// Jobs run only while this daemon leads (always, on its own).
    pub leading: crate::lead::Leading,
}

impl Runner {
    /// Runs `job` at each time its schedule names until `stop` (a running
    /// job finishes first).
    pub fn run_schedule(&self, job: &Job, stop: &AtomicBool) {
        run_schedule_reporting(
            &job.schedule,
            self.clock.as_ref(),
            stop,
            |_| {
                if self.leading.now() {
                    self.run_job(job);
                } else {
                    tracing::info!("{}: another agent leads and runs it", job.name);
                }
            },
            |slots| {
                let list: Vec<String> = slots.iter().map(|t| t.to_rfc3339()).collect();
                let event = Event::new(
                    &format!("schedule/{}", job.name),
                    EventKind::JobMissed,
                    format!(
                        "{} slot(s) of {} passed while its previous run went on: {}",
                        slots.len(),
                        job.name,
                        list.join(", ")
                    ),
                )
                .with(json!({ "job": job.name, "slots": list }));
                crate::record(&self.state, &event);
            },
        );
    }

    /// Runs the steps of `job` once; a failed step ends the job, except a
    /// backup that saved what it could (exit 3), which goes on to its copies.
    pub fn run_job(&self, job: &Job) {
        if let Some(d) = &job.drill {
            self.run_drill(job, d);
            return;
        }
        let source = format!("schedule/{}", job.name);
        let start = Instant::now();
        for step in &job.steps {
            // The service manager's variables are the daemon's alone.
            let out = Command::new(&self.exe)
                .args(&self.global)
                .args(step)
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .env_remove("WATCHDOG_PID")
                .output();
            let failed = match &out {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some((o.status.code(), String::from_utf8_lossy(&o.stderr).trim().to_string())),
                Err(e) => Some((None, e.to_string())),
            };
            if let Some((code, stderr)) = failed {
                let tail: String =
                    stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                let event = Event::new(
                    &source,
                    EventKind::JobFailed,
                    format!(
                        "`cirkel {}` failed (exit {code:?}): {}",
                        step.join(" "),
                        tail.lines().next().unwrap_or("")
                    ),
                )
                .with(json!({ "job": job.name, "step": step, "exit_code": code, "stderr": tail }));
                crate::record(&self.state, &event);
                if code != Some(3) {
                    return;
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let event = Event::new(&source, EventKind::JobDone, format!("{} done in {seconds:.1} s", job.name))
            .with(json!({ "job": job.name, "steps": job.steps, "seconds": seconds }));
        crate::record(&self.state, &event);
    }

    /// Runs a scheduled drill under its guardrails: not while an alarm of
    /// severity high or above fires or an incident is open (recorded as
    /// skipped); stopped with SIGTERM, which makes it undo its fault, when
    /// one starts elsewhere while it runs (recorded as aborted); never
    /// beside another drill (the drill lock).
    fn run_drill(&self, job: &Job, d: &DrillJob) {
        use cirkel_notify::drills::{DrillRun, Outcome};
        use std::time::Duration;
        let source = format!("schedule/{}", job.name);
        let started = chrono::Utc::now();
        let record_run = |outcome: Outcome, reason: String| {
            let run = DrillRun {
                id: 0,
                name: d.name.clone(),
                kind: d.kind.name().to_string(),
                target: d.source.clone().unwrap_or_default(),
                started_at: started,
                finished_at: chrono::Utc::now(),
                outcome,
                rto_s: None,
                rto_target_s: None,
                writes_lost: 0,
                reason,
                report: None,
            };
            let stored = self
                .state
                .ensure()
                .map_err(|e| e.to_string())
                .and_then(|()| cirkel_notify::Store::open_in(self.state.root()).map_err(|e| e.to_string()))
                .and_then(|s| s.record_drill(&run).map_err(|e| e.to_string()));
            if let Err(e) = stored {
                tracing::error!("{source}: the drill run could not be recorded: {e}");
            }
        };
        let held = crate::guard::blockers(&self.state, None);
        if !held.is_empty() {
            let why = held.into_iter().collect::<Vec<_>>().join("; ");
            record_run(Outcome::Skipped, why.clone());
            crate::record(
                &self.state,
                &Event::new(&source, EventKind::DrillSkipped, format!("drill {} not started: {why}", d.name))
                    .with(json!({ "drill": d.name, "reason": why })),
            );
            return;
        }
        let Some(step) = job.steps.first() else { return };
        let spawned = Command::new(&self.exe)
            .args(&self.global)
            .args(step)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                record_run(Outcome::Failed, format!("could not start: {e}"));
                return;
            }
        };
        let mut tripped: Option<String> = None;
        let mut deadline = Instant::now() + d.timeout * 3 + Duration::from_secs(60);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            if tripped.is_none() {
                let now = crate::guard::blockers(&self.state, d.source.as_deref());
                if !now.is_empty() {
                    let why = now.into_iter().collect::<Vec<_>>().join("; ");
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                    deadline = Instant::now() + d.timeout + Duration::from_secs(30);
                    tripped = Some(why);
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                tripped.get_or_insert_with(|| "it ran past its time and was killed".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        if let Some(why) = tripped {
            // A drill that undid its fault recorded itself as aborted; one
            // that could not is recorded here.
            let recorded = cirkel_notify::Store::open_in(self.state.root())
                .ok()
                .and_then(|s| s.drills(Some(&d.name), 1).ok())
                .and_then(|r| r.into_iter().next())
                .is_some_and(|r| r.started_at >= started);
            if !recorded {
                record_run(Outcome::Aborted, why.clone());
            }
            crate::record(
                &self.state,
                &Event::new(
                    &source,
                    EventKind::DrillAborted,
                    format!("drill {} aborted: {why}; that is not the drill's doing", d.name),
                )
                .with(json!({ "drill": d.name, "reason": why })),
            );
            return;
        }
        let code = status.and_then(|s| s.code());
        let event = match code {
            Some(0) => Event::new(&source, EventKind::JobDone, format!("drill {} passed", d.name)),
            // 3: the drill ran and recorded its failure (a `drill` event).
            Some(3) => Event::new(&source, EventKind::JobDone, format!("drill {} ran and failed", d.name)),
            _ => {
                let tail =
                    stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                Event::new(
                    &source,
                    EventKind::JobFailed,
                    format!("drill {} did not run (exit {code:?}): {}", d.name, tail.lines().next().unwrap_or("")),
                )
                .with(json!({ "job": job.name, "exit_code": code, "stderr": tail }))
            }
        };
        crate::record(&self.state, &event);
    }

    /// The jobs with their schedules and next times, for events and status.
    pub fn job_list(&self, jobs: &[Job]) -> serde_json::Value {
        let now = self.clock.now();
        json!(
            jobs.iter()
                .map(
                    |j| json!({ "job": j.name, "schedule": j.schedule.to_string(), "next": j.schedule.next_after(now) })
                )
                .collect::<Vec<_>>()
        )
    }
}

/// Runs `exe argv…` until it exits (an error: it should run until told to
/// stop) or `stop` turns true (then it gets SIGTERM, and SIGKILL 10 s later).
pub fn run_until_stopped(exe: &std::path::Path, argv: &[String], stop: &AtomicBool) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::Ordering;
    use std::time::Duration;
    let mut cmd = Command::new(exe);
    cmd.args(argv).env_remove("NOTIFY_SOCKET").env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
    // The child goes when the daemon goes, even killed with SIGKILL: a
    // supervised follower outliving its supervisor would copy or stream
    // beside the next daemon's.
    // SAFETY: prctl(2) in the child between fork and exec touches no memory
    // of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| anyhow::anyhow!("start `cirkel {}`: {e}", argv.join(" ")))?;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("`cirkel {}` exited ({status})", argv.join(" "));
        }
        if stop.load(Ordering::Relaxed) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plans_jobs_come_from_the_configuration() {
        let cfg = Config::parse(
            r#"
[repositories.dr]
url = "/tmp/dr"
drill_schedule = "0 4 1 */3 *"
[files.static]
paths = ["/srv/static"]
tags = ["static"]
schedule = "0 2 * * *"
copy_to = ["dr"]
[files.static.retention]
keep_daily = 35
[postgres.main]
schedule = "0 2 * * *"
weekly_schedule = "0 3 * * 0"
copy_to = ["dr"]
[buckets.uploads]
url = "s3://uploads"
tags = ["uploads"]
schedule = "0 * * * *"
copy_to = ["dr"]
"#,
            "t.toml",
            None,
        )
        .unwrap();
        let jobs = jobs(&cfg).unwrap();
        let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(
            names,
            ["files/static", "buckets/uploads", "drill-region/dr", "postgres/main/daily", "postgres/main/weekly"]
        );
        assert_eq!(jobs[2].steps[0], args(&["drill", "region", "--from", "dr"]));
        assert_eq!(jobs[1].steps[0], args(&["backup", "bucket", "uploads"]));
        assert_eq!(jobs[1].steps[1], args(&["repo", "copy", "--to", "dr", "--tag", "uploads"]));
        assert_eq!(jobs[0].steps[1], args(&["repo", "copy", "--to", "dr", "--tag", "static"]));
        assert_eq!(jobs[0].steps[2], args(&["repo", "prune", "--tag", "static", "--keep-daily", "35"]));
        assert_eq!(jobs[4].steps[0], args(&["pg", "backup", "--cluster", "main", "--type", "full", "--tag", "weekly"]));
        assert_eq!(jobs[4].steps[1], args(&["repo", "copy", "--to", "dr", "--tag", "weekly"]));
    }
}
