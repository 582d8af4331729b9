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

fn objects(env: &Env, dir: &str) -> Vec<std::path::PathBuf> {
    let mut v = walk_files(&env.path(&format!("repo/{dir}")));
    v.sort();
    v
}

/// A lost index object must not make prune delete the pack a kept snapshot
/// needs; `repo repair index` rebuilds the index from the packs.
#[test]
fn prune_refuses_while_a_kept_snapshot_needs_an_unindexed_blob() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    cirkel_testkit::write_random_file(&src.join("kept.bin"), 1_000_000, 7);
    std::fs::write(src.join("changing.txt"), "one").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let first_index = objects(&env, "index");
    assert_eq!(first_index.len(), 1);
    std::fs::write(src.join("changing.txt"), "two").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    std::fs::remove_file(&first_index[0]).unwrap();
    let packs_before = packs(&env);

    let err = env.fails(&["repo", "prune", "--keep-last", "1"]);
    assert!(err.contains("prune stopped before deleting anything") && err.contains("repo repair index"), "{err}");
    assert_eq!(packs(&env), packs_before, "no pack removed");
    assert_eq!(env.snapshot_ids().len(), 2, "no snapshot forgotten");

    let out = env.run(&["repo", "verify", "--read-data"]);
    assert!(!out.status.success(), "verify fails on damaged snapshots: {}", stdout(&out));
    assert!(!stdout(&out).contains("no errors found"), "{}", stdout(&out));

    let v = env.json(&["repo", "repair", "index", "--dry-run"]);
    assert_eq!(v["dry_run"], true);
    assert_eq!(objects(&env, "index").len(), 1, "a dry run writes nothing");
    let v = env.json(&["repo", "repair", "index"]);
    assert_eq!(v["packs"].as_u64().unwrap() as usize, packs_before.len(), "{v}");
    env.ok(&["repo", "verify", "--read-data"]);
    let v = env.json(&["repo", "prune", "--keep-last", "1"]);
    assert_eq!(v["snapshots_removed"], 1, "{v}");
    env.ok(&["repo", "verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
}

/// After a lost pack the index still names it; rebuilt from the packs it
/// does not, so the next backup stores the data again.
#[test]
fn after_a_lost_pack_repair_index_makes_the_next_backup_store_the_data_again() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    for p in packs(&env) {
        std::fs::remove_file(p).unwrap();
    }
    let old = env.snapshot_ids().remove(0);
    env.ok(&["repo", "repair", "index"]);
    env.ok(&["backup", "files", "--force", src.to_str().unwrap()]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));
    // At most the snapshot whose data was lost is reported (its root tree
    // may differ from the new one's, by a directory's time).
    let out = env.run(&["--json", "repo", "verify", "--read-data"]);
    let text = stdout(&out);
    let v: serde_json::Value = serde_json::Deserializer::from_str(&text).into_iter().next().unwrap().unwrap();
    for d in v["report"]["damaged"].as_array().unwrap() {
        assert_eq!(d["snapshot"], old.as_str(), "{v}");
    }
    env.ok(&["repo", "forget", &old]);
    env.ok(&["repo", "verify", "--read-data"]);
}

