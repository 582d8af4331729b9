//! Leadership through a real etcd (Debian's `etcd-server`, started by each
//! test on free ports): one holder at a time, epochs that grow with every
//! holder, a paused holder fenced off, and no stale leadership while etcd
//! is down.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cirkel_config::CoordinationConfig;
use cirkel_election::{EtcdElection, Fence, FenceError};
use cirkel_failover::Leadership;
use cirkel_testkit::etcd::EtcdServer;

const TTL: Duration = Duration::from_secs(2);
const SCOPE: &str = "postgres-main";

fn config(endpoint: &str, node: &str) -> CoordinationConfig {
    CoordinationConfig {
        etcd: vec![endpoint.to_string()],
        ttl: TTL,
        node: Some(node.to_string()),
        ..CoordinationConfig::default()
    }
}

fn contender(etcd: &EtcdServer, node: &str) -> EtcdElection {
    EtcdElection::connect(&config(&etcd.endpoint(), node), SCOPE).expect("connect to etcd")
}

/// Calls `f` until it returns `Some`, failing after a generous deadline.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within 30s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_of_two_contenders_wins_and_the_other_takes_over_after_a_release_with_a_higher_epoch() {
    let etcd = EtcdServer::start();
    let (mut a, mut b) = (contender(&etcd, "a"), contender(&etcd, "b"));
    assert_eq!(a.key(), "/cirkel/postgres-main/leader");
    let la = a.acquire().unwrap().expect("a takes the free key");
    assert_eq!(la.holder, "a");
    assert_eq!(b.acquire().unwrap(), None, "b waits while a holds the key");
    assert_eq!(b.holder().as_deref(), Some("a"));
    assert_eq!(a.acquire().unwrap().map(|l| l.epoch), Some(la.epoch), "asking again keeps the same lease");

    // Held across several TTLs: the keep-alive renews it.
    std::thread::sleep(TTL * 3);
    assert!(a.still_held(&la).unwrap(), "the kept-alive lease outlives its TTL");
    assert!(a.valid_for().is_some_and(|d| d <= TTL));
    assert_eq!(b.acquire().unwrap(), None, "b still waits");

    let fence = b.fence();
    assert_eq!(fence.current_epoch(SCOPE).unwrap(), la.epoch);
    fence.put_if_epoch(SCOPE, la.epoch, "promotion", b"by a").expect("the holder's write lands");

    a.release(la.clone());
    assert!(!a.still_held(&la).unwrap(), "a released lease is not held");
    assert_eq!(a.valid_for(), None);
    assert_eq!(fence.current_epoch(SCOPE).unwrap(), 0, "a release deletes the key at once");
    let lb = b.acquire().unwrap().expect("b takes the released key");
    assert!(lb.epoch > la.epoch, "epochs grow with every holder: {} then {}", la.epoch, lb.epoch);
    assert_eq!(a.acquire().unwrap(), None);
    assert_eq!(a.holder().as_deref(), Some("b"));

    fence.put_if_epoch(SCOPE, lb.epoch, "promotion", b"by b").expect("the new holder's write lands");
    let stale = fence.put_if_epoch(SCOPE, la.epoch, "promotion", b"by a again");
    assert_eq!(stale, Err(FenceError::Stale { epoch: la.epoch, current: Some(lb.epoch) }));
    assert!(stale.unwrap_err().to_string().contains("must stop acting"));
    assert_eq!(fence.get(SCOPE, "promotion").unwrap().as_deref(), Some(&b"by b"[..]));

    // Scopes are independent: the same node leads another one.
    let mut other = EtcdElection::connect(&config(&etcd.endpoint(), "a"), "redis-cache").unwrap();
    assert!(other.acquire().unwrap().is_some());
    b.release(lb.clone());
    assert_eq!(
        fence.put_if_epoch(SCOPE, lb.epoch, "promotion", b"late"),
        Err(FenceError::Stale { epoch: lb.epoch, current: None })
    );
}

/// The child half of the pause test: holds the lease and answers commands
/// on stdin, so the parent can stop it with SIGSTOP like a paused process.
/// Run on its own (not by the pause test), it has nothing to do and passes.
#[test]
fn paused_holder_child() {
    let Ok(endpoint) = std::env::var("CIRKEL_ELECTION_CHILD_ETCD") else { return };
    let mut e = EtcdElection::connect(&config(&endpoint, "paused"), SCOPE).unwrap();
    let fence = e.fence();
    let lease = e.acquire().unwrap().expect("the child takes the free key");
    println!("child: epoch {}", lease.epoch);
    for line in std::io::stdin().lines() {
        let reply = match line.unwrap().as_str() {
            "check" => format!("held {:?}", e.still_held(&lease)),
            "write" => match fence.put_if_epoch(SCOPE, lease.epoch, "promotion", b"by the paused one") {
                Ok(()) => "write ok".to_string(),
                Err(err) => format!("write refused: {err}"),
            },
            _ => break,
        };
        println!("child: {reply}");
    }
}

