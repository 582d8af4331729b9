//! No single point of failure: three hosts in network namespaces, each
//! with an etcd member, a PostgreSQL member and a `cirkel serve --node`
//! agent, all agents sharing one configuration file. The tests take hosts,
//! agents, links and etcd away and check what clients see through the
//! agents' endpoints, what each agent recorded, and what PostgreSQL holds.
//!
//! The test process reaches every host through the bridge (and every
//! PostgreSQL through its socket directory, whatever the network does).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cirkel_testkit::etcd::EtcdCluster;
use cirkel_testkit::netns::{Host, Net};
use cirkel_testkit::pg::{PgCluster, chown_postgres, pg_bindir, streaming_cluster};
use common::shared_bin;

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const MEMBERS: [&str; 3] = ["a", "b", "c"];
const TTL: Duration = Duration::from_secs(5);
const PROXY: u16 = 6432;
const PROXY_RO: u16 = 6433;
const API: u16 = 8008;
const LEADER_KEY: &str = "/cirkel/postgres-main/leader";

/// Three hosts, each with an etcd member, a PostgreSQL member (`a` on host
/// 0 starts as the primary) and an agent. Fields drop in order: agents,
/// PostgreSQL, etcd, then the net (which kills whatever is left in it).
struct Cluster {
    agents: Vec<Option<Child>>,
    pg: Vec<PgCluster>,
    etcd: EtcdCluster,
    dir: tempfile::TempDir,
    config: PathBuf,
    net: Net,
}

struct Options {
    synchronous: bool,
}

impl Cluster {
    fn start(opts: Options) -> Cluster {
        let net = Net::new(3);
        let pg = streaming_cluster(&net, &MEMBERS, &["wal_keep_size = '256MB'", "max_connections = 60"]);
        pg[0].sql(
            "CREATE TABLE t (id serial PRIMARY KEY, note text); \
             CREATE TABLE canary (seq bigint PRIMARY KEY); \
             CREATE TABLE probe (id bigserial PRIMARY KEY, src int, dst int)",
        );
        let etcd = EtcdCluster::start(&net, &[0, 1, 2]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let config = dir.path().join("cirkel.toml");
        let endpoints = etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
        let mut text = format!(
            "[coordination]\netcd = [{endpoints}]\nttl = \"{}s\"\n\n\
             [postgres.main]\nuser = \"postgres\"\ndatabase = \"postgres\"\nsynchronous = {}\n\
             proxy_listen = \"0.0.0.0:{PROXY}\"\nproxy_listen_ro = \"0.0.0.0:{PROXY_RO}\"\n",
            TTL.as_secs(),
            opts.synchronous
        );
        for (i, m) in MEMBERS.iter().enumerate() {
            let ip = net.host(i).ip();
            text.push_str(&format!(
                "\n[postgres.main.members.{m}]\nhost = \"{ip}\"\nport = {}\nzone = \"{m}\"\nnode = \"{}\"\n\
                 pgdata = \"{}\"\napi_listen = \"{ip}:{API}\"\n",
                pg[i].port,
                NODES[i],
                pg[i].data.display()
            ));
        }
        std::fs::write(&config, text).unwrap();
        for node in NODES {
            std::fs::create_dir_all(dir.path().join(format!("state-{node}"))).unwrap();
        }
        chown_postgres(dir.path());
        let mut c = Cluster { agents: vec![None, None, None], pg, etcd, dir, config, net };
        for i in 0..3 {
            c.start_agent(i);
        }
        c.wait_for("writes through every endpoint", Duration::from_secs(120), |c| {
            (0..3).all(|e| c.write_via(None, e, "INSERT INTO t (note) VALUES ('ready')").is_ok())
        });
        c
    }

    fn state(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("state-{}", NODES[i]))
    }

