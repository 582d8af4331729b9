//! `cirkel repo ...`: init, passphrases, verify, corruption, prune, copy, locks.

mod common;

use std::sync::Arc;

use cirkel_repo::backend::LocalBackend;
use cirkel_repo::{BlobKind, BlobWriter, Node, NodeKind, Repository, Snapshot, Tree};
use common::*;

#[test]
fn init_refuses_an_existing_repository_and_needs_a_passphrase() {
    let env = Env::new();
    env.init();
    let err = env.fails(&["repo", "init"]);
    assert!(err.contains("already exists"), "{err}");

    let mut c = env.cmd(&["repo", "init", "--repo", env.path("other").to_str().unwrap()]);
    c.env_remove("CIRKEL_PASSWORD_FILE");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs a passphrase") && stderr(&out).contains("hint:"), "{}", stderr(&out));
}

#[test]
fn wrong_passphrase_missing_repository_and_non_repository_path() {
    let env = Env::new();
    env.init();
    std::fs::write(env.path("wrong"), "not it\n").unwrap();
    let err = env.fails(&["--password-file", env.path("wrong").to_str().unwrap(), "snapshots"]);
    assert!(err.contains("wrong passphrase"), "{err}");

    let err = env.fails(&["--repo", env.path("does-not-exist").to_str().unwrap(), "snapshots"]);
    assert!(err.contains("no cirkel repository"), "{err}");

    std::fs::create_dir_all(env.path("plain-dir/sub")).unwrap();
    let err = env.fails(&["--repo", env.path("plain-dir").to_str().unwrap(), "snapshots"]);
    assert!(err.contains("no cirkel repository") && err.contains("repo init"), "{err}");

    let err = env.fails(&["--password-file", env.path("missing-pw").to_str().unwrap(), "snapshots"]);
    assert!(err.contains("cannot read password file"), "{err}");

    // JSON mode reports the error as JSON on stdout too.
    let out = env.run(&["--json", "--password-file", env.path("wrong").to_str().unwrap(), "snapshots"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["error"].as_str().unwrap().contains("wrong passphrase") && v["hint"].is_string());
}

#[test]
fn environment_password_and_added_keys_open_the_repository() {
    let env = Env::new();
    env.init();
    std::fs::write(env.path("pw2"), "second passphrase").unwrap();
    env.ok(&["repo", "add-key", "--new-password-file", env.path("pw2").to_str().unwrap()]);
    env.ok(&["--password-file", env.path("pw2").to_str().unwrap(), "snapshots"]);
    let mut c = env.cmd(&["snapshots"]);
    c.env_remove("CIRKEL_PASSWORD_FILE").env("CIRKEL_PASSWORD", "correct horse battery staple");
    assert!(c.output().unwrap().status.success());
}

#[test]
fn unencrypted_repository_is_an_explicit_choice() {
    let env = Env::new();
    let out = env.ok(&["repo", "init", "--no-encryption"]);
    assert!(out.contains("NOT encrypted"), "{out}");
    let src = env.path("src");
    make_tree(&src);
    let mut c = env.cmd(&["backup", "files", src.to_str().unwrap()]);
    c.env_remove("CIRKEL_PASSWORD_FILE");
    assert!(c.output().unwrap().status.success());
    let raw: Vec<u8> = walk_files(&env.path("repo")).iter().flat_map(|p| std::fs::read(p).unwrap()).collect();
    assert!(raw.windows(20).any(|w| w == b"cirkel keeps things\n"), "plaintext is visible when unencrypted");

    let enc = Env::new();
    enc.init();
    make_tree(&enc.path("src"));
    enc.ok(&["backup", "files", enc.path("src").to_str().unwrap()]);
    let raw: Vec<u8> = walk_files(&enc.path("repo")).iter().flat_map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!raw.windows(20).any(|w| w == b"cirkel keeps things\n"), "encrypted by default");
}

fn packs(env: &Env) -> Vec<std::path::PathBuf> {
    walk_files(&env.path("repo/data"))
}

