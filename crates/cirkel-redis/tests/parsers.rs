//! Property tests of the parsers that read untrusted bytes: RESP replies
//! from a server and RDB files from a server or a repository. Arbitrary
//! and mutated input never panics, and never makes the parser allocate
//! much more than it was given.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cirkel_redis::rdb;
use cirkel_redis::resp::{self, Value};
use proptest::prelude::*;

/// Counts the bytes this thread has allocated and still holds, and the peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LIVE.try_with(|l| {
            l.set(l.get() + layout.size());
            let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
        });
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(layout.size())));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most bytes held at once while `f` runs, above what was held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

fn encode_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        Value::Status(s) => out.extend_from_slice(format!("+{s}\r\n").as_bytes()),
        Value::Error(s) => out.extend_from_slice(format!("-{s}\r\n").as_bytes()),
        Value::Int(i) => out.extend_from_slice(format!(":{i}\r\n").as_bytes()),
        Value::Bulk(b) => out.extend_from_slice(&resp::encode(&[b])[4..]),
        Value::Array(a) => {
            out.extend_from_slice(format!("*{}\r\n", a.len()).as_bytes());
            for x in a {
                encode_value(x, out);
            }
        }
    }
}

fn value() -> impl Strategy<Value = Value> {
    let line = "[a-zA-Z0-9 :=._-]{0,40}";
    let leaf = prop_oneof![
        Just(Value::Nil),
        line.prop_map(Value::Status),
        line.prop_map(Value::Error),
        any::<i64>().prop_map(Value::Int),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Value::Bulk),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| proptest::collection::vec(inner, 0..8).prop_map(Value::Array))
}

/// Parses `bytes` as one reply, bounding what parsing may hold at once.
fn parse_bounded(bytes: &[u8]) -> Result<Value, resp::ReplyError> {
    let (out, peak) = peak_during(|| resp::read_reply(&mut &bytes[..]));
    // Values, their vectors and the line buffers: a constant factor of the
    // input, plus the fixed first reservations.
    assert!(peak <= 64 * bytes.len() + (256 << 10), "{peak} bytes held for {} bytes of input", bytes.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn replies_round_trip(v in value()) {
        let mut bytes = Vec::new();
        encode_value(&v, &mut bytes);
        prop_assert_eq!(parse_bounded(&bytes).ok(), Some(v));
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_allocate_unboundedly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_bounded(&bytes);
    }

    #[test]
    fn mutated_replies_never_panic(v in value(), edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = Vec::new();
        encode_value(&v, &mut bytes);
        for (at, b) in edits {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
        }
        let keep = cut.index(bytes.len() + 1);
        let _ = parse_bounded(&bytes[..keep]);
    }

    #[test]
    fn announced_lengths_are_checked_before_allocating(n in 0i64..i64::MAX, kind in prop_oneof![Just('$'), Just('*')], tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = format!("{kind}{n}\r\n").into_bytes();
        bytes.extend_from_slice(&tail);
        let _ = parse_bounded(&bytes);
    }

    #[test]
    fn rdb_check_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = rdb::check(&bytes);
        let mut with_magic = b"REDIS0011".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = rdb::check(&with_magic);
    }

    #[test]
    fn rdb_check_accepts_sound_files_and_finds_every_changed_byte(body in proptest::collection::vec(any::<u8>(), 0..512), version in 1u32..100, at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut file = format!("REDIS{version:04}").into_bytes();
        file.extend_from_slice(&body);
        file.push(0xFF);
        let crc = rdb::crc64(&file);
        file.extend_from_slice(&crc.to_le_bytes());
        let info = rdb::check(&file).unwrap();
        prop_assert_eq!((info.version, info.crc64), (version, crc));
        let mut bad = file.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        let stored_zero = bad[bad.len() - 8..] == [0; 8];
        prop_assert!(rdb::check(&bad).is_err() || stored_zero, "a change at byte {} went unnoticed", i);
        // Every truncation is refused too.
        let cut = at.index(file.len());
        let result = rdb::check(&file[..cut]);
        prop_assert!(result.is_err(), "a file cut to {} bytes was accepted", cut);
    }
}

#[test]
fn a_huge_announced_bulk_costs_only_what_arrives() {
    let bytes = b"$536870000\r\nshort".to_vec();
    assert!(matches!(parse_bounded(&bytes), Err(resp::ReplyError::Io(_))));
    assert!(matches!(parse_bounded(b"$536870913\r\n"), Err(resp::ReplyError::Protocol(_))));
    assert!(matches!(parse_bounded(b"*1048577\r\n"), Err(resp::ReplyError::Protocol(_))));
    let long_line = vec![b'+'; 1 << 20];
    assert!(matches!(parse_bounded(&long_line), Err(resp::ReplyError::Protocol(_))));
    let deep = "*1\r\n".repeat(64);
    assert!(parse_bounded(deep.as_bytes()).is_err());
}
