//! Loading a backup into a running Redis: a private, password-protected
//! redis-server serves the RDB, the target replicates from it and is then
//! detached.
//!
//! Two passwords are involved (the target's own, and the private server's,
//! which the target must present as `masterauth`). Neither ever appears in
//! a process's arguments, where every local user can read them in
//! `/proc/*/cmdline`: commands go to the target through cirkel's own RESP
//! client, the private server reads its configuration from stdin, and
//! errors name the command that failed without its arguments.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cirkel_repo::{Repository, Snapshot};

use crate::resp::{Addr, Conn, RespError};
use crate::{TargetHasData, restore_to_dir};

/// How long the private server may take to start, and the target to load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The target: a connection and the means to keep secrets out of errors.
struct Target {
    conn: Conn,
    secrets: Vec<String>,
}

impl Target {
    /// Runs a command; `what` names it in errors (never its arguments).
    fn cmd(&mut self, what: &str, args: &[&str]) -> anyhow::Result<crate::resp::Value> {
        self.conn.cmd(args).map_err(|e| anyhow::anyhow!("{}", redact(&format!("{what}: {e}"), &self.secrets)))
    }
}

/// `text` with every secret replaced, in case a server echoes one back.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().filter(|s| !s.is_empty()).fold(text.to_string(), |t, s| t.replace(s.as_str(), "<redacted>"))
}

/// A value quoted for a redis.conf line.
fn conf_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts the private redis-server on `dir/dump.rdb`, its configuration
/// (password included) written to its stdin.
fn start_private(bind: &str, port: u16, dir: &Path, password: &str) -> anyhow::Result<Child> {
    let server = std::env::var_os("REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("redis-server"));
    let mut child = Command::new(server)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("start redis-server (package redis-server): {e}"))?;
    let conf = format!(
        "port {port}\nbind {}\nsave \"\"\nappendonly no\nrepl-diskless-sync-delay 0\nrequirepass {}\ndir {}\ndbfilename dump.rdb\n",
        conf_quote(bind),
        conf_quote(password),
        conf_quote(&dir.display().to_string())
    );
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(conf.as_bytes()).map_err(anyhow::Error::from),
        None => Err(anyhow::anyhow!("redis-server has no stdin")),
    };
    if let Err(e) = written {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e.context("configure the private redis-server"));
    }
    Ok(child)
}

pub(crate) fn restore_to_server(
    repo: &Repository,
    snapshot: &Snapshot,
    host: &str,
    port: u16,
    force: bool,
) -> anyhow::Result<u64> {
    let auth = std::env::var("REDISCLI_AUTH").ok().filter(|p| !p.is_empty());
    let addr = Addr::new(host, port);
    let conn = Conn::connect(&addr, REPLY_TIMEOUT, auth.as_deref()).map_err(|e| connect_error(e, auth.is_some()))?;
    let mut target = Target { conn, secrets: auth.into_iter().collect() };
    let keys = target.cmd("DBSIZE", &["DBSIZE"])?.int().unwrap_or(0);
    if keys > 0 && !force {
        return Err(anyhow::Error::new(TargetHasData(format!("{addr} holds {keys} keys"))));
    }
    let scratch = tempfile::Builder::new().prefix("cirkel-redis-restore-").tempdir()?;
    let bytes = restore_to_dir(repo, snapshot, scratch.path(), false)?;
    // The address the target will use to reach us: the local end of a route to it.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    probe.connect((host, port))?;
    let local = probe.local_addr()?.ip().to_string();
    let listener = std::net::TcpListener::bind((local.as_str(), 0))?;
    let source_port = listener.local_addr()?.port();
    drop(listener);
    let password = format!("{:032x}", rand::random::<u128>());
    target.secrets.push(password.clone());
    let mut source = start_private(&local, source_port, scratch.path(), &password)?;
    let result = replicate(&mut target, &mut source, &local, source_port, &password);
    let _ = source.kill();
    let _ = source.wait();
    result?;
    Ok(bytes)
}

/// A failed connection or `AUTH`, with what to check.
fn connect_error(e: RespError, had_password: bool) -> anyhow::Error {
    let text = e.to_string();
    if e.is_server() && !had_password {
        anyhow::anyhow!("{text} (the target asks for a password: set REDISCLI_AUTH)")
    } else {
        anyhow::anyhow!("{text}")
    }
}

/// Makes the target a replica of the private server until it has loaded
/// the data, then detaches it and puts its `masterauth` back.
fn replicate(
    target: &mut Target,
    source: &mut Child,
    local: &str,
    source_port: u16,
    password: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + LOAD_TIMEOUT;
    while TcpStream::connect((local, source_port)).is_err() {
        if let Ok(Some(status)) = source.try_wait() {
            anyhow::bail!("the private redis-server exited ({status}) before it listened");
        }
        anyhow::ensure!(Instant::now() < deadline, "the private redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let old_auth = target
        .cmd("CONFIG GET masterauth", &["CONFIG", "GET", "masterauth"])?
        .array()
        .get(1)
        .and_then(|v| v.text())
        .unwrap_or_default();
    target.secrets.push(old_auth.clone());
    target.cmd("CONFIG SET masterauth", &["CONFIG", "SET", "masterauth", password])?;
    let port = source_port.to_string();
    let synced = target.cmd("REPLICAOF", &["REPLICAOF", local, &port]).and_then(|_| {
        loop {
            let info = crate::resp::parse_info(
                &target.cmd("INFO replication", &["INFO", "replication"])?.text().unwrap_or_default(),
            );
            let is = |k: &str, v: &str| info.get(k).map(String::as_str) == Some(v);
            if is("master_link_status", "up") && is("master_sync_in_progress", "0") {
                break Ok(true);
            }
            if Instant::now() > deadline {
                break Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    // Detach and restore the old setting whatever happened above.
    let detached = target.cmd("REPLICAOF NO ONE", &["REPLICAOF", "NO", "ONE"]);
    let restored = target.cmd("CONFIG SET masterauth", &["CONFIG", "SET", "masterauth", &old_auth]);
    let synced = synced?;
    detached?;
    restored?;
    anyhow::ensure!(
        synced,
        "{} did not finish loading the backup within {} s",
        target.conn.addr,
        LOAD_TIMEOUT.as_secs()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_config_values_quoted() {
        let s = vec!["hunter2".to_string(), String::new()];
        assert_eq!(redact("ERR bad value hunter2 for x", &s), "ERR bad value <redacted> for x");
        assert_eq!(conf_quote("/tmp/a \"b\"\\c"), "\"/tmp/a \\\"b\\\"\\\\c\"");
    }
}
