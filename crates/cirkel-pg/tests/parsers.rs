//! Property tests of what cirkel-pg reads from outside: WAL and history
//! file names (from PostgreSQL and from the repository's stream names) and
//! HTTP requests to the health endpoints. Arbitrary and mutated input never
//! panics, and what it makes cirkel hold or list stays bounded.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cirkel_pg::api::{self, SharedView, View};
use cirkel_pg::wal::{MAX_GAPS, Segment, WalFile, gaps};
use proptest::prelude::*;

const SEG: u64 = 16 << 20;

fn seg_size() -> impl Strategy<Value = u64> {
    prop_oneof![(20u32..31).prop_map(|b| 1u64 << b), any::<u64>()]
}

/// Names close to WAL names: hex digits in the right places, then edits.
fn wal_like_name() -> impl Strategy<Value = String> {
    let hex = "[0-9A-Fa-f]{0,26}";
    let suffix = prop_oneof![
        Just(String::new()),
        Just(".history".to_string()),
        Just(".partial".to_string()),
        "\\.[0-9A-F]{0,9}\\.backup",
        "\\PC{0,4}",
    ];
    (hex, suffix).prop_map(|(h, s)| format!("{h}{s}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn segment_names_round_trip(tli in any::<u32>(), log in any::<u32>(), seg in any::<u32>()) {
        let s = Segment { tli, log, seg };
        prop_assert_eq!(Segment::parse(&s.to_string()), Some(s));
        prop_assert_eq!(WalFile::parse(&s.to_string()), Some(WalFile::Segment(s)));
        prop_assert_eq!(WalFile::parse(&format!("{s}.partial")), Some(WalFile::Partial(s)));
        prop_assert_eq!(WalFile::parse(&format!("{tli:08X}.history")), Some(WalFile::History(tli)));
    }

    #[test]
    fn arbitrary_names_never_panic(name in prop_oneof!["\\PC{0,40}", wal_like_name()]) {
        if let Some(s) = Segment::parse(&name) {
            prop_assert_eq!(s.to_string(), name.to_ascii_uppercase());
        }
        match WalFile::parse(&name) {
            Some(WalFile::History(t)) => prop_assert_eq!(format!("{t:08X}.HISTORY"), name.to_ascii_uppercase()),
            Some(WalFile::Partial(s)) => prop_assert_eq!(format!("{s}.PARTIAL"), name.to_ascii_uppercase()),
            Some(WalFile::BackupHistory(n)) => prop_assert_eq!(n, name),
            Some(WalFile::Segment(_)) | None => {}
        }
    }

    #[test]
    fn segment_arithmetic_never_panics(tli in any::<u32>(), log in any::<u32>(), seg in any::<u32>(), lsn in any::<u64>(), size in seg_size()) {
        let s = Segment { tli, log, seg };
        let _ = s.segno(size);
        let _ = s.next(size);
        let _ = Segment::containing(tli, lsn, size);
    }

    #[test]
    fn gaps_are_bounded_whatever_the_archive_holds(
        archived in proptest::collection::vec((0u32..3, any::<u32>(), any::<u32>()), 0..40),
        from in (0u32..3, any::<u32>(), 0u32..256),
        size in seg_size(),
    ) {
        let archived: Vec<Segment> = archived.into_iter().map(|(tli, log, seg)| Segment { tli, log, seg }).collect();
        let from = Segment { tli: from.0, log: from.1, seg: from.2 };
        let missing = gaps(&archived, from, size);
        prop_assert!(missing.len() <= MAX_GAPS);
        prop_assert!(missing.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(missing.iter().all(|m| !archived.contains(m)));
    }

    #[test]
    fn gaps_list_exactly_the_missing_segments(have in proptest::collection::btree_set(0u64..3000, 1..200), from in 0u64..3000) {
        let seg = |n: u64| Segment { tli: 1, log: (n / 256) as u32, seg: (n % 256) as u32 };
        let archived: Vec<Segment> = have.iter().map(|&n| seg(n)).collect();
        let expected: Vec<Segment> = match have.range(from..).next_back() {
            None => vec![seg(from)],
            Some(&last) => (from..=last).filter(|n| !have.contains(n)).take(MAX_GAPS).map(seg).collect(),
        };
        prop_assert_eq!(gaps(&archived, seg(from), SEG), expected);
    }

    #[test]
    fn any_path_gets_a_patroni_answer(path in prop_oneof!["\\PC{0,60}", "/(replica|primary|read-only|health)?\\?lag=[0-9a-zA-Z]{0,30}"]) {
        let view = View::default();
        let (code, body) = api::answer(&view, "a", &path);
        prop_assert!([200, 404, 503].contains(&code));
        prop_assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok());
    }
}

/// A health endpoint server on a free port, for the connection tests.
fn server() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let (view, s) = (SharedView::default(), stop.clone());
    std::thread::spawn(move || api::run(listener, "a".into(), view, s));
    (port, stop)
}

/// Sends `bytes` and returns the status of the answer (0 when closed without one).
fn send(port: u16, bytes: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => {
                assert!(
                    !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                    "no answer"
                );
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&out);
    if text.is_empty() {
        return 0;
    }
    assert!(text.starts_with("HTTP/1."), "not an HTTP answer: {text:.200}");
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn request() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        "(GET|HEAD|OPTIONS|POST)",
        "/(primary|replica|health|read-only|patroni|x)(\\?lag=[0-9]{1,4}(kB|MB)?)?",
        "(Host: a\r\n|Content-Length: [0-9]{1,12}\r\n|X-[a-z]{1,8}: [ -~]{0,40}\r\n){0,6}",
    )
        .prop_map(|(m, p, h)| format!("{m} {p} HTTP/1.1\r\n{h}\r\n").into_bytes());
    let mutated = (valid.clone(), proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6))
        .prop_map(|(mut r, edits)| {
            for (at, b) in edits {
                let i = at.index(r.len());
                r[i] = b;
            }
            r
        });
    prop_oneof![valid, mutated, proptest::collection::vec(any::<u8>(), 0..2048)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_get_an_answer_or_are_closed(bytes in request()) {
        let port = *SERVER.get_or_init(|| server().0);
        let code = send(port, &bytes);
        prop_assert!([0, 200, 400, 404, 405, 413, 414, 431, 501, 503, 505].contains(&code), "status {}", code);
        // The server still answers everyone else.
        prop_assert_eq!(send(port, b"GET /health HTTP/1.0\r\n\r\n"), 503);
    }
}

/// One server for every case, running until the test binary exits.
static SERVER: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

#[test]
fn the_server_stops_when_asked() {
    let (port, stop) = server();
    assert_eq!(send(port, b"GET /health HTTP/1.0\r\n\r\n"), 503);
    stop.store(true, Ordering::Relaxed);
    let start = std::time::Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(start.elapsed() < Duration::from_secs(30), "the server never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}
