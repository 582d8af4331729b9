//! The endpoint proxy against a real TCP backend: a connection cap that
//! refuses connections beyond it while the sessions already open keep
//! working, switching the target still cuts every session, and a connection
//! still being made to a target that stopped answering follows the switch.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cirkel_pg::proxy::{Router, Target, run};

/// A server that echoes every connection back, on its own threads.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = conn.try_clone().unwrap();
                let mut w = conn;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    port
}

/// Sends `msg` and reads the echo (None if the connection was closed).
fn echo(s: &mut TcpStream, msg: &str) -> Option<String> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(msg.as_bytes()).ok()?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).ok()?;
    Some(String::from_utf8(buf).unwrap())
}

/// Descriptors this process holds.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Whether the proxy closed `s` without sending anything.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 8];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn connections_beyond_the_cap_are_refused_while_the_first_keep_working() {
    let backend = echo_server();
    let router = Router::new();
    router.set(Some(Target::new("127.0.0.1", backend)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = {
        let (router, stop) = (router.clone(), stop.clone());
        std::thread::spawn(move || run(listener, router, stop, 3))
    };
    let fds_before = open_fds();
    let mut first: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    for (i, s) in first.iter_mut().enumerate() {
        assert_eq!(echo(s, &format!("hello {i}")).as_deref(), Some(format!("hello {i}").as_str()));
    }
    // Per session: the test's socket, the echo server's two, and the
    // proxy's client and server sides, not duplicates of them.
    let per_session = 3 + cirkel_pg::proxy::FDS_PER_SESSION as usize;
    let used = open_fds() - fds_before;
    assert!(used <= 3 * per_session, "{used} descriptors for 3 sessions");
    // Beyond the cap: closed at once, without reaching the backend.
    for _ in 0..5 {
        let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = extra.write_all(b"x");
        assert!(closed(&mut extra), "a connection beyond the cap was served");
    }
    assert_eq!(router.sessions(), 3);
    for (i, s) in first.iter_mut().enumerate() {
        assert_eq!(echo(s, &format!("still {i}")).as_deref(), Some(format!("still {i}").as_str()));
    }
    // A session that ends frees its place.
    drop(first.pop());
    let start = Instant::now();
    let mut next = loop {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if echo(&mut s, "next").as_deref() == Some("next") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the freed place was never reused");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Switching the target cuts every session, as before.
    router.set(Some(Target::new("127.0.0.1", echo_server())));
    for s in first.iter_mut().chain(std::iter::once(&mut next)) {
        assert!(closed(s), "a session to the old target survived the switch");
    }
    let start = Instant::now();
    loop {
        let mut after = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if echo(&mut after, "new").as_deref() == Some("new") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the new target is never reached");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    proxy.join().unwrap().unwrap();
}

/// A listening port that takes no more connections: its accept queue is
/// full, so a further SYN goes unanswered, as a host that died would leave
/// it. The listener and the queued connections live as long as the guard.
fn silent_target() -> (u16, socket2::Socket, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    listener.listen(0).unwrap();
    let port = listener.local_addr().unwrap().as_socket().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)) {
            Ok(s) => queued.push(s),
            Err(_) => return (port, listener, queued),
        }
    }
    panic!("the accept queue of port {port} never filled");
}

#[test]
fn a_connection_under_way_to_a_silent_target_follows_the_switch() {
    let (silent, _listener, _queued) = silent_target();
    let router = Router::new();
    router.set(Some(Target::new("127.0.0.1", silent)));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = {
        let (router, stop) = (router.clone(), stop.clone());
        std::thread::spawn(move || run(listener, router, stop, 10))
    };
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(b"hello").unwrap();
    // The proxy is connecting to the silent target (its connect timeout
    // is longer than this) when the route moves.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(router.sessions(), 0, "the silent target took a session");
    router.set(Some(Target::new("127.0.0.1", echo_server())));
    // What the client sent before the switch reaches the new target.
    client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).expect("the client was let go instead of following the switch");
    assert_eq!(&buf, b"hello");
    assert_eq!(echo(&mut client, "again").as_deref(), Some("again"));
    stop.store(true, Ordering::Relaxed);
    proxy.join().unwrap().unwrap();
}
