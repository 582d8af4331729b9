//! `cirkel lab up | status | down`: a complete local estate to try cirkel
//! on: PostgreSQL 15 (a primary and two standbys in zones a, b and c,
//! archiving into a local repository, with a second "region" repository),
//! a Redis master with two replicas and three Sentinels, a small HTTP
//! service with `/health`, a webhook sink, and `cirkel serve` with its
//! checks, alarms, a route to the sink, the API and the dashboard.
//!
//! Everything lives below one directory (default `/tmp/cirkel-lab`), runs
//! as `postgres` when started by root (PostgreSQL refuses root), listens on
//! free loopback ports, and is listed in `lab.json` there as it is made, so
//! `down` (or a failed `up`) removes exactly what was made.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cli::Global;
use crate::output::{print_json, user_error};

#[derive(Debug, Subcommand)]
pub enum LabCmd {
    /// Start the lab: PostgreSQL primary and two standbys, Redis with replicas and Sentinels,
    /// a web service, two repositories, and `cirkel serve` with the dashboard. Prints the URL.
    Up(LabArgs),
    /// What runs, and how recoverable it is now.
    Status(LabArgs),
    /// Stop everything the lab started and remove its directory.
    Down(LabArgs),
    /// The lab's web service (`/health`) and webhook sink (appends what it receives to a file).
    #[command(hide = true)]
    Helper {
        #[arg(long)]
        health: Option<String>,
        #[arg(long, requires = "out")]
        sink: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// The lab's directory: everything it makes is below it.
    #[arg(long, env = "CIRKEL_LAB_DIR", default_value = "/tmp/cirkel-lab")]
    pub dir: PathBuf,
}

const PG_BINDIR: &str = "/usr/lib/postgresql/15/bin";
const INSTALL: &str = "apt-get install postgresql-15 redis-server redis-sentinel redis-tools";
const MANIFEST: &str = "lab.json";

/// What the lab made, written as it goes.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    dir: PathBuf,
    /// The user the processes run as.
    user: String,
    pg: Vec<(String, u16)>,
    redis: Vec<u16>,
    sentinels: Vec<u16>,
    proxy: u16,
    health: u16,
    sink: u16,
    server: u16,
    pids: Vec<(String, u32)>,
    config: PathBuf,
    url: String,
    ready_after_s: Option<f64>,
}

pub fn run(global: &Global, cmd: &LabCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCmd::Up(a) => up(global, &a.dir),
        LabCmd::Status(a) => status(global, &a.dir),
        LabCmd::Down(a) => down(global, &a.dir),
        LabCmd::Helper { health, sink, out } => helper(health.as_deref(), sink.as_deref(), out.as_deref()),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free loopback port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A command run as the lab's user.
fn as_user(user: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() && user != "root" {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={user}")).arg(format!("--regid={user}")).arg("--init-groups").arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn must(what: &str, out: std::io::Result<std::process::Output>) -> anyhow::Result<String> {
    let out = out.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn chown(m: &Manifest, path: &Path) -> anyhow::Result<()> {
    if is_root() && m.user != "root" {
        must("chown", Command::new("chown").arg("-R").arg(format!("{0}:{0}", m.user)).arg(path).output())?;
    }
    Ok(())
}

fn save(m: &Manifest) -> anyhow::Result<()> {
    std::fs::write(m.dir.join(MANIFEST), serde_json::to_vec_pretty(m)?)?;
    Ok(())
}

fn load(dir: &Path) -> anyhow::Result<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).map_err(|_| {
        user_error(format!("no lab in {}", dir.display()), "start one with `cirkel lab up` (or give its --dir)")
    })?;
    Ok(serde_json::from_str(&text)?)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .chain([Path::new("/usr/sbin").join(program), Path::new("/usr/bin").join(program)])
        .find(|p| p.is_file())
}

/// One GET against the lab's server with the viewer token.
fn api_get(port: u16, path: &str, token: &str) -> Option<Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).ok()
}

