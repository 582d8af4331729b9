//! Faults a scenario drill injects outside PostgreSQL: a service killed
//! (`app-instance`) and the main repository made unreachable (`region`).
//!
//! Each is written to the state directory (`drill-faults.json`) before it
//! is injected and removed once it is undone, so a drill killed in between
//! leaves it for the next start of `cirkel serve`, or the next drill, to
//! undo ([`undo_leftover`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use cirkel_state::StateDir;
use serde::{Deserialize, Serialize};

pub const FILE: &str = "drill-faults.json";

/// What was done, and how it is undone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "fault", rename_all = "kebab-case")]
pub enum Fault {
    /// A local repository renamed aside: nothing finds it at its path.
    RepositoryMoved { from: PathBuf, to: PathBuf },
    /// The processes listening on a check's address killed; the check's
    /// `restart_command` starts the service again.
    ServiceKilled { check: String, address: String, restart_command: String },
}

/// A fault with the drill that injected it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recorded {
    /// The drill's process: while it lives, the fault is its to undo.
    pub pid: u32,
    pub scenario: String,
    pub started: DateTime<Utc>,
    pub fault: Fault,
}

/// Writes the fault down before it is injected.
pub fn record(state: &StateDir, scenario: &str, fault: &Fault) -> anyhow::Result<()> {
    let r =
        Recorded { pid: std::process::id(), scenario: scenario.to_string(), started: Utc::now(), fault: fault.clone() };
    state.save_json(FILE, &r)
}

/// Forgets the fault once it is undone.
pub fn clear(state: &StateDir) {
    let _ = std::fs::remove_file(state.root().join(FILE));
}

/// Undoes `fault`; says what was done.
pub fn undo(fault: &Fault) -> anyhow::Result<String> {
    match fault {
        Fault::RepositoryMoved { from, to } => {
            if from.exists() {
                anyhow::bail!(
                    "{} exists again, and the repository moved aside is still at {}: compare them and move one back by hand",
                    from.display(),
                    to.display()
                );
            }
            if !to.exists() {
                anyhow::bail!("the repository moved aside to {} is gone", to.display());
            }
            std::fs::rename(to, from)?;
            Ok(format!("repository {} is back in place", from.display()))
        }
        Fault::ServiceKilled { check, address, restart_command } => {
            if answers(address, Duration::from_millis(500)) {
                return Ok(format!("check {check}'s service at {address} already runs again"));
            }
            start_detached(restart_command)?;
            Ok(format!("check {check}'s service was started again (`{restart_command}`)"))
        }
    }
}

/// Undoes the fault of a drill that died before it could; `None` when
/// there is none or its drill still runs.
pub fn undo_leftover(state: &StateDir) -> anyhow::Result<Option<(Recorded, String)>> {
    let Some(left) = state.load_json::<Recorded>(FILE)? else { return Ok(None) };
    let alive = std::fs::read_to_string(format!("/proc/{}/cmdline", left.pid)).is_ok_and(|c| c.contains("drill"))
        && !std::fs::read_to_string(format!("/proc/{}/stat", left.pid))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')))
            .unwrap_or(false);
    if alive {
        return Ok(None);
    }
    let done = undo(&left.fault).unwrap_or_else(|e| format!("could not be undone: {e:#}"));
    clear(state);
    Ok(Some((left, done)))
}

/// Renames a local repository aside (same directory, so the rename is
/// atomic and nothing is copied): a writer already inside it finishes in
/// the moved tree; every new open fails as if the storage were gone.
pub fn move_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| anyhow::anyhow!("{} has no name to rename", path.display()))?;
    let to = path.with_file_name(format!("{}.cirkel-drill-unreachable", name.to_string_lossy()));
    if to.exists() {
        anyhow::bail!("{} exists: a previous drill left it; move it back by hand", to.display());
    }
    std::fs::rename(path, &to)?;
    Ok(to)
}

/// Whether a TCP connection to `address` opens within `timeout`.
pub fn answers(address: &str, timeout: Duration) -> bool {
    use std::net::ToSocketAddrs;
    address
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok())
}

/// Starts `command` through `sh -c` in its own session with no terminal:
/// a service in the foreground keeps running after the drill ends, a
/// daemonizing one exits 0. An exit other than 0 within 2 s is an error.
pub fn start_detached(command: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new("sh");
    c.args(["-c", command]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: setsid(2) in the child between fork and exec touches no
    // memory of the parent.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = c.spawn()?;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            anyhow::bail!("`{command}` exited with {status}: {}", err.lines().next().unwrap_or(""));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still running: the service itself, left to run (its stderr closes with it).
    drop(child.stderr.take());
    Ok(())
}

/// The processes with a socket listening on TCP `port` (any address), from
/// `/proc/net/tcp{,6}` and each process's open files.
pub fn listeners(port: u16) -> Vec<u32> {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEX_IP:HEX_PORT; st 0A is LISTEN; inode is field 9.
            let listening = f.get(3) == Some(&"0A");
            let local_port =
                f.get(1).and_then(|a| a.rsplit_once(':')).and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if listening
                && local_port == Some(port)
                && let Some(inode) = f.get(9)
            {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    let mut pids = Vec::new();
    if inodes.is_empty() {
        return pids;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return pids };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| inodes.contains(&*l.to_string_lossy()))) {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_by_its_port_and_a_free_port_has_none() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listeners(port), vec![std::process::id()]);
        drop(l);
        assert!(listeners(port).is_empty());
    }

    #[test]
    fn a_repository_moved_aside_comes_back_and_a_leftover_is_undone_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        std::fs::write(repo.join("config"), "x").unwrap();
        let state = StateDir::new(dir.path().join("state"));
        state.ensure().unwrap();
        let to = move_aside(&repo).unwrap();
        assert!(!repo.exists() && to.join("config").exists());
        // Recorded by a drill that is gone (pid 0 is never a process's).
        let r = Recorded {
            pid: 0,
            scenario: "region".into(),
            started: Utc::now(),
            fault: Fault::RepositoryMoved { from: repo.clone(), to: to.clone() },
        };
        state.save_json(FILE, &r).unwrap();
        let (left, done) = undo_leftover(&state).unwrap().unwrap();
        assert_eq!(left.scenario, "region");
        assert!(done.contains("back in place"), "{done}");
        assert!(repo.join("config").exists() && !to.exists());
        assert!(undo_leftover(&state).unwrap().is_none());
        // A second move aside refuses to overwrite what a drill left.
        std::fs::create_dir(dir.path().join("repo.cirkel-drill-unreachable")).unwrap();
        assert!(move_aside(&repo).unwrap_err().to_string().contains("move it back by hand"));
    }

    #[test]
    fn a_restart_command_that_fails_says_so_and_one_that_runs_on_is_left_running() {
        let err = start_detached("echo nope >&2; exit 3").unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ran");
        start_detached(&format!("touch {}; exec sleep 5", flag.display())).unwrap();
        assert!(flag.exists());
    }
}