struct ChildHolder {
    child: Child,
    stdin: ChildStdin,
    /// The child's stdout lines, read on a thread so a hung child fails
    /// the test instead of hanging it.
    lines: mpsc::Receiver<String>,
}

impl ChildHolder {
    fn start(etcd: &EtcdServer) -> ChildHolder {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "paused_holder_child", "--nocapture", "--test-threads", "1"])
            .env("CIRKEL_ELECTION_CHILD_ETCD", etcd.endpoint())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child holder");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ChildHolder { child, stdin, lines }
    }

    /// The child's next answer.
    fn answer(&mut self) -> String {
        loop {
            let line = self.lines.recv_timeout(Duration::from_secs(60)).expect("the child holder answers within 60s");
            // libtest may print the test's name on the same line first.
            if let Some((_, a)) = line.split_once("child: ") {
                return a.to_string();
            }
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").unwrap();
        self.answer()
    }

    fn signal(&self, sig: libc::c_int) {
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, sig) }, 0);
    }
}

impl Drop for ChildHolder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_holder_paused_past_its_ttl_loses_the_lease_and_its_writes_are_refused() {
    let etcd = EtcdServer::start();
    let mut child = ChildHolder::start(&etcd);
    let first = child.answer();
    let paused_epoch: u64 =
        first.strip_prefix("epoch ").and_then(|e| e.parse().ok()).unwrap_or_else(|| panic!("{first}"));
    assert_eq!(child.ask("check"), "held Ok(true)");

    let mut b = contender(&etcd, "b");
    assert_eq!(b.acquire().unwrap(), None, "the running holder keeps the key");
    assert_eq!(b.holder().as_deref(), Some("paused"));

    child.signal(libc::SIGSTOP);
    let lb = eventually("b taking the key of the paused holder", || b.acquire().unwrap());
    assert!(lb.epoch > paused_epoch, "the new holder's epoch {} is above the paused one's {paused_epoch}", lb.epoch);
    let fence = b.fence();
    fence.put_if_epoch(SCOPE, lb.epoch, "promotion", b"by b").unwrap();

    child.signal(libc::SIGCONT);
    // Resumed mid-action, before any check: etcd refuses its write.
    let write = child.ask("write");
    assert!(write.starts_with("write refused") && write.contains(&format!("epoch {} holds", lb.epoch)), "{write}");
    assert_eq!(child.ask("check"), "held Ok(false)");
    assert_eq!(child.ask("write"), write, "it stays refused");
    assert_eq!(fence.get(SCOPE, "promotion").unwrap().as_deref(), Some(&b"by b"[..]));
    assert!(b.still_held(&lb).unwrap(), "the new holder is undisturbed");
    assert_eq!(fence.current_epoch(SCOPE).unwrap(), lb.epoch);
}

#[test]
fn with_etcd_down_the_lease_lapses_within_the_ttl_and_is_taken_again_once_etcd_is_back() {
    let mut etcd = EtcdServer::start();
    let mut a = contender(&etcd, "a");
    let fence = a.fence();
    let la = a.acquire().unwrap().expect("a takes the free key");
    assert!(a.still_held(&la).unwrap());

    let killed = Instant::now();
    etcd.kill();
    // Every keep-alive answered was sent before the kill, so by now the
    // lease can no longer be trusted, whatever etcd remembers of it.
    std::thread::sleep((killed + TTL + Duration::from_millis(50)).saturating_duration_since(Instant::now()));
    assert_eq!(a.still_held(&la), Ok(false), "no leadership past the TTL without etcd");
    assert_eq!(a.valid_for(), None);

    let endpoint = etcd.endpoint();
    let err = a.acquire().expect_err("nothing can be acquired without etcd").to_string();
    assert!(
        err.contains("etcd did not answer at") && err.contains(&endpoint) && err.contains("check that etcd runs"),
        "{err}"
    );
    let err = fence.current_epoch(SCOPE).expect_err("no epoch without etcd").to_string();
    assert!(err.contains(&endpoint), "{err}");
    let err = fence.put_if_epoch(SCOPE, la.epoch, "promotion", b"x").expect_err("no write without etcd");
    assert!(matches!(&err, FenceError::Store(e) if e.0.contains(&endpoint)), "{err}");
    let err = EtcdElection::connect(&config(&endpoint, "c"), SCOPE).expect_err("no etcd to connect to");
    assert!(err.0.contains(&endpoint) && err.0.contains("did not answer"), "{err}");

    etcd.restart();
    let again = eventually("a taking the key again after etcd's restart", || a.acquire().ok().flatten());
    assert!(again.epoch > la.epoch, "the epoch {} after the restart is above {}", again.epoch, la.epoch);
    assert!(a.still_held(&again).unwrap());
    assert!(!a.still_held(&la).unwrap(), "the lapsed lease stays lapsed");
    assert_eq!(fence.current_epoch(SCOPE).unwrap(), again.epoch);
}

