//! cirkel's own state on local disk: an append-only event log (one JSON
//! object a line) and drill reports (one JSON file each).
//!
//! Events are typed: an [`EventKind`] per thing that can happen, each with
//! a default [`Severity`] on the plan's four levels, so routing a page or an
//! email is a match rather than a string comparison. The log's lines carry
//! a format version; older lines and unknown kinds still read.
//!
//! A line is appended with a single `write` on an `O_APPEND` file and then
//! synced, so a crash leaves at most one torn last line, which readers skip.
//!
//! The directory is the owner's alone (0700, files 0600): events name hosts
//! and members. Commands steer the daemon through its control socket
//! (`control`), never through files here. Files are
//! opened without following symlinks, and replaced through temporary files
//! with fresh, unpredictable names, so nobody can redirect a write of ours.

pub mod control;
pub mod election;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

mod report;

pub use report::DrillReport;

/// Something that happened: a failover, a held failover, a member going
/// down, a drill.
///
/// On disk an event is one JSON line with `"v": 2`; lines written before
/// the format had a version (no `v`, severities `info`/`warning`/`critical`)
/// still read, see [`EventLine`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "EventLine", into = "EventLine")]
pub struct Event {
    pub time: DateTime<Utc>,
    /// What it concerns: `redis/NAME`, `postgres/NAME`.
    pub source: String,
    pub kind: EventKind,
    pub severity: Severity,
    pub message: String,
    pub details: serde_json::Value,
}

impl Event {
    /// An event of `kind` at the kind's own severity.
    pub fn new(source: &str, kind: EventKind, message: impl Into<String>) -> Event {
        Event {
            time: Utc::now(),
            source: source.to_string(),
            severity: kind.severity(),
            kind,
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with(mut self, details: serde_json::Value) -> Event {
        self.details = details;
        self
    }

    /// Overrides the kind's severity, for an instance that deserves more
    /// (or less) attention than the kind usually does.
    pub fn with_severity(mut self, severity: Severity) -> Event {
        self.severity = severity;
        self
    }
}

/// The version of the event line format written today.
pub const EVENT_FORMAT: u32 = 2;

/// One line of `events.jsonl` as stored: kind and severity as strings, so
/// that lines of any version, and kinds this build does not know, read.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EventLine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<u32>,
    time: DateTime<Utc>,
    source: String,
    kind: String,
    severity: String,
    message: String,
    #[serde(default)]
    details: serde_json::Value,
}

impl From<Event> for EventLine {
    fn from(e: Event) -> EventLine {
        EventLine {
            v: Some(EVENT_FORMAT),
            time: e.time,
            source: e.source,
            kind: e.kind.as_str().to_string(),
            severity: e.severity.as_str().to_string(),
            message: e.message,
            details: e.details,
        }
    }
}

impl TryFrom<EventLine> for Event {
    type Error = String;

    fn try_from(l: EventLine) -> Result<Event, String> {
        let kind = EventKind::from(l.kind.as_str());
        let severity = match (l.v, l.severity.as_str()) {
            (Some(v), _) if v > EVENT_FORMAT => return Err(format!("event format {v} is newer than this cirkel")),
            (Some(_), s) => Severity::parse(s).ok_or_else(|| format!("unknown severity `{s}`"))?,
            // Version 1 had three levels; a warning becomes what its kind
            // warrants today, but never a page nor a dashboard line.
            (None, "critical") => Severity::Critical,
            (None, "warning") => match kind.severity() {
                s @ (Severity::High | Severity::Medium) => s,
                Severity::Critical | Severity::Low => Severity::High,
            },
            (None, "info") => Severity::Low,
            (None, s) => return Err(format!("unknown severity `{s}`")),
        };
        Ok(Event { time: l.time, source: l.source, kind, severity, message: l.message, details: l.details })
    }
}

/// How urgently a person must hear of an event; the plan routes CRITICAL
/// to a page, HIGH to Slack or SMS, MEDIUM to email, LOW to the dashboard.
/// Ordered from least to most urgent, so `>=` means "at least as urgent".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 4] = [Severity::Critical, Severity::High, Severity::Medium, Severity::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    /// The level named `s` (any case).
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|l| l.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Severity, String> {
        Severity::parse(s).ok_or_else(|| format!("`{s}` is not one of critical, high, medium, low"))
    }
}

