//! cirkel's own state on local disk: an append-only event log (one JSON
//! object a line) and drill reports (one JSON file each).
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

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Something that happened: a failover, a held failover, a member going
/// down, a drill.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Event {
    pub time: DateTime<Utc>,
    /// What it concerns: `redis/NAME`, `postgres/NAME`.
    pub source: String,
    /// `failover`, `failover-held`, `member-down`, …
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub message: String,
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Event {
    pub fn new(source: &str, kind: &str, severity: &str, message: impl Into<String>) -> Event {
        Event {
            time: Utc::now(),
            source: source.to_string(),
            kind: kind.to_string(),
            severity: severity.to_string(),
            message: message.into(),
            details: serde_json::Value::Null,
        }
    }

    pub fn with(mut self, details: serde_json::Value) -> Event {
        self.details = details;
        self
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
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
        state.record(&Event::new("redis/a", "failover", "warning", "one")).unwrap();
        state.record(&Event::new("redis/a", "member-down", "critical", "two")).unwrap();
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
    fn the_directory_and_its_files_are_the_owners_alone() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = StateDir::new(&dir);
        state.record(&Event::new("redis/a", "failover", "warning", "one")).unwrap();
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
        assert!(state.record(&Event::new("redis/a", "failover", "warning", "one")).is_err());
        state.save_json("record.json", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!std::fs::symlink_metadata(dir.join("record.json")).unwrap().file_type().is_symlink());
        // A file standing for the directory itself is refused.
        assert!(StateDir::new(&victim).ensure().is_err());
    }
}
