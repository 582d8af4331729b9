//! The same commands against a real S3-compatible server (moto).

mod common;

use std::time::{Duration, Instant};

use cirkel_testkit::S3Server;
use common::*;

fn s3_env(server: &S3Server, prefix: &str) -> Env {
    let mut env = Env::new();
    env.repo = server.url(prefix);
    env.extra_env = server.env();
    env
}

#[test]
fn backup_restore_verify_prune_copy_on_s3() {
    let server = S3Server::start();
    let env = s3_env(&server, "primary");
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    std::fs::write(src.join("docs/readme.txt"), "second version").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    env.ok(&["repo", "verify", "--read-data"]);
    let out = env.path("out");
    env.ok(&["restore", "files", "latest", "--to", out.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out, &src));

    let v = env.json(&["repo", "prune", "--keep-last", "1"]);
    assert_eq!(v["snapshots_removed"], 1);
    env.ok(&["repo", "verify", "--read-data"]);

    // Cross-region copy: S3 → local disk, and the local copy restores.
    let local = env.path("dr").display().to_string();
    env.ok(&["repo", "init", "--repo", &local, "--copy-keys-from", &env.repo]);
    let v = env.json(&["repo", "copy", "--to", &local]);
    assert_eq!(v["copied"].as_array().unwrap().len(), 1);
    let out2 = env.path("out2");
    env.ok(&["--repo", &local, "restore", "files", "latest", "--to", out2.to_str().unwrap()]);
    assert_same_tree(&src, &restored(&out2, &src));

    // A prefix with nothing in it is not a repository.
    let other = s3_env(&server, "nothing-here");
    let err = other.fails(&["snapshots"]);
    assert!(err.contains("no cirkel repository"), "{err}");
}

#[test]
fn s3_server_down_mid_backup_retries_then_fails_clearly() {
    let mut server = S3Server::start();
    let mut env = s3_env(&server, "down");
    env.extra_env.push(("CIRKEL_S3_RETRY_TIMEOUT".into(), "3s".into()));
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap()]);
    for i in 0..6u64 {
        cirkel_testkit::write_random_file(&src.join(format!("bin/more{i}.bin")), 40_000_000, 300 + i);
    }
    let child = env
        .cmd(&["-q", "backup", "files", src.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    server.stop();
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the backup cannot succeed without its storage");
    let err = stderr(&out);
    assert!(err.contains("storage unavailable"), "{err}");
    assert!(err.contains("hint:") && err.contains("reachable"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(120), "gives up after the retry timeout");
}
