//! `cirkel repo copy --to NAME --follow`: the second region kept current.
//! Every interval the source is listed and whatever the destination lacks
//! (new snapshots with their data, new WAL) is copied; what it saw is kept
//! in `copy-NAME.json` in the state directory, which gives the daemon its
//! copy-lag metrics. Either side down only delays the copy: the next pass
//! after it returns copies everything that landed meanwhile.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use cirkel_config::Config;
use cirkel_repo::Repository;
use cirkel_repo::follow::{FollowState, Listing, backlog, copy_backlog, record_name};
use serde_json::json;

use crate::cli::{CopyArgs, Global};
use crate::context::{RepoTarget, main_repo, resolve, state_dir, stop_on_signal};
use crate::output::{human_bytes, print_json, user_error};

/// `pg expire` runs on the destination at most this often, after a pass
/// that copied a snapshot.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

/// While passes keep failing, the failure is said again at most this often
/// (its text changes every pass: it carries how long the retries took).
const REPEAT_FAILURE_EVERY: Duration = Duration::from_secs(300);

struct Follower<'a> {
    global: &'a Global,
    cfg: &'a Config,
    to: String,
    src_target: RepoTarget,
    dst_target: RepoTarget,
    src: Option<Repository>,
    dst: Option<Repository>,
    /// The destination's keys as last listed, for the backlog while it is down.
    dst_keys: Option<HashSet<String>>,
    state: FollowState,
    last_expire: Option<Instant>,
    look_back: Duration,
    /// Where the state record goes: written before a copy starts (with its
    /// backlog) and after every pass.
    state_dir: cirkel_state::StateDir,
    record: String,
}

/// What one pass did.
struct Pass {
    snapshots: usize,
    streams: usize,
    bytes: u64,
}

impl Follower<'_> {
    fn pass(&mut self) -> anyhow::Result<Pass> {
        let listed_at = Utc::now();
        let src = match self.src.take() {
            Some(s) => s,
            None => self.src_target.open().context("open the source repository")?,
        };
        // A source that fails to list is opened afresh next time.
        let src_list = Listing::of(&src).context("list the source repository")?;
        self.state.checked = Some(listed_at);
        let result = self.copy_from(&src, &src_list, listed_at);
        self.src = Some(src);
        result
    }

    fn copy_from(
        &mut self,
        src: &Repository,
        src_list: &Listing,
        listed_at: chrono::DateTime<Utc>,
    ) -> anyhow::Result<Pass> {
        let (keys, dst_err) = match self.open_and_list_dst() {
            Ok(k) => (k, None),
            Err(e) => (self.dst_keys.clone().unwrap_or_default(), Some(e)),
        };
        let todo = backlog(src, src_list, &keys, self.state.caught_up, self.look_back);
        self.state.oldest_pending = todo.oldest;
        self.state.pending_bytes = todo.bytes;
        self.state.pending_objects = (todo.snapshots.len() + todo.streams.len()) as u64;
        if let Some(e) = dst_err {
            return Err(e);
        }
        if todo.is_empty() {
            self.state.caught_up = Some(listed_at);
            return Ok(Pass { snapshots: 0, streams: 0, bytes: 0 });
        }
        self.state.updated = Utc::now();
        if let Err(e) = self.state_dir.save_json(&self.record, &self.state) {
            tracing::warn!("cannot record the copy's state: {e:#}");
        }
        let dst = self.dst.as_ref().context("destination")?;
        let report = match copy_backlog(src, dst, &todo, &|_, _| {}) {
            Ok(r) => r,
            Err(e) => {
                self.dst = None;
                return Err(anyhow::Error::new(e).context(format!("copy to {}", self.to)));
            }
        };
        if let Some(k) = self.dst_keys.as_mut() {
            k.extend(todo.snapshots.iter().map(|id| format!("snapshots/{id}")));
            k.extend(todo.streams.iter().cloned());
        }
        self.state.oldest_pending = None;
        self.state.pending_bytes = 0;
        self.state.pending_objects = 0;
        self.state.caught_up = Some(listed_at);
        Ok(Pass {
            snapshots: report.copied.len(),
            streams: report.streams_copied,
            bytes: report.stats.bytes_new_stored + report.stream_bytes,
        })
    }

    fn open_and_list_dst(&mut self) -> anyhow::Result<HashSet<String>> {
        if self.dst.is_none() {
            self.dst = Some(self.dst_target.open().with_context(|| format!("open the destination {}", self.to))?);
        }
        let dst = self.dst.as_ref().context("destination")?;
        match Listing::of(dst) {
            Ok(l) => {
                let keys: HashSet<String> = l.objects.into_keys().collect();
                self.dst_keys = Some(keys.clone());
                Ok(keys)
            }
            Err(e) => {
                self.dst = None;
                Err(anyhow::Error::new(e).context(format!("list the destination {}", self.to)))
            }
        }
    }

    /// `pg expire` on the destination, after copies, at most hourly: with
    /// the destination's own `[repositories.NAME.pg_expire]` when it has one,
    /// else with `pg expire`'s defaults when PostgreSQL clusters are configured.
    fn expire(&mut self) {
        let own = self.cfg.repositories.get(&self.to).and_then(|r| r.pg_expire.as_ref());
        if (self.cfg.postgres.is_empty() && own.is_none())
            || self.last_expire.is_some_and(|t| t.elapsed() < EXPIRE_EVERY)
        {
            return;
        }
        self.last_expire = Some(Instant::now());
        let Ok(exe) = std::env::current_exe() else { return };
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["-q", "--repo", &self.to]);
        if let Some(c) = &self.global.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(p) = &self.global.password_file {
            cmd.arg("--password-file").arg(p);
        }
        cmd.args(["pg", "expire"]);
        if let Some(p) = own {
            for (flag, keep) in
                [("--daily", p.daily), ("--weekly", p.weekly), ("--pre-deploy", p.pre_deploy), ("--wal", p.wal)]
            {
                if let Some(d) = keep {
                    cmd.arg(flag).arg(format!("{}ms", d.as_millis()));
                }
            }
        }
        match cmd.output() {
            Ok(o) if o.status.success() => tracing::info!("pg expire on {} done", self.to),
            Ok(o) => tracing::warn!(
                "pg expire on {} failed: {}",
                self.to,
                String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("")
            ),
            Err(e) => tracing::warn!("pg expire on {}: {e}", self.to),
        }
    }
}