fn up(global: &Global, dir: &Path) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if dir.join(MANIFEST).exists() {
        return Err(user_error(
            format!("a lab is already up in {}", dir.display()),
            "see it with `cirkel lab status`, or remove it with `cirkel lab down`",
        ));
    }
    // What the lab needs from the system.
    let bindir = Path::new(PG_BINDIR);
    let mut missing: Vec<String> = ["initdb", "pg_ctl", "pg_basebackup", "postgres"]
        .iter()
        .filter(|p| !bindir.join(p).is_file())
        .map(|p| format!("{PG_BINDIR}/{p}"))
        .collect();
    for p in ["redis-server", "redis-sentinel", "redis-cli", "setpriv"] {
        if which(p).is_none() && (p != "setpriv" || is_root()) {
            missing.push(p.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(user_error(
            format!("the lab needs {} and cannot find it", missing.join(", ")),
            format!("on Debian or Ubuntu: sudo {INSTALL}"),
        ));
    }
    let user = if is_root() { "postgres".to_string() } else { std::env::var("USER").unwrap_or_else(|_| "me".into()) };
    if is_root() && must("id", Command::new("id").args(["-u", "postgres"]).output()).is_err() {
        return Err(user_error(
            "there is no `postgres` user to run PostgreSQL as",
            format!("install PostgreSQL 15: {INSTALL}"),
        ));
    }
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(user_error(
            format!("{} exists and is not empty", dir.display()),
            "give the lab another --dir, or remove that directory",
        ));
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let mut m = Manifest { dir: dir.to_path_buf(), user, ..Manifest::default() };
    save(&m)?;
    match build(global, &mut m, started) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let _ = teardown(&m);
            Err(user_error(
                format!("the lab did not come up: {e:#}"),
                format!(
                    "what it had started is stopped and {} removed; fix the cause and run `cirkel lab up` again",
                    m.dir.display()
                ),
            ))
        }
    }
}

fn say(global: &Global, what: &str) {
    if !global.quiet && !global.json {
        eprintln!("  {what}");
    }
}

