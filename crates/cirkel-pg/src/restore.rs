//! Restoring a base backup and configuring recovery to a target.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use cirkel_repo::{Id, Repository, Snapshot};
use serde::Serialize;

use crate::backup::{BackupMeta, list};
use crate::conn::parse_lsn;
use crate::wal::{self, Segment};

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Target {
    Time(DateTime<Utc>),
    Lsn(String),
    Xid(String),
    Name(String),
    /// Replay everything there is.
    Latest,
    /// Stop as soon as the backup is consistent.
    Immediate,
}

/// The chosen backup and WAL, explained.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub backup: Id,
    pub meta: BackupMeta,
    pub target: Target,
    /// First WAL segment replay needs.
    pub wal_from: String,
    /// Newest WAL segment in the archive on the backup's timeline (or later ones).
    pub wal_to: Option<String>,
    /// Missing segments between the two: recovery would stop at the first.
    pub wal_gaps: Vec<String>,
    pub notes: Vec<String>,
}

/// A target outside what the repository can reach, or a missing piece.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("no base backup in the repository{0}")]
    NoBackup(String),
    #[error(
        "target {target} is before the end of the oldest usable backup ({oldest}); the recoverable window starts there"
    )]
    BeforeOldest { target: String, oldest: String },
    #[error("target time {0} is in the future")]
    InFuture(String),
    #[error("the repository holds backups of several clusters ({0})")]
    SeveralClusters(String),
    #[error("WAL segment {missing} is missing from the archive; recovery from backup {backup} cannot pass it")]
    MissingWal { missing: String, backup: String },
}

impl PlanError {
    pub fn hint(&self) -> String {
        match self {
            PlanError::NoBackup(_) => "take one with `cirkel pg backup`".into(),
            PlanError::BeforeOldest { .. } => {
                "choose a later --target-time / --target-lsn; `cirkel pg info` shows the recoverable window".into()
            }
            PlanError::InFuture(_) => "use --latest to replay everything archived".into(),
            PlanError::SeveralClusters(_) => "choose one with --system-id (see `cirkel pg backups`) or --backup".into(),
            PlanError::MissingWal { .. } => {
                "restore from a later backup (--backup), a target before the gap, or from a second repository that has the segment; `cirkel pg check` lists every gap".into()
            }
        }
    }
}

pub fn plan(repo: &Repository, system_id: Option<&str>, target: Target, backup: Option<Id>) -> anyhow::Result<Plan> {
    let mut backups = list(repo)?;
    if let Some(sys) = system_id {
        backups.retain(|(_, _, m)| m.system_id == sys);
    }
    backups.retain(|(_, s, _)| !s.incomplete);
    if backup.is_none() {
        let mut systems: Vec<&str> = backups.iter().map(|(_, _, m)| m.system_id.as_str()).collect();
        systems.sort();
        systems.dedup();
        if systems.len() > 1 {
            return Err(PlanError::SeveralClusters(systems.join(", ")).into());
        }
    }
    let chosen = if let Some(id) = backup {
        backups
            .into_iter()
            .find(|(bid, _, _)| *bid == id)
            .ok_or_else(|| PlanError::NoBackup(format!(" with id {id}")))?
    } else {
        let oldest = backups.first().map(|(_, _, m)| m.clone()).ok_or_else(|| PlanError::NoBackup(String::new()))?;
        let fits = |m: &BackupMeta| match &target {
            Target::Time(t) => m.stop_time <= *t,
            Target::Lsn(l) => parse_lsn(l).is_some_and(|l| m.stop_lsn() <= l),
            _ => true,
        };
        if let Target::Time(t) = &target
            && *t > Utc::now()
        {
            return Err(PlanError::InFuture(t.to_rfc3339()).into());
        }
        match backups.into_iter().rev().find(|(_, _, m)| fits(m)) {
            Some(b) => b,
            None => {
                let (target_s, oldest_s) = match &target {
                    Target::Time(t) => (t.to_rfc3339(), oldest.stop_time.to_rfc3339()),
                    Target::Lsn(l) => (l.clone(), oldest.stop_lsn.clone()),
                    _ => return Err(PlanError::NoBackup(String::new()).into()),
                };
                return Err(PlanError::BeforeOldest { target: target_s, oldest: oldest_s }.into());
            }
        }
    };
    let (id, _, meta) = chosen;
    let ns = crate::namespace(meta.system_id.parse().unwrap_or(0));
    let archived = wal::archived_segments(repo, &ns)?;
    let from = meta.start_segment().ok_or_else(|| anyhow::anyhow!("backup {id} has no start WAL segment"))?;
    let gaps = wal::gaps(&archived, from, meta.wal_segment_size);
    let last_on_tli = archived.iter().rfind(|s| s.tli >= from.tli).map(ToString::to_string);
    let mut notes = Vec::new();
    let stop_seg = Segment::parse(&meta.stop_wal);
    // Gaps after the backup's own WAL only matter for targets past them.
    if let Some(first) = gaps.first()
        && stop_seg.is_none_or(|s| *first <= s)
    {
        return Err(PlanError::MissingWal { missing: first.to_string(), backup: id.short() }.into());
    }
    if let Some(first) = gaps.first() {
        notes.push(format!("WAL segment {first} is missing: recovery stops before it"));
    }
    if matches!(plan_target_kind(&target), "xid" | "name") && backup.is_none() {
        notes.push(
            "an xid or named target must lie after the chosen (newest) backup; if recovery reports it ended before the target, pass an older --backup".into(),
        );
    }
    let partial = wal::partials(repo, &ns, None)?;
    let newest = archived.last();
    if let Some(p) = partial.iter().rfind(|p| crate::catalog::partial_segment(p).is_some_and(|s| newest < Some(&s))) {
        notes.push(format!("the newest WAL is a partial segment from the streamer ({p})"));
    }
    Ok(Plan {
        backup: id,
        wal_from: from.to_string(),
        wal_to: last_on_tli,
        wal_gaps: gaps.iter().map(ToString::to_string).collect(),
        meta,
        target,
        notes,
    })
}

