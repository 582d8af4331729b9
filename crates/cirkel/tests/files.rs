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

/// Backs `src` up with restic 0.14 and restores it with `extra` flags: the
/// reference for what a restore keeps. Returns where `src` was restored.
fn restic_round_trip(env: &Env, src: &std::path::Path, extra: &[&str]) -> std::path::PathBuf {
    let repo = env.path("restic-repo");
    let target = env.path("restic-out");
    let restic = |args: &[&str]| {
        let out = std::process::Command::new("restic")
            .args(["--no-cache", "-q", "--repo", repo.to_str().unwrap()])
            .args(args)
            .env("RESTIC_PASSWORD_FILE", &env.password_file)
            .output()
            .unwrap();
        assert!(out.status.success(), "restic {args:?}: {}", stderr(&out));
    };
    restic(&["init"]);
    restic(&["backup", src.to_str().unwrap()]);
    let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
    args.extend_from_slice(extra);
    restic(&args);
    restored(&target, src)
}

/// Every entry below `root` by its name's bytes, relative to `root`.
fn raw_listing(root: &std::path::Path) -> Vec<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec());
            if p.symlink_metadata().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Names and link targets that are not UTF-8 come back byte for byte, and
/// two names that only differ in such bytes stay two files, as with restic.
#[test]
fn names_that_are_not_utf8_restore_byte_exact() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join(OsStr::from_bytes(b"dir\xff"))).unwrap();
    std::fs::write(src.join(OsStr::from_bytes(b"caf\xe9")), "latin-1").unwrap();
    std::fs::write(src.join(OsStr::from_bytes(b"caf\xe8")), "another").unwrap();
    std::fs::write(src.join("café"), "utf-8").unwrap();
    std::fs::write(src.join(OsStr::from_bytes(b"dir\xff/in\xfe")), "inside").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"dir\xff/in\xfe"), src.join(OsStr::from_bytes(b"link\x80"))).unwrap();
    let v = env.json(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(v["snapshot"]["incomplete"], false);
    assert_eq!(v["snapshot"]["summary"]["files"], 4);

    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    let r = restored(&out, &src);
    assert_eq!(raw_listing(&r), raw_listing(&src));
    for name in [&b"caf\xe9"[..], b"caf\xe8", "café".as_bytes(), b"dir\xff/in\xfe"] {
        let name = OsStr::from_bytes(name);
        assert_eq!(std::fs::read(r.join(name)).unwrap(), std::fs::read(src.join(name)).unwrap(), "{name:?}");
    }
    let link = OsStr::from_bytes(b"link\x80");
    assert_eq!(std::fs::read_link(r.join(link)).unwrap().as_os_str().as_bytes(), b"dir\xff/in\xfe");
    assert_eq!(raw_listing(&restic_round_trip(&env, &src, &[])), raw_listing(&r), "restic keeps the same names");
}

/// Files linked to one another restore as hard links of one another (one
/// inode, the same link count as in the source), as restic restores them.
#[test]
fn hard_links_restore_as_hard_links() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    cirkel_testkit::write_random_file(&src.join("a"), 3 << 20, 3);
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    std::fs::hard_link(src.join("a"), src.join("sub/c")).unwrap();
    std::fs::write(src.join("x"), "a pair").unwrap();
    std::fs::hard_link(src.join("x"), src.join("sub/y")).unwrap();
    std::fs::write(src.join("lone"), "one link").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let out = env.path("out");
    let v = env.json(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_eq!(v["report"]["hardlinks"], 3, "{v}");
    let r = restored(&out, &src);
    let ino = |rel: &str| r.join(rel).metadata().unwrap().ino();
    let nlink = |rel: &str| r.join(rel).metadata().unwrap().nlink();
    assert_eq!((ino("a"), nlink("a")), (ino("b"), 3));
    assert_eq!(ino("a"), ino("sub/c"));
    assert_eq!((ino("x"), nlink("x")), (ino("sub/y"), 2));
    assert_eq!(nlink("lone"), 1);
    assert_same_tree(&src, &r);

    let theirs = restic_round_trip(&env, &src, &[]);
    let restic_nlink = |rel: &str| theirs.join(rel).metadata().unwrap().nlink();
    for rel in ["a", "b", "sub/c", "x", "sub/y", "lone"] {
        assert_eq!(nlink(rel), restic_nlink(rel), "link count of {rel}, restic as the reference");
    }
}

/// `getfattr` of every entry below `root` (names relative to it), ACLs and
/// all extended attributes in hex.
fn attributes(root: &std::path::Path) -> String {
    let out = std::process::Command::new("getfattr")
        .args(["-R", "-P", "-d", "-m", "-", "-e", "hex", "."])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "getfattr: {}", stderr(&out));
    stdout(&out)
}

