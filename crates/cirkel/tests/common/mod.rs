//! Helpers for running the real `cirkel` binary in tests.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_cirkel");

/// A scratch area with a repository path and a password file.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: String,
    pub password_file: PathBuf,
    pub extra_env: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "correct horse battery staple\n").unwrap();
        let repo = dir.path().join("repo").display().to_string();
        Env { dir, repo, password_file, extra_env: Vec::new() }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("CIRKEL_") || k.starts_with("AWS_") {
                c.env_remove(k);
            }
        }
        c.env("CIRKEL_REPO", &self.repo).env("CIRKEL_PASSWORD_FILE", &self.password_file);
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "cirkel {args:?} failed: {}\nstdout: {}", stderr(&out), stdout(&out));
        stdout(&out)
    }

    /// Runs with --json and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let s = self.ok(&a);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    }

    /// Runs, asserts failure with an `error:` and a `hint:`; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let err = stderr(&out);
        assert!(!out.status.success(), "cirkel {args:?} should fail; stdout: {}", stdout(&out));
        assert!(err.contains("error: "), "no `error:` line: {err}");
        assert!(err.contains("hint: "), "no `hint:` line: {err}");
        err
    }

    pub fn init(&self) {
        self.ok(&["repo", "init"]);
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        let v = self.json(&["snapshots"]);
        v.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Compares two trees: names, types, contents, permission bits, symlink
/// targets and file mtimes.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let mut list_a = list(a);
    let mut list_b = list(b);
    list_a.sort();
    list_b.sort();
    assert_eq!(list_a, list_b, "different entries under {} and {}", a.display(), b.display());
    for rel in list_a {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (pa.symlink_metadata().unwrap(), pb.symlink_metadata().unwrap());
        assert_eq!(ma.file_type(), mb.file_type(), "{rel}");
        if ma.file_type().is_symlink() {
            assert_eq!(std::fs::read_link(&pa).unwrap(), std::fs::read_link(&pb).unwrap(), "{rel}");
            continue;
        }
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {rel}");
        if ma.is_file() {
            assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap(), "content of {rel}");
            assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "mtime of {rel}");
        }
    }
}

fn list(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Where `restore files` puts an absolute source path below a target.
pub fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

/// A small tree with text, binary, nested dirs, odd permissions and symlinks.
pub fn make_tree(root: &Path) {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(root.join("docs/deep/er")).unwrap();
    std::fs::write(root.join("docs/readme.txt"), "cirkel keeps things\n".repeat(50)).unwrap();
    std::fs::write(root.join("docs/deep/er/empty"), "").unwrap();
    cirkel_testkit::write_random_file(&root.join("bin/blob.bin"), 3_000_000, 7);
    cirkel_testkit::write_random_file(&root.join("bin/small.bin"), 1000, 8);
    std::fs::write(root.join("script.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(root.join("script.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::set_permissions(root.join("docs/deep"), std::fs::Permissions::from_mode(0o700)).unwrap();
    symlink("docs/readme.txt", root.join("link-rel")).unwrap();
    symlink("/nonexistent/target", root.join("link-dangling")).unwrap();
    filetime::set_file_mtime(
        root.join("docs/readme.txt"),
        filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789),
    )
    .unwrap();
}

/// Every file (not directory) below `root`.
pub fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { stack.push(p) } else { out.push(p) }
        }
    }
    out
}

/// The binary, at a path other users (postgres, nobody) can execute. When the
/// build directory is private (a checkout under /root, say), a copy is made
/// once in a world-readable temporary directory.
pub fn shared_bin() -> String {
    static SHARED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let path = Path::new(BIN);
            let open_to_all = path
                .ancestors()
                .skip(1)
                .all(|dir| std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o001 != 0).unwrap_or(false));
            if open_to_all {
                return BIN.to_string();
            }
            let dir = std::env::temp_dir().join(format!("cirkel-test-bin-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let copy = dir.join("cirkel");
            std::fs::copy(path, &copy).unwrap();
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            copy.display().to_string()
        })
        .clone()
}

/// A GET over plain HTTP/1.1 from the test: the status and the body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // hyper answers small bodies with a length; larger ones may be chunked.
    Ok((status, dechunk(&body)))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else { return body.to_string() };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return body.to_string() };
        if n == 0 {
            return out;
        }
        if after.len() < n {
            return body.to_string();
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// `promtool check metrics` on `text`: the lint Prometheus's own tools apply.
pub fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let promtool = cirkel_testkit::require_program("promtool", "apt-get install prometheus");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool refused the exposition:\n{}\n{}", stderr(&out), stdout(&out));
    stdout(&out) + &stderr(&out)
}
