//! `cirkel lab up | status | down` on this machine's PostgreSQL 15 and
//! Redis: the estate comes up healthy, answers through the API, and goes
//! away without a trace.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Instant;

use common::*;

fn lab(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(shared_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("CIRKEL_") {
            c.env_remove(k);
        }
    }
    c.arg("lab").args(args).arg("--dir").arg(dir).output().unwrap()
}

/// Stops the lab even when a test fails half-way: its processes would
/// otherwise outlive the test's directory.
struct Down(std::path::PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.join("lab.json").exists() {
            let _ = lab(&self.0, &["down"]);
        }
    }
}

fn port_open(port: u64) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_ok()
}

#[test]
fn lab_up_is_healthy_status_reports_it_and_down_removes_everything() {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = top.path().join("lab");
    let _down = Down(dir.clone());
    // Nothing there yet: status and down say so.
    let out = lab(&dir, &["status"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no lab in") && stderr(&out).contains("hint:"), "{}", stderr(&out));

    let start = Instant::now();
    let out = Command::new(shared_bin()).args(["--json", "lab", "up", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "lab up failed: {}\n{}", stderr(&out), stdout(&out));
    eprintln!("cirkel lab up: healthy after {:.1} s", start.elapsed().as_secs_f64());
    let up: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(up["url"].as_str().unwrap().contains("/?token="), "{up:#}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();

    // A second lab in the same place is refused, the first untouched.
    let again = lab(&dir, &["up"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already up"), "{}", stderr(&again));

    let out = Command::new(shared_bin()).args(["--json", "lab", "status", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "lab status: {}\n{}", stderr(&out), stdout(&out));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["healthy"], true, "{st:#}");
    let sources: Vec<&str> =
        st["overview"]["sources"].as_array().unwrap().iter().filter_map(|s| s["source"].as_str()).collect();
    assert_eq!(sources, ["postgres/main", "redis/cache"], "{st:#}");
    let clusters = st["overview"]["clusters"].as_array().unwrap();
    let pg = clusters.iter().find(|c| c["source"] == "postgres/main").unwrap();
    let zones: Vec<&str> = pg["members"].as_array().unwrap().iter().filter_map(|m| m["zone"].as_str()).collect();
    assert_eq!(zones, ["a", "b", "c"]);
    let redis = clusters.iter().find(|c| c["source"] == "redis/cache").unwrap();
    assert_eq!(redis["members"].as_array().unwrap().len(), 3);
    // The base backup and the RDB are there, so the dashboard has a window to show.
    let backups = st["overview"]["sources"][0]["backups"].as_u64().unwrap();
    assert!(backups >= 1, "{st:#}");
    assert!(st["processes"].as_array().unwrap().iter().all(|p| p["running"] == true), "{st:#}");

    let out = lab(&dir, &["down"]);
    assert!(out.status.success(), "lab down: {}", stderr(&out));
    assert!(!dir.exists(), "lab down left {}", dir.display());
    for (_, port) in manifest["pg"].as_array().unwrap().iter().map(|p| (p[0].clone(), p[1].as_u64().unwrap())) {
        assert!(!port_open(port), "PostgreSQL still listens on {port}");
    }
    for key in ["redis", "sentinels"] {
        for port in manifest[key].as_array().unwrap() {
            assert!(!port_open(port.as_u64().unwrap()), "{key} still listens on {port}");
        }
    }
    for key in ["server", "health", "sink"] {
        assert!(!port_open(manifest[key].as_u64().unwrap()), "{key} still listens");
    }
}

/// The lab's own binary and configuration, run as the lab's user (as
/// `cirkel lab up` tells a person to).
fn as_lab_user(dir: &std::path::Path, args: &[&str]) -> Command {
    let user = {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
        m["user"].as_str().unwrap().to_string()
    };
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        let mut c = Command::new("setpriv");
        c.args([&format!("--reuid={user}"), &format!("--regid={user}"), "--init-groups"]).arg(dir.join("bin/cirkel"));
        c
    } else {
        Command::new(dir.join("bin/cirkel"))
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("CIRKEL_") {
            c.env_remove(k);
        }
    }
    c.arg("--config").arg(dir.join("cirkel.toml")).args(args);
    c
}

#[test]
fn the_suite_rehearses_the_plans_five_failures_on_the_lab_and_a_killed_scenario_is_undone() {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = top.path().join("lab");
    let _down = Down(dir.clone());
    let out = Command::new(shared_bin()).args(["--json", "lab", "up", "--dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "lab up failed: {}\n{}", stderr(&out), stdout(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    let health = manifest["health"].as_u64().unwrap();

    // A scenario killed (kill -9) after it killed the web service: the
    // next scenario finds its fault, starts the service again and records
    // the interrupted run as aborted.
    let mut first = as_lab_user(&dir, &["drill", "scenario", "app-instance"]).spawn().unwrap();
    let start = Instant::now();
    while port_open(health) {
        assert!(start.elapsed().as_secs() < 30, "the scenario did not kill the web service");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(dir.join("state/drill-faults.json").exists(), "the fault is written down before it is injected");
    // setpriv execs the drill: its pid is the drill's.
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(first.id() as i32, libc::SIGKILL) };
    let _ = first.wait();
    assert!(!port_open(health), "the killed scenario left the service down");

    let out = as_lab_user(&dir, &["--json", "drill", "suite"]).output().unwrap();
    let suite: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stderr(&out), String::from_utf8_lossy(&out.stdout)));
    let scenarios = suite["suite"]["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios.iter().filter_map(|s| s["scenario"].as_str()).collect();
    assert_eq!(names, ["app-instance", "redis-master", "pg-primary", "zone", "region"], "{suite:#}");
    for s in scenarios {
        assert!(s["failures"].as_array().unwrap().is_empty() && s["skipped"].is_null(), "{s:#}");
        assert!(s["rto_s"].as_f64().is_some(), "{s:#}");
        assert!(s["plan_rto_s"].as_f64().unwrap() >= 3.0 * s["target_rto_s"].as_f64().unwrap());
    }
    // What each measured: the check down and alarmed; canary writes on
    // both databases; a zone with the primary frozen; a rebuild from the
    // second region with the main repository out of reach.
    let by = |n: &str| scenarios.iter().find(|s| s["scenario"] == n).unwrap();
    let app = &by("app-instance")["report"];
    assert!(app["down_s"].as_f64().is_some() && app["alarmed_s"].as_f64().is_some(), "{app:#}");
    assert!(by("redis-master")["writes_lost"].as_u64().is_some());
    assert!(by("pg-primary")["report"]["writes_acknowledged"].as_u64().unwrap() > 0);
    let zone = by("zone");
    assert!(!zone["report"]["cut_off"].as_array().unwrap().is_empty(), "{zone:#}");
    assert_eq!(zone["report"]["old_primary"], zone["report"]["cut_off"][0], "{zone:#}");
    let region = by("region");
    assert!(region["rpo_s"].as_f64().is_some(), "{region:#}");
    let notes = region["notes"].to_string();
    assert!(notes.contains("cut off from the main repository"), "{region:#}");
    assert!(dir.join("repo/config").exists() && !dir.join("repo.cirkel-drill-unreachable").exists());
    assert!(std::path::Path::new(suite["report"].as_str().unwrap()).exists());

    // The history holds every scenario, and the interrupted one as aborted.
    let out = as_lab_user(&dir, &["--json", "drill", "history", "--last", "50"]).output().unwrap();
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = history["runs"].as_array().unwrap();
    for n in names {
        assert!(runs.iter().any(|r| r["name"] == format!("scenario-{n}")), "no scenario-{n} in {history:#}");
    }
    let aborted = runs
        .iter()
        .find(|r| r["name"] == "scenario-app-instance" && r["outcome"] == "aborted")
        .unwrap_or_else(|| panic!("{history:#}"));
    assert!(aborted["reason"].as_str().unwrap().contains("started again"), "{aborted:#}");

    // Something real during a scenario stops it, and is not blamed on it:
    // the web service dies as a zone is cut off (its alarm comes seconds
    // later, while the zone drill is under way).
    for pid in cirkel_server::faults::listeners(health as u16) {
        // SAFETY: the lab's web service, which this test kills.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let drill = as_lab_user(&dir, &["--json", "drill", "scenario", "zone"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = drill.wait_with_output().unwrap();
    let stopped: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stderr(&out), String::from_utf8_lossy(&out.stdout)));
    assert!(stopped["aborted"].as_str().is_some_and(|a| a.contains("check-down")), "{stopped:#}");
    assert_eq!(stopped["passed"], false, "{stopped:#}");
    assert!(!out.status.success());
    let restart = as_lab_user(&dir, &["lab", "helper", "--health", &format!("127.0.0.1:{health}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = as_lab_user(&dir, &["--json", "drill", "history", "scenario-zone"]).output().unwrap();
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["runs"][0]["outcome"], "aborted", "{history:#}");

    // The estate is whole again, and `down` removes even what drills restarted.
    let start = Instant::now();
    loop {
        let out = Command::new(shared_bin()).args(["--json", "lab", "status", "--dir"]).arg(&dir).output().unwrap();
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if st["healthy"] == true && st["processes"].as_array().unwrap().iter().all(|p| p["running"] == true) {
            break;
        }
        assert!(start.elapsed().as_secs() < 120, "the lab did not become healthy again: {st:#}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // What the drills did paged nobody and opened no incident, even the
    // alarms judged at the end of their one-minute periods after the drills.
    let finished: chrono::DateTime<chrono::Utc> = suite["suite"]["finished"].as_str().unwrap().parse().unwrap();
    while chrono::Utc::now() < finished + chrono::Duration::seconds(65) {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let out = as_lab_user(&dir, &["--json", "incident", "list", "--all"]).output().unwrap();
    let incidents: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stderr(&out), String::from_utf8_lossy(&out.stdout)));
    if incidents.as_array().is_none_or(|a| !a.is_empty()) {
        // What the drills and the watcher recorded, to tell which caused it.
        let log = std::fs::read_to_string(dir.join("state/events.jsonl")).unwrap_or_default();
        let told: Vec<&str> = log
            .lines()
            .filter(|l| ["\"drill\"", "\"failover\"", "drill-aborted", "check-down"].iter().any(|k| l.contains(k)))
            .collect();
        panic!("the drills opened incidents: {incidents:#}\nevents:\n{}", told.join("\n"));
    }

    let out = lab(&dir, &["down"]);
    assert!(out.status.success(), "lab down: {}", stderr(&out));
    assert!(!port_open(health), "the restarted web service outlived the lab");
    drop(restart);
}