    fn agent_log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("agent-{}.log", NODES[i]))
    }

    /// `cirkel serve --node nI` in host i's namespace, as postgres.
    fn start_agent(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.agent_log(i)).unwrap();
        let mut cmd = self.net.cmd_as_postgres(i, shared_bin());
        cmd.arg("--config").arg(&self.config).args(["serve", "--node", NODES[i]]);
        for (k, _) in std::env::vars() {
            if k.starts_with("CIRKEL_") || k.starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CIRKEL_STATE_DIR", self.state(i)).current_dir(self.dir.path());
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.agents[i] = Some(cmd.spawn().unwrap());
    }

    fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal_agent(&self, i: usize, sig: i32) {
        if let Some(c) = &self.agents[i] {
            // SAFETY: a signal to an agent this test started.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// The whole host dies: agent, PostgreSQL and etcd member at once.
    fn kill_host(&mut self, i: usize) {
        self.net.kill_host(i);
        self.kill_agent(i);
        self.etcd.kill(i);
        self.pg[i].forget_dead_postmaster();
    }

    /// The host comes back: etcd, then PostgreSQL (as a boot would start
    /// it, whatever it was), then the agent.
    fn revive_host(&mut self, i: usize) {
        self.etcd.restart(i);
        if !self.pg[i].forget_dead_postmaster() {
            self.pg[i].try_start_nowait();
        }
        if self.agents[i].is_none() {
            self.start_agent(i);
        }
    }

    /// The events of one kind that agent i recorded.
    fn events(&self, i: usize, kind: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.state(i).join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    fn all_events(&self, i: usize) -> String {
        std::fs::read_to_string(self.state(i).join("events.jsonl")).unwrap_or_default()
    }

    /// One statement through host `endpoint`'s read-write endpoint, from
    /// the test process (None) or from inside a host. Only a clean commit
    /// counts: a commit that was cancelled while it waited for a
    /// synchronous standby is committed locally but was not acknowledged.
    fn write_via(&self, from: Option<usize>, endpoint: usize, sql: &str) -> Result<String, String> {
        let host = self.net.host(endpoint).ip().to_string();
        psql(self.psql_cmd(from), &format!("host={host} port={PROXY}"), sql)
    }

    fn psql_cmd(&self, from: Option<usize>) -> Command {
        psql_cmd(from.map(|i| self.net.host(i)))
    }

    /// The members that are primaries, asked through their socket
    /// directories (so a cut-off host answers too).
    fn primaries(&self) -> Vec<usize> {
        (0..3).filter(|&i| self.pg[i].try_sql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")).collect()
    }

    /// Standbys streaming from member `p`, by application name.
    fn streaming_from(&self, p: usize) -> Vec<String> {
        self.pg[p]
            .try_sql("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1")
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// The node holding the leader key, as any etcd member the test
    /// reaches says; None while no member answers or nobody holds it.
    fn leader(&self) -> Option<usize> {
        (0..3).find_map(|m| {
            let (_, kvs) = etcd_get(self.etcd.client_addr(m), LEADER_KEY)?;
            let value = kvs?;
            let tokens: Vec<&str> =
                value.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).collect();
            NODES.iter().position(|n| tokens.contains(n))
        })
    }

    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Cluster) -> bool) {
        let start = Instant::now();
        while !f(self) {
            if let Some(i) = (0..3).find(|&i| self.agent_exited(i)) {
                panic!("agent {} exited while waiting for {what}\n{}", NODES[i], self.diagnosis());
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.diagnosis());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether agent i's process ended by itself (it is a zombie: the
    /// test has not reaped it).
    fn agent_exited(&self, i: usize) -> bool {
        self.agents[i].as_ref().is_some_and(|c| {
            std::fs::read_to_string(format!("/proc/{}/stat", c.id()))
                .map(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
                .unwrap_or(true)
        })
    }

    fn diagnosis(&self) -> String {
        let mut out = format!("primaries (by socket): {:?}; leader: {:?}\n", self.primaries(), self.leader());
        for (i, node) in NODES.iter().enumerate() {
            out.push_str(&format!("---- events of {node} ----\n{}", tail(&self.all_events(i), 60)));
        }
        out
    }

    /// The member `new` is writable through the endpoints of `via`, the
    /// others are standbys, and `others` stream from it.
    fn wait_settled_on(&self, new: usize, via: &[usize], timeout: Duration) {
        let last = std::cell::RefCell::new(String::new());
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.wait_for(&format!("{} as the only primary, taking writes", MEMBERS[new]), timeout, |c| {
                c.primaries() == [new]
                    && via.iter().all(|&e| {
                        let w = c.write_via(None, e, "INSERT INTO t (note) VALUES ('x') RETURNING inet_server_addr()");
                        *last.borrow_mut() = format!("through {}: {w:?}", NODES[e]);
                        w.is_ok_and(|a| a == c.net.host(new).ip().to_string())
                    })
            })
        }));
        if let Err(e) = waited {
            eprintln!("last write: {}", last.borrow());
            std::panic::resume_unwind(e);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.signal_agent(i, libc::SIGCONT);
            self.kill_agent(i);
        }
        if std::thread::panicking() {
            for (i, node) in NODES.iter().enumerate() {
                let log = std::fs::read_to_string(self.agent_log(i)).unwrap_or_default();
                eprintln!("---- agent {node} log ----\n{}", tail(&log, 80));
                eprintln!("---- events of {node} ----\n{}", tail(&self.all_events(i), 80));
            }
            eprintln!("{}", tail(&self.etcd.logs(), 60));
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

/// psql (under `timeout`) in the test process or inside a host.
fn psql_cmd(from: Option<&Host>) -> Command {
    psql_cmd_timeout(from, 8)
}

/// psql killed after `secs` seconds, in the test process or inside a host.
fn psql_cmd_timeout(from: Option<&Host>, secs: u32) -> Command {
    let mut c = match from {
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.ns, "timeout"]);
            c
        }
        None => Command::new("timeout"),
    };
    c.arg(secs.to_string()).arg(pg_bindir().join("psql"));
    c
}

/// Runs `sql` with `psql` (the command, usually wrapped in `timeout`) on
/// `conninfo`; the output, or the error. A statement that committed
/// locally while its wait for a synchronous standby was cancelled (psql
/// exits 0 with a warning) is an error: it was never acknowledged.
fn psql(mut cmd: Command, conninfo: &str, sql: &str) -> Result<String, String> {
    let has_timeout = cmd.get_envs().any(|(k, _)| k == "PGCONNECT_TIMEOUT");
    if !has_timeout {
        cmd.env("PGCONNECT_TIMEOUT", "2");
    }
    let out = cmd
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(format!("{conninfo} user=postgres dbname=postgres"))
        .args(["-c", sql])
        .env("PGOPTIONS", "-c statement_timeout=3000")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && !stderr.contains("synchronous replication") {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(if stderr.is_empty() { format!("psql: {}", out.status) } else { stderr })
    }
}

/// `key` from the etcd member at `addr` (a linearizable read): the
/// response's header revision and the value, if the key exists.
fn etcd_get(addr: std::net::SocketAddr, key: &str) -> Option<(u64, Option<String>)> {
    let body = EtcdCluster::linearizable_read(addr, key, Duration::from_secs(2)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let rev = v["header"]["revision"].as_str()?.parse().ok()?;
    let value = v["kvs"][0]["value"].as_str().map(|b| String::from_utf8_lossy(&decode_base64(b)).into_owned());
    Some((rev, value))
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn sleep(d: Duration) {
    std::thread::sleep(d);
}

#[test]
fn the_primarys_whole_host_dying_promotes_a_standby_elsewhere_and_writes_resume_on_the_survivors() {
    let mut c = Cluster::start(Options { synchronous: false });
    assert_eq!(c.primaries(), [0]);
    for _ in 0..10 {
        c.write_via(None, 1, "INSERT INTO t (note) VALUES ('before')").unwrap();
    }
    c.wait_for("a's standbys to catch up", Duration::from_secs(30), |c| {
        (1..3).all(|i| c.pg[i].try_sql("SELECT count(*) FROM t WHERE note = 'before'").as_deref() == Ok("10"))
    });

    c.kill_host(0);
    c.wait_for("a write through a survivor's endpoint", Duration::from_secs(60), |c| {
        c.write_via(None, 1, "INSERT INTO t (note) VALUES ('after')").is_ok()
    });
    // The leader records the failover once it saw its own endpoint take a
    // write, which may come after a client's.
    c.wait_for("the failover's event", Duration::from_secs(60), |c| {
        (1..3).any(|i| !c.events(i, "failover").is_empty())
    });
    let failovers: Vec<_> = (1..3).flat_map(|i| c.events(i, "failover")).collect();
    assert_eq!(failovers.len(), 1, "one failover, by the one leader: {failovers:#?}");
    let new = failovers[0]["details"]["new_primary"].as_str().unwrap().to_string();
    let new = MEMBERS.iter().position(|m| *m == new).unwrap();
    assert!(new == 1 || new == 2, "{failovers:#?}");
    c.wait_settled_on(new, &[1, 2], Duration::from_secs(60));
    let before = c.write_via(None, 2, "SELECT count(*) FROM t WHERE note = 'before'").unwrap();
    assert_eq!(before, "10", "every write acknowledged before the host died is there");
    // The read-only endpoint of each survivor serves the remaining standby.
    let other = 3 - new;
    c.wait_for("the read-only endpoints on the other standby", Duration::from_secs(60), |c| {
        (1..3).all(|e| {
            let host = c.net.host(e).ip().to_string();
            psql(c.psql_cmd(None), &format!("host={host} port={PROXY_RO}"), "SELECT inet_server_addr()")
                .is_ok_and(|a| a == c.net.host(other).ip().to_string())
        })
    });

    // The host comes back: its member is rewound and follows the new primary.
    c.revive_host(0);
    c.wait_for("a to stream from the new primary", Duration::from_secs(120), |c| {
        c.streaming_from(new).contains(&"a".to_string())
    });
    assert_eq!(c.primaries(), [new]);
    c.write_via(None, 0, "INSERT INTO t (note) VALUES ('later')").unwrap();
    c.wait_for("a to replay writes made after the failover", Duration::from_secs(30), |c| {
        c.pg[0].try_sql("SELECT count(*) FROM t WHERE note = 'later'").as_deref() == Ok("1")
    });
}

#[test]
fn the_leader_agent_killed_or_paused_past_its_ttl_gives_way_and_the_resumed_one_acts_on_nothing() {
    let mut c = Cluster::start(Options { synchronous: false });
    c.wait_for("a leader", Duration::from_secs(30), |c| c.leader().is_some());
    let first = c.leader().unwrap();
    assert!(!c.events(first, "leadership-acquired").is_empty(), "{}", c.all_events(first));

    // Killed: another agent takes the lease once it lapses.
    c.kill_agent(first);
    c.wait_for("another leader", TTL * 6, |c| c.leader().is_some_and(|l| l != first));
    let second = c.leader().unwrap();
    assert!(!c.events(second, "leadership-acquired").is_empty(), "{}", c.all_events(second));
    c.start_agent(first);
    sleep(TTL * 2);
    assert_eq!(c.leader(), Some(second), "a restarted agent does not take over a held lease");
    assert_eq!(c.primaries().len(), 1, "one primary throughout");
    let survivor = (0..3).find(|&e| e != first).unwrap();
    c.write_via(None, survivor, "INSERT INTO t (note) VALUES ('after kill')").unwrap();

    // Paused past its TTL: another leads; resumed, the old leader knows it
    // lost the lease and does nothing under it.
    let failovers_before: Vec<usize> = (0..3).map(|i| c.events(i, "failover").len()).collect();
    c.signal_agent(second, libc::SIGSTOP);
    c.wait_for("a leader other than the paused one", TTL * 6, |c| c.leader().is_some_and(|l| l != second));
    let third = c.leader().unwrap();
    sleep(TTL);
    c.signal_agent(second, libc::SIGCONT);
    c.wait_for("the resumed agent to record that it lost the lease", TTL * 6, |c| {
        !c.events(second, "leadership-lost").is_empty()
    });
    sleep(TTL * 2);
    assert_eq!(c.leader(), Some(third), "the resumed agent did not take the lease back");
    assert_eq!(
        c.events(second, "failover").len(),
        failovers_before[second],
        "the resumed agent acted on a stale lease: {}",
        c.all_events(second)
    );
    let primaries = c.primaries();
    assert_eq!(primaries.len(), 1, "one primary: {primaries:?}\n{}", c.diagnosis());
    for e in 0..3 {
        c.wait_for("writes through every endpoint", Duration::from_secs(30), |c| {
            c.write_via(None, e, "INSERT INTO t (note) VALUES ('after pause')").is_ok()
        });
    }
}

#[test]
fn a_partition_isolating_the_primary_fences_it_the_majority_promotes_and_it_rejoins_after_healing() {
    let c = Cluster::start(Options { synchronous: false });
    assert_eq!(c.primaries(), [0]);
    c.write_via(None, 1, "INSERT INTO t (note) VALUES ('before')").unwrap();

    c.net.isolate(0);
    let cut = Instant::now();
    // Its agent can reach neither etcd's quorum nor the other members: it
    // stops taking writes (asked through its socket directory, which the
    // partition does not cut).
    c.wait_for("the cut-off primary to stop taking writes", TTL * 4, |c| {
        c.pg[0].try_sql("SET statement_timeout = 1000; INSERT INTO t (note) VALUES ('cut off')").is_err()
    });
    let fenced_after = cut.elapsed();
    c.wait_for("the self-fenced event", TTL * 4, |c| !c.events(0, "self-fenced").is_empty());
    // The majority promotes one of its own.
    c.wait_for("a write through the majority's endpoints", Duration::from_secs(60), |c| {
        c.write_via(None, 1, "INSERT INTO t (note) VALUES ('majority')").is_ok()
    });
    c.wait_for("the failover's event", Duration::from_secs(60), |c| {
        (1..3).any(|i| !c.events(i, "failover").is_empty())
    });
    let failover = (1..3).flat_map(|i| c.events(i, "failover")).next().expect("a failover on the majority side");
    let new = MEMBERS.iter().position(|m| *m == failover["details"]["new_primary"]).unwrap();
    assert!(new != 0, "{failover:#}");
    // The fenced member never takes a write while cut off.
    for _ in 0..10 {
        assert!(
            c.pg[0].try_sql("SET statement_timeout = 1000; INSERT INTO t (note) VALUES ('cut off')").is_err(),
            "the cut-off old primary took a write"
        );
        sleep(Duration::from_millis(300));
    }
    // A client on the cut-off host finds no writable primary there.
    assert!(c.write_via(Some(0), 0, "INSERT INTO t (note) VALUES ('local')").is_err());

    c.net.heal(0);
    c.wait_for("a to rejoin as a standby of the new primary", Duration::from_secs(120), |c| {
        !c.events(0, "rejoined").is_empty() && c.streaming_from(new).contains(&"a".to_string())
    });
    assert_eq!(c.primaries(), [new]);
    // The endpoint on a's host cuts its sessions when it learns the new
    // route: a session made just before is retried, as a client would.
    c.wait_for("a write through a's endpoint after healing", Duration::from_secs(30), |c| {
        let once = "INSERT INTO t (note) SELECT 'healed' WHERE NOT EXISTS (SELECT 1 FROM t WHERE note = 'healed')";
        c.write_via(None, 0, once).is_ok()
    });
    c.wait_for("a to replay writes made after healing", Duration::from_secs(30), |c| {
        c.pg[0].try_sql("SELECT count(*) FROM t WHERE note = 'healed'").as_deref() == Ok("1")
    });
    eprintln!("the cut-off primary stopped taking writes {:.1} s after the cut", fenced_after.as_secs_f64());
}

#[test]
fn etcd_down_with_healthy_members_changes_nothing_and_a_failover_then_is_refused_and_alarmed() {
    let mut c = Cluster::start(Options { synchronous: false });
    c.wait_for("a leader", Duration::from_secs(30), |c| c.leader().is_some());
    c.etcd.kill_all();
    // Well past the TTL (the two minutes, shortened): members see
    // each other, so nothing fails over, nothing is demoted, and writes go
    // on through every endpoint.
    let start = Instant::now();
    let mut writes = 0;
    let mut failed = Vec::new();
    while start.elapsed() < TTL * 4 {
        for e in 0..3 {
            writes += 1;
            if let Err(err) = c.write_via(None, e, "INSERT INTO t (note) VALUES ('etcd down')") {
                failed.push((start.elapsed().as_secs_f64(), e, err));
            }
        }
        sleep(Duration::from_millis(500));
    }
    assert!(failed.is_empty(), "{} of {writes} writes failed while etcd was down: {failed:?}", failed.len());
    assert_eq!(c.primaries(), [0]);
    for i in 0..3 {
        assert!(c.events(i, "failover").is_empty(), "{}", c.all_events(i));
        assert!(c.events(i, "self-fenced").is_empty(), "{}", c.all_events(i));
    }

    // The primary's host dies while etcd is down: nobody can take the
    // lease, so no failover, and the survivors alarm.
    c.kill_host(0);
    c.wait_for("a refused failover", Duration::from_secs(60), |c| {
        (1..3).any(|i| !c.events(i, "failover-refused").is_empty())
    });
    sleep(TTL * 2);
    assert!(c.primaries().is_empty(), "a standby was promoted without etcd");
    for i in 1..3 {
        assert!(c.events(i, "failover").is_empty(), "{}", c.all_events(i));
    }
    // etcd back (on the survivors' hosts): the failover goes ahead.
    c.etcd.restart_members(&[1, 2]);
    c.wait_for("a write through a survivor's endpoint", Duration::from_secs(90), |c| {
        c.write_via(None, 1, "INSERT INTO t (note) VALUES ('etcd back')").is_ok()
    });
    assert_eq!(c.primaries().len(), 1);
}

// ---- The nemesis -----------------------------------------------------------

/// A deterministic pseudo-random sequence (xorshift64*), seeded.
struct Rng(u64);

impl Rng {
    /// Spreads a small seed over the state first (splitmix64), so that
    /// nearby seeds give unrelated sequences.
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn secs(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from * 1000 + self.below((to - from) * 1000 + 1))
    }
}

#[derive(Default)]
struct Tally {
    /// Acknowledged writes: table, key.
    acked: Vec<(&'static str, i64)>,
    failed: u64,
    sweeps: u64,
    /// Sweeps in which two different servers acknowledged a write.
    dual: Vec<String>,
}

/// A writer through the list of every host's endpoint (libpq tries them in
/// turn, keeping the first that takes writes), one INSERT every 100 ms,
/// and prober threads: every 500 ms, a write through every endpoint from
/// inside every host at once. A sweep in which two different servers
/// acknowledge a write is a moment with two writable primaries.
fn run_clients(hosts: &[Host], stop: &AtomicBool) -> Tally {
    let ips: Vec<String> = hosts.iter().map(|h| h.ip().to_string()).collect();
    let tally = std::sync::Mutex::new(Tally::default());
    std::thread::scope(|s| {
        s.spawn(|| {
            let conninfo = format!("host={} port={PROXY} target_session_attrs=read-write", ips.join(","));
            let mut seq = 0i64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let t = Instant::now();
                match psql(psql_cmd(None), &conninfo, &format!("INSERT INTO canary (seq) VALUES ({seq})")) {
                    Ok(_) => tally.lock().unwrap().acked.push(("canary", seq)),
                    Err(_) => tally.lock().unwrap().failed += 1,
                }
                sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
        });
        s.spawn(|| {
            let epoch = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let results: Vec<Probe> = std::thread::scope(|p| {
                    let handles: Vec<_> = (0..3)
                        .flat_map(|src| (0..3).map(move |dst| (src, dst)))
                        .map(|(src, dst)| {
                            let ip = &ips[dst];
                            p.spawn(move || {
                                let sql = format!(
                                    "INSERT INTO probe (src, dst) VALUES ({src}, {dst}) RETURNING id, inet_server_addr()"
                                );
                                let start = epoch.elapsed();
                                let mut cmd = psql_cmd_timeout(Some(&hosts[src]), 3);
                                cmd.env("PGCONNECT_TIMEOUT", "1");
                                let r = psql(cmd, &format!("host={ip} port={PROXY}"), &sql);
                                let end = epoch.elapsed();
                                let ack = r.ok().and_then(|out| {
                                    let (id, server) = out.split_once('|')?;
                                    Some((id.parse().ok()?, server.to_string()))
                                });
                                Probe { src, dst, start, end, ack }
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap()).collect()
                });
                let mut tally = tally.lock().unwrap();
                tally.sweeps += 1;
                let acked: Vec<&Probe> = results.iter().filter(|p| p.ack.is_some()).collect();
                tally.acked.extend(acked.iter().filter_map(|p| p.ack.as_ref().map(|(id, _)| ("probe", *id))));
                // Two servers acknowledged writes during overlapping
                // requests: both may have been writable at one moment.
                let server = |p: &Probe| p.ack.as_ref().map(|(_, s)| s.clone()).unwrap_or_default();
                let dual = acked.iter().any(|a| {
                    acked.iter().any(|b| server(a) != server(b) && a.start < b.end && b.start < a.end)
                });
                if dual {
                    let seen: Vec<String> = acked
                        .iter()
                        .map(|p| {
                            format!(
                                "{}->{}: {} [{:.2}-{:.2} s]",
                                p.src,
                                p.dst,
                                server(p),
                                p.start.as_secs_f64(),
                                p.end.as_secs_f64()
                            )
                        })
                        .collect();
                    tally.dual.push(seen.join("; "));
                }
                drop(tally);
                sleep(Duration::from_millis(500).saturating_sub(t.elapsed()));
            }
        });
    });
    tally.into_inner().unwrap()
}

/// One probe: a write from host `src` through host `dst`'s endpoint, when
/// it was sent and answered (since the clients started), and the id and
/// server of the row if it was acknowledged.
struct Probe {
    src: usize,
    dst: usize,
    start: Duration,
    end: Duration,
    ack: Option<(i64, String)>,
}

/// The member that is the only primary, when there is exactly one.
fn sole_primary(c: &Cluster) -> Option<usize> {
    match c.primaries()[..] {
        [p] => Some(p),
        _ => None,
    }
}

/// Every fault undone, every host back; waits until one primary has both
/// standbys streaming and every endpoint takes writes. A member whose
/// PostgreSQL stays down 30 s is started by hand, as an operator would
/// (counted). Whether the cluster settled within `timeout`.
fn settle(c: &mut Cluster, manual_starts: &mut u64, timeout: Duration) -> bool {
    c.net.heal_all();
    for i in 0..3 {
        c.signal_agent(i, libc::SIGCONT);
        if c.etcd.pid(i).is_none() {
            c.revive_host(i);
        } else if c.agents[i].is_none() {
            c.start_agent(i);
        }
    }
    let start = Instant::now();
    let mut started_by_hand = [false; 3];
    while start.elapsed() < timeout {
        if let Some(p) = sole_primary(c)
            && c.streaming_from(p).len() == 2
            && (0..3).all(|e| c.write_via(None, e, "INSERT INTO t (note) VALUES ('settled')").is_ok())
        {
            return true;
        }
        if start.elapsed() > Duration::from_secs(30) {
            for (i, by_hand) in started_by_hand.iter_mut().enumerate() {
                if !*by_hand && !c.pg[i].forget_dead_postmaster() {
                    *by_hand = true;
                    *manual_starts += 1;
                    c.pg[i].try_start_nowait();
                }
            }
        }
        sleep(Duration::from_millis(500));
    }
    false
}

#[test]
fn nemesis_kills_pauses_and_partitions_without_two_primaries_or_lost_commits() {
    let rounds: usize = std::env::var("CIRKEL_NEMESIS_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let seed: u64 = std::env::var("CIRKEL_NEMESIS_SEED").ok().and_then(|r| r.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let mut rng = Rng::new(seed);
    // Every fault comes once in each run of seven rounds, in an order of
    // its own: a short run still sees different faults.
    let mut order: Vec<u64> = Vec::new();
    let mut c = Cluster::start(Options { synchronous: true });
    c.wait_for("a synchronous standby", Duration::from_secs(60), |c| {
        c.pg[0].try_sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')").as_deref()
            != Ok("0")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut log = Vec::new();
    let mut unsettled = Vec::new();
    let mut manual_starts = 0;
    let started = Instant::now();
    let hosts = c.net.hosts().to_vec();
    let clients = {
        let stop = stop.clone();
        std::thread::spawn(move || run_clients(&hosts, &stop))
    };
    for round in 1..=rounds {
        let primary = sole_primary(&c).unwrap_or(0);
        let leader = c.leader().unwrap_or(primary);
        if order.is_empty() {
            order = (0..7).collect();
            for k in (1..order.len()).rev() {
                order.swap(k, rng.below(k as u64 + 1) as usize);
            }
        }
        let fault = match order.pop().unwrap_or(0) {
            0 => {
                c.kill_host(primary);
                sleep(rng.secs(10, 20));
                "kill-primary-host"
            }
            1 => {
                c.kill_agent(leader);
                sleep(rng.secs(5, 15));
                "kill-leader-agent"
            }
            2 => {
                c.signal_agent(leader, libc::SIGSTOP);
                sleep(TTL + rng.secs(1, 6));
                c.signal_agent(leader, libc::SIGCONT);
                "pause-leader-agent"
            }
            3 => {
                c.signal_agent(primary, libc::SIGSTOP);
                sleep(TTL + rng.secs(1, 6));
                c.signal_agent(primary, libc::SIGCONT);
                "pause-primary-agent"
            }
            4 => {
                c.net.isolate(primary);
                sleep(rng.secs(8, 20));
                "isolate-primary-host"
            }
            5 => {
                let others: Vec<usize> = (0..3).filter(|&i| i != primary).collect();
                c.net.partition(&[&[primary], &others]);
                sleep(rng.secs(8, 20));
                "partition-primary-from-peers"
            }
            _ => {
                let victim = rng.below(3) as usize;
                c.net.isolate(victim);
                sleep(rng.secs(3, 12));
                "isolate-random-host"
            }
        };
        *faults.entry(fault).or_default() += 1;
        // Who took writes when the fault ended (before healing): shows
        // whether the fault was failed over, not only survived.
        let during = c.primaries().iter().map(|&p| MEMBERS[p]).collect::<Vec<_>>().join(",");
        let t = Instant::now();
        let settled = settle(&mut c, &mut manual_starts, Duration::from_secs(180));
        log.push(format!(
            "round {round}: {fault} (primary {}, leader {}); primaries as it ended [{during}]; \
             settled={settled} in {:.1} s, primary now {:?}",
            MEMBERS[primary],
            NODES[leader],
            t.elapsed().as_secs_f64(),
            sole_primary(&c).map(|p| MEMBERS[p])
        ));
        eprintln!("{}", log.last().unwrap());
        if !settled {
            unsettled.push(round);
            break;
        }
        sleep(rng.secs(2, 5));
    }
    stop.store(true, Ordering::Relaxed);
    let tally = clients.join().unwrap();
    // What every acknowledged write left: the final primary holds them all.
    let p = sole_primary(&c).expect("one primary at the end");
    let rows = |table: &str, col: &str| -> BTreeSet<i64> {
        c.pg[p].sql(&format!("SELECT {col} FROM {table}")).lines().filter_map(|l| l.parse().ok()).collect()
    };
    let (canary, probe) = (rows("canary", "seq"), rows("probe", "id"));
    let lost: Vec<&(&str, i64)> = tally
        .acked
        .iter()
        .filter(|(table, k)| !if *table == "canary" { canary.contains(k) } else { probe.contains(k) })
        .collect();
    let summary = format!(
        "nemesis: seed {seed}, {} rounds of {rounds} in {:.0} s, faults {faults:?}\n\
         synchronous mode; acknowledged writes {} ({} failed attempts), probe sweeps {} (3 hosts x 3 endpoints)\n\
         moments with two writable primaries: {}\nlost acknowledged commits: {}\n\
         rounds that did not settle within 180 s: {unsettled:?}; members started by hand: {manual_starts}\n{}\n",
        log.len(),
        started.elapsed().as_secs_f64(),
        tally.acked.len(),
        tally.failed,
        tally.sweeps,
        tally.dual.len(),
        lost.len(),
        log.join("\n")
    );
    eprintln!("{summary}");
    if let Ok(path) = std::env::var("CIRKEL_NEMESIS_SUMMARY") {
        std::fs::write(Path::new(&path), &summary).unwrap();
    }
    assert!(tally.dual.is_empty(), "two writable primaries: {:#?}", tally.dual);
    assert!(lost.is_empty(), "lost acknowledged commits: {lost:?}");
    assert!(unsettled.is_empty(), "the cluster did not settle after round(s) {unsettled:?}\n{}", c.diagnosis());
    assert!(tally.acked.len() > 100, "too few writes to judge: {}", tally.acked.len());
}
