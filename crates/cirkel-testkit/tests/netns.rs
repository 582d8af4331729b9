//! The network-namespace harness itself: hosts reach each other, faults
//! cut them off and heal, etcd and PostgreSQL run on the hosts, and
//! nothing is left behind.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use cirkel_testkit::etcd::EtcdCluster;
use cirkel_testkit::netns::{Net, pids_in};
use cirkel_testkit::pg::{NET_PORT, psql_from, streaming_cluster};

const SHORT: Duration = Duration::from_millis(700);

/// A listener on host `i`'s address that answers every connection with "hi".
fn echo_on(net: &Net, i: usize) -> SocketAddr {
    let ip = net.host(i).ip();
    let listener = net.run_in(i, || TcpListener::bind((ip, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(b"hi");
        }
    });
    addr
}

fn root_reaches(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, SHORT)
        .map(|mut s| {
            let mut b = String::new();
            let _ = s.set_read_timeout(Some(SHORT));
            let _ = s.read_to_string(&mut b);
            b == "hi"
        })
        .unwrap_or(false)
}

#[test]
fn hosts_reach_each_other_until_isolated_or_partitioned() {
    let net = Net::new(3);
    let addrs: Vec<SocketAddr> = (0..3).map(|i| echo_on(&net, i)).collect();
    assert_ne!(net.host(0).ip(), net.host(1).ip());
    assert!(net.host(0).ip().to_string().starts_with(&net.prefix()));
    for from in 0..3 {
        for (to, addr) in addrs.iter().enumerate() {
            assert!(net.can_connect(from, *addr, SHORT), "host {from} cannot reach host {to}");
        }
    }
    assert!(addrs.iter().all(|a| root_reaches(*a)), "the test process reaches every host");

    net.isolate(1);
    assert!(net.is_isolated(1));
    assert!(!net.can_connect(0, addrs[1], SHORT), "host 0 reaches the isolated host");
    assert!(!net.can_connect(1, addrs[2], SHORT), "the isolated host reaches host 2");
    assert!(!root_reaches(addrs[1]), "the test process reaches the isolated host");
    assert!(net.can_connect(0, addrs[2], SHORT), "the others still reach each other");
    assert!(net.can_connect(1, addrs[1], SHORT), "an isolated host still reaches itself");
    net.heal(1);
    assert!(!net.is_isolated(1));
    let start = Instant::now();
    while !net.can_connect(0, addrs[1], SHORT) {
        assert!(start.elapsed() < Duration::from_secs(10), "host 1 unreachable after healing");
    }

    net.partition(&[&[0], &[1, 2]]);
    assert!(!net.can_connect(0, addrs[1], SHORT));
    assert!(!net.can_connect(2, addrs[0], SHORT));
    assert!(net.can_connect(1, addrs[2], SHORT));
    assert!(addrs.iter().all(|a| root_reaches(*a)), "a partition leaves the test process in touch");
    net.heal_all();
    assert!(net.can_connect(0, addrs[1], SHORT));
    assert!(net.can_connect(2, addrs[0], SHORT));
}

#[test]
fn a_dropped_net_leaves_nothing_and_a_killed_runs_leftovers_are_reclaimed() {
    let names: Vec<String>;
    {
        let net = Net::new(2);
        names = net.hosts().iter().map(|h| h.ns.clone()).collect();
        // A process left running in a namespace is killed with it.
        let mut sleeper = net.cmd(0, "sleep").arg("600").spawn().unwrap();
        let start = Instant::now();
        while pids_in(&names[0]).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(10), "sleep did not enter the namespace");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(net);
        assert!(!sleeper.wait().unwrap().success(), "the process in the namespace was killed");
    }
    for ns in &names {
        assert!(!std::path::Path::new(&format!("/var/run/netns/{ns}")).exists(), "{ns} is left");
    }
    // What a run killed by SIGKILL leaves: a bridge owned by a dead pid,
    // a namespace with a process in it.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let id = 4095u16;
    let bridge = format!("ckbr{id:03x}");
    let ns = format!("cirkel-{id:03x}-1");
    let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().unwrap();
    ip(&["link", "del", &bridge]);
    ip(&["netns", "del", &ns]);
    assert!(ip(&["link", "add", "name", &bridge, "type", "bridge"]).success());
    assert!(ip(&["link", "set", "dev", &bridge, "alias", &format!("cirkel-testkit-net pid={dead}")]).success());
    assert!(ip(&["netns", "add", &ns]).success());
    let mut sleeper = std::process::Command::new("ip").args(["netns", "exec", &ns, "sleep", "600"]).spawn().unwrap();
    let _net = Net::new(1);
    assert!(!std::path::Path::new(&format!("/var/run/netns/{ns}")).exists(), "the stale namespace is left");
    let link = std::process::Command::new("ip").args(["link", "show", "dev", &bridge]).output().unwrap();
    assert!(!link.status.success(), "the stale bridge is left");
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the process in the stale namespace was killed");
}

#[test]
fn etcd_on_three_hosts_has_a_leader_and_an_isolated_member_cannot_read() {
    let net = Net::new(3);
    let etcd = EtcdCluster::start(&net, &[0, 1, 2]);
    let leaders: Vec<_> = (0..3).map(|m| etcd.leader_seen_by(m)).collect();
    assert!(leaders[0].is_some(), "no leader: {leaders:?}");
    assert!(leaders.iter().all(|l| *l == leaders[0]), "members disagree on the leader: {leaders:?}");
    for m in 0..3 {
        let addr = etcd.client_addr(m);
        net.run_in(m, || EtcdCluster::linearizable_read(addr, "k", Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("member {m}: {e}"));
    }

    net.isolate(2);
    let addr = etcd.client_addr(2);
    let cut = net.run_in(2, || EtcdCluster::linearizable_read(addr, "k", Duration::from_secs(10)));
    assert!(cut.is_err(), "the isolated member served a linearizable read: {cut:?}");
    // The majority serves reads (after electing a leader if it was host 2).
    let addr = etcd.client_addr(0);
    let start = Instant::now();
    while let Err(e) = net.run_in(0, || EtcdCluster::linearizable_read(addr, "k", Duration::from_secs(5))) {
        assert!(start.elapsed() < Duration::from_secs(30), "the majority does not serve reads: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    net.heal(2);
    let addr = etcd.client_addr(2);
    let start = Instant::now();
    while let Err(e) = net.run_in(2, || EtcdCluster::linearizable_read(addr, "k", Duration::from_secs(5))) {
        assert!(start.elapsed() < Duration::from_secs(30), "the healed member does not serve reads: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn postgres_streams_between_hosts_under_member_names() {
    let net = Net::new(3);
    let pg = streaming_cluster(&net, &["a", "b", "c"], &[]);
    let ip = |i: usize| net.host(i).ip().to_string();
    let names =
        pg[0].sql("SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication");
    assert_eq!(names, "b,c");
    psql_from(&net, 1, &ip(0), NET_PORT, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)").unwrap();
    let start = Instant::now();
    while psql_from(&net, 2, &ip(1), NET_PORT, "SELECT x FROM t").as_deref() != Ok("42") {
        assert!(start.elapsed() < Duration::from_secs(30), "the write did not reach b");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(psql_from(&net, 0, &ip(2), NET_PORT, "SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
    net.isolate(1);
    assert!(psql_from(&net, 0, &ip(1), NET_PORT, "SELECT 1").is_err(), "host 0 reaches isolated b");
    // The socket directory still works: the test process sees every member.
    assert_eq!(pg[1].sql("SELECT pg_is_in_recovery()"), "t");
    net.heal(1);
}
