//! A single stream (the output of a dump tool: `pg_dump`, an RDB) kept as a
//! snapshot holding one file, chunked and deduplicated like any file.

use std::io::{Read, Write};
use std::time::Instant;

use crate::{BlobKind, BlobWriter, Error, Id, Node, Repository, Result, Snapshot, SnapshotSummary, Tree};

fn failed(message: String) -> Error {
    Error::Failed { message, hint: None }
}

/// What to record with a stream snapshot.
#[derive(Clone, Debug, Default)]
pub struct StreamSnapshot {
    pub kind: String,
    /// The file name inside the snapshot.
    pub file_name: String,
    pub paths: Vec<String>,
    pub tags: Vec<String>,
    pub meta: serde_json::Value,
}

/// Reads `reader` to its end, stores it deduplicated, and writes a snapshot
/// once `check` (did the producer succeed?) says so.
pub fn backup_reader(
    repo: &Repository,
    reader: impl Read,
    what: &StreamSnapshot,
    check: &mut dyn FnMut() -> Result<()>,
) -> Result<(Id, Snapshot)> {
    let start = Instant::now();
    let _lock = repo.lock_shared("backup")?;
    let index = std::sync::Arc::new(repo.load_index()?);
    let writer = BlobWriter::new(repo, index);
    let cdc = crate::chunker::content_defined(reader, repo.config().chunker, repo.crypto().chunker_seed());
    let mut content = Vec::new();
    let mut size = 0u64;
    for chunk in cdc {
        let chunk = chunk.map_err(|e| failed(format!("read the stream: {e}")))?;
        size += chunk.data.len() as u64;
        content.push(writer.add(BlobKind::Data, &chunk.data)?);
    }
    let now_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    let node = Node::synthetic_file(what.file_name.clone(), size, content, now_ns);
    let tree = writer.add_tree(&Tree { nodes: vec![node] })?;
    let stats = writer.finish()?;
    check()?;
    let snapshot = Snapshot {
        time: chrono::Utc::now(),
        host: std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default(),
        kind: what.kind.clone(),
        paths: what.paths.clone(),
        tags: what.tags.clone(),
        tree,
        parent: None,
        summary: SnapshotSummary {
            files: 1,
            dirs: 0,
            bytes: size,
            files_read: 1,
            bytes_added: stats.bytes_new_stored,
            duration_ms: start.elapsed().as_millis() as u64,
        },
        incomplete: false,
        errors: vec![],
        meta: what.meta.clone(),
    };
    let id = repo.save_snapshot(&snapshot)?;
    Ok((id, snapshot))
}

/// Writes the single file of a stream snapshot to `out`; returns its size.
pub fn restore_to_writer(repo: &Repository, snapshot: &Snapshot, mut out: impl Write) -> Result<u64> {
    let index = repo.load_index()?;
    let tree = repo.load_tree(&index, &snapshot.tree)?;
    let node: &Node = tree.nodes.first().ok_or_else(|| failed("the snapshot holds no file".into()))?;
    let mut written = 0u64;
    for id in &node.content {
        let data = repo.read_blob(&index, id)?;
        out.write_all(&data).map_err(|e| failed(format!("write the restored stream: {e}")))?;
        written += data.len() as u64;
    }
    if written != node.size {
        return Err(failed(format!("restored {written} bytes, the snapshot records {}", node.size)));
    }
    Ok(written)
}