#[test]
fn connecting_refuses_what_could_never_work_and_says_what_to_do() {
    let port = cirkel_testkit::free_port();
    let nobody = format!("http://127.0.0.1:{port}");
    let err = EtcdElection::connect(&config(&nobody, "a"), SCOPE).unwrap_err().0;
    assert!(err.contains(&nobody) && err.contains("did not answer") && err.contains("[coordination] etcd"), "{err}");
    assert!(Fence::connect(&config(&nobody, "a")).unwrap_err().0.contains(&nobody));

    let etcd = EtcdServer::start();
    let mut no_node = config(&etcd.endpoint(), "a");
    no_node.node = None;
    let err = EtcdElection::connect(&no_node, SCOPE).unwrap_err().0;
    assert!(err.contains("--node") && err.contains("[coordination] node"), "{err}");
    let err = EtcdElection::connect(&config(&etcd.endpoint(), "a"), "../other").unwrap_err().0;
    assert!(err.contains("not a valid scope"), "{err}");
    let mut short = config(&etcd.endpoint(), "a");
    short.ttl = Duration::from_secs(1);
    assert!(EtcdElection::connect(&short, SCOPE).unwrap_err().0.contains("at least \"2s\""));
    let mut none = config(&etcd.endpoint(), "a");
    none.etcd.clear();
    assert!(EtcdElection::connect(&none, SCOPE).unwrap_err().0.contains("no etcd endpoint"));
    let mut tls = config("https://127.0.0.1:2379", "a");
    tls.node = Some("a".into());
    assert!(EtcdElection::connect(&tls, SCOPE).unwrap_err().0.contains("no TLS support"));

    let fence = Fence::connect(&config(&etcd.endpoint(), "a")).unwrap();
    assert_eq!(fence.current_epoch(SCOPE).unwrap(), 0, "nobody holds a scope never taken");
    assert_eq!(fence.current(SCOPE).unwrap(), None);
    assert!(
        matches!(fence.put_if_epoch(SCOPE, 1, "leader", b"x"), Err(FenceError::Store(_))),
        "the leader key is the election's"
    );
    assert_eq!(fence.put_if_epoch(SCOPE, 1, "promotion", b"x"), Err(FenceError::Stale { epoch: 1, current: None }));
}

#[test]
fn a_holder_gone_without_a_release_is_replaced_after_its_ttl() {
    let etcd = EtcdServer::start();
    let mut a = contender(&etcd, "a");
    let la = a.acquire().unwrap().expect("a takes the free key");
    drop(a);
    let mut b = contender(&etcd, "b");
    let lb = eventually("b taking the key once a's lease expires", || b.acquire().unwrap());
    assert!(lb.epoch > la.epoch);
    assert_eq!(b.holder().as_deref(), Some("b"));
}

#[test]
fn releasing_or_checking_a_lost_lease_leaves_the_new_holders_alone() {
    let etcd = EtcdServer::start();
    let (mut a, mut b) = (contender(&etcd, "a"), contender(&etcd, "b"));
    let old = a.acquire().unwrap().unwrap();
    a.release(old.clone());
    let lb = b.acquire().unwrap().unwrap();
    a.release(old.clone());
    assert!(!a.still_held(&old).unwrap());
    assert!(b.still_held(&lb).unwrap(), "a's late release does not touch b's key");
    // A lease handed to another node is never "held" here.
    assert!(!a.still_held(&lb).unwrap());
    a.release(lb.clone());
    assert!(b.still_held(&lb).unwrap());
    assert_eq!(b.fence().current(SCOPE).unwrap().map(|l| (l.epoch, l.holder)), Some((lb.epoch, "b".to_string())));
}

#[test]
fn an_endpoint_that_refuses_connections_is_passed_over() {
    let etcd = EtcdServer::start();
    // A port nothing listens on: connections to it are refused at once,
    // as to a host whose etcd died.
    let dead = format!("http://127.0.0.1:{}", cirkel_testkit::free_port());
    for endpoints in [vec![dead.clone(), etcd.endpoint()], vec![etcd.endpoint(), dead.clone()]] {
        let cfg = CoordinationConfig { etcd: endpoints, ..config(&etcd.endpoint(), "a") };
        let fence = Fence::connect(&cfg).expect("one endpoint answers");
        // Every request gets through, at worst after one failure that moves
        // the client to another endpoint.
        let mut failures = 0;
        for i in 0..20 {
            match fence.get(SCOPE, "record") {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    assert!(failures <= 2, "request {i}: {e}");
                }
            }
        }
        let mut election = EtcdElection::connect(&cfg, SCOPE).unwrap();
        let lease = eventually("the lease", || election.acquire().ok().flatten());
        assert!(eventually("a check", || election.still_held(&lease).ok()));
        election.release(lease);
    }
}
