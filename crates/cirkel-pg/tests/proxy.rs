//! The endpoint proxy against a real TCP backend: a connection cap that
//! refuses connections beyond it while the sessions already open keep
//! working, and switching the target still cuts every session.

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
