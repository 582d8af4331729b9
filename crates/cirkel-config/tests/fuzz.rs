//! The configuration and schedule parsers take text a person typed: no
//! input, however broken, makes them panic; every failure is an error with
//! a place.

use cirkel_config::Config;
use cirkel_config::cron::Schedule;
use proptest::prelude::*;

/// A configuration that exercises most readers, to mutate.
const SAMPLE: &str = r#"[repository]
url = "/var/lib/cirkel/repo"
password_file = "/etc/cirkel/pass"
compression_level = 3
[repository.s3]
endpoint = "http://127.0.0.1:9000"
retry_timeout = "30s"
[retention]
keep_daily = 35
keep_within = "7d"
keep_tags = ["pre-deploy"]
[files.static]
paths = ["/srv/static"]
exclude = ["node_modules", "*.tmp"]
tags = ["static"]
schedule = "0 2 * * *"
[files.static.retention]
keep_last = 3
[redis.cache]
members = ["127.0.0.1:6379", "127.0.0.1:6380"]
sentinels = ["127.0.0.1:26379"]
quorum = 1
[postgres.main]
user = "postgres"
proxy_listen = "127.0.0.1:6432"
[postgres.main.health]
interval = "1s"
unhealthy_threshold = 3
[postgres.main.members.pg1]
host = "127.0.0.1"
port = 5432
"#;

/// One cron field: the forms cron accepts, with numbers in and out of range.
fn field() -> impl Strategy<Value = String> {
    let n = 0u32..40;
    prop_oneof![
        Just("*".to_string()),
        n.clone().prop_map(|a| a.to_string()),
        (n.clone(), n.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        (n.clone(), 1u32..10).prop_map(|(a, s)| format!("{a}/{s}")),
        (1u32..10).prop_map(|s| format!("*/{s}")),
        (n.clone(), n).prop_map(|(a, b)| format!("{a},{b}")),
    ]
}

fn mutated() -> impl Strategy<Value = String> {
    let ops = proptest::collection::vec((0usize..SAMPLE.len(), any::<u8>(), 0u8..3), 1..12);
    ops.prop_map(|ops| {
        let mut b = SAMPLE.as_bytes().to_vec();
        for (at, byte, op) in ops {
            let at = at.min(b.len().saturating_sub(1));
            match op {
                0 => b[at] = byte,
                1 => b.insert(at, byte),
                _ => {
                    b.remove(at);
                }
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn mutated_configurations_never_panic(text in mutated()) {
        if let Err(errs) = Config::parse(&text, "fuzz.toml", None) {
            prop_assert!(!errs.0.is_empty());
            for e in &errs.0 {
                prop_assert!(!e.message.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = Config::parse(&text, "fuzz.toml", None);
    }

    #[test]
    fn schedules_never_panic(text in "[0-9*/,@a-z -]{0,30}") {
        let _ = Schedule::parse(&text);
    }

    #[test]
    fn every_accepted_schedule_fires(fields in proptest::collection::vec(field(), 5)) {
        let text = fields.join(" ");
        if let Ok(s) = Schedule::parse(&text) {
            let now = chrono::DateTime::parse_from_rfc3339("2026-12-06T00:00:00Z").unwrap().to_utc();
            prop_assert!(s.next_after(now).is_some(), "`{}` parses but never fires", text);
        }
    }
}