/// Declares [`EventKind`] from one table: variant, stored name, default
/// severity. One table keeps the three from drifting apart.
macro_rules! event_kinds {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal, $severity:ident;)*) => {
        /// What an event reports. Stored as its kebab-case name; a name this
        /// build does not know (written by a newer one) reads as `Other`.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($(#[doc = $doc])* $variant,)*
            /// A kind this build does not know.
            Other(String),
        }

        impl EventKind {
            /// Every kind this build records.
            pub const KNOWN: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The name stored in the log and given to `cirkel events --kind`.
            pub fn as_str(&self) -> &str {
                match self {
                    $(EventKind::$variant => $name,)*
                    EventKind::Other(s) => s,
                }
            }

            /// How urgent an event of this kind usually is.
            pub fn severity(&self) -> Severity {
                match self {
                    $(EventKind::$variant => Severity::$severity,)*
                    EventKind::Other(_) => Severity::Medium,
                }
            }
        }

        impl From<&str> for EventKind {
            fn from(s: &str) -> EventKind {
                match s {
                    $($name => EventKind::$variant,)*
                    other => EventKind::Other(other.to_string()),
                }
            }
        }
    };
}

event_kinds! {
    // Failover and its outcomes.
    /// A member was promoted in place of a failed primary or master.
    Failover = "failover", Critical;
    /// The PostgreSQL primary is down and a failover is due.
    FailoverNeeded = "failover-needed", Critical;
    /// A failover was started and did not finish.
    FailoverFailed = "failover-failed", Critical;
    /// A failover interrupted by a restart was carried to its end.
    FailoverResumed = "failover-resumed", High;
    /// A failover interrupted by a restart was given up.
    FailoverAbandoned = "failover-abandoned", High;
    /// Sentinel's failover is held back: promoting would lose too much.
    FailoverHeld = "failover-held", Critical;
    /// The hold on Sentinel's failover was lifted.
    FailoverHoldReleased = "failover-hold-released", Low;
    /// A Sentinel found no replica fit to promote.
    FailoverAborted = "failover-aborted", Critical;
    /// No standby qualifies for promotion.
    NoFailoverCandidate = "no-failover-candidate", Critical;
    /// The primary is down while automatic action is paused.
    PausedPrimaryDown = "paused-primary-down", Critical;
    /// An operator forced a failover that may lose data.
    ForcedFailover = "forced-failover", High;
    /// The Redis master is unreachable and the loss limit is near.
    LossLimitWarning = "loss-limit-warning", High;
    // Planned changes.
    /// A planned switchover finished.
    Switchover = "switchover", Medium;
    /// A planned switchover was refused or failed.
    SwitchoverFailed = "switchover-failed", Critical;
    /// The primary changed without this watcher acting.
    PrimaryChanged = "primary-changed", High;
    /// The Redis master changed by a planned switchover.
    MasterChanged = "master-changed", Low;
    /// Automatic action was paused.
    Paused = "paused", Medium;
    /// Automatic action was resumed.
    Resumed = "resumed", Medium;
    // Members.
    /// A member failed its health checks.
    MemberDown = "member-down", Critical;
    /// A member passes its health checks again.
    MemberUp = "member-up", Low;
    /// A returning Redis member was pointed at the current master.
    MemberRepointed = "member-repointed", Medium;
    /// A stray standby was pointed at the primary.
    FollowerRepointed = "follower-repointed", Low;
    /// A standby could not be pointed at the primary.
    FollowFailed = "follow-failed", Critical;
    /// An old primary was rewound and follows the new one.
    Rejoined = "rejoined", Low;
    /// An old primary could not be rejoined.
    RejoinFailed = "rejoin-failed", Critical;
    /// The synchronous standby set changed.
    SynchronousSet = "synchronous-set", Medium;
    /// The synchronous standby set could not be changed.
    SynchronousSetFailed = "synchronous-set-failed", Critical;
    /// The cluster's configuration contradicts what the members report.
    ClusterMisconfigured = "cluster-misconfigured", Critical;
    // The watchers and the daemon.
    /// A watcher started.
    WatchStarted = "watch-started", Low;
    /// A watcher waits for another to give up leadership.
    StandingBy = "standing-by", Low;
    /// A watcher lost its lease and stopped acting.
    LeadershipLost = "leadership-lost", Critical;
    /// A watcher took the lease (again) and acts.
    LeadershipAcquired = "leadership-acquired", High;
    /// An action carrying an older lease epoch than the newest recorded was refused.
    StaleEpoch = "stale-epoch", Critical;
    /// An agent stopped its own primary: it had no word from etcd and did
    /// not see every other member, so another may be promoted.
    SelfFenced = "self-fenced", Critical;
    /// The agent on a member's host saw its postmaster exit.
    PostmasterGone = "postmaster-gone", High;
    /// The agent on a member's host started it (a standby that had stopped,
    /// or a primary it had fenced that the route names again).
    MemberStarted = "member-started", Medium;
    /// The primary is down, but no agent holds the lease (etcd cannot be
    /// reached): nothing is failed over until it can be.
    FailoverRefused = "failover-refused", Critical;
    /// The agent on the old primary's host stopped it cleanly for a
    /// planned switchover led from another host.
    HandedOff = "handed-off", Medium;
    /// A scheduled drill was not started: an alarm fires or an incident is open.
    DrillSkipped = "drill-skipped", Medium;
    /// A drill was stopped before its end (something real happened
    /// meanwhile, or it overran); its fault was undone.
    DrillAborted = "drill-aborted", High;
    /// An agent's endpoint routes nowhere: no route from etcd, and not
    /// every member answers.
    EndpointCut = "endpoint-cut", High;
    /// The watcher's record could not be saved.
    StateNotSaved = "state-not-saved", Critical;
    /// The `on_role_change` hook failed.
    HookFailed = "hook-failed", High;
    /// `cirkel serve` started.
    ServeStarted = "serve-started", Low;
    /// The configuration was reloaded.
    ConfigReloaded = "config-reloaded", Low;
    /// A reload was refused; the old configuration stays.
    ConfigReloadFailed = "config-reload-failed", High;
    /// A user other than the daemon's and root was refused at the control socket.
    ControlRefused = "control-refused", High;
    /// An operator acted through the HTTP API (the audit log).
    ApiAction = "api-action", Low;
    /// A request to the HTTP API was refused: no token, a wrong one, or a viewer's on an action.
    ApiRefused = "api-refused", Low;
    /// A scheduled job finished.
    JobDone = "job-done", Low;
    /// A scheduled job failed.
    JobFailed = "job-failed", Critical;
    /// A drill ran; its report is in `details.report`.
    Drill = "drill", Low;
    /// A worker of the daemon failed or panicked; it is restarted after a pause.
    WorkerFailed = "worker-failed", High;
    /// A failed worker of the daemon was started again.
    WorkerRestarted = "worker-restarted", Low;
    /// A scheduled slot passed while the job's previous run still went on.
    JobMissed = "job-missed", Medium;
    // Detection.
    /// A health check (`[checks.NAME]`) failed its threshold of probes.
    CheckDown = "check-down", High;
    /// A health check passes again.
    CheckUp = "check-up", Low;
    /// An alarm went into ALARM; the event carries the alarm's own severity.
    AlarmRaised = "alarm-raised", High;
    /// An alarm went back to OK.
    AlarmCleared = "alarm-cleared", Low;
    /// An alarm has too little data to judge.
    AlarmInsufficientData = "alarm-insufficient-data", Low;
    /// `repo verify` found the repository intact.
    Verified = "verified", Low;
    /// `repo verify` found damage.
    VerifyFailed = "verify-failed", Critical;
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<str> for EventKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Called with every event once it is in the log.
pub type Listener = Arc<dyn Fn(&Event) + Send + Sync>;

/// The state directory.
#[derive(Clone)]
pub struct StateDir {
    root: PathBuf,
    listener: Option<Listener>,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir").field("root", &self.root).finish_non_exhaustive()
    }
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into(), listener: None }
    }

    /// The same directory, telling `listener` of every event it records
    /// after it is durably in the log: how the daemon publishes events to
    /// its own parts (metrics, alarms, notifications).
    pub fn with_listener(mut self, listener: Listener) -> StateDir {
        self.listener = Some(listener);
        self
    }

    /// `CIRKEL_STATE_DIR`, else `configured`, else `$XDG_STATE_HOME/cirkel`,
    /// else `~/.local/state/cirkel`.
    pub fn resolve(configured: Option<&Path>) -> StateDir {
        if let Some(d) = std::env::var_os("CIRKEL_STATE_DIR") {
            return StateDir::new(d);
        }
        if let Some(d) = configured {
            return StateDir::new(d);
        }
        if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
            return StateDir::new(PathBuf::from(d).join("cirkel"));
        }
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/lib"));
        StateDir::new(home.join(".local/state/cirkel"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn events_file(&self) -> PathBuf {
        self.root.join("events.jsonl")
    }

    /// Creates the directory (0700) if needed; one of ours that others can
    /// read or enter is closed to them.
    pub fn ensure(&self) -> anyhow::Result<()> {
        private_dir(&self.root)
    }

    /// Opens `name` below the directory for appending or rewriting in
    /// place, created 0600, never through a symlink.
    pub fn open_private(&self, name: &str, append: bool) -> anyhow::Result<File> {
        self.ensure()?;
        let path = self.root.join(name);
        let mut o = OpenOptions::new();
        o.create(true).read(true).mode(0o600).custom_flags(libc_nofollow());
        if append {
            o.append(true);
        } else {
            o.write(true);
        }
        o.open(&path).map_err(|e| anyhow::anyhow!("open {}: {e}", path.display()))
    }

    /// Appends an event durably.
    pub fn record(&self, event: &Event) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let mut f = self.open_private("events.jsonl", true)?;
        f.write_all(&line)?;
        f.sync_data()?;
        if let Some(l) = &self.listener {
            l(event);
        }
        Ok(())
    }

    /// Replaces `name` with `bytes` atomically (a temporary file with a
    /// fresh name, renamed over it); `durable` also syncs the file and the
    /// directory, so the new content survives a power loss.
    pub fn replace(&self, name: &str, bytes: &[u8], durable: bool) -> anyhow::Result<PathBuf> {
        self.ensure()?;
        replace_in(&self.root, name, bytes, durable)
    }

    /// Every recorded event, oldest first; a torn line is skipped.
    pub fn events(&self) -> anyhow::Result<Vec<Event>> {
        let text = match std::fs::read_to_string(self.events_file()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// Replaces `name` (under the state directory) with `value`, atomically
    /// and durably: a crash leaves the old or the new content, never a mix.
    pub fn save_json<T: serde::Serialize>(&self, name: &str, value: &T) -> anyhow::Result<()> {
        self.replace(name, &serde_json::to_vec_pretty(value)?, true).map(drop)
    }

    /// What [`StateDir::save_json`] stored under `name`, or `None`.
    pub fn load_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<Option<T>> {
        let path = self.root.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{} is damaged ({e}); remove it to start afresh", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Stores a report as `reports/<time>-<kind>.json` and returns its path.
    pub fn save_report(&self, kind: &str, report: &serde_json::Value) -> anyhow::Result<PathBuf> {
        self.ensure()?;
        let dir = self.root.join("reports");
        private_dir(&dir)?;
        let name = format!("{}-{kind}.json", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
        replace_in(&dir, &name, &serde_json::to_vec_pretty(report)?, true)
    }
}

fn libc_nofollow() -> i32 {
    libc::O_NOFOLLOW | libc::O_CLOEXEC
}

/// Creates `dir` 0700 (its missing parents as usual), or closes an existing
/// one of ours to group and others.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("create {}: {e}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(anyhow::anyhow!("create {}: {e}", dir.display())),
    }
    let meta = std::fs::metadata(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{} is not a directory; remove it or configure [state] dir elsewhere", dir.display());
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me && meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| anyhow::anyhow!("restrict {}: {e}", dir.display()))?;
    }
    Ok(())
}

fn replace_in(dir: &Path, name: &str, bytes: &[u8], durable: bool) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    // tempfile creates with O_EXCL and mode 0600 under a random name.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| anyhow::anyhow!("create a temporary file in {}: {e}", dir.display()))?;
    tmp.write_all(bytes)?;
    if durable {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(&path).map_err(|e| anyhow::anyhow!("replace {}: {}", path.display(), e.error))?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_a_torn_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("cirkel-state-test-{}", std::process::id()));
        let state = StateDir::new(&dir);
        state.record(&Event::new("redis/a", EventKind::Failover, "one")).unwrap();
        state.record(&Event::new("redis/a", EventKind::MemberDown, "two")).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.join("events.jsonl")).unwrap();
        f.write_all(b"{\"time\":\"20").unwrap();
        let events = state.events().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].message, "two");
        let p = state.save_report("drill", &serde_json::json!({"ok": true})).unwrap();
        assert!(p.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn old_and_new_lines_read_side_by_side() {
        let top = tempfile::tempdir().unwrap();
        let state = StateDir::new(top.path());
        state.ensure().unwrap();
        let old = concat!(
            r#"{"time":"2026-01-01T00:00:00Z","source":"redis/a","kind":"failover","severity":"critical","message":"a"}"#,
            "\n",
            r#"{"time":"2026-01-01T00:00:01Z","source":"redis/a","kind":"member-repointed","severity":"warning","message":"b","details":{"member":"x"}}"#,
            "\n",
            r#"{"time":"2026-01-01T00:00:02Z","source":"redis/a","kind":"failover","severity":"warning","message":"c"}"#,
            "\n",
            r#"{"time":"2026-01-01T00:00:03Z","source":"serve","kind":"something-new","severity":"info","message":"d"}"#,
            "\n",
            r#"{"v":2,"time":"2026-01-01T00:00:04Z","source":"serve","kind":"job-done","severity":"bogus","message":"e"}"#,
            "\n",
        );
        std::fs::write(top.path().join("events.jsonl"), old).unwrap();
        state.record(&Event::new("postgres/p", EventKind::Drill, "f").with_severity(Severity::High)).unwrap();
        let events = state.events().unwrap();
        let got: Vec<_> = events.iter().map(|e| (e.kind.as_str(), e.severity, e.message.as_str())).collect();
        assert_eq!(
            got,
            [
                ("failover", Severity::Critical, "a"),
                ("member-repointed", Severity::Medium, "b"),
                ("failover", Severity::High, "c"),
                ("something-new", Severity::Low, "d"),
                ("drill", Severity::High, "f"),
            ]
        );
        assert_eq!(events[3].kind, EventKind::Other("something-new".into()));
        assert_eq!(events[1].details["member"], "x");
        let text = std::fs::read_to_string(top.path().join("events.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["v"], 2);
        assert_eq!(last["kind"], "drill");
        assert_eq!(last["severity"], "high");
    }

    #[test]
    fn every_kind_reads_back_as_itself() {
        for k in EventKind::KNOWN {
            assert_eq!(&EventKind::from(k.as_str()), k);
            let e = Event::new("s", k.clone(), "m");
            let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            assert_eq!(back, e);
        }
        assert!(Severity::Critical > Severity::High && Severity::Medium > Severity::Low);
        assert_eq!("HIGH".parse::<Severity>(), Ok(Severity::High));
    }

    #[test]
    fn the_directory_and_its_files_are_the_owners_alone() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = StateDir::new(&dir);
        state.record(&Event::new("redis/a", EventKind::Failover, "one")).unwrap();
        state.save_json("record.json", &serde_json::json!({"a": 1})).unwrap();
        let report = state.save_report("drill", &serde_json::json!({})).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "an existing directory of ours is closed");
        assert_eq!(mode(&dir.join("events.jsonl")), 0o600);
        assert_eq!(mode(&dir.join("record.json")), 0o600);
        assert_eq!(mode(&dir.join("reports")), 0o700);
        assert_eq!(mode(&report), 0o600);
        // No temporary file is left behind.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "{left:?}");
    }

    #[test]
    fn symlinks_planted_in_the_directory_are_not_followed() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state");
        let victim = top.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let state = StateDir::new(&dir);
        state.ensure().unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("events.jsonl")).unwrap();
        // The old fixed temporary name of a record, planted as a symlink.
        std::os::unix::fs::symlink(&victim, dir.join(".record.json.tmp")).unwrap();
        assert!(state.record(&Event::new("redis/a", EventKind::Failover, "one")).is_err());
        state.save_json("record.json", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(dir.join("record.json")).unwrap().file_type().is_symlink());
        // A file standing for the directory itself is refused.
        assert!(StateDir::new(&victim).ensure().is_err());
    }
}
