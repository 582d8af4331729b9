//! Who may write a local repository.
//!
//! Files a command creates belong to the user it runs as. A backup run as
//! root into a repository that `postgres` owns leaves root-owned directories
//! under `data/`, and `postgres`'s next `wal-push` cannot write beside them:
//! archiving stops, later and far from the cause. So commands that write
//! refuse to run as anyone but the repository's owner, or, as root with
//! `--fix-owner`, hand everything they created to the owner when they end.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cli::Global;
use crate::context::RepoTarget;
use crate::output::user_error;

/// Gives what a root command created in the repository to its owner when dropped.
pub struct OwnerFix {
    root: PathBuf,
    uid: u32,
    gid: u32,
}

impl Drop for OwnerFix {
    fn drop(&mut self) {
        if let Err(e) = chown_foreign(&self.root, self.uid, self.gid) {
            eprintln!("warning: could not give {} back to uid {}: {e}", self.root.display(), self.uid);
        }
    }
}

fn chown_foreign(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
        if meta.is_dir() {
            chown_foreign(&entry.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// A user's name, or their uid as text.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// The local directory of a repository location, if it is one and exists.
fn local_root(location: &str) -> Option<PathBuf> {
    if location.contains("://") && !location.starts_with("file://") {
        return None;
    }
    let root = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
    root.join("config").exists().then_some(root)
}

/// Opens a repository for a command that writes it, after [`check_writer`];
/// keep the guard until the command ends.
pub fn open_writer(
    global: &Global,
    target: &RepoTarget,
) -> anyhow::Result<(cirkel_repo::Repository, Option<OwnerFix>)> {
    let fix = check_writer(global, target)?;
    Ok((target.open()?, fix))
}

/// Checks that this process may write the repository: it runs as the
/// repository's owner, or as root with `--fix-owner` (then the returned
/// guard fixes ownership when the command ends).
pub fn check_writer(global: &Global, target: &RepoTarget) -> anyhow::Result<Option<OwnerFix>> {
    let Some(root) = local_root(&target.location) else { return Ok(None) };
    let meta = std::fs::metadata(&root)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() == me {
        return Ok(None);
    }
    let owner = user_name(meta.uid());
    if me == 0 && global.fix_owner {
        return Ok(Some(OwnerFix { root, uid: meta.uid(), gid: meta.gid() }));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    Err(user_error(
        format!(
            "the repository {} belongs to {owner}, but this command runs as {}: what it writes there would be {}'s, \
             and {owner} could not write beside it later (archiving would stop)",
            target.location,
            user_name(me),
            user_name(me)
        ),
        format!(
            "run it as the repository's owner: `runuser -u {owner} -- cirkel {}`{}",
            args.join(" "),
            if me == 0 { "; or, as root, add --fix-owner to give what it writes to the owner" } else { "" }
        ),
    ))
}
