//! The health endpoints of `cirkel serve` under clients that are slow,
//! oversized or many: every other client still gets its answer, and the
//! daemon's memory stays bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// `cirkel serve` watching a cluster whose only member does not run, with
/// the member's health endpoints on `api`; killed on drop.
struct Serve {
    _env: Env,
    child: std::process::Child,
    api: u16,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Serve {
    fn start() -> Serve {
        let env = Env::new();
        let (api, pg) = (free_port(), free_port());
        let config = env.path("cirkel.toml");
        std::fs::write(
            &config,
            format!("[postgres.main.members.a]\nhost = \"127.0.0.1\"\nport = {pg}\napi_listen = \"127.0.0.1:{api}\"\n"),
        )
        .unwrap();
        let child = env
            .cmd(&["--config", config.to_str().unwrap(), "serve"])
            .env("CIRKEL_STATE_DIR", env.path("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let serve = Serve { _env: env, child, api };
        let start = Instant::now();
        while serve.status("/health") == 0 {
            assert!(start.elapsed() < Duration::from_secs(60), "the health endpoints never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
        serve
    }

    /// The status of `GET path` (0 when nothing answers within 10 s).
    fn status(&self, path: &str) -> u16 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.api)) else { return 0 };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        if s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).is_err() {
            return 0;
        }
        status_of(&read_all(&mut s))
    }

    /// The daemon's resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

/// What a connection sends back until it closes (or an error, or a timeout).
fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn a_slow_client_does_not_stop_others_getting_health_answers() {
    let serve = Serve::start();
    // A client that sends its request one byte every 1.5 s.
    let mut slow = TcpStream::connect(("127.0.0.1", serve.api)).unwrap();
    slow.write_all(b"G").unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let loris = {
        let done = done.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            for b in b"ET /health HTTP/1.1\r\nHost: member\r\nX-Slow: ".iter().chain([b'a'; 64].iter()) {
                if done.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1500));
                if slow.write_all(&[*b]).is_err() {
                    return Some(started.elapsed());
                }
            }
            None
        })
    };
    for _ in 0..5 {
        let code = serve.status("/health");
        assert_eq!(code, 503, "/health did not answer while a slow client was connected");
        std::thread::sleep(Duration::from_millis(500));
    }
    // The slow client itself is cut once its time to send a request is up.
    let cut = loris.join().unwrap();
    done.store(true, Ordering::Relaxed);
    assert!(cut.is_some(), "the slow client was never disconnected");
}

#[test]
fn huge_requests_are_refused_and_memory_stays_bounded() {
    let serve = Serve::start();
    let before = serve.rss_kib();
    // A 150 MB request line, sent while the answer is read.
    let mut s = TcpStream::connect(("127.0.0.1", serve.api)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        if w.write_all(b"GET /").is_err() {
            return;
        }
        let chunk = vec![b'a'; 1 << 16];
        for _ in 0..(150 << 20) / chunk.len() {
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
        let _ = w.write_all(b" HTTP/1.1\r\n\r\n");
    });
    let response = read_all(&mut s);
    writer.join().unwrap();
    let code = status_of(&response);
    assert!(code == 431 || code == 400 || code == 414, "a 150 MB request line got: {response:.200}");
    // Huge headers, and too many of them.
    for head in [
        format!("GET /health HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(1 << 20)),
        format!(
            "GET /health HTTP/1.1\r\nHost: a\r\n{}\r\n",
            (0..500).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
        ),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", serve.api)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(head.as_bytes());
        });
        let response = read_all(&mut s);
        writer.join().unwrap();
        assert_eq!(status_of(&response), 431, "oversized headers got: {response:.200}");
    }
    // A body announced larger than the limit is refused without being read.
    let mut s = TcpStream::connect(("127.0.0.1", serve.api)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 104857600\r\n\r\n").unwrap();
    assert_eq!(status_of(&read_all(&mut s)), 413);
    let after = serve.rss_kib();
    assert!(after < before + 32 * 1024, "resident memory grew from {before} KiB to {after} KiB");
    // Everyone else is still answered, with the same body as before.
    assert_eq!(serve.status("/health"), 503);
    assert_eq!(serve.status("/nope"), 404);
}

#[test]
fn connections_beyond_the_cap_are_closed_and_the_endpoints_recover() {
    let serve = Serve::start();
    // Many idle connections: the ones beyond the cap are closed at once,
    // the others when their time to send a request is up.
    let idle: Vec<TcpStream> = (0..400).filter_map(|_| TcpStream::connect(("127.0.0.1", serve.api)).ok()).collect();
    assert!(idle.len() > 300);
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 16];
        let read = s.read(&mut buf);
        assert!(
            !matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "an idle connection was kept open"
        );
    }
    assert_eq!(serve.status("/health"), 503);
    let before = serve.rss_kib();
    assert!(before < 64 * 1024, "serve holds {before} KiB");
}
