//! The HTTP API and the dashboard of `cirkel serve`, against a real
//! PostgreSQL 15 cluster (a primary and two standbys archiving into a real
//! repository): live answers checked against `docs/openapi.json`, tokens
//! and the audit log, the event stream, and the dashboard in headless
//! Chromium through chromedriver, before and after a failover.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cirkel_testkit::pg::{PgCluster, as_postgres, chown_postgres};
use common::*;
use serde_json::{Value, json};

const VIEWER: &str = "viewer-token-for-the-tests-0001";
const OPERATOR: &str = "operator-token-for-the-tests-0002";

/// One HTTP/1.1 exchange: status, headers (lower-case names) and body.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> (u16, String, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new(), String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes()).unwrap();
    // Read what the answer's length says: some servers keep the
    // connection open whatever the request asked.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let text = String::from_utf8_lossy(&raw);
        if let Some(i) = text.find("\r\n\r\n") {
            let head = text[..i].to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            match len {
                Some(n) if raw.len() >= i + 4 + n => break,
                None if head.contains("transfer-encoding: chunked") && text.ends_with("0\r\n\r\n") => break,
                _ => {}
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") { dechunk(rest) } else { rest.to_string() };
    (status, head, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn get(addr: &str, path: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, body) = http(addr, "GET", path, &[("Authorization", &auth)], None);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn post(addr: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
    let (status, _, body) = http(addr, "POST", path, &headers, Some(body));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn wait_until(what: &str, limit: Duration, f: &mut dyn FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------
// A checker for the part of JSON Schema (2020-12, as OpenAPI 3.1 uses it)
// that docs/openapi.json uses: $ref, type (one or a list), properties,
// required, items, enum, additionalProperties, anyOf, format date-time.

fn openapi() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn check(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema.get("$ref").and_then(|r| r.as_str()) {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        assert!(!target.is_null(), "the document refers to a schema it lacks: {r}");
        return check(doc, target, v, at, errors);
    }
    if let Some(any) = schema.get("anyOf").and_then(|a| a.as_array()) {
        let fits = any.iter().any(|s| {
            let mut e = Vec::new();
            check(doc, s, v, at, &mut e);
            e.is_empty()
        });
        if !fits {
            errors.push(format!("{at}: {v} fits none of anyOf"));
        }
        return;
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            _ => vec![],
        };
        let is = |ty: &str| match ty {
            "null" => v.is_null(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "string" => v.is_string(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        };
        if !types.iter().any(|t| is(t)) {
            errors.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(|e| e.as_array())
        && !e.contains(v)
    {
        errors.push(format!("{at}: {v} is not one of {e:?}"));
    }
    if schema.get("format").and_then(|f| f.as_str()) == Some("date-time")
        && let Some(s) = v.as_str()
        && chrono::DateTime::parse_from_rfc3339(s).is_err()
    {
        errors.push(format!("{at}: {s} is not an RFC 3339 time"));
    }
    if let Some(o) = v.as_object() {
        let props = schema.get("properties").and_then(|p| p.as_object());
        for r in schema.get("required").and_then(|r| r.as_array()).into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !o.contains_key(r) {
                errors.push(format!("{at}: `{r}` is missing"));
            }
        }
        for (k, val) in o {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(doc, s, val, &format!("{at}.{k}"), errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => errors.push(format!("{at}: `{k}` is not in the document")),
                    Some(s @ Value::Object(_)) => check(doc, s, val, &format!("{at}.{k}"), errors),
                    // Undocumented fields of documented objects are drift: refused.
                    _ if props.is_some() => errors.push(format!("{at}: `{k}` is not in the document")),
                    _ => {}
                },
            }
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), schema.get("items")) {
        for (i, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Checks a live answer of `GET path` against the document's `template`.
fn conforms(doc: &Value, template: &str, v: &Value) {
    let schema = &doc["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
    assert!(!schema.is_null(), "docs/openapi.json does not document GET {template}");
    let mut errors = Vec::new();
    check(doc, schema, v, template, &mut errors);
    assert!(errors.is_empty(), "GET {template} does not match docs/openapi.json:\n{}\n{v:#}", errors.join("\n"));
}

#[test]
fn the_schema_checker_refuses_what_does_not_fit() {
    let doc = openapi();
    let good = json!({"value_s": null, "target_s": 300.0, "status": "unknown"});
    let mut e = Vec::new();
    check(&doc, &json!({"$ref": "#/components/schemas/Objective"}), &good, "o", &mut e);
    assert!(e.is_empty(), "{e:?}");
    for bad in [
        json!({"value_s": "1", "target_s": 300.0, "status": "unknown"}),
        json!({"target_s": 300.0, "status": "unknown"}),
        json!({"value_s": 1.0, "target_s": 300.0, "status": "blue"}),
        json!({"value_s": 1.0, "target_s": 300.0, "status": "red", "extra": 1}),
    ] {
        let mut e = Vec::new();
        check(&doc, &json!({"$ref": "#/components/schemas/Objective"}), &bad, "o", &mut e);
        assert!(!e.is_empty(), "{bad} passed");
    }
}

// ---------------------------------------------------------------------------
// The estate: a primary and two standbys in zones a, b and c, archiving into
// a repository with a base backup, watched by `cirkel serve` with the API.

struct Estate {
    env: Env,
    cache: PathBuf,
    a: PgCluster,
    #[allow(dead_code)]
    b: PgCluster,
    c: PgCluster,
    config: PathBuf,
    state: PathBuf,
    listen: String,
    serve: Option<std::process::Child>,
}

impl Drop for Estate {
    fn drop(&mut self) {
        if let Some(mut s) = self.serve.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Estate {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = as_postgres(shared_bin());
        c.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("CIRKEL_") || k.starts_with("PG") {
                c.env_remove(k);
            }
        }
        c.env("CIRKEL_REPO", &self.env.repo)
            .env("CIRKEL_PASSWORD_FILE", &self.env.password_file)
            .env("CIRKEL_CACHE_DIR", &self.cache)
            .env("CIRKEL_STATE_DIR", &self.state)
            .env("CIRKEL_CONFIG", &self.config)
            .current_dir(self.env.dir.path());
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(out.status.success(), "cirkel {args:?} failed: {}\n{}", stderr(&out), stdout(&out));
        stdout(&out)
    }

    fn start() -> Estate {
        let env = Env::new();
        std::fs::set_permissions(&env.password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cache = env.path("cache");
        std::fs::create_dir_all(&cache).unwrap();
        chown_postgres(env.dir.path());
        let archive = format!(
            "archive_command = 'CIRKEL_CACHE_DIR={} {} --repo {} --password-file {} wal-push %p'",
            cache.display(),
            shared_bin(),
            env.repo,
            env.password_file.display()
        );
        let mut a = PgCluster::init(&["wal_keep_size = '256MB'", "archive_mode = on", &archive, "archive_timeout = 2"]);
        a.start();
        a.sql("CREATE TABLE t (id serial PRIMARY KEY, note text)");
        let mut b = PgCluster::standby_of(&a);
        cirkel_testkit::pg::append_conf(&b.data, &["cluster_name = 'b'".to_string()]);
        b.start();
        let mut c = PgCluster::standby_of(&a);
        cirkel_testkit::pg::append_conf(&c.data, &["cluster_name = 'c'".to_string()]);
        c.start();
        let listen = format!("127.0.0.1:{}", cirkel_testkit::free_port());
        let (viewer, operator) = (env.path("viewer.token"), env.path("operator.token"));
        std::fs::write(&viewer, format!("{VIEWER}\n")).unwrap();
        std::fs::write(&operator, format!("{OPERATOR}\n")).unwrap();
        for f in [&viewer, &operator] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
            chown_postgres(f);
        }
        let member = |name: &str, pg: &PgCluster| {
            format!(
                "[postgres.main.members.{name}]\nhost = \"{}\"\nport = {}\npgdata = \"{}\"\nzone = \"zone-{name}\"\n",
                pg.socket_dir.display(),
                pg.port,
                pg.data.display()
            )
        };
        let config = env.path("cirkel.toml");
        let proxy = cirkel_testkit::free_port();
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{listen}\"\nviewer_token_file = \"{}\"\noperator_token_file = \"{}\"\n\
                 [postgres.main]\nuser = \"postgres\"\ndatabase = \"postgres\"\nproxy_listen = \"127.0.0.1:{proxy}\"\n\
                 [postgres.main.health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nunhealthy_threshold = 3\n{}{}{}",
                viewer.display(),
                operator.display(),
                member("a", &a),
                member("b", &b),
                member("c", &c)
            ),
        )
        .unwrap();
        chown_postgres(&config);
        let state = env.path("state");
        let mut e = Estate { env, cache, a, b, c, config, state, listen, serve: None };
        e.ok(&["repo", "init"]);
        let out = e.cmd(&["pg", "backup"]).envs(e.a.env()).output().unwrap();
        assert!(out.status.success(), "pg backup: {}", stderr(&out));
        e.a.sql("SELECT pg_switch_wal()");
        let log = std::fs::File::create(e.env.path("serve.log")).unwrap();
        e.serve = Some(e.cmd(&["serve"]).stderr(log).spawn().unwrap());
        // The collector has seen the three members and a measured exposure.
        let listen = e.listen.clone();
        let log = e.env.path("serve.log");
        wait_until("the API to show three members and an RPO figure", Duration::from_secs(120), &mut || {
            let (s, v) = get(&listen, "/api/v1/overview", VIEWER);
            if s == 0
                && let Some(Some(status)) = e.serve.as_mut().map(|c| c.try_wait().ok().flatten())
            {
                panic!("cirkel serve exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            s == 200
                && v["clusters"][0]["members"].as_array().is_some_and(|m| m.len() == 3)
                && v["sources"][0]["rpo"]["value_s"].is_number()
        });
        e
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let out = self.cmd(&["--json", "events", "--kind", kind]).output().unwrap();
        serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| v.as_array().cloned()).unwrap_or_default()
    }
}

#[test]
fn the_api_answers_as_documented_refuses_without_the_right_token_and_audits() {
    let mut e = Estate::start();
    let listen = e.listen.clone();
    let addr = listen.as_str();
    let doc = openapi();

    // Every read, live, against the document.
    for (path, template) in [
        ("/api/v1/overview", "/api/v1/overview"),
        ("/api/v1/sources", "/api/v1/sources"),
        ("/api/v1/sources/postgres/main", "/api/v1/sources/{kind}/{name}"),
        ("/api/v1/clusters", "/api/v1/clusters"),
        ("/api/v1/repositories", "/api/v1/repositories"),
        ("/api/v1/backups", "/api/v1/backups"),
        ("/api/v1/backups?source=postgres%2Fmain", "/api/v1/backups"),
        ("/api/v1/windows", "/api/v1/windows"),
        ("/api/v1/alarms", "/api/v1/alarms"),
        ("/api/v1/checks", "/api/v1/checks"),
        ("/api/v1/alerts?all=true", "/api/v1/alerts"),
        ("/api/v1/incidents?all=true", "/api/v1/incidents"),
        ("/api/v1/drills", "/api/v1/drills"),
        ("/api/v1/events?limit=5", "/api/v1/events"),
    ] {
        let (status, v) = get(addr, path, VIEWER);
        assert_eq!(status, 200, "GET {path}: {v:#}");
        conforms(&doc, template, &v);
    }
    let (_, v) = get(addr, "/api/v1/sources/postgres/main", OPERATOR);
    let members = v["cluster"]["members"].as_array().unwrap();
    let primary: Vec<&Value> = members.iter().filter(|m| m["role"] == "primary").collect();
    assert_eq!(primary.len(), 1, "{v:#}");
    assert_eq!(primary[0]["name"], "a");
    assert_eq!(primary[0]["zone"], "zone-a");
    assert!(members.iter().filter(|m| m["role"] == "standby").all(|m| m["lag_bytes"].is_u64()), "{v:#}");
    assert_eq!(v["source"]["rpo"]["target_s"], 300.0);
    assert!(v["source"]["rpo"]["status"] != "unknown", "{v:#}");
    assert_eq!(v["backups"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(v["backups"][0]["kind"], "base");
    assert!(v["windows"][0]["earliest"].is_string(), "{v:#}");

    // No token, a wrong one, a viewer's on an action: refused, nothing done, audited.
    let (s, _, body) = http(addr, "GET", "/api/v1/sources", &[], None);
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("hint"), "{body}");
    let (s, _) = get(addr, "/api/v1/sources", "not-the-token-at-all-000000");
    assert_eq!(s, 401);
    let (s, v) = post(addr, "/api/v1/clusters/main/pause", Some(VIEWER), "{}");
    assert_eq!(s, 403, "{v:#}");
    let (s, _) = post(addr, "/api/v1/clusters/main/pause", None, "{}");
    assert_eq!(s, 401);
    // A dashboard cookie does not act.
    let cookie = format!("cirkel_token={OPERATOR}");
    let (s, _, _) = http(addr, "POST", "/api/v1/clusters/main/pause", &[("Cookie", &cookie)], Some("{}"));
    assert_eq!(s, 401);
    assert!(e.events("paused").is_empty(), "a refused request paused the cluster");
    let refused = e.events("api-refused");
    let reasons: Vec<&str> = refused.iter().filter_map(|r| r["details"]["reason"].as_str()).collect();
    assert!(reasons.contains(&"no token") && reasons.contains(&"wrong token"), "{refused:#?}");
    assert!(reasons.contains(&"a viewer token cannot act"), "{refused:#?}");
    assert!(refused.iter().all(|r| !r.to_string().contains(VIEWER) && !r.to_string().contains(OPERATOR)));

    // The event stream hears the operator's pause as it happens.
    let auth = format!("Authorization: Bearer {VIEWER}");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(stream, "GET /api/v1/events/stream HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n\r\n").unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains(": connected") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    let (s, v) = post(addr, "/api/v1/clusters/main/pause", Some(OPERATOR), "{\"by\":\"alice\"}");
    assert_eq!(s, 200, "{v:#}");
    while !(seen.contains("\"kind\":\"paused\"") && seen.contains("\"kind\":\"api-action\"")) {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let (s, _) = post(addr, "/api/v1/clusters/main/resume", Some(OPERATOR), "");
    assert_eq!(s, 200);
    let actions = e.events("api-action");
    assert_eq!(actions.len(), 2, "{actions:#?}");
    assert_eq!(actions[0]["details"]["by"], "alice (api)");
    assert_eq!(actions[0]["details"]["status"], 200);
    // An action that cannot be done is refused with why, and audited too.
    let (s, v) = post(addr, "/api/v1/clusters/nope/pause", Some(OPERATOR), "");
    assert_eq!(s, 409, "{v:#}");
    assert!(v["error"].as_str().unwrap().contains("nope") && v["hint"].is_string(), "{v:#}");
    let (s, v) = post(addr, "/api/v1/silences", Some(OPERATOR), "{\"matchers\":[]}");
    assert!(s == 400 || s == 404, "{s} {v:#}");
    assert_eq!(e.events("api-action").len(), 4);
    let (s, v) = post(addr, "/api/v1/clusters/nope/drill", Some(OPERATOR), "");
    assert_eq!(s, 404, "{v:#}");
    let (s, _) = post(addr, "/api/v1/clusters/main/drill", Some(VIEWER), "");
    assert_eq!(s, 403);
    let (s, v) = post(addr, "/api/v1/alerts/1/ack", Some(OPERATOR), "not json");
    assert_eq!(s, 400, "{v:#}");
    // Paging goes backwards through the log (the refusals and actions above are in it).
    let (_, p1) = get(addr, "/api/v1/events?limit=2", VIEWER);
    let before = p1["next_before"].as_u64().unwrap();
    let (_, p2) = get(addr, &format!("/api/v1/events?limit=2&before={before}"), VIEWER);
    assert!(p2["events"][0]["seq"].as_u64().unwrap() < before, "{p1:#}\n{p2:#}");
    // The API follows the log: the six actions (the malformed one too) reach it within a moment.
    wait_until("the six actions in the API's events", Duration::from_secs(30), &mut || {
        let (_, kinds) = get(addr, "/api/v1/events?kind=api-action&limit=1000", VIEWER);
        kinds["events"].as_array().is_some_and(|e| e.len() == 6)
    });

    // A dead standby: the answer comes from the cached state at once and
    // says the member is down, and the page renders.
    e.c.kill9();
    wait_until("member c reported down", Duration::from_secs(90), &mut || {
        let (_, v) = get(addr, "/api/v1/clusters", VIEWER);
        v["clusters"][0]["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "c" && m["reachable"] == false))
    });
    let start = Instant::now();
    let cookie = format!("cirkel_token={VIEWER}");
    let (s, _, page) = http(addr, "GET", "/", &[("Cookie", &cookie)], None);
    eprintln!("the dashboard rendered in {:?} with a member down", start.elapsed());
    assert_eq!(s, 200);
    assert!(page.contains("data-member=\"c\" data-role=\"unknown\""), "{page}");

    // The repository goes away: it is reported unreachable, the RPO
    // exposure becomes unknown (never green), and the page still renders.
    let repo = std::path::PathBuf::from(&e.env.repo);
    std::fs::rename(&repo, repo.with_extension("gone")).unwrap();
    wait_until("the repository reported unreachable", Duration::from_secs(90), &mut || {
        let (_, v) = get(addr, "/api/v1/repositories", VIEWER);
        v["repositories"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["name"] == "default" && r["reachable"] == false))
    });
    let (_, v) = get(addr, "/api/v1/sources", VIEWER);
    assert_eq!(v["sources"][0]["rpo"]["status"], "unknown", "{v:#}");
    assert!(v["sources"][0]["rpo"]["value_s"].is_null(), "{v:#}");
    let start = Instant::now();
    let (s, _, page) = http(addr, "GET", "/", &[("Cookie", &cookie)], None);
    eprintln!("the dashboard rendered in {:?} with the repository gone", start.elapsed());
    assert_eq!(s, 200);
    assert!(page.contains("class=\"badge unknown rpo\""), "{page}");
}

// ---------------------------------------------------------------------------
// The dashboard in a real browser.

/// chromedriver on a free port, and one headless Chromium session.
struct Browser {
    driver: cirkel_testkit::Service,
    addr: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let chromedriver = cirkel_testkit::require_program("chromedriver", "apt-get install chromium chromium-driver");
        let port = cirkel_testkit::free_port();
        let mut c = Command::new(chromedriver);
        c.arg(format!("--port={port}")).arg("--allowed-ips=127.0.0.1");
        let driver = cirkel_testkit::Service::spawn("chromedriver", c);
        assert!(cirkel_testkit::wait_for_port(port, Duration::from_secs(30)), "chromedriver did not start");
        let addr = format!("127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1400",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "none",
            "timeouts": { "pageLoad": 60000, "script": 30000, "implicit": 0 },
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
        }}});
        let (s, _, body) = http(&addr, "POST", "/session", &[], Some(&caps.to_string()));
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert_eq!(s, 200, "chromedriver refused a session: {body}\n{}", driver.log_text());
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser { driver, addr, session, _profile: profile }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        let b = body.map(|b| b.to_string());
        let (s, _, out) =
            http(&self.addr, method, &p, &[], b.as_deref().or(if method == "POST" { Some("{}") } else { None }));
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        assert_eq!(s, 200, "{method} {path}: {out}\n{}", self.driver.log_text());
        v["value"].clone()
    }

    /// Opens `url` and waits until the page it ends on has loaded (the
    /// driver does not wait: a load event lost under load would hang it).
    fn go(&self, url: &str) {
        eprintln!("browser: open {}", url.split('?').next().unwrap_or(url));
        self.call("POST", "/url", Some(json!({ "url": url })));
        let want = url.split('?').next().unwrap_or(url).to_string();
        wait_until("the page to load", Duration::from_secs(60), &mut || {
            let s = self.eval("return document.readyState + ' ' + location.href.split('?')[0];");
            s.as_str().is_some_and(|s| s.starts_with("complete ") && s.ends_with(want.as_str()))
        });
    }

    /// Runs `script` in the page and returns its value.
    fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    fn screenshot(&self, to: &Path) {
        use base64_free::decode;
        let png = self.call("GET", "/screenshot", None);
        let bytes = decode(png.as_str().unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(&self.addr, "DELETE", &format!("/session/{}", self.session), &[], None);
    }
}

/// Base64 (standard alphabet) for the screenshots, without a crate.
mod base64_free {
    pub fn decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        };
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for v in s.bytes().filter_map(val) {
            acc = (acc << 6) | v as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}

const PRIMARY_JS: &str = "var r=document.querySelector('#members tr.member[data-role=\"primary\"]');return r?r.getAttribute('data-member'):null;";
const RPO_JS: &str = "var b=document.querySelector('.rpo[data-source=\"postgres/main\"]');return b?b.textContent+'|'+b.getAttribute('data-status'):null;";

#[test]
fn the_dashboard_in_chromium_shows_members_and_rpo_and_follows_a_failover() {
    let e = Estate::start();
    let browser = Browser::start();
    let base = format!("http://{}", e.listen);
    // Without the token: the sign-in form.
    browser.go(&format!("{base}/"));
    let form = browser.eval("return document.querySelector('input[name=token]')!==null;");
    assert_eq!(form, true);
    // The token once in the address; the cookie from then on.
    browser.go(&format!("{base}/?token={VIEWER}"));
    wait_until("the dashboard to show primary a", Duration::from_secs(60), &mut || browser.eval(PRIMARY_JS) == "a");
    let url = browser.call("GET", "/url", None);
    assert!(!url.as_str().unwrap().contains("token"), "the token stayed in the address: {url}");
    let members = browser.eval("return document.querySelectorAll('#members tr.member').length;");
    assert_eq!(members, 3);
    let rpo = browser.eval(RPO_JS);
    let rpo = rpo.as_str().unwrap();
    assert!(!rpo.starts_with("unknown"), "the RPO figure is unknown: {rpo}");
    assert!(rpo.ends_with("|green") || rpo.ends_with("|amber") || rpo.ends_with("|red"), "{rpo}");
    let zones = browser.eval("return document.querySelector('#members').textContent;");
    assert!(zones.as_str().unwrap().contains("zone-b"), "{zones}");
    let img = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/img");
    browser.screenshot(&img.join("dashboard.png"));

    // A failover drill: the page, left open, shows the new primary by itself.
    // The operator starts a failover drill through the API; the page, left
    // open, shows the new primary and the drill by itself.
    eprintln!("browser: the dashboard shows a, starting the failover drill");
    // The drill refuses a cluster that does not look healthy (on a loaded
    // machine a check can miss): it starts on a healthy one.
    wait_until("a healthy cluster", Duration::from_secs(60), &mut || {
        e.cmd(&["status", "--cluster", "main"]).output().is_ok_and(|o| o.status.success())
    });
    let (status, v) = post(&e.listen, "/api/v1/clusters/main/drill", Some(OPERATOR), "");
    assert_eq!(status, 200, "{v:#}");
    let (status, v) = post(&e.listen, "/api/v1/clusters/main/drill", Some(OPERATOR), "");
    assert_eq!(status, 409, "a second drill at once: {v:#}");
    wait_until("the page to show the new primary", Duration::from_secs(120), &mut || {
        browser.eval(PRIMARY_JS).as_str().is_some_and(|p| p == "b" || p == "c")
    });
    eprintln!("browser: the page shows the new primary");
    wait_until("the page to list the drill", Duration::from_secs(120), &mut || {
        browser.eval("return document.querySelectorAll('#drills td.drill-rto').length;") == 1
    });
    browser.screenshot(&img.join("dashboard-after-failover.png"));
    // Narrow, as on a phone: nothing is wider than the screen but the scrolling tables.
    browser.call("POST", "/window/rect", Some(json!({ "width": 390, "height": 900 })));
    let wide = browser.eval(
        "var w=document.documentElement.clientWidth;return Array.from(document.querySelectorAll('section.card')).filter(function(s){return s.getBoundingClientRect().right>w+1}).length;",
    );
    assert_eq!(wide, 0);
    browser.screenshot(&img.join("dashboard-phone.png"));
}
