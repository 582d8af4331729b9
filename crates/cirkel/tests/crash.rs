//! kill -9 at every step of backup, prune and copy: the repository still
//! verifies, every completed snapshot still restores, and running the
//! command again finishes the job.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn crash(env: &Env, point: &str, args: &[&str]) {
    let out = env.cmd(args).env("CIRKEL_CRASH_AT", point).output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "cirkel {args:?} should have been killed at {point}: {}",
        stderr(&out)
    );
}

fn check_consistent(env: &Env, src: &std::path::Path) {
    env.ok(&["repo", "verify", "--read-data"]);
    let out = env.path("check-out");
    let _ = std::fs::remove_dir_all(&out);
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(src, &restored(&out, src));
}

#[test]
fn kill_during_backup_leaves_previous_snapshots_intact() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let before = env.snapshot_ids();

    cirkel_testkit::write_random_file(&src.join("bin/new.bin"), 40_000_000, 9);
    for point in ["after-pack", "backup-before-snapshot"] {
        crash(&env, point, &["backup", "files", src.to_str().unwrap()]);
        assert_eq!(env.snapshot_ids(), before, "no snapshot from a killed backup");
        let v = env.json(&["repo", "verify", "--read-data"]);
        assert_eq!(v["ok"], true, "{v}");
    }
    // Killed at an arbitrary moment, several times.
    for delay_ms in [20u64, 80, 200] {
        let mut child = env
            .cmd(&["-q", "backup", "files", "--force", src.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let v = env.json(&["repo", "verify"]);
        assert_eq!(v["ok"], true, "{v}");
    }
    // The dead processes' locks are stale, so the next backup and prune work.
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    check_consistent(&env, &src);
    let v = env.json(&["repo", "prune"]);
    assert!(v["deferred"].is_null(), "stale locks of killed processes are ignored: {v}");
    let v = env.json(&["repo", "verify", "--read-data"]);
    assert!(v["report"]["notes"].as_array().unwrap().is_empty(), "prune removed the leftovers: {v}");
    check_consistent(&env, &src);
}

#[test]
fn kill_during_prune_at_every_step() {
    for point in [
        "prune-after-forget",
        "prune-after-repack",
        "prune-after-new-index",
        "prune-after-old-index",
        "prune-mid-pack-delete",
    ] {
        let env = Env::new();
        env.init();
        let src = env.path("src");
        make_tree(&src);
        // Several snapshots sharing packs, so prune both deletes and repacks.
        for i in 0..4u64 {
            cirkel_testkit::write_random_file(&src.join("bin/rolling.bin"), 6_000_000, 50 + i);
            std::fs::write(src.join(format!("docs/note{i}.txt")), format!("note {i}\n").repeat(100)).unwrap();
            env.ok(&["backup", "files", src.to_str().unwrap()]);
        }
        crash(&env, point, &["repo", "prune", "--keep-last", "2", "--max-unused", "1"]);
        let v = env.json(&["repo", "verify", "--read-data"]);
        assert_eq!(v["ok"], true, "after a kill at {point}: {v}");
        check_consistent(&env, &src);
        env.ok(&["repo", "prune", "--keep-last", "2", "--max-unused", "1"]);
        let v = env.json(&["repo", "verify", "--read-data"]);
        assert_eq!(v["ok"], true, "{v}");
        assert!(v["report"]["notes"].as_array().unwrap().is_empty(), "no leftovers after {point}: {v}");
        assert_eq!(env.snapshot_ids().len(), 2);
        check_consistent(&env, &src);
    }
}

#[test]
fn kill_during_copy_then_resume() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    cirkel_testkit::write_random_file(&src.join("bin/large.bin"), 50_000_000, 77);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    let dr = env.path("dr").display().to_string();
    env.ok(&["repo", "init", "--repo", &dr, "--copy-keys-from", &env.repo]);
    let on_dr = |args: &[&str]| {
        let mut a = vec!["--repo", dr.as_str()];
        a.extend_from_slice(args);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run_dr = |args: &[&str]| {
        let a = on_dr(args);
        env.json(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    crash(&env, "after-pack", &["repo", "copy", "--to", &dr]);
    assert_eq!(run_dr(&["snapshots"]).as_array().unwrap().len(), 0, "no snapshot before its data");
    assert_eq!(run_dr(&["repo", "verify", "--read-data"])["ok"], true);
    crash(&env, "copy-before-snapshots", &["repo", "copy", "--to", &dr]);
    assert_eq!(run_dr(&["repo", "verify", "--read-data"])["ok"], true);

    let start = Instant::now();
    let v = env.json(&["repo", "copy", "--to", &dr]);
    assert_eq!(v["copied"].as_array().unwrap().len(), 1);
    assert_eq!(v["stats"]["blobs_new"], 0, "everything had arrived before the kill: {v}");
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(run_dr(&["repo", "verify", "--read-data"])["ok"], true);
    let out = env.path("out");
    let a = on_dr(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    env.ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_same_tree(&src, &restored(&out, &src));
}
