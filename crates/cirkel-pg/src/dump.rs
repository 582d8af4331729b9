//! Logical exports of single tables (`pg_dump -Fc -t`), stored as stream
//! snapshots, and their restore through `pg_restore`.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use cirkel_repo::single_file::{StreamSnapshot, backup_reader, restore_to_writer};
use cirkel_repo::{Id, Repository, Snapshot};

/// The snapshot kind of table exports.
pub const KIND: &str = "pg-dump";

/// The `--dbname` argument and the password to pass in `PGPASSWORD`
/// instead (never in the arguments).
fn dbname(conninfo: Option<&str>) -> (String, Option<String>) {
    match conninfo {
        Some(c) => crate::conn::split_password(c),
        None => (std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()), None),
    }
}

/// Dumps one table into the repository.
pub fn dump(
    repo: &Repository,
    bindir: &Path,
    table: &str,
    conninfo: Option<&str>,
    tags: &[String],
) -> anyhow::Result<(Id, Snapshot)> {
    let (db, password) = dbname(conninfo);
    let mut cmd = Command::new(bindir.join("pg_dump"));
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let mut child = cmd
        .args(["--format=custom", "--no-password", "--table", table, "--dbname", &db])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("start {}: {e}", bindir.join("pg_dump").display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("pg_dump has no stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("pg_dump has no stderr"))?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let what = StreamSnapshot {
        kind: KIND.into(),
        file_name: format!("{table}.dump"),
        paths: vec![table.to_string()],
        tags: tags.to_vec(),
        meta: serde_json::json!({ "table": table, "format": "custom" }),
    };
    let mut status = None;
    let mut check = || -> cirkel_repo::Result<()> {
        let failed = |message: String| cirkel_repo::Error::Failed { message, hint: None };
        let st = child.wait().map_err(|e| failed(format!("wait for pg_dump: {e}")))?;
        status = Some(st);
        if st.success() { Ok(()) } else { Err(failed(format!("pg_dump failed ({st})"))) }
    };
    let result = backup_reader(repo, stdout, &what, &mut check);
    let errors = err_reader.join().unwrap_or_default();
    match result {
        Ok(saved) => Ok(saved),
        Err(e) if status.is_some_and(|s| !s.success()) => {
            Err(anyhow::anyhow!("pg_dump of {table} failed: {}", errors.trim()).context(e.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Restores a table export into a database with `pg_restore`.
pub fn restore(
    repo: &Repository,
    bindir: &Path,
    snapshot: &Snapshot,
    conninfo: Option<&str>,
    clean: bool,
) -> anyhow::Result<u64> {
    if snapshot.kind != KIND {
        anyhow::bail!("snapshot is a `{}` snapshot, not a table export", snapshot.kind);
    }
    let (db, password) = dbname(conninfo);
    let mut cmd = Command::new(bindir.join("pg_restore"));
    cmd.args(["--no-password", "--exit-on-error", "--dbname", &db]);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    if clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("start pg_restore: {e}"))?;
    let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("pg_restore has no stdin"))?;
    let written = restore_to_writer(repo, snapshot, stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("pg_restore failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(written?)
}