pub fn run(global: &Global, cfg: &Config, args: &CopyArgs) -> anyhow::Result<ExitCode> {
    if !args.snapshots.is_empty() || args.tag.is_some() || args.no_wal {
        return Err(user_error(
            "--follow copies every new snapshot and the WAL",
            "drop the snapshot ids, --tag and --no-wal, or drop --follow for a one-off copy",
        ));
    }
    let dst_pw = args.to_password_file.as_deref().or(global.password_file.as_deref());
    let dst_target = resolve(cfg, Some(&args.to), dst_pw)?;
    let _owner = crate::owner::check_writer(global, &dst_target)?;
    let state_dir = state_dir(cfg);
    let name = record_name(&args.to);
    let previous: Option<FollowState> = state_dir.load_json(&name).ok().flatten();
    let mut f = Follower {
        global,
        cfg,
        to: args.to.clone(),
        src_target: main_repo(global, cfg)?,
        dst_target,
        src: None,
        dst: None,
        dst_keys: None,
        state: FollowState {
            repository: args.to.clone(),
            caught_up: previous.and_then(|p| p.caught_up),
            updated: Utc::now(),
            ..FollowState::default()
        },
        last_expire: None,
        look_back: args.look_back,
        state_dir: state_dir.clone(),
        record: name.clone(),
    };
    let stop = stop_on_signal();
    // Since when passes have failed, and when that was last said.
    let mut failing: Option<(Instant, Instant)> = None;
    loop {
        let outcome = f.pass();
        f.state.updated = Utc::now();
        match &outcome {
            Ok(p) => {
                f.state.error = None;
                if let Some((since, _)) = failing.take() {
                    eprintln!(
                        "continuous copy to {} works again after {} of failed passes",
                        f.to,
                        humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                    );
                }
                if p.snapshots + p.streams > 0 {
                    if global.json {
                        print_json(
                            &json!({ "copied_snapshots": p.snapshots, "copied_streams": p.streams, "bytes": p.bytes, "to": f.to }),
                        );
                    } else if !global.quiet {
                        println!(
                            "{} copied {} snapshot(s) and {} WAL/stream object(s), {}, to {}",
                            Utc::now().format("%H:%M:%S"),
                            p.snapshots,
                            p.streams,
                            human_bytes(p.bytes),
                            f.to
                        );
                    }
                }
            }
            Err(e) => {
                let text = format!("{e:#}");
                match &mut failing {
                    None => {
                        eprintln!("warning: continuous copy to {}: {text}; retrying", f.to);
                        failing = Some((Instant::now(), Instant::now()));
                    }
                    Some((since, said)) if said.elapsed() >= REPEAT_FAILURE_EVERY => {
                        eprintln!(
                            "warning: continuous copy to {} still failing after {}: {text}; retrying",
                            f.to,
                            humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                        );
                        *said = Instant::now();
                    }
                    Some(_) => {}
                }
                f.state.error = Some(text);
            }
        }
        if let Err(e) = state_dir.save_json(&name, &f.state) {
            tracing::warn!("cannot record the copy's state: {e:#}");
        }
        if matches!(&outcome, Ok(p) if p.snapshots > 0) {
            f.expire();
        }
        if args.once {
            return Ok(if outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        let until = Instant::now() + args.interval;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
