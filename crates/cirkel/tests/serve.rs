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
    // SIGTERM: the daemon lets a job in flight finish (a minute passes
    // every second here, so one may have started), then exits.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let _ = serve.wait();
    assert_eq!(done[0]["source"], "schedule/files/site");
    let runs = env.json(&["events", "--kind", "job-done"]).as_array().unwrap().len();
    assert!(runs >= 2);
    // Retention kept the last one; the copy holds every run's snapshot.
    let here = env.json(&["snapshots", "--tag", "site"]);
    assert_eq!(here.as_array().unwrap().len(), 1, "{here:#}");
    let there = env.json(&["snapshots", "--repo", &dr, "--tag", "site"]);
    assert_eq!(there.as_array().unwrap().len(), runs, "{there:#}");
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

/// Polls the event log until `kind` has at least `n` events (the bound only
/// catches a hung daemon).
fn wait_events(env: &Env, kind: &str, n: usize) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let events = env.json(&["events", "--kind", kind]);
        let events = events.as_array().unwrap().clone();
        if events.len() >= n {
            return events;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no {n} {kind} event(s): {events:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn files_set(env: &Env, name: &str, schedule: &str) -> String {
    let src = env.path(name);
    if !src.exists() {
        make_tree(&src);
    }
    format!("[files.{name}]\npaths = [\"{}\"]\ntags = [\"{name}\"]\nschedule = \"{schedule}\"\n", src.display())
}

/// Kills the daemon when a test fails halfway.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

#[test]
fn serve_tells_systemd_it_is_ready_alive_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let mut env = Env::new();
    env.init();
    let config = env.path("cirkel.toml");
    std::fs::write(&config, files_set(&env, "site", "0 0 1 1 *")).unwrap();
    let socket_path = env.path("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    env.extra_env.push(("CIRKEL_CONFIG".into(), config.display().to_string()));
    env.extra_env.push(("CIRKEL_STATE_DIR".into(), env.path("state").display().to_string()));
    env.extra_env.push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    env.extra_env.push(("WATCHDOG_USEC".into(), "200000".into()));
    let mut serve = Daemon(env.cmd(&["serve"]).stderr(std::process::Stdio::null()).spawn().unwrap());
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !(seen.iter().any(|m: &String| m.starts_with("READY=1")) && seen.iter().any(|m| m == "WATCHDOG=1")) {
        let n = socket.recv(&mut buf).expect("a notice from cirkel serve");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // Ready comes before the first watchdog ping.
    assert!(seen[0].starts_with("READY=1\nSTATUS="), "{seen:?}");
    signal(&serve.0, libc::SIGTERM);
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1 from cirkel serve");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(serve.0.wait().unwrap().success());
}

#[test]
fn sighup_reloads_a_good_configuration_and_keeps_the_old_one_for_a_bad_one() {
    let mut env = Env::new();
    env.init();
    let config = env.path("cirkel.toml");
    std::fs::write(&config, files_set(&env, "old", "* * * * *")).unwrap();
    env.extra_env.push(("CIRKEL_STATE_DIR".into(), env.path("state").display().to_string()));
    env.extra_env.push(("CIRKEL_TEST_CLOCK_START".into(), "2026-11-26T09:59:50Z".into()));
    env.extra_env.push(("CIRKEL_TEST_CLOCK_SPEED".into(), "60".into()));
    let log = env.path("serve.log");
    // The file is named on the command line: `cirkel events` below reads
    // the state directory without it, whatever the file holds.
    let mut serve = Daemon(
        env.cmd(&["--config", config.to_str().unwrap(), "--log-format", "json", "-v", "serve"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_events(&env, "job-done", 1);

    // A broken file: the daemon says why and keeps the old job.
    std::fs::write(&config, "[files.old\npaths = 1\n").unwrap();
    signal(&serve.0, libc::SIGHUP);
    let failed = wait_events(&env, "config-reload-failed", 1);
    assert!(failed[0]["message"].as_str().unwrap().contains("not reloaded"), "{failed:#?}");
    // The old job stays scheduled; its command reads the file when it runs,
    // so this run fails on the broken file, and says so.
    let ran = wait_events(&env, "job-failed", 1);
    assert_eq!(ran[0]["source"], "schedule/files/old");

    // A good file replaces the jobs.
    std::fs::write(&config, files_set(&env, "new", "* * * * *")).unwrap();
    signal(&serve.0, libc::SIGHUP);
    let reloaded = wait_events(&env, "config-reloaded", 1);
    assert_eq!(reloaded[0]["details"]["jobs"][0]["job"], "files/new");
    let start = Instant::now();
    while env.json(&["snapshots", "--tag", "new"]).as_array().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(120), "the new job never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&serve.0, libc::SIGTERM);
    assert!(serve.0.wait().unwrap().success());

    // Every log line is one JSON object; events carry their kind.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["kind"] == "config-reload-failed" && l["level"] == "WARN"), "{text}");
    assert!(lines.iter().any(|l| l["fields"]["kind"] == "config-reloaded"), "{text}");
}

/// Polls `/metrics` on `addr` until it contains `needle` (the bound only
/// catches a hung daemon); returns the exposition.
fn wait_metric(addr: &str, needle: &str) -> String {
    let start = Instant::now();
    loop {
        if let Ok((200, text)) = http_get(addr, "/metrics")
            && text.contains(needle)
        {
            return text;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no `{needle}` in {addr}/metrics");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A real HTTP service for checks: Python's http.server serving a
/// directory with a `health` file, on `port`.
fn http_service(dir: &std::path::Path, port: u16) -> cirkel_testkit::Service {
    std::fs::write(dir.join("health"), "ok\n").unwrap();
    let mut c = std::process::Command::new("python3");
    c.args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"]).arg(dir);
    let s = cirkel_testkit::Service::spawn("http.server", c);
    assert!(cirkel_testkit::wait_for_port(port, Duration::from_secs(30)), "http.server did not start");
    s
}

#[test]
fn a_check_goes_down_and_up_with_its_service_and_its_alarm_follows() {
    let mut env = Env::new();
    env.init();
    let (service_port, listen_port) = (cirkel_testkit::free_port(), cirkel_testkit::free_port());
    let site = env.path("site");
    std::fs::create_dir_all(&site).unwrap();
    let config = env.path("cirkel.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{listen_port}\"\n\n\
             [checks.api]\nkind = \"http\"\nurl = \"http://127.0.0.1:{service_port}/health\"\n\
             interval = \"1s\"\ntimeout = \"500ms\"\n\n\
             # The plan's period is a minute; ten seconds keeps the test short.\n\
             [alarms.check-down]\nperiod = \"10s\"\n"
        ),
    )
    .unwrap();
    env.extra_env.push(("CIRKEL_CONFIG".into(), config.display().to_string()));
    env.extra_env.push(("CIRKEL_STATE_DIR".into(), env.path("state").display().to_string()));
    let mut service = http_service(&site, service_port);
    let _serve = Daemon(env.cmd(&["serve"]).stderr(std::process::Stdio::null()).spawn().unwrap());
    let up = wait_events(&env, "check-up", 1);
    assert_eq!(up[0]["source"], "check/api");
    assert_eq!(up[0]["details"]["probes"], 2, "up after healthy_threshold probes: {up:#?}");

    // The metrics endpoint: the check's state, in an exposition promtool accepts.
    let addr = format!("127.0.0.1:{listen_port}");
    let metrics = wait_metric(&addr, "cirkel_check_up{check=\"api\"} 1");
    assert!(metrics.contains("cirkel_up 1"), "{metrics}");
    promtool_check(&metrics);
    let start = Instant::now();
    let status = loop {
        // The daemon publishes the checks' states every few seconds.
        let status = env.json(&["status"]);
        if status["checks"][0]["state"] == "up" || start.elapsed() > Duration::from_secs(60) {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["checks"][0]["name"], "api");
    assert_eq!(status["checks"][0]["state"], "up");

    // The service dies: down after exactly unhealthy_threshold failed probes,
    // and the built-in check-down alarm fires.
    service.kill();
    let down = wait_events(&env, "check-down", 1);
    assert_eq!(down[0]["details"]["failures"], 3, "{down:#?}");
    assert_eq!(down[0]["severity"], "high");
    let raised = wait_events(&env, "alarm-raised", 1);
    assert_eq!(raised[0]["details"]["alarm"], "check-down", "{raised:#?}");
    assert_eq!(raised[0]["details"]["labels"]["check"], "api");
    let out = env.run(&["--json", "alarms"]);
    assert_eq!(out.status.code(), Some(2), "cirkel alarms exits 2 while an alarm fires");
    let alarms: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let firing: Vec<&serde_json::Value> =
        alarms["alarms"].as_array().unwrap().iter().filter(|a| a["state"] == "ALARM").collect();
    assert_eq!(firing.len(), 1, "{alarms:#}");
    assert_eq!(firing[0]["alarm"], "check-down");
    assert!(firing[0]["reason"].as_str().unwrap().contains("below 1"), "{alarms:#}");
    let status = env.run(&["--json", "status"]);
    assert_eq!(status.status.code(), Some(2), "a check that is down makes the status unhealthy");

    // It comes back: up after healthy_threshold probes, and the alarm clears.
    let _service = http_service(&site, service_port);
    wait_events(&env, "check-up", 2);
    // (Its first OK, from INSUFFICIENT_DATA, came before the service died.)
    let start = Instant::now();
    loop {
        let history = env.json(&["alarms", "history", "check-down"]);
        let changes: Vec<(String, String)> = history
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["details"]["from"].as_str().unwrap().into(), e["details"]["to"].as_str().unwrap().into()))
            .collect();
        if changes.last().is_some_and(|(from, to)| from == "ALARM" && to == "OK") {
            assert!(changes.iter().any(|(_, to)| to == "ALARM"), "{history:#}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the alarm did not clear: {history:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn alarm_history_of_an_alarm_that_never_changed_says_so() {
    let env = Env::new();
    let err = env.fails(&["alarms", "history", "rpo-exposure"]);
    assert!(err.contains("no recorded transition"), "{err}");
}

#[test]
fn with_a_certificate_the_server_speaks_https_only() {
    let env = Env::new();
    let dir = env.path("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl) makes the test certificate");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let port = cirkel_testkit::free_port();
    let config = env.path("tls.toml");
    // Half a pair is refused before anything listens.
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\ntls_cert_file = \"{}\"\n", cert.display()),
    )
    .unwrap();
    let out = env.run(&["--config", config.to_str().unwrap(), "config", "check"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tls_key_file"), "{}", stderr(&out));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut daemon = env
        .cmd(&["--config", config.to_str().unwrap(), "serve"])
        .env("CIRKEL_STATE_DIR", env.path("state"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(cirkel_testkit::wait_for_port(port, std::time::Duration::from_secs(30)));
    let curl = |url: &str| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&cert)
            .args(["-o", "/dev/null", "-w", "%{http_code}", url])
            .output()
            .unwrap()
    };
    let https = curl(&format!("https://127.0.0.1:{port}/health"));
    assert_eq!(String::from_utf8_lossy(&https.stdout), "200", "{}", String::from_utf8_lossy(&https.stderr));
    let plain = curl(&format!("http://127.0.0.1:{port}/health"));
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200", "plain HTTP is not served beside HTTPS");
    let _ = daemon.kill();
    let _ = daemon.wait();
}
