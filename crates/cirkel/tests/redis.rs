//! Redis backups against a real redis-server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cirkel_testkit::RedisServer;
use common::*;

#[test]
fn backup_while_writing_restores_a_consistent_instance() {
    let env = Env::new();
    env.init();
    let redis = RedisServer::start();
    for i in 0..500 {
        redis.cli(&["SET", &format!("k:{i}"), &format!("value {i}")]);
    }
    redis.cli(&["HSET", "h", "a", "1", "b", "2"]);
    redis.cli(&["RPUSH", "list", "x", "y", "z"]);
    // A writer keeps going during the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let port = redis.port;
    let s = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            let _ = std::process::Command::new("redis-cli").args(["-p", &port.to_string(), "INCR", "counter"]).output();
            n += 1;
        }
        n
    });
    let port_s = redis.port.to_string();
    let v = env.json(&["redis", "backup", "--port", &port_s, "--group", "cache", "--tag", "hourly"]);
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(v["snapshot"]["kind"], "redis");
    assert_eq!(v["snapshot"]["meta"]["group"], "cache");
    let list = env.json(&["redis", "backups"]);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let dir = env.path("restored");
    env.ok(&["redis", "restore", "latest", "--to", dir.to_str().unwrap()]);
    let restored = RedisServer::start_in(Some(&dir));
    for i in [0, 250, 499] {
        assert_eq!(restored.cli(&["GET", &format!("k:{i}")]), format!("value {i}"));
    }
    assert_eq!(restored.cli(&["HGET", "h", "b"]), "2");
    assert_eq!(restored.cli(&["LRANGE", "list", "0", "-1"]), "x\ny\nz");
    let counter: u64 = restored.cli(&["GET", "counter"]).parse().unwrap_or(0);
    let keys: u64 = restored.cli(&["DBSIZE"]).parse().unwrap();
    assert_eq!(keys, 502 + u64::from(counter > 0), "a point-in-time copy: every key, nothing half-written");

    // An existing dump.rdb is not overwritten without --force.
    let err = env.fails(&["redis", "restore", "latest", "--to", dir.to_str().unwrap()]);
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    env.ok(&["redis", "restore", "latest", "--to", dir.to_str().unwrap(), "--force"]);
}

#[test]
fn damaged_rdb_files_are_rejected() {
    let redis = RedisServer::start();
    redis.cli(&["SET", "a", "b"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.rdb");
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "--rdb"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let bytes = std::fs::read(&file).unwrap();
    assert!(cirkel_redis::rdb::check(&bytes).is_ok());
    let truncated = &bytes[..bytes.len() - 5];
    assert!(cirkel_redis::rdb::check(truncated).is_err(), "a truncated file is refused");
    let mut flipped = bytes.clone();
    flipped[12] ^= 0x20;
    let err = cirkel_redis::rdb::check(&flipped).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");

    // And through the CLI: nothing listens on this port.
    let env = Env::new();
    env.init();
    let port = cirkel_testkit::free_port().to_string();
    let err = env.fails(&["redis", "backup", "--port", &port]);
    assert!(err.contains("redis-cli --rdb"), "{err}");
}

#[test]
fn restore_into_a_running_server() {
    let env = Env::new();
    env.init();
    let source = RedisServer::start();
    for i in 0..200 {
        source.cli(&["SET", &format!("k:{i}"), &format!("v{i}")]);
    }
    env.ok(&["redis", "backup", "--port", &source.port.to_string()]);
    let target = RedisServer::start();
    let to = format!("127.0.0.1:{}", target.port);
    env.ok(&["redis", "restore", "latest", "--to", &to]);
    assert_eq!(target.cli(&["DBSIZE"]), "200");
    assert_eq!(target.cli(&["GET", "k:199"]), "v199");
    assert!(target.cli(&["INFO", "replication"]).contains("role:master"), "detached after loading");
    target.cli(&["SET", "fresh", "1"]);
    // A target with keys is not overwritten without --force.
    let err = env.fails(&["redis", "restore", "latest", "--to", &to]);
    assert!(err.contains("holds 201 keys") && err.contains("--force"), "{err}");
    env.ok(&["redis", "restore", "latest", "--to", &to, "--force"]);
    assert_eq!(target.cli(&["DBSIZE"]), "200");
}

/// A server with a password or an ACL user: the group's `password_file`
/// (and `user`) reach redis-cli without appearing on its command line, and a
/// missing or wrong password gets a hint that names them.
#[test]
fn password_file_and_acl_user_authenticate_and_failures_name_them() {
    let env = Env::new();
    env.init();
    let redis = RedisServer::start();
    redis.cli(&["SET", "k", "v"]);
    redis.cli(&["ACL", "SETUSER", "backup", "on", ">backup-secret", "~*", "+@all"]);
    redis.cli(&["CONFIG", "SET", "requirepass", "s3cret"]);
    let port = redis.port.to_string();

    let err = env.fails(&["redis", "backup", "--host", "127.0.0.1", "--port", &port]);
    assert!(err.contains("NOAUTH") || err.contains("Authentication required"), "{err}");
    assert!(err.contains("password_file") && err.contains("Redis authentication"), "{err}");

    let write_cfg = |user: Option<&str>, password: &str| {
        let pw = env.path("redis-password");
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let cfg = env.path("redis.toml");
        let user = user.map(|u| format!("user = \"{u}\"\n")).unwrap_or_default();
        std::fs::write(
            &cfg,
            format!(
                "[redis.cache]\nmembers = [\"127.0.0.1:{port}\"]\nsentinels = [\"127.0.0.1:1\"]\n\
                 password_file = \"{}\"\n{user}",
                pw.display()
            ),
        )
        .unwrap();
        cfg.display().to_string()
    };
    let backup = |cfg: &str| {
        env.run(&["--config", cfg, "redis", "backup", "--group", "cache", "--host", "127.0.0.1", "--port", &port])
    };
    let cfg = write_cfg(None, "s3cret");
    let out = backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = write_cfg(Some("backup"), "backup-secret");
    let out = backup(&cfg);
    assert!(out.status.success(), "the ACL user: {}", stderr(&out));
    let cfg = write_cfg(Some("backup"), "wrong");
    let err =
        env.fails(&["--config", &cfg, "redis", "backup", "--group", "cache", "--host", "127.0.0.1", "--port", &port]);
    assert!(err.contains("WRONGPASS"), "{err}");
    assert!(err.contains("check password_file and user"), "{err}");
    assert_eq!(env.json(&["redis", "backups"]).as_array().unwrap().len(), 2);
}

/// Every process's command line, with its parent pid.
fn command_lines() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state, ppid, …
        let ppid =
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
    }
    out
}