/// Where tablespaces go: `(old, new)` pairs, `old` being a tablespace's
/// location when the backup was taken or its oid. Checked against the
/// backup's tablespaces; returns `(oid, new)` for each mapped one.
pub fn map_tablespaces(meta: &BackupMeta, map: &[(String, PathBuf)]) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let known =
        || meta.tablespaces.iter().map(|t| format!("{} ({})", t.location, t.oid)).collect::<Vec<_>>().join(", ");
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for (old, new) in map {
        let Some(ts) = meta.tablespaces.iter().find(|t| &t.oid == old || Path::new(&t.location) == Path::new(old))
        else {
            anyhow::bail!(
                "the backup has no tablespace at {old}; its tablespaces: {}",
                if meta.tablespaces.is_empty() { "none".to_string() } else { known() }
            );
        };
        if !new.is_absolute() {
            anyhow::bail!("tablespace directory {} must be an absolute path", new.display());
        }
        if new.exists() && std::fs::read_dir(new)?.next().is_some() {
            anyhow::bail!(
                "{} is not empty; refusing to restore tablespace {} over existing data",
                new.display(),
                ts.oid
            );
        }
        if out.iter().any(|(oid, n)| oid == &ts.oid || n == new) {
            anyhow::bail!("tablespace {} or directory {} is mapped twice", ts.oid, new.display());
        }
        out.push((ts.oid.clone(), new.clone()));
    }
    Ok(out)
}

/// What the restored cluster does with its WAL once it runs.
///
/// A restore inherits the source's `archive_mode` and `archive_command`:
/// left alone, a copy started next to production would archive its own
/// timeline into production's repository. So a restore decides explicitly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", content = "command", rename_all = "kebab-case")]
pub enum Archiving {
    /// `archive_mode = off`: the copy archives nowhere (the default).
    Off,
    /// Archive with this command (into another repository, or into the
    /// source's when the restore replaces a lost primary).
    To(String),
    /// Build a standby: `standby.signal`, the source's archive settings kept
    /// (a standby archives only with `archive_mode = always`).
    Standby { primary_conninfo: Option<String> },
}

/// The restore's target directory holds data already.
#[derive(Debug, thiserror::Error)]
#[error("{} is not empty; refusing to restore over existing data", .0.display())]
pub struct NotEmpty(pub PathBuf);

/// How the restored cluster gets its WAL and what it does with its own.
#[derive(Clone, Debug)]
pub struct Recovery {
    /// What PostgreSQL will run to fetch WAL.
    pub restore_command: String,
    pub archiving: Archiving,
}