/// Extended attributes and POSIX ACLs (access and default) on files and
/// directories come back on the restored items, as restic restores them.
#[test]
fn extended_attributes_and_acls_round_trip() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("shared")).unwrap();
    std::fs::write(src.join("shared/report.txt"), "numbers").unwrap();
    std::fs::write(src.join("plain"), "no attributes").unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let out = std::process::Command::new(cmd).args(args).current_dir(&src).output().unwrap();
        assert!(out.status.success(), "{cmd} {args:?}: {}", stderr(&out));
    };
    run("setfattr", &["-n", "user.comment", "-v", "quarterly figures", "shared/report.txt"]);
    run("setfattr", &["-n", "user.binary", "-v", "0x00ff00fe", "shared/report.txt"]);
    run("setfattr", &["-n", "user.project", "-v", "apollo", "shared"]);
    run("setfacl", &["-m", "u:nobody:rw,g:nogroup:r", "shared/report.txt"]);
    run("setfacl", &["-m", "u:nobody:rwx", "shared"]);
    run("setfacl", &["-d", "-m", "u:nobody:rx", "shared"]);
    let want = attributes(&src);
    assert!(want.contains("system.posix_acl_default") && want.contains("user.binary=0x00ff00fe"), "{want}");

    let v = env.json(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(v["snapshot"]["incomplete"], false);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    let r = restored(&out, &src);
    assert_eq!(attributes(&r), want);
    assert_same_tree(&src, &r);
    assert_eq!(attributes(&restic_round_trip(&env, &src, &[])), want, "restic keeps the same attributes");
}

/// Device nodes and FIFOs are backed up as nodes and restored with their
/// numbers, owners and modes; a socket is recorded and left out of the
/// restore with a note. Nothing is skipped without a word.
#[test]
fn devices_fifos_and_sockets_are_kept_or_noted() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let run = |cmd: &str, args: &[&str]| {
        let out = std::process::Command::new(cmd).args(args).current_dir(&src).output().unwrap();
        assert!(out.status.success(), "{cmd} {args:?}: {}", stderr(&out));
    };
    run("mknod", &["-m", "0640", "null", "c", "1", "3"]);
    run("mknod", &["-m", "0600", "loop", "b", "7", "42"]);
    run("mkfifo", &["-m", "0620", "pipe"]);
    std::os::unix::fs::chown(src.join("pipe"), Some(65534), Some(65534)).unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    let v = env.json(&["backup", "files", src.to_str().unwrap()]);
    assert_eq!(v["snapshot"]["incomplete"], false, "{v}");

    let out = env.path("out");
    let o = env.run(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("note:") && stderr(&o).contains("sock"), "{}", stderr(&o));
    let r = restored(&out, &src);
    let m = |rel: &str| r.join(rel).symlink_metadata().unwrap();
    assert!(m("null").file_type().is_char_device());
    assert_eq!((m("null").rdev(), m("null").permissions().mode() & 0o7777), (libc::makedev(1, 3), 0o640));
    assert!(m("loop").file_type().is_block_device());
    assert_eq!(m("loop").rdev(), libc::makedev(7, 42));
    assert!(m("pipe").file_type().is_fifo());
    assert_eq!((m("pipe").uid(), m("pipe").mode() & 0o7777), (65534, 0o620));
    assert!(!r.join("sock").exists());

    let theirs = restic_round_trip(&env, &src, &[]);
    for rel in ["null", "loop", "pipe"] {
        let t = theirs.join(rel).symlink_metadata().unwrap();
        assert_eq!((m(rel).file_type(), m(rel).rdev()), (t.file_type(), t.rdev()), "{rel}, restic as the reference");
    }
}

/// A sparse file restores sparse: its holes stay holes and its content is
/// the same. (restic 0.14, the Debian package, has no `--sparse` yet and
/// writes the holes as zeros; newer restic skips all-zero chunks as this
/// restore does.)
#[test]
fn sparse_files_restore_sparse() {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let size: u64 = 256 << 20;
    let mut f = std::fs::File::create(src.join("disk.img")).unwrap();
    let data: Vec<u8> = (0..(1 << 20)).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
    for at in [0, 100 << 20, size - (1 << 20)] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&data).unwrap();
    }
    f.set_len(size).unwrap();
    drop(f);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    let r = restored(&out, &src).join("disk.img");
    assert_eq!(r.metadata().unwrap().len(), size);
    assert!(std::fs::read(&r).unwrap() == std::fs::read(src.join("disk.img")).unwrap(), "same content");
    let ours = r.metadata().unwrap().blocks() * 512;
    let theirs = restic_round_trip(&env, &src, &[]).join("disk.img").metadata().unwrap().blocks() * 512;
    assert!(ours < 6 << 20, "{ours} bytes allocated for 3 MiB of data in {size}");
    assert!(ours < theirs, "{ours} bytes allocated, restic: {theirs}");
}
