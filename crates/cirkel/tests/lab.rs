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

fn port_open(port: u64) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port as u16)).is_ok()
}

#[test]
fn lab_up_is_healthy_status_reports_it_and_down_removes_everything() {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = top.path().join("lab");
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