#[test]
fn corrupted_pack_is_named_and_restore_fails_loudly_for_affected_files_only() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    // Two big files land in different packs (16 MiB each).
    cirkel_testkit::write_random_file(&src.join("a.bin"), 20_000_000, 1);
    cirkel_testkit::write_random_file(&src.join("b.bin"), 20_000_000, 2);
    std::fs::write(src.join("small.txt"), "small").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    env.ok(&["repo", "verify", "--read-data"]);

    // Flip one bit in the middle of the first data pack.
    let mut all = packs(&env);
    all.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = all.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x10;
    std::fs::write(victim, bytes).unwrap();

    let out = env.run(&["repo", "verify", "--read-data"]);
    assert!(!out.status.success());
    let text = stdout(&out) + &stderr(&out);
    let victim_name = victim.file_name().unwrap().to_str().unwrap();
    assert!(text.contains(victim_name), "names the pack: {text}");
    assert!(text.contains("damaged snapshot"), "{text}");
    let damaged_a = text.contains("a.bin");
    let damaged_b = text.contains("b.bin");
    assert!(damaged_a ^ damaged_b, "exactly one file is affected: {text}");

    let target = env.path("out");
    let out = env.run(&["restore", "files", "latest", "--to", target.to_str().unwrap()]);
    assert!(!out.status.success(), "restore must fail loudly");
    let err = stderr(&out);
    assert!(err.contains("could not be restored") && err.contains("hint:"), "{err}");
    let r = restored(&target, &src);
    let (bad, good) = if damaged_a { ("a.bin", "b.bin") } else { ("b.bin", "a.bin") };
    assert!(err.contains(bad), "{err}");
    assert_eq!(std::fs::read(r.join(good)).unwrap(), std::fs::read(src.join(good)).unwrap());
    assert_eq!(std::fs::read_to_string(r.join("small.txt")).unwrap(), "small");
}

#[test]
fn a_deleted_pack_is_found_without_reading_data() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    for p in packs(&env) {
        std::fs::remove_file(p).unwrap();
    }
    let out = env.run(&["repo", "verify"]);
    assert!(!out.status.success());
    assert!(stdout(&out).contains("missing"), "{}", stdout(&out));
}

