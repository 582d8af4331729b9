//! cirkel's own state on local disk: an append-only event log (one JSON
//! object a line) and drill reports (one JSON file each).
//!
//! A line is appended with a single `write` on an `O_APPEND` file and then
//! synced, so a crash leaves at most one torn last line, which readers skip.

use std::io::Write;
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

    /// Appends an event durably.
    pub fn record(&self, event: &Event) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.events_file())?;
        f.write_all(&line)?;
        f.sync_data()?;
        Ok(())
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
        std::fs::create_dir_all(&self.root)?;
        let path = self.root.join(name);
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.root)?.sync_all()?;
        Ok(())
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
        let dir = self.root.join("reports");
        std::fs::create_dir_all(&dir)?;
        let name = format!("{}-{kind}.json", Utc::now().format("%Y%m%dT%H%M%S%.3fZ"));
        let path = dir.join(name);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(report)?)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(path)
    }
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
}
