//! Follows the event log itself (`events.jsonl`), not only the daemon's
//! channel: commands run beside the daemon (`cirkel drill failover`,
//! `cirkel pg backup`) append their events to the same log, and the API,
//! the dashboard and the metrics must hear of them too. Each call reads the
//! complete lines appended since the last one; a line still being written
//! waits for the next call.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use cirkel_state::Event;

/// The most read at once, so a huge backlog is taken in steps.
const MAX_READ: u64 = 8 << 20;

/// The events in the complete lines after byte `offset`, and the offset
/// after the last complete line. A file shorter than `offset` (replaced)
/// is read from its start.
pub fn read_from(path: &Path, offset: u64) -> (Vec<Event>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else { return (Vec::new(), offset) };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = if len < offset { 0 } else { offset };
    if len == offset || f.seek(SeekFrom::Start(offset)).is_err() {
        return (Vec::new(), offset);
    }
    let mut buf = Vec::new();
    if f.take((len - offset).min(MAX_READ)).read_to_end(&mut buf).is_err() {
        return (Vec::new(), offset);
    }
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        // One line longer than a read: skip it rather than stall.
        if buf.len() as u64 == MAX_READ {
            return (Vec::new(), offset + MAX_READ);
        }
        return (Vec::new(), offset);
    };
    let events = buf[..end]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<Event>(l).ok())
        .collect();
    (events, offset + end as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cirkel_state::{EventKind, StateDir};
    use std::io::Write;

    #[test]
    fn reads_what_was_appended_and_waits_for_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path().join("s"));
        state.record(&Event::new("a", EventKind::JobDone, "one")).unwrap();
        let path = dir.path().join("s/events.jsonl");
        let (e, off) = read_from(&path, 0);
        assert_eq!(e.len(), 1);
        assert_eq!(read_from(&path, off).0.len(), 0);
        state.record(&Event::new("b", EventKind::Drill, "two")).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"v\":2,\"time\":").unwrap();
        let (e, off2) = read_from(&path, off);
        assert_eq!(e.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(), ["two"]);
        assert_eq!(read_from(&path, off2).0.len(), 0);
        // A replaced, shorter file is read from its start.
        std::fs::write(&path, b"").unwrap();
        state.record(&Event::new("c", EventKind::JobDone, "three")).unwrap();
        assert_eq!(read_from(&path, off2).0[0].message, "three");
    }
}