#[test]
fn prune_applies_retention_and_frees_space() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..4u64 {
        cirkel_testkit::write_random_file(&src.join("data.bin"), 2_000_000, 100 + i);
        env.ok(&["backup", "files", src.to_str().unwrap(), "--tag", if i == 0 { "pre-deploy" } else { "daily" }]);
    }
    assert_eq!(env.snapshot_ids().len(), 4);
    let dry = env.json(&["repo", "prune", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["snapshots_removed"], 3);
    assert_eq!(env.snapshot_ids().len(), 4, "dry run changes nothing");

    let v = env.json(&["repo", "prune", "--keep-last", "1", "--keep-tag", "pre-deploy"]);
    assert_eq!(v["snapshots_removed"], 2);
    assert!(v["bytes_freed"].as_u64().unwrap() > 3_000_000, "{v}");
    assert_eq!(env.snapshot_ids().len(), 2);
    env.ok(&["repo", "verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(restored(&out, &src).join("data.bin")).unwrap(),
        std::fs::read(src.join("data.bin")).unwrap()
    );

    // --tag limits the policy to tagged snapshots
    let v = env.json(&["repo", "prune", "--keep-last", "0", "--keep-within", "1s", "--tag", "pre-deploy"]);
    assert!(v["decisions"].as_array().unwrap().iter().any(|d| d["reasons"][0] == "not selected by --tag"), "{v}");
}

#[test]
fn prune_while_a_backup_holds_its_lock_defers_data_removal() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..2u64 {
        cirkel_testkit::write_random_file(&src.join("data.bin"), 3_000_000, 200 + i);
        env.ok(&["backup", "files", src.to_str().unwrap()]);
    }
    // A backup stopped (SIGSTOP) while it holds its lock: a live writer.
    cirkel_testkit::write_random_file(&src.join("big.bin"), 60_000_000, 3);
    let mut child =
        env.cmd(&["-q", "backup", "files", src.to_str().unwrap()]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let locks = env.path("repo/locks");
    let start = std::time::Instant::now();
    while std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(start.elapsed().as_secs() < 20, "backup never took its lock");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let v = env.json(&["repo", "prune", "--keep-last", "1"]);
    assert_eq!(v["snapshots_removed"], 1);
    assert!(v["deferred"].as_str().unwrap().contains("backup in progress"), "{v}");
    assert_eq!(v["packs_removed"], 0);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    assert!(child.wait().unwrap().success(), "the backup completes");
    env.ok(&["repo", "verify", "--read-data"]);
    // Now nothing runs: the next prune removes the data.
    let v = env.json(&["repo", "prune", "--keep-last", "1"]);
    assert!(v["deferred"].is_null(), "{v}");
    assert!(v["bytes_freed"].as_u64().unwrap() > 0, "{v}");
    env.ok(&["repo", "verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
}

#[test]
fn copy_to_a_second_repository_is_idempotent_and_moves_only_missing_data() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let dr = env.path("dr-repo").display().to_string();
    // Without shared keys the copy is refused with a hint.
    env.ok(&["repo", "init", "--repo", &dr]);
    let err = env.fails(&["repo", "copy", "--to", &dr]);
    assert!(err.contains("do not share a master key") && err.contains("--copy-keys-from"), "{err}");
    std::fs::remove_dir_all(&dr).unwrap();

    std::fs::write(env.path("dr-pw"), "another passphrase").unwrap();
    let dr_pw = env.path("dr-pw").display().to_string();
    env.ok(&[
        "repo",
        "init",
        "--repo",
        &dr,
        "--password-file",
        &dr_pw,
        "--copy-keys-from",
        &env.repo,
        "--from-password-file",
        env.password_file.to_str().unwrap(),
    ]);
    let v = env.json(&["repo", "copy", "--to", &dr, "--to-password-file", &dr_pw]);
    assert_eq!(v["copied"].as_array().unwrap().len(), 1);
    let first_bytes = v["stats"]["bytes_new_stored"].as_u64().unwrap();
    assert!(first_bytes > 3_000_000);

    let again = env.json(&["repo", "copy", "--to", &dr, "--to-password-file", &dr_pw]);
    assert_eq!(again["copied"].as_array().unwrap().len(), 0);
    assert_eq!(again["already_present"].as_array().unwrap().len(), 1);

    // A second snapshot with one changed file: only that file's data travels.
    std::fs::write(src.join("docs/readme.txt"), "new text").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let v = env.json(&["repo", "copy", "--to", &dr, "--to-password-file", &dr_pw]);
    assert_eq!(v["copied"].as_array().unwrap().len(), 1);
    assert!(v["stats"]["bytes_new_stored"].as_u64().unwrap() < 100_000, "{v}");

    let dr_env = |args: &[&str]| {
        let mut a = vec!["--repo", dr.as_str(), "--password-file", dr_pw.as_str()];
        a.extend_from_slice(args);
        env.ok(&a)
    };
    dr_env(&["repo", "verify", "--read-data"]);
    let out = env.path("out");
    dr_env(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
}

#[test]
fn either_cipher_backs_up_restores_and_copies_with_shared_keys() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    for (cipher, stored) in [("xchacha20-poly1305", "xchacha20poly1305"), ("aes-256-gcm", "aes256gcm")] {
        let repo = env.path(cipher).display().to_string();
        let v = env.json(&["repo", "init", "--repo", &repo, "--cipher", cipher]);
        assert_eq!(v["encryption"], stored);
        env.ok(&["--repo", &repo, "backup", "files", src.to_str().unwrap()]);
        env.ok(&["--repo", &repo, "repo", "verify", "--read-data"]);
        let out = env.path(&format!("out-{cipher}"));
        env.ok(&["--repo", &repo, "restore", "files", "latest", "--to", out.to_str().unwrap()]);
        assert_same_tree(&src, &restored(&out, &src));
    }
    // A repository sharing the master key takes the source's cipher, since
    // sealed blobs move between the two verbatim.
    let dr = env.path("dr").display().to_string();
    let from = env.path("xchacha20-poly1305").display().to_string();
    let err = env.fails(&["repo", "init", "--repo", &dr, "--copy-keys-from", &from, "--cipher", "aes-256-gcm"]);
    assert!(err.contains("--cipher differs") && err.contains("xchacha20poly1305"), "{err}");
    let v = env.json(&["repo", "init", "--repo", &dr, "--copy-keys-from", &from]);
    assert_eq!(v["encryption"], "xchacha20poly1305");
    env.ok(&["--repo", &from, "repo", "copy", "--to", &dr]);
    let out = env.path("out-dr");
    env.ok(&["--repo", &dr, "restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
}

/// A snapshot crafted to escape the restore target: `..`, slashes, a
/// duplicated name and a symlink that would redirect a later directory.
#[test]
fn restore_never_writes_outside_the_target() {
    let env = Env::new();
    env.init();
    let repo = Repository::open(Arc::new(LocalBackend::new(&env.repo)), Some(b"correct horse battery staple")).unwrap();
    let writer = BlobWriter::new(&repo, Arc::new(repo.load_index().unwrap()));
    let data = writer.add(BlobKind::Data, b"pwned").unwrap();
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let file = |name: &str| Node {
        name: name.into(),
        kind: NodeKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        size: 5,
        content: vec![data],
        content_lists: Vec::new(),
        subtree: None,
        link_target: None,
        ..Node::default()
    };
    let inner = Tree { nodes: vec![file("victim")] };
    let inner_id = writer.add(BlobKind::Tree, &inner.to_bytes()).unwrap();
    let mut link = file("ln");
    link.kind = NodeKind::Symlink;
    link.content.clear();
    link.size = 0;
    link.link_target = Some(outside.display().to_string());
    let mut dir = file("ln");
    dir.kind = NodeKind::Dir;
    dir.content.clear();
    dir.size = 0;
    dir.subtree = Some(inner_id);
    let mut nodes = vec![file(".."), file("../escape"), file("a/b"), file("ok"), link, dir];
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let root = writer.add(BlobKind::Tree, &Tree { nodes }.to_bytes()).unwrap();
    writer.finish().unwrap();
    repo.save_snapshot(&Snapshot::new("files", "evil", vec!["/x".into()], root)).unwrap();

    let target = env.path("target");
    let out = env.run(&["restore", "files", "latest", "--to", target.to_str().unwrap()]);
    assert!(!out.status.success(), "unsafe entries make the restore fail");
    let err = stderr(&out);
    assert!(err.contains("unsafe or duplicate name"), "{err}");
    assert_eq!(std::fs::read_to_string(target.join("ok")).unwrap(), "pwned", "safe entries still restore");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing written through the symlink");
    assert!(!env.path("escape").exists());
    assert!(!env.dir.path().parent().unwrap().join("escape").exists());
}

/// Two writers at once never corrupt the repository: both snapshots verify
/// and restore, and data they share is stored once or twice but read right.
#[test]
fn two_concurrent_backups_both_complete() {
    let env = Env::new();
    env.init();
    let a = env.path("a");
    let b = env.path("b");
    make_tree(&a);
    make_tree(&b);
    // Shared content in both trees, so both writers race to store the same blobs.
    cirkel_testkit::write_random_file(&a.join("shared.bin"), 30_000_000, 42);
    cirkel_testkit::write_random_file(&b.join("shared.bin"), 30_000_000, 42);
    cirkel_testkit::write_random_file(&b.join("own.bin"), 10_000_000, 43);
    let spawn = |p: &std::path::Path| {
        env.cmd(&["-q", "backup", "files", p.to_str().unwrap()]).stdout(std::process::Stdio::null()).spawn().unwrap()
    };
    let (mut ca, mut cb) = (spawn(&a), spawn(&b));
    assert!(ca.wait().unwrap().success());
    assert!(cb.wait().unwrap().success());
    assert_eq!(env.snapshot_ids().len(), 2);
    let v = env.json(&["repo", "verify", "--read-data"]);
    assert_eq!(v["ok"], true, "{v}");
    let list = env.json(&["snapshots"]);
    for s in list.as_array().unwrap() {
        let out = env.path(&format!("out-{}", s["short_id"].as_str().unwrap()));
        env.ok(&["restore", "files", s["id"].as_str().unwrap(), "--to", out.to_str().unwrap()]);
        let src = std::path::PathBuf::from(s["snapshot"]["paths"][0].as_str().unwrap());
        assert_same_tree(&src, &restored(&out, &src));
    }
    // Prune afterwards keeps both and leaves a clean repository.
    env.ok(&["repo", "prune"]);
    let v = env.json(&["repo", "verify", "--read-data"]);
    assert_eq!(v["ok"], true, "{v}");
}
