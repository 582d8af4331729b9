//! `cirkel backup files` / `restore files` / `snapshots` against the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn backup_and_restore_round_trip_keeps_metadata() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    let v = env.json(&["backup", "files", src.to_str().unwrap(), "--tag", "first"]);
    assert_eq!(v["snapshot"]["summary"]["files"], 5);
    assert_eq!(v["snapshot"]["tags"][0], "first");
    assert_eq!(v["snapshot"]["incomplete"], false);

    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
}

#[test]
fn unchanged_files_are_not_read_again_and_changes_are_found() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    let first = env.json(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(first["snapshot"]["summary"]["files_read"], 5);

    let second = env.json(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(second["snapshot"]["summary"]["files_read"], 0, "nothing changed");
    assert_eq!(second["snapshot"]["parent"], first["id"]);
    // Only directory trees can be new (ancestors such as /tmp change mtime).
    assert!(second["snapshot"]["summary"]["bytes_added"].as_u64().unwrap() < 16 * 1024, "{second}");

    std::fs::write(src.join("docs/readme.txt"), "changed\n").unwrap();
    let third = env.json(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(third["snapshot"]["summary"]["files_read"], 1);
    assert_ne!(third["snapshot"]["tree"], first["snapshot"]["tree"]);

    // --force reads everything
    let forced = env.json(&["backup", "files", "--force", src.to_str().unwrap()]);
    assert_eq!(forced["snapshot"]["summary"]["files_read"], 5);

    let out = env.path("out");
    env.ok(&["restore", "files", third["id"].as_str().unwrap(), "--to", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(restored(&out, &src).join("docs/readme.txt")).unwrap(), "changed\n");
}

#[test]
fn excludes_leave_regenerable_folders_out() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    std::fs::create_dir_all(src.join("app/node_modules/pkg")).unwrap();
    std::fs::write(src.join("app/node_modules/pkg/index.js"), "x").unwrap();
    std::fs::create_dir_all(src.join("venv/lib")).unwrap();
    std::fs::write(src.join("venv/lib/site.py"), "x").unwrap();
    std::fs::write(src.join("app/build.tmp"), "x").unwrap();
    std::fs::create_dir_all(src.join("cache")).unwrap();
    std::fs::write(src.join("cache/CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    std::fs::write(src.join("cache/big"), "x").unwrap();
    std::fs::write(src.join("app/keep.txt"), "keep").unwrap();
    let exclude_file = env.path("excludes");
    std::fs::write(&exclude_file, "# regenerable\nvenv/\n*.tmp\n").unwrap();

    env.ok(&[
        "backup",
        "files",
        src.to_str().unwrap(),
        "--exclude",
        "node_modules",
        "--exclude-file",
        exclude_file.to_str().unwrap(),
        "--exclude-if-present",
        "CACHEDIR.TAG",
    ]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    let r = restored(&out, &src);
    assert!(r.join("app/keep.txt").exists());
    assert!(!r.join("app/node_modules").exists());
    assert!(!r.join("venv").exists());
    assert!(!r.join("app/build.tmp").exists());
    assert!(!r.join("cache").exists());
    assert!(r.join("docs/readme.txt").exists());

    let err = env.fails(&["backup", "files", src.to_str().unwrap(), "--exclude", "[unclosed"]);
    assert!(err.contains("bad exclude pattern"), "{err}");
}

#[test]
fn snapshots_table_and_json() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap(), "--tag", "daily"]);
    env.ok(&["backup", "files", src.to_str().unwrap(), "--tag", "weekly"]);
    let table = env.ok(&["snapshots"]);
    assert!(table.contains("daily") && table.contains("weekly") && table.contains("2 snapshot(s)"), "{table}");
    let only = env.json(&["snapshots", "--tag", "weekly"]);
    assert_eq!(only.as_array().unwrap().len(), 1);
    assert_eq!(only[0]["snapshot"]["kind"], "files");
}

#[test]
fn missing_source_and_unknown_snapshot_are_clear_errors() {
    let env = Env::new();
    env.init();
    let err = env.fails(&["backup", "files", env.path("nope").to_str().unwrap()]);
    assert!(err.contains("cannot back up"), "{err}");
    let err = env.fails(&["restore", "files", "deadbeef", "--to", env.path("o").to_str().unwrap()]);
    assert!(err.contains("no snapshot matches"), "{err}");
    let err = env.fails(&["restore", "files", "latest", "--to", env.path("o").to_str().unwrap()]);
    assert!(err.contains("no files snapshot"), "{err}");
}

/// An unreadable file is reported, the snapshot is marked incomplete, and
/// the command exits non-zero; everything readable is still backed up.
/// Root reads anything, so cirkel runs as `nobody` here.
#[test]
fn unreadable_file_marks_snapshot_incomplete() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("ok.txt"), "fine").unwrap();
    std::fs::write(src.join("secret.txt"), "no").unwrap();
    std::fs::set_permissions(src.join("secret.txt"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&env.password_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();

    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    let run = |args: &[&str]| {
        let mut c = env.cmd(args);
        if as_root {
            let mut wrapped = std::process::Command::new("setpriv");
            wrapped.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(shared_bin()).args(args);
            for (k, v) in c.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            c = wrapped;
        }
        c.output().unwrap()
    };
    assert!(run(&["repo", "init"]).status.success());
    let out = run(&["--json", "backup", "files", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("secret.txt") && err.contains("incomplete"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["snapshot"]["incomplete"], true);
    assert_eq!(v["snapshot"]["errors"][0]["path"], src.join("secret.txt").display().to_string());
    assert_eq!(v["snapshot"]["summary"]["files"], 1);
    let table = stdout(&run(&["snapshots"]));
    assert!(table.contains(" !"), "incomplete snapshots are flagged: {table}");
}

/// Name, inode, mode, owner, size, mtime and content of a directory and of
/// everything below it: what a restore must not touch outside its target.
fn fingerprint(root: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = p.symlink_metadata().unwrap();
        let content = if m.is_file() {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&p).unwrap().hash(&mut h);
            format!("content={:x}", h.finish())
        } else {
            String::new()
        };
        out.push(format!(
            "{} ino={} mode={:o} owner={}:{} size={} mtime={}.{} {content}",
            p.display(),
            m.ino(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ));
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// A restore as root into a target where an unprivileged user owns a
/// directory: that user swaps the directory for a symlink to an outside
/// directory over and over while the restore runs. Nothing outside the
/// target may be created, replaced, chowned, chmodded or written.
#[test]
fn root_restore_never_follows_a_directory_swapped_for_a_symlink() {
    use std::os::unix::fs::{PermissionsExt, chown};
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test restores as root against an unprivileged user");
    let env = Env::new();
    env.init();
    let src = env.path("src");
    let sub = src.join("home/sub");
    std::fs::create_dir_all(&sub).unwrap();
    for i in 0..3000 {
        std::fs::write(sub.join(format!("f{i:04}")), format!("restored file {i}\n")).unwrap();
    }
    cirkel_testkit::write_random_file(&sub.join("f0001"), 3 << 20, 1);
    cirkel_testkit::write_random_file(&sub.join("f0002"), 5 << 20, 2);
    std::os::unix::fs::symlink("f0003", sub.join("link-f0003")).unwrap();
    // The user's own directories stay theirs in the snapshot, and so in the restore.
    chown(src.join("home"), Some(65534), Some(65534)).unwrap();
    chown(&sub, Some(65534), Some(65534)).unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);

    // Outside: root's files, some with names the snapshot holds.
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for i in 0..30 {
        std::fs::write(outside.join(format!("f{i:04}")), "root's own file\n").unwrap();
        std::fs::set_permissions(outside.join(format!("f{i:04}")), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = fingerprint(&outside);

    // The target already holds the user's directories (a restore over a home).
    let target = env.path("target");
    let home = restored(&target, &src).join("home");
    std::fs::create_dir_all(home.join("sub")).unwrap();
    chown(&home, Some(65534), Some(65534)).unwrap();
    chown(home.join("sub"), Some(65534), Some(65534)).unwrap();
    // The directory is in place most of the time (so that the restore
    // enters it) and a symlink now and then.
    let swapper = "chdir $ARGV[0] or die; symlink($ARGV[1], 'link') or die; \
                   while (1) { rename('sub', 'real'); rename('link', 'sub'); rename('sub', 'link'); rename('real', 'sub'); \
                               lstat('sub') for 1..500; }";
    let mut child = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "perl", "-e", swapper])
        .arg(&home)
        .arg(&outside)
        .spawn()
        .unwrap();
    // The swapper is running once its link exists.
    while home.join("link").symlink_metadata().is_err() && home.join("sub").read_link().is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the swapper stopped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = env.run(&["restore", "files", "latest", "--to", target.to_str().unwrap()]);
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(still_running, "the swapper ran through the whole restore");
    let after = fingerprint(&outside);
    let changed: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    assert!(
        changed.is_empty() && gone.is_empty(),
        "the restore changed {} entries outside its target: {changed:#?}\nwas: {gone:#?}\nrestore: {}",
        changed.len(),
        stderr(&out)
    );
}
