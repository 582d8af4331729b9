//! Facts read straight from a data directory, without a server.

use std::path::Path;

/// The system identifier: the first 8 bytes of `global/pg_control`.
pub fn system_identifier(pgdata: &Path) -> anyhow::Result<u64> {
    let path = pgdata.join("global/pg_control");
    let bytes = std::fs::read(&path).map_err(|e| {
        anyhow::anyhow!("cannot read {} ({e}); is {} a PostgreSQL data directory?", path.display(), pgdata.display())
    })?;
    let first: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("{} is too short", path.display()))?;
    Ok(u64::from_le_bytes(first))
}

/// Finds the data directory for WAL commands: an explicit one, else the
/// current directory (PostgreSQL runs archive and restore commands there),
/// else `PGDATA`.
pub fn find_pgdata(explicit: Option<&Path>) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()?;
    if cwd.join("global/pg_control").exists() {
        return Ok(cwd);
    }
    if let Ok(p) = std::env::var("PGDATA") {
        return Ok(p.into());
    }
    anyhow::bail!(
        "cannot tell which cluster this WAL belongs to: run in the data directory, set PGDATA, or pass --pgdata"
    )
}