/// A snapshot whose data is partly lost is rewritten without the lost
/// files, tagged `repaired`, and the original forgotten.
#[test]
fn repair_snapshots_drops_lost_files_and_keeps_the_rest() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("small.txt"), "small").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let first = env.snapshot_ids();
    cirkel_testkit::write_random_file(&src.join("sub/big.bin"), 20_000_000, 11);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let original = env.snapshot_ids();
    // The largest pack holds only blocks of big.bin, which only the second snapshot has.
    let mut all = packs(&env);
    all.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    std::fs::remove_file(all.last().unwrap()).unwrap();
    env.ok(&["repo", "repair", "index"]);
    assert!(!env.run(&["repo", "verify"]).status.success());

    let v = env.json(&["repo", "repair", "snapshots", "--dry-run"]);
    let repaired = v["report"]["snapshots"].as_array().unwrap();
    assert_eq!(repaired.len(), 1, "{v}");
    assert_eq!(repaired[0]["original"], original[1].as_str(), "{v}");
    let dropped = repaired[0]["dropped"].as_array().unwrap();
    assert!(dropped.len() == 1 && dropped[0].as_str().unwrap().ends_with("/src/sub/big.bin"), "{v}");
    assert_eq!(env.snapshot_ids(), original, "a dry run changes nothing");

    let out = env.ok(&["repo", "repair", "snapshots"]);
    assert!(out.contains("/src/sub/big.bin"), "{out}");
    env.ok(&["repo", "verify", "--read-data"]);
    let list = env.json(&["snapshots"]);
    assert_eq!(list[0]["id"], first[0].as_str(), "the intact snapshot is untouched");
    assert!(!env.snapshot_ids().contains(&original[1]), "the original is forgotten");
    let snap = &list[1]["snapshot"];
    assert!(snap["tags"].as_array().unwrap().contains(&"repaired".into()), "{snap}");
    assert_eq!(snap["incomplete"], true);
    assert!(snap["errors"][0]["path"].as_str().unwrap().ends_with("/src/sub/big.bin"), "{snap}");
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    let r = restored(&out, &src);
    assert_eq!(std::fs::read_to_string(r.join("small.txt")).unwrap(), "small");
    assert!(!r.join("sub/big.bin").exists());
}

/// One damaged snapshot and junk under `snapshots/` and `index/` do not stop
/// listing, backing up, restoring other snapshots or verifying; deleting
/// refuses until they are dealt with.
#[test]
fn one_bad_object_does_not_stop_the_repository() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let old = env.snapshot_ids().remove(0);
    std::fs::write(src.join("docs/readme.txt"), "changed").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);

    let victim = env.path(&format!("repo/snapshots/{old}"));
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    let junk = "ab".repeat(32);
    std::fs::write(env.path(&format!("repo/snapshots/{junk}")), "junk").unwrap();
    std::fs::write(env.path(&format!("repo/index/{junk}")), "junk").unwrap();

    let out = env.run(&["--json", "snapshots"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(stderr(&out).contains(&format!("skipped unreadable snapshot snapshots/{old}")), "{}", stderr(&out));
    let v = env.json(&["backup", "files", src.to_str().unwrap()]);
    let warnings = v["warnings"].as_array().unwrap();
    assert!(warnings.iter().any(|w| w.as_str().unwrap().contains(&format!("index/{junk}"))), "{v}");
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));

    let out = env.run(&["--json", "repo", "verify"]);
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.contains(&format!("snapshot {old}")) && text.contains(&format!("index/{junk}")), "{text}");

    let err = env.fails(&["repo", "prune"]);
    assert!(err.contains("cannot be read") && err.contains("repo forget"), "{err}");
    // PostgreSQL expiry deletes backups and WAL: it refuses too, since the
    // unreadable snapshot may be a kept backup whose WAL must stay.
    let err = env.fails(&["pg", "expire"]);
    assert!(err.contains("cannot be read") && err.contains("repo forget"), "{err}");
    env.fails(&["repo", "repair", "snapshots"]);
    env.ok(&["repo", "forget", &old[..12], &junk]);
    let err = env.fails(&["repo", "prune"]);
    assert!(err.contains(&format!("index {junk}")) || err.contains(&format!("index/{junk}")), "{err}");
    assert!(err.contains("repo repair index"), "{err}");
    env.ok(&["repo", "repair", "index"]);
    env.ok(&["repo", "prune"]);
    env.ok(&["repo", "verify", "--read-data"]);
}

/// An empty id selects no snapshot, anywhere one is looked up.
#[test]
fn an_empty_snapshot_id_selects_nothing() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let err = env.fails(&["restore", "files", "", "--to", env.path("out").to_str().unwrap()]);
    assert!(err.contains("empty snapshot id"), "{err}");
    let err = env.fails(&["repo", "forget", ""]);
    assert!(err.contains("empty snapshot id"), "{err}");
    let err = env.fails(&["repo", "forget", "zz"]);
    assert!(err.contains("no snapshot matches"), "{err}");
    assert_eq!(env.snapshot_ids().len(), 1);
}

