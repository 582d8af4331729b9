//! `cirkel serve` runs the configured schedules: backup, copy, retention.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn serve_runs_a_scheduled_backup_with_its_copy_and_retention() {
    let mut env = Env::new();
    env.init();
    let dr = env.path("dr").display().to_string();
    env.ok(&["repo", "init", "--repo", &dr, "--copy-keys-from", &env.repo]);
    let src = env.path("src");
    make_tree(&src);
    let config = env.path("cirkel.toml");
    std::fs::write(
        &config,
        format!(
            "[repositories.dr]\nurl = \"{dr}\"\npassword_file = \"{}\"\n\n[files.site]\npaths = [\"{}\"]\ntags = [\"site\"]\nschedule = \"* * * * *\"\ncopy_to = [\"dr\"]\n[files.site.retention]\nkeep_last = 1\n",
            env.password_file.display(),
            src.display()
        ),
    )
    .unwrap();
    env.extra_env.push(("CIRKEL_CONFIG".into(), config.display().to_string()));
    env.extra_env.push(("CIRKEL_STATE_DIR".into(), env.path("state").display().to_string()));
    // The daemon's clock starts ten simulated seconds before a minute
    // boundary and runs a minute per real second.
    env.extra_env.push(("CIRKEL_TEST_CLOCK_START".into(), "2026-11-26T09:59:50Z".into()));
    env.extra_env.push(("CIRKEL_TEST_CLOCK_SPEED".into(), "60".into()));
    let mut serve = env.cmd(&["serve"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    // The schedule fires at the next simulated minute boundary, then again a
    // simulated minute later.
    let start = Instant::now();
    let done = loop {
        // (a bound on a hung daemon, not a timing under test)
        let events = env.json(&["events", "--kind", "job-done"]);
        let failed = env.json(&["events", "--kind", "job-failed"]);
        assert!(failed.as_array().unwrap().is_empty(), "{failed:#}");
        if events.as_array().unwrap().len() >= 2 {
            break events;
        }
        assert!(start.elapsed() < Duration::from_secs(150), "the schedule did not run twice: {events:#}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(done[0]["source"], "schedule/files/site");
    // Retention kept the last one; the copy holds both runs' snapshots.
    let here = env.json(&["snapshots", "--tag", "site"]);
    assert_eq!(here.as_array().unwrap().len(), 1, "{here:#}");
    let there = env.json(&["snapshots", "--repo", &dr, "--tag", "site"]);
    assert_eq!(there.as_array().unwrap().len(), 2, "{there:#}");
    let started = env.json(&["events", "--kind", "serve-started"]);
    assert_eq!(started[0]["details"]["jobs"][0]["job"], "files/site");
    assert_eq!(started[0]["details"]["jobs"][0]["next"], "2026-11-26T10:00:00Z");
}

#[test]
fn serve_with_nothing_to_do_says_so() {
    let env = Env::new();
    let config = env.path("empty.toml");
    std::fs::write(&config, "").unwrap();
    let err = env.fails(&["--config", config.to_str().unwrap(), "serve"]);
    assert!(err.contains("nothing to serve") && err.contains("schedule"), "{err}");
}
