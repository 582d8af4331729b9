//! The parsers of text cirkel does not write: scraped expositions and
//! selectors from the configuration. Any input gives a value or an error,
//! never a panic, and what cirkel writes reads back the same.

use std::collections::BTreeMap;
use std::fmt::Write;

use cirkel_alarm::{Selector, exposition};
use proptest::prelude::*;

fn quote(v: &str) -> String {
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn metric_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}"
}

fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,12}"
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>().prop_filter("NaN compares unequal", |v| !v.is_nan()),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = exposition::parse(&text);
        let _ = Selector::parse(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = exposition::parse(&text);
        let _ = Selector::parse(&text);
    }

    #[test]
    fn near_miss_lines_never_panic(
        name in metric_name(),
        junk in "[{}=\",\\\\ a-z0-9.+\\-#\n\t]{0,40}",
    ) {
        let _ = exposition::parse(&format!("{name}{junk}"));
        let _ = Selector::parse(&format!("{name}{junk}"));
    }

    #[test]
    fn written_expositions_read_back(
        samples in proptest::collection::vec(
            (
                metric_name(),
                proptest::collection::btree_map(label_name(), any::<String>(), 0..4),
                value(),
                proptest::option::of(any::<i64>()),
            ),
            0..20,
        )
    ) {
        let mut text = String::from("# HELP x a help line\n");
        for (name, labels, v, ts) in &samples {
            text.push_str(name);
            if !labels.is_empty() {
                let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
                write!(text, "{{{}}}", parts.join(",")).unwrap();
            }
            let v = if *v == f64::INFINITY { "+Inf".to_string() } else if *v == f64::NEG_INFINITY { "-Inf".to_string() } else { format!("{v:e}") };
            write!(text, " {v}").unwrap();
            if let Some(ts) = ts {
                write!(text, " {ts}").unwrap();
            }
            text.push('\n');
        }
        let parsed = exposition::parse(&text).unwrap();
        prop_assert_eq!(parsed.len(), samples.len());
        for (p, (name, labels, v, ts)) in parsed.iter().zip(&samples) {
            prop_assert_eq!(&p.name, name);
            prop_assert_eq!(&p.labels, labels);
            prop_assert_eq!(p.value, *v);
            prop_assert_eq!(p.timestamp_ms, *ts);
        }
    }

    #[test]
    fn selectors_read_back_and_match_their_own_labels(
        name in metric_name(),
        labels in proptest::collection::btree_map(label_name(), any::<String>(), 0..4),
    ) {
        let text = if labels.is_empty() {
            name.clone()
        } else {
            let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k} = {}", quote(v))).collect();
            format!("{name}{{{}}}", parts.join(", "))
        };
        let s = Selector::parse(&text).unwrap();
        prop_assert_eq!(Selector::parse(&s.to_string()).unwrap(), s.clone());
        let l: BTreeMap<String, String> = labels.clone();
        prop_assert!(s.matches(&name, &l));
    }
}