fn edit_config(env: &Env, f: impl FnOnce(&mut serde_json::Value)) {
    let path = env.path("repo/config");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Out-of-range parameters are refused by name and range (no panic, no
/// out-of-memory, no hang); an in-range change fails authentication; an
/// old config without a MAC still opens and `repo repair config` adds one.
#[test]
fn repository_config_is_bounded_and_authenticated() {
    let env = Env::new();
    env.init();
    let original = std::fs::read(env.path("repo/config")).unwrap();
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("/chunker/min", 1.into(), "chunker.min is 1"),
        ("/chunker/max", 0.into(), "chunker.max is 0"),
        ("/chunker/avg", 4_000_000_000u32.into(), "chunker.avg is 4000000000"),
        ("/pack_size", 1.into(), "pack_size is 1"),
        ("/pack_size", u32::MAX.into(), "pack_size is 4294967295"),
        ("/compression_level", 1000.into(), "compression_level is 1000"),
    ];
    for (field, value, expect) in cases {
        edit_config(&env, |v| *v.pointer_mut(field).unwrap() = value.clone());
        let out = env.run(&["snapshots"]);
        assert_eq!(out.status.code(), Some(1), "{field}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(expect) && err.contains("allowed") && err.contains("hint:"), "{field}: {err}");
        std::fs::write(env.path("repo/config"), &original).unwrap();
    }
    // In range, but not what the repository was created with.
    edit_config(&env, |v| v["compression_level"] = 19.into());
    let err = env.fails(&["snapshots"]);
    assert!(err.contains("authentication code does not match"), "{err}");

    // Removing the code does not help: the key was made for the config with it.
    std::fs::write(env.path("repo/config"), &original).unwrap();
    let strip = |env: &Env| {
        edit_config(env, |v| {
            v.as_object_mut().unwrap().remove("mac");
            v["chunker"]["min"] = 64.into();
        })
    };
    strip(&env);
    let err = env.fails(&["snapshots"]);
    assert!(err.contains("removed or replaced"), "{err}");

    // A repository from before configs carried a code: no code, a key bound
    // to none. It opens, within bounds, with a warning; `repo repair config`
    // authenticates it and binds the key.
    std::fs::write(env.path("repo/config"), &original).unwrap();
    let repo = Repository::open(Arc::new(LocalBackend::new(&env.repo)), Some(b"correct horse battery staple")).unwrap();
    let fast = cirkel_repo::crypto::KdfParams { m_cost: 256, t_cost: 1, p_cost: 1 };
    let old_key =
        cirkel_repo::crypto::KeyFile::wrap(repo.crypto().master_key().unwrap(), b"old passphrase", fast).unwrap();
    let bytes = serde_json::to_vec_pretty(&old_key).unwrap();
    std::fs::write(env.path(&format!("repo/keys/{}", cirkel_repo::Id::of(&bytes))), bytes).unwrap();
    drop(repo);
    std::fs::write(env.path("old-pw"), "old passphrase").unwrap();
    let old_pw = env.path("old-pw").display().to_string();
    edit_config(&env, |v| {
        v.as_object_mut().unwrap().remove("mac");
    });
    let out = env.run(&["--password-file", &old_pw, "snapshots"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("repo repair config"), "{}", stderr(&out));
    let v = env.json(&["--password-file", &old_pw, "repo", "repair", "config"]);
    assert_eq!(v["authenticated"], true);
    let out = env.run(&["--password-file", &old_pw, "snapshots"]);
    assert!(out.status.success() && !stderr(&out).contains("not authenticated"), "{}", stderr(&out));
    env.ok(&["snapshots"]);
    let again = env.json(&["--password-file", &old_pw, "repo", "repair", "config"]);
    assert_eq!(again["authenticated"], false);
    // Now every key refuses a stripped or edited config.
    let authenticated = std::fs::read(env.path("repo/config")).unwrap();
    strip(&env);
    assert!(env.fails(&["--password-file", &old_pw, "snapshots"]).contains("removed or replaced"));
    std::fs::write(env.path("repo/config"), &authenticated).unwrap();
    edit_config(&env, |v| v["pack_size"] = (1 << 20).into());
    assert!(env.fails(&["snapshots"]).contains("authentication code does not match"));
}

/// Argon2 costs in a key file are bounded before deriving, and a changed
/// key file is told apart from a wrong passphrase.
#[test]
fn key_file_costs_are_bounded_and_damage_is_not_a_wrong_passphrase() {
    let env = Env::new();
    env.init();
    let key = walk_files(&env.path("repo/keys")).remove(0);
    let original = std::fs::read(&key).unwrap();
    let mut kf: serde_json::Value = serde_json::from_slice(&original).unwrap();
    kf["params"]["m_cost"] = u32::MAX.into();
    kf["params"]["t_cost"] = u32::MAX.into();
    let edited = serde_json::to_vec_pretty(&kf).unwrap();

    // Edited in place: its content no longer matches its name.
    std::fs::write(&key, &edited).unwrap();
    let err = env.fails(&["snapshots"]);
    assert!(err.contains("damaged") && err.contains("does not match its name"), "{err}");
    assert!(err.contains("either the passphrase is wrong or its key file is damaged"), "{err}");

    // Renamed to its new hash: the costs themselves are refused.
    std::fs::remove_file(&key).unwrap();
    let renamed = key.with_file_name(cirkel_repo::Id::of(&edited).to_hex());
    std::fs::write(&renamed, &edited).unwrap();
    let err = env.fails(&["snapshots"]);
    assert!(err.contains("damaged") && err.contains("allowed 1 to 64"), "{err}");

    std::fs::remove_file(&renamed).unwrap();
    std::fs::write(&key, &original).unwrap();
    env.ok(&["snapshots"]);

    // With a second, intact key the repository opens; verify names the damaged one.
    std::fs::write(env.path("pw2"), "second passphrase").unwrap();
    env.ok(&["repo", "add-key", "--new-password-file", env.path("pw2").to_str().unwrap()]);
    std::fs::write(&key, &edited).unwrap();
    let out = env.run(&["--password-file", env.path("pw2").to_str().unwrap(), "repo", "verify"]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("is damaged") && stdout(&out).contains("does not match its name"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn empty_passphrases_are_refused_and_password_files_are_bounded() {
    let env = Env::new();
    std::fs::write(env.path("empty"), "\n").unwrap();
    let empty = env.path("empty").display().to_string();
    let err = env.fails(&["--password-file", &empty, "repo", "init"]);
    assert!(err.contains("empty passphrase"), "{err}");
    assert!(!env.path("repo/config").exists());

    let out = env.run(&["repo", "init"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains("can be read by other users"), "{}", stderr(&out));
    let err = env.fails(&["repo", "add-key", "--new-password-file", &empty]);
    assert!(err.contains("empty"), "{err}");

    let err = env.fails(&["--password-file", "/dev/zero", "snapshots"]);
    assert!(err.contains("longer than 4096 bytes"), "{err}");

    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env.password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.run(&["snapshots"]);
    assert!(out.status.success() && !stderr(&out).contains("other users"), "{}", stderr(&out));
}

/// Key files and every other object are readable by their owner only.
#[test]
fn local_repository_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let mut stack = vec![env.path("repo")];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{}", dir.display());
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files += 1;
                assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
            }
        }
    }
    assert!(files > 4);
}

#[test]
fn keys_are_listed_and_removed_but_never_the_last_or_the_one_in_use_by_accident() {
    let env = Env::new();
    env.init();
    std::fs::write(env.path("pw2"), "second passphrase").unwrap();
    let pw2 = env.path("pw2").display().to_string();
    env.ok(&["repo", "add-key", "--new-password-file", &pw2]);
    let keys = env.json(&["repo", "key", "list"]);
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let in_use: Vec<_> = keys.iter().filter(|k| k["in_use"] == true).collect();
    assert_eq!(in_use.len(), 1);
    assert!(keys.iter().all(|k| k["created"].is_string() && k["host"].is_string()), "{keys:?}");
    let mine = in_use[0]["id"].as_str().unwrap().to_string();
    let other = keys.iter().find(|k| k["in_use"] == false).unwrap()["id"].as_str().unwrap().to_string();

    let err = env.fails(&["repo", "key", "remove", &mine[..10]]);
    assert!(err.contains("--force"), "{err}");
    env.fails(&["repo", "key", "remove", ""]);
    env.ok(&["repo", "key", "remove", &other[..10]]);
    let err = env.fails(&["--password-file", &pw2, "snapshots"]);
    assert!(err.contains("wrong passphrase"), "{err}");
    let err = env.fails(&["repo", "key", "remove", &mine, "--force"]);
    assert!(err.contains("only usable key"), "{err}");
    // A damaged key file does not count as another key, and can be removed.
    let junk = b"not a key";
    let junk_id = cirkel_repo::Id::of(junk).to_hex();
    std::fs::write(env.path(&format!("repo/keys/{junk_id}")), junk).unwrap();
    let keys = env.json(&["repo", "key", "list"]);
    assert!(keys.as_array().unwrap().iter().any(|k| k["id"] == junk_id.as_str() && k["damaged"].is_string()), "{keys}");
    let err = env.fails(&["repo", "key", "remove", &mine, "--force"]);
    assert!(err.contains("only usable key"), "{err}");
    env.ok(&["repo", "key", "remove", &junk_id]);
    env.ok(&["snapshots"]);
}

/// Temporary files a killed writer left in `.tmp/` are removed by prune
/// once they are older than any live write could be.
#[test]
fn prune_removes_temporary_files_left_by_killed_writers() {
    let env = Env::new();
    env.init();
    let tmp = env.path("repo/.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let (old, fresh) = (tmp.join("1234-left"), tmp.join("1234-fresh"));
    std::fs::write(&old, vec![0u8; 1000]).unwrap();
    std::fs::write(&fresh, vec![0u8; 1000]).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_hours_ago).unwrap();
    let v = env.json(&["repo", "prune"]);
    assert_eq!(v["temp_files_removed"], 1, "{v}");
    assert!(!old.exists() && fresh.exists());
}

/// Damaged (not only missing) data is found with --read-data: the file it
/// belongs to is dropped, and prune then removes the damaged pack.
#[test]
fn repair_snapshots_with_read_data_drops_files_with_damaged_data() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    cirkel_testkit::write_random_file(&src.join("a.bin"), 20_000_000, 1);
    cirkel_testkit::write_random_file(&src.join("b.bin"), 20_000_000, 2);
    std::fs::write(src.join("small.txt"), "small").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let mut all = packs(&env);
    all.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let victim = all.last().unwrap();
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x10;
    std::fs::write(victim, bytes).unwrap();

    let v = env.json(&["repo", "repair", "snapshots"]);
    assert!(v["report"]["snapshots"].as_array().unwrap().is_empty(), "nothing is missing: {v}");
    let v = env.json(&["repo", "repair", "snapshots", "--read-data"]);
    let dropped = v["report"]["snapshots"][0]["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{v}");
    let bad = if dropped[0].as_str().unwrap().ends_with("/a.bin") { "a.bin" } else { "b.bin" };
    let good = if bad == "a.bin" { "b.bin" } else { "a.bin" };
    env.ok(&["repo", "prune"]);
    env.ok(&["repo", "verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    let r = restored(&out, &src);
    assert!(!r.join(bad).exists());
    assert_eq!(std::fs::read(r.join(good)).unwrap(), std::fs::read(src.join(good)).unwrap());
    assert_eq!(std::fs::read_to_string(r.join("small.txt")).unwrap(), "small");
}

/// File backups and repository maintenance refuse to write a repository
/// another user owns, as PostgreSQL commands do: the hint names the owner,
/// and `--fix-owner` hands what root wrote back to them.
#[test]
fn file_backups_and_prune_write_only_as_the_repository_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new();
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&env.password_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut init = std::process::Command::new("setpriv");
    init.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(shared_bin()).args(["repo", "init"]);
    for (k, v) in env.cmd(&[]).get_envs() {
        match v {
            Some(v) => init.env(k, v),
            None => init.env_remove(k),
        };
    }
    let out = init.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let src = env.path("src");
    make_tree(&src);

    for args in [vec!["backup", "files", src.to_str().unwrap()], vec!["repo", "prune", "--keep-last", "1"]] {
        let err = env.fails(&args);
        assert!(err.contains("belongs to nobody"), "{args:?}: {err}");
        assert!(err.contains("runuser -u nobody -- cirkel"), "{args:?}: {err}");
    }
    env.ok(&["--fix-owner", "backup", "files", src.to_str().unwrap()]);
    let mut stack = vec![std::path::PathBuf::from(&env.repo)];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            assert_eq!(std::fs::symlink_metadata(&p).unwrap().uid(), 65534, "{} belongs to nobody", p.display());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    assert_eq!(env.snapshot_ids().len(), 1);
}