/// Restores the plan's backup into `to` and writes the recovery settings
/// (see [`Recovery`]). Tablespaces
/// are restored as directories below `pg_tblspc`, except those `tablespaces`
/// maps elsewhere (see [`map_tablespaces`]): they are moved there and linked.
pub fn restore(
    repo: &Repository,
    plan: &Plan,
    to: &Path,
    recovery: &Recovery,
    tablespaces: &[(String, PathBuf)],
    threads: usize,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<cirkel_files::RestoreReport> {
    if to.exists() && std::fs::read_dir(to)?.next().is_some() {
        return Err(NotEmpty(to.to_path_buf()).into());
    }
    let moves = map_tablespaces(&plan.meta, tablespaces)?;
    let snap: Snapshot = repo.load_snapshot(&plan.backup)?;
    let report = cirkel_files::restore(
        repo,
        &snap,
        &cirkel_files::RestoreOptions { target: to.to_path_buf(), threads },
        on_bytes,
    )?;
    if !report.errors.is_empty() {
        return Ok(report);
    }
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    // Tablespaces move while root still owns the whole tree, so nobody
    // can swap `pg_tblspc` or an entry in it under the move.
    for (oid, new) in &moves {
        place_tablespace(to, oid, new)?;
    }
    if is_root() {
        for (_, new) in &moves {
            chown_tree(new, plan.meta.owner_uid, plan.meta.owner_gid)?;
        }
        chown_tree(to, plan.meta.owner_uid, plan.meta.owner_gid)?;
    }
    // Tablespaces left in place are directories in pg_tblspc, which
    // PostgreSQL accepts only with this setting (it refuses them in recovery).
    let in_place = plan.meta.tablespaces.len() > moves.len();
    write_recovery(to, plan, &recovery.restore_command, &recovery.archiving, in_place)?;
    Ok(report)
}

/// Moves a tablespace restored below `pg_tblspc` to `new` and links it there.
fn place_tablespace(to: &Path, oid: &str, new: &Path) -> anyhow::Result<()> {
    let link = to.join("pg_tblspc").join(oid);
    if new.exists() {
        std::fs::remove_dir(new).map_err(|e| anyhow::anyhow!("replace the empty directory {}: {e}", new.display()))?;
    } else if let Some(parent) = new.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(&link, new) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => anyhow::bail!(
            "{} is on another file system than {}; map the tablespace to a directory on the same file system, \
             or restore it in place (without --tablespace-map) and move it yourself",
            new.display(),
            to.display()
        ),
        Err(e) => anyhow::bail!("move tablespace {oid} to {}: {e}", new.display()),
    }
    std::os::unix::fs::symlink(new, &link)?;
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Gives a restored tree to the cluster's user, deepest entries first: a
/// directory changes hands only after everything below it has, so while
/// root walks it, it and all its ancestors in the tree are still root's and
/// nobody else can swap an entry for a symlink on the way.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path: PathBuf = entry.path();
        if entry.file_type()?.is_dir() {
            chown_tree(&path, uid, gid)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    Ok(())
}

fn plan_target_kind(t: &Target) -> &'static str {
    match t {
        Target::Time(_) => "time",
        Target::Lsn(_) => "lsn",
        Target::Xid(_) => "xid",
        Target::Name(_) => "name",
        Target::Latest => "latest",
        Target::Immediate => "immediate",
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn write_recovery(
    to: &Path,
    plan: &Plan,
    restore_command: &str,
    archiving: &Archiving,
    in_place_tablespaces: bool,
) -> anyhow::Result<()> {
    let mut lines = vec![
        String::new(),
        format!("# cirkel pg restore of backup {} ({})", plan.backup.short(), Utc::now().to_rfc3339()),
        format!("restore_command = {}", quote(restore_command)),
        "recovery_target_timeline = 'latest'".to_string(),
        // Settings left by an earlier recovery must not apply to this one.
        "recovery_target = ''".to_string(),
        "recovery_target_time = ''".to_string(),
        "recovery_target_lsn = ''".to_string(),
        "recovery_target_xid = ''".to_string(),
        "recovery_target_name = ''".to_string(),
        "recovery_target_action = 'pause'".to_string(),
    ];
    match &plan.target {
        Target::Time(t) => lines.push(format!("recovery_target_time = {}", quote(&t.to_rfc3339()))),
        Target::Lsn(l) => lines.push(format!("recovery_target_lsn = {}", quote(l))),
        Target::Xid(x) => lines.push(format!("recovery_target_xid = {}", quote(x))),
        Target::Name(n) => lines.push(format!("recovery_target_name = {}", quote(n))),
        Target::Immediate => lines.push("recovery_target = 'immediate'".into()),
        Target::Latest => {}
    }
    if plan.target != Target::Latest {
        lines.push("recovery_target_action = 'promote'".into());
    }
    match archiving {
        Archiving::Off => {
            lines.push("# a restored copy archives nowhere: it must not write into its source's repository".into());
            lines.push("archive_mode = off".into());
        }
        Archiving::To(cmd) => {
            lines.push("archive_mode = on".into());
            lines.push(format!("archive_command = {}", quote(cmd)));
        }
        Archiving::Standby { primary_conninfo } => {
            if let Some(c) = primary_conninfo {
                lines.push(format!("primary_conninfo = {}", quote(c)));
            }
        }
    }
    if in_place_tablespaces {
        lines.push(
            "# tablespaces restored as directories in pg_tblspc (cirkel pg restore --tablespace-map moves them)".into(),
        );
        lines.push("allow_in_place_tablespaces = on".into());
    }
    let mut f = std::fs::OpenOptions::new().append(true).create(true).open(to.join("postgresql.auto.conf"))?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    let signal = if matches!(archiving, Archiving::Standby { .. }) { "standby.signal" } else { "recovery.signal" };
    std::fs::write(to.join(signal), "")?;
    if is_root() {
        for f in ["postgresql.auto.conf", signal] {
            std::os::unix::fs::lchown(to.join(f), Some(plan.meta.owner_uid), Some(plan.meta.owner_gid))?;
        }
    }
    Ok(())
}