fn build(global: &Global, m: &mut Manifest, started: Instant) -> anyhow::Result<()> {
    let dir = m.dir.clone();
    let bindir = Path::new(PG_BINDIR);
    let p = |rel: &str| dir.join(rel);
    // The binary, where the lab's user can run it.
    std::fs::create_dir_all(p("bin"))?;
    let exe = p("bin/cirkel");
    std::fs::copy(std::env::current_exe()?, &exe)?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    for d in ["sock", "pg", "redis", "state", "cache"] {
        std::fs::create_dir_all(p(d))?;
    }
    std::fs::write(p("password"), random_hex(24)?)?;
    std::fs::write(p("viewer.token"), random_hex(24)?)?;
    std::fs::write(p("operator.token"), random_hex(24)?)?;
    for f in ["password", "viewer.token", "operator.token"] {
        std::fs::set_permissions(p(f), std::fs::Permissions::from_mode(0o600))?;
    }
    let viewer = std::fs::read_to_string(p("viewer.token"))?;
    // Ports.
    for name in ["a", "b", "c"] {
        m.pg.push((name.to_string(), free_port()?));
    }
    m.redis = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    m.sentinels = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
    m.proxy = free_port()?;
    m.health = free_port()?;
    m.sink = free_port()?;
    m.server = free_port()?;
    m.config = p("cirkel.toml");
    save(m)?;

    // The configuration: two repositories, the cluster, the group, a check, a route.
    let members: String =
        m.pg.iter()
            .map(|(n, port)| {
                format!(
                    "[postgres.main.members.{n}]\nhost = \"{}\"\nport = {port}\npgdata = \"{}\"\nzone = \"{n}\"\n\n",
                    p("sock").display(),
                    p(&format!("pg/{n}")).display()
                )
            })
            .collect();
    let list = |ports: &[u16]| ports.iter().map(|x| format!("\"127.0.0.1:{x}\"")).collect::<Vec<_>>().join(", ");
    let config = format!(
        "# The lab's configuration (cirkel lab up).\n\
         [repository]\nurl = \"{repo}\"\npassword_file = \"{pw}\"\n\n\
         [repositories.region]\nurl = \"{region}\"\npassword_file = \"{pw}\"\ncontinuous = true\n\n\
         [state]\ndir = \"{state}\"\n\n\
         [server]\nlisten = \"127.0.0.1:{server}\"\nviewer_token_file = \"{vt}\"\noperator_token_file = \"{ot}\"\n\n\
         [postgres.main]\nuser = \"postgres\"\ndatabase = \"postgres\"\nproxy_listen = \"127.0.0.1:{proxy}\"\n\n\
         [postgres.main.health]\ninterval = \"1s\"\ntimeout = \"2s\"\nunhealthy_threshold = 3\n\n\
         {members}\
         [redis.cache]\nmembers = [{redis}]\nsentinels = [{sentinels}]\nrestart_command = \"redis-server {rdir}/node-{{port}}.conf\"\n\
         schedule = \"* * * * *\"\n\n\
         [checks.web]\nkind = \"http\"\nurl = \"http://127.0.0.1:{health}/health\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n\
         restart_command = \"{exe} lab helper --health 127.0.0.1:{health}\"\n\n\
         [alarms.check-down]\nperiod = \"2s\"\n\n\
         [notify.sink]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{sink}/\"\n",
        repo = p("repo").display(),
        region = p("region").display(),
        pw = p("password").display(),
        state = p("state").display(),
        server = m.server,
        vt = p("viewer.token").display(),
        ot = p("operator.token").display(),
        proxy = m.proxy,
        redis = list(&m.redis),
        sentinels = list(&m.sentinels),
        rdir = p("redis").display(),
        health = m.health,
        sink = m.sink,
        exe = exe.display(),
    );
    std::fs::write(&m.config, config)?;
    chown(m, &dir)?;
    let (user, config) = (m.user.clone(), m.config.clone());
    let cirkel = |args: &[&str]| {
        let mut c = as_user(&user, &exe);
        c.arg("--config").arg(&config).args(args).env("CIRKEL_CACHE_DIR", p("cache"));
        for (k, _) in std::env::vars() {
            if k.starts_with("CIRKEL_") && k != "CIRKEL_CACHE_DIR" {
                c.env_remove(k);
            }
        }
        c
    };
    say(global, "repositories: main and region");
    must("repo init", cirkel(&["repo", "init"]).output())?;
    let region = p("region").display().to_string();
    let main_repo = p("repo").display().to_string();
    must("repo init (region)", cirkel(&["repo", "init", "--repo", &region, "--copy-keys-from", &main_repo]).output())?;

    // PostgreSQL: a primary archiving into the repository, two standbys.
    say(global, "PostgreSQL 15: primary a, standbys b and c");
    let (a_name, a_port) = m.pg[0].clone();
    let a_data = p(&format!("pg/{a_name}"));
    must(
        "initdb",
        as_user(&m.user, bindir.join("initdb"))
            .arg("-D")
            .arg(&a_data)
            .args(["-U", "postgres", "--auth=trust", "--data-checksums", "-E", "UTF8", "--locale=C"])
            .output(),
    )?;
    let archive = format!(
        "CIRKEL_CACHE_DIR={} {} --config {} wal-push %p",
        p("cache").display(),
        exe.display(),
        m.config.display()
    );
    let conf = |port: u16, name: &str| {
        format!(
            "\n# cirkel lab\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nwal_keep_size = '256MB'\n\
             hot_standby = on\nshared_buffers = 32MB\narchive_mode = on\narchive_command = '{archive}'\n\
             archive_timeout = 10\ntrack_commit_timestamp = on\ncluster_name = '{name}'\n",
            p("sock").display()
        )
    };
    append(&a_data.join("postgresql.conf"), &conf(a_port, &a_name))?;
    append(
        &a_data.join("pg_hba.conf"),
        "\nlocal replication all trust\nhost replication all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 trust\n",
    )?;
    pg_start(m, &a_data)?;
    for (name, port) in m.pg[1..].iter().cloned() {
        let data = p(&format!("pg/{name}"));
        must(
            "pg_basebackup",
            as_user(&m.user, bindir.join("pg_basebackup"))
                .arg("-h")
                .arg(p("sock"))
                .args(["-p", &a_port.to_string(), "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "-D"])
                .arg(&data)
                .output(),
        )?;
        append(&data.join("postgresql.conf"), &conf(port, &name))?;
        pg_start(m, &data)?;
    }

    // Redis: a master, two replicas, three Sentinels (cirkel serve configures them).
    say(global, "Redis: master, two replicas, three Sentinels");
    let rdir = p("redis");
    let server = which("redis-server").unwrap_or_else(|| PathBuf::from("redis-server"));
    let sentinel = which("redis-sentinel").unwrap_or_else(|| PathBuf::from("redis-sentinel"));
    for (i, port) in m.redis.clone().iter().enumerate() {
        let data = rdir.join(format!("data-{port}"));
        std::fs::create_dir_all(&data)?;
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize yes\ndir {}\npidfile {}/node-{port}.pid\nlogfile {}/redis-{port}.log\n",
            data.display(),
            rdir.display(),
            rdir.display()
        );
        if i > 0 {
            conf.push_str(&format!("replicaof 127.0.0.1 {}\n", m.redis[0]));
        }
        std::fs::write(rdir.join(format!("node-{port}.conf")), conf)?;
    }
    for port in &m.sentinels {
        let conf = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize yes\ndir {d}\npidfile {d}/node-{port}.pid\nlogfile {d}/sentinel-{port}.log\n",
            d = rdir.display()
        );
        std::fs::write(rdir.join(format!("node-{port}.conf")), conf)?;
    }
    chown(m, &rdir)?;
    for port in m.redis.clone() {
        must("redis-server", as_user(&m.user, &server).arg(rdir.join(format!("node-{port}.conf"))).output())?;
    }
    for port in m.sentinels.clone() {
        must("redis-sentinel", as_user(&m.user, &sentinel).arg(rdir.join(format!("node-{port}.conf"))).output())?;
    }

    // The web service and the webhook sink, apart: a drill kills the one.
    say(global, "a web service with /health, a webhook sink");
    let mut web_cmd = as_user(&m.user, &exe);
    web_cmd.args(["lab", "helper", "--health", &format!("127.0.0.1:{}", m.health)]);
    let web = spawn(m, web_cmd, &p("web.log"))?;
    m.pids.push(("web".into(), web));
    let mut sink_cmd = as_user(&m.user, &exe);
    sink_cmd.args([
        "lab",
        "helper",
        "--sink",
        &format!("127.0.0.1:{}", m.sink),
        "--out",
        &p("webhook.log").display().to_string(),
    ]);
    let sink = spawn(m, sink_cmd, &p("sink.log"))?;
    m.pids.push(("sink".into(), sink));
    save(m)?;

    // A first base backup and an RDB, so there is something to restore.
    say(global, "a base backup of PostgreSQL and an RDB of Redis");
    must(
        "pg backup",
        cirkel(&["pg", "backup"])
            .env("PGHOST", p("sock"))
            .env("PGPORT", a_port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres")
            .output(),
    )?;
    // The Sentinels monitor the group once the replicas are linked.
    let linked = Instant::now() + Duration::from_secs(30);
    loop {
        match must("redis configure", cirkel(&["redis", "configure", "--group", "cache"]).output()) {
            Ok(_) => break,
            Err(e) if Instant::now() > linked => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    let linked = Instant::now() + Duration::from_secs(30);
    loop {
        match must("redis backup", cirkel(&["redis", "backup", "--group", "cache"]).output()) {
            Ok(_) => break,
            Err(e) if Instant::now() > linked => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }

    // The daemon.
    say(global, "cirkel serve: watchers, checks, alarms, notifications, API and dashboard");
    let serve = spawn(m, cirkel(&["serve"]), &p("serve.log"))?;
    m.pids.push(("serve".into(), serve));
    m.url = format!("http://127.0.0.1:{}/?token={}", m.server, viewer.trim());
    save(m)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = api_get(m.server, "/api/v1/clusters", viewer.trim())
            && v["fresh"] == true
            && v["clusters"].as_array().is_some_and(|c| c.len() == 2 && c.iter().all(|c| c["healthy"] == true))
        {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the estate did not become healthy within 90 s; see {} and `cirkel --config {} status`",
                p("serve.log").display(),
                m.config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    m.ready_after_s = Some(started.elapsed().as_secs_f64());
    save(m)?;
    if global.json {
        print_json(&json!({
            "dir": m.dir, "url": m.url, "config": m.config, "ready_after_s": m.ready_after_s,
            "bin": exe, "user": m.user, "proxy": m.proxy, "server": m.server,
        }));
    } else {
        println!("The lab is up in {:.1} s, healthy.\n", started.elapsed().as_secs_f64());
        println!("  Dashboard:  {}", m.url);
        println!(
            "  API:        curl -H \"Authorization: Bearer $(cat {})\" http://127.0.0.1:{}/api/v1/sources",
            p("viewer.token").display(),
            m.server
        );
        println!("  Endpoint:   psql -h 127.0.0.1 -p {} -U postgres   (always the primary)", m.proxy);
        println!("\nTry (as {}):", m.user);
        let run =
            if is_root() { format!("setpriv --reuid={0} --regid={0} --init-groups ", m.user) } else { String::new() };
        let c = format!("{run}{} --config {}", exe.display(), m.config.display());
        println!("  {c} status");
        println!("  {c} drill failover            # kill the primary, measure the RTO, rejoin it");
        println!("  {c} pg restore --to /tmp/pitr --target-time $(date -u +%Y-%m-%dT%H:%M:%SZ)");
        println!("  {c} drill redis-failover --group cache");
        println!("  {c} drill suite               # the plan's five failures, measured");
        println!("  {c} events");
        println!("\n  cirkel lab status --dir {}    cirkel lab down --dir {}", m.dir.display(), m.dir.display());
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn pg_start(m: &Manifest, data: &Path) -> anyhow::Result<()> {
    let log = data.with_extension("log");
    must(
        "pg_ctl start",
        as_user(&m.user, Path::new(PG_BINDIR).join("pg_ctl"))
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::piped())
            .output(),
    )?;
    Ok(())
}

/// Starts a long-running process in its own session, its output in `log`.
fn spawn(_m: &Manifest, mut c: Command, log: &Path) -> anyhow::Result<u32> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    c.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid in the child before exec touches nothing shared.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    Ok(c.spawn()?.id())
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Stops everything in the manifest and removes the directory.
fn teardown(m: &Manifest) -> anyhow::Result<()> {
    for (_, pid) in m.pids.iter().rev() {
        // SAFETY: signalling a process the lab started.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let until = Instant::now() + Duration::from_secs(15);
    while m.pids.iter().any(|(_, p)| alive(*p)) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, pid) in &m.pids {
        if alive(*pid) {
            // SAFETY: as above.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
    for port in m.redis.iter().chain(&m.sentinels) {
        let pidfile = m.dir.join(format!("redis/node-{port}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            // SAFETY: the pid file of a Redis the lab started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for (name, _) in &m.pg {
        let data = m.dir.join(format!("pg/{name}"));
        if data.join("postmaster.pid").exists() {
            let _ = as_user(&m.user, Path::new(PG_BINDIR).join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    // What drills started again (a web service, a Redis) is known by the
    // lab directory in its command line.
    let mine = m.dir.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let exe = std::fs::read_link(e.path().join("exe")).unwrap_or_default();
        let ours = exe.starts_with(&m.dir)
            || exe
                .file_name()
                .is_some_and(|n| ["redis-server", "redis-sentinel", "postgres"].contains(&&*n.to_string_lossy()));
        if pid as u32 != std::process::id() && ours && args.contains(&format!("{mine}/")) {
            // SAFETY: a process started from the lab's directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if m.dir.join(MANIFEST).exists() {
        std::fs::remove_dir_all(&m.dir)?;
    }
    Ok(())
}

fn down(global: &Global, dir: &Path) -> anyhow::Result<ExitCode> {
    let m = load(dir)?;
    teardown(&m)
        .map_err(|e| user_error(format!("cannot remove {}: {e}", dir.display()), "remove what is left by hand"))?;
    if global.json {
        print_json(&json!({ "dir": dir, "removed": true }));
    } else {
        println!("The lab in {} is stopped and removed.", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn status(global: &Global, dir: &Path) -> anyhow::Result<ExitCode> {
    let m = load(dir)?;
    let token = std::fs::read_to_string(dir.join("viewer.token")).unwrap_or_default();
    // A drill may have killed the web service and started it again: it
    // runs when its port answers.
    let running =
        |n: &str, p: u32| alive(p) || (n == "web" && std::net::TcpStream::connect(("127.0.0.1", m.health)).is_ok());
    let processes: Vec<Value> =
        m.pids.iter().map(|(n, p)| json!({ "name": n, "pid": p, "running": running(n, *p) })).collect();
    let overview = api_get(m.server, "/api/v1/overview", token.trim());
    let healthy = overview.as_ref().is_some_and(|o| {
        o["fresh"] == true && o["clusters"].as_array().is_some_and(|c| c.iter().all(|c| c["healthy"] == true))
    });
    if global.json {
        print_json(
            &json!({ "dir": m.dir, "url": m.url, "healthy": healthy, "processes": processes, "overview": overview }),
        );
    } else {
        println!("Lab in {} — {}", m.dir.display(), if healthy { "healthy" } else { "NOT healthy" });
        println!("  Dashboard: {}", m.url);
        for p in &processes {
            println!(
                "  {:<8} pid {:<8} {}",
                p["name"].as_str().unwrap_or(""),
                p["pid"],
                if p["running"] == true { "running" } else { "stopped" }
            );
        }
        match &overview {
            Some(o) => {
                for s in o["sources"].as_array().into_iter().flatten() {
                    let fig = |x: &Value| match x["value_s"].as_f64() {
                        Some(v) => format!("{v:.1} s ({})", x["status"].as_str().unwrap_or("")),
                        None => "unknown".into(),
                    };
                    println!(
                        "  {:<16} RPO {:<22} RTO {}",
                        s["source"].as_str().unwrap_or(""),
                        fig(&s["rpo"]),
                        fig(&s["rto"])
                    );
                }
                for c in o["clusters"].as_array().into_iter().flatten() {
                    for mem in c["members"].as_array().into_iter().flatten() {
                        println!(
                            "  {:<16} {:<18} {:<8} zone {:<3} {}",
                            c["source"].as_str().unwrap_or(""),
                            mem["name"].as_str().unwrap_or(""),
                            mem["role"].as_str().unwrap_or(""),
                            mem["zone"].as_str().unwrap_or("-"),
                            if mem["reachable"] == true { "up" } else { "down" }
                        );
                    }
                }
            }
            None => {
                println!("  cirkel serve does not answer on 127.0.0.1:{} (see {}/serve.log)", m.server, m.dir.display())
            }
        }
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// The lab's web service, or its webhook sink, or both, until killed.
fn helper(health: Option<&str>, sink: Option<&str>, out: Option<&Path>) -> anyhow::Result<ExitCode> {
    let h = health.map(std::net::TcpListener::bind).transpose()?;
    let s = sink.map(std::net::TcpListener::bind).transpose()?;
    let out = out.map(Path::to_path_buf);
    let sinking = s.map(|s| {
        std::thread::spawn(move || {
            for conn in s.incoming().flatten() {
                let _ = answer(conn, out.as_ref());
            }
        })
    });
    if let Some(h) = h {
        for conn in h.incoming().flatten() {
            let _ = answer(conn, None);
        }
    }
    if let Some(t) = sinking {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads one request (head and a body up to 1 MiB), appends the body to
/// `sink` if given, and answers 200.
fn answer(mut conn: std::net::TcpStream, sink: Option<&PathBuf>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let body_at = loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..body_at]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(1 << 20);
    while buf.len() < body_at + len {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if let Some(path) = sink {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&buf[body_at..(body_at + len).min(buf.len())])?;
        f.write_all(b"\n")?;
    }
    let body = if sink.is_some() { "ok\n" } else { "{\"status\":\"ok\"}\n" };
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