/// A program that records its arguments in `log`, then runs `real`.
fn recording_wrapper(env: &Env, name: &str, real: &str, log: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = env.path(name);
    std::fs::write(&path, format!("#!/bin/sh\necho \"$0 $*\" >> '{}'\nexec {real} \"$@\"\n", log.display())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Tokens that look like the private server's password (32 hex digits).
fn hex32_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit()).filter(|t| t.len() == 32).map(str::to_string).collect()
}

#[test]
fn restore_into_a_server_keeps_passwords_out_of_process_arguments() {
    let mut env = Env::new();
    env.init();
    let source = RedisServer::start();
    // Enough data that the load takes a moment to watch.
    source.cli(&["EVAL", "for i=1,200000 do redis.call('SET','k:'..i,string.rep('v',64)) end", "0"]);
    env.ok(&["redis", "backup", "--port", &source.port.to_string()]);
    let target = RedisServer::start();
    let secret = "target-secret-4d1f9e";
    target.cli(&["CONFIG", "SET", "masterauth", "old-masterauth-77"]);
    target.cli(&["CONFIG", "SET", "requirepass", secret]);
    // Wrappers record the arguments of every redis program cirkel starts.
    let args_log = env.path("args.log");
    let server = recording_wrapper(&env, "redis-server-wrapper", "redis-server", &args_log);
    let cli = recording_wrapper(&env, "redis-cli-wrapper", "redis-cli", &args_log);
    env.extra_env.push(("REDIS_SERVER".into(), server.display().to_string()));
    env.extra_env.push(("REDIS_CLI".into(), cli.display().to_string()));
    env.extra_env.push(("REDISCLI_AUTH".into(), secret.into()));
    let to = format!("127.0.0.1:{}", target.port);
    let mut child = env
        .cmd(&["redis", "restore", "latest", "--to", &to])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read every command line while the restore runs.
    let (mut saw_private_server, mut leaks) = (false, Vec::new());
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < std::time::Duration::from_secs(120), "the restore hangs");
        for (_, ppid, line) in command_lines() {
            if ppid == pid && line.contains("redis-server") {
                saw_private_server = true;
            }
            if line.contains(secret) || line.contains("requirepass") || line.contains("masterauth") {
                leaks.push(line);
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert!(leaks.is_empty(), "passwords in process arguments: {leaks:?}");
    assert!(saw_private_server, "the private redis-server was never seen running");
    let recorded = std::fs::read_to_string(&args_log).unwrap();
    assert!(recorded.contains("redis-server"), "{recorded}");
    assert!(!recorded.contains("requirepass") && !recorded.contains("masterauth"), "{recorded}");
    assert!(hex32_tokens(&recorded).is_empty() && !recorded.contains(secret), "{recorded}");
    // The data arrived, the target is detached and its masterauth is back.
    assert_eq!(target.cli_with(Some(secret), &["DBSIZE"]), "200000");
    assert!(target.cli_with(Some(secret), &["INFO", "replication"]).contains("role:master"));
    assert!(target.cli_with(Some(secret), &["CONFIG", "GET", "masterauth"]).contains("old-masterauth-77"));
}

#[test]
fn a_failing_restore_call_does_not_print_a_password() {
    let env = Env::new();
    env.init();
    let source = RedisServer::start();
    source.cli(&["SET", "k", "v"]);
    env.ok(&["redis", "backup", "--port", &source.port.to_string()]);
    let target = RedisServer::start();
    let secret = "target-secret-90ab2c";
    // The target refuses CONFIG SET, the call that carries the private password.
    target.cli(&["CONFIG", "SET", "requirepass", secret]);
    target.cli_with(Some(secret), &["ACL", "SETUSER", "default", "-config|set"]);
    let to = format!("127.0.0.1:{}", target.port);
    let out = env.cmd(&["redis", "restore", "latest", "--to", &to]).env("REDISCLI_AUTH", secret).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("error: ") && err.contains("CONFIG SET masterauth") && err.contains("NOPERM"), "{err}");
    assert!(hex32_tokens(&err).is_empty() && !err.contains(secret), "a password in: {err}");
    // A wrong password is refused without being printed either.
    let out =
        env.cmd(&["redis", "restore", "latest", "--to", &to]).env("REDISCLI_AUTH", "wrong-pass-31c7").output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && !err.contains("wrong-pass-31c7") && !err.contains(secret), "{err}");
}
