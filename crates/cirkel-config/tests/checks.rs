//! `[checks.NAME]` and `[server]`: the plan's defaults, and every setting a
//! probe could never satisfy refused with its line.

use std::time::Duration;

use cirkel_config::{CheckKindConfig, Config};

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "c.toml", None).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn an_http_check_takes_the_plans_defaults() {
    let cfg = parse("[checks.api]\nkind = \"http\"\nurl = \"http://10.0.0.5:8080/health\"\n").unwrap();
    let c = &cfg.checks["api"];
    assert_eq!(
        c.kind,
        CheckKindConfig::Http { url: "http://10.0.0.5:8080/health".into(), expect_status: None, body_contains: None }
    );
    assert_eq!(c.interval, Duration::from_secs(10));
    assert_eq!(c.timeout, Duration::from_secs(5));
    assert_eq!((c.healthy_threshold, c.unhealthy_threshold), (2, 3));
    assert_eq!(cfg.server.listen, None);
}

#[test]
fn every_setting_is_read() {
    let cfg = parse(
        "[server]\nlisten = \"127.0.0.1:9187\"\n\
         [checks.api]\nkind = \"http\"\nurl = \"http://api.internal/health?deep=1\"\nexpect_status = 204\n\
         body_contains = \"ok\"\ninterval = \"2s\"\ntimeout = \"1s\"\nhealthy_threshold = 1\nunhealthy_threshold = 5\n\
         [checks.db]\nkind = \"tcp\"\naddress = \"10.0.0.1:5432\"\n",
    )
    .unwrap();
    assert_eq!(cfg.server.listen, Some("127.0.0.1:9187".parse().unwrap()));
    let api = &cfg.checks["api"];
    assert_eq!(
        api.kind,
        CheckKindConfig::Http {
            url: "http://api.internal/health?deep=1".into(),
            expect_status: Some(204),
            body_contains: Some("ok".into())
        }
    );
    assert_eq!((api.interval, api.timeout), (Duration::from_secs(2), Duration::from_secs(1)));
    assert_eq!((api.healthy_threshold, api.unhealthy_threshold), (1, 5));
    assert_eq!(cfg.checks["db"].kind, CheckKindConfig::Tcp { address: "10.0.0.1:5432".into() });
}

#[test]
fn the_effective_configuration_shows_the_checks() {
    let cfg =
        parse("[checks.db]\nkind = \"tcp\"\naddress = \"10.0.0.1:5432\"\n[server]\nlisten = \"127.0.0.1:9187\"\n")
            .unwrap();
    let shown = cfg.to_toml();
    assert!(shown.contains("kind = \"tcp\"") && shown.contains("address = \"10.0.0.1:5432\""), "{shown}");
    assert!(shown.contains("interval = \"10s\"") && shown.contains("listen = \"127.0.0.1:9187\""), "{shown}");
}

#[test]
fn a_missing_target_is_reported_at_its_table() {
    let e = err("[checks.api]\nkind = \"http\"\n");
    assert!(e.contains("c.toml:1") && e.contains("checks.api.url") && e.contains("missing"), "{e}");
    let e = err("\n[checks.db]\nkind = \"tcp\"\n");
    assert!(e.contains("c.toml:2") && e.contains("checks.db.address") && e.contains("missing"), "{e}");
    let e = err("[checks.x]\nurl = \"http://a/\"\n");
    assert!(e.contains("checks.x.kind") && e.contains("\"http\" or kind = \"tcp\""), "{e}");
    let e = err("[checks.x]\nkind = \"icmp\"\n");
    assert!(e.contains("c.toml:2") && e.contains("`icmp`"), "{e}");
}

#[test]
fn a_timeout_that_reaches_the_next_probe_is_refused() {
    let e = err("[checks.api]\nkind = \"tcp\"\naddress = \"a:1\"\ninterval = \"5s\"\ntimeout = \"5s\"\n");
    assert!(
        e.contains("c.toml:5") && e.contains("checks.api.timeout") && e.contains("shorter than the interval"),
        "{e}"
    );
    // The default timeout (5 s) against a shorter interval: pointed at the interval.
    let e = err("[checks.api]\nkind = \"tcp\"\naddress = \"a:1\"\ninterval = \"3s\"\n");
    assert!(e.contains("c.toml:4") && e.contains("shorter than the interval"), "{e}");
    let e = err("[checks.api]\nkind = \"tcp\"\naddress = \"a:1\"\ntimeout = \"0s\"\n");
    assert!(e.contains("c.toml:4") && e.contains("longer than 0"), "{e}");
}

#[test]
fn thresholds_of_zero_are_refused() {
    let e = err("[checks.a]\nkind = \"tcp\"\naddress = \"a:1\"\nhealthy_threshold = 0\nunhealthy_threshold = 0\n");
    assert!(e.contains("c.toml:4") && e.contains("checks.a.healthy_threshold") && e.contains("1..=1000"), "{e}");
    assert!(e.contains("c.toml:5") && e.contains("checks.a.unhealthy_threshold"), "{e}");
}

#[test]
fn bad_and_https_urls_are_refused_with_the_way_out() {
    let e = err("[checks.a]\nkind = \"http\"\nurl = \"not a url\"\n");
    assert!(e.contains("c.toml:3") && e.contains("is not a URL"), "{e}");
    let e = err("[checks.a]\nkind = \"http\"\nurl = \"https://api.example.com/health\"\n");
    assert!(e.contains("c.toml:3") && e.contains("https is not supported") && e.contains("kind = \"tcp\""), "{e}");
    let e = err("[checks.a]\nkind = \"http\"\nurl = \"ftp://a/\"\n");
    assert!(e.contains("scheme `ftp`"), "{e}");
    let e = err("[checks.a]\nkind = \"http\"\nurl = \"http://u:p@a/\"\n");
    assert!(e.contains("credentials"), "{e}");
    let e = err("[checks.a]\nkind = \"http\"\nurl = \"http://a/\"\nexpect_status = 700\n");
    assert!(e.contains("c.toml:4") && e.contains("100..=599"), "{e}");
}

#[test]
fn keys_of_the_other_kind_and_bad_addresses_are_refused() {
    let e = err("[checks.a]\nkind = \"tcp\"\naddress = \"a:1\"\nurl = \"http://a/\"\n");
    assert!(e.contains("c.toml:4") && e.contains("checks.a.url") && e.contains("unknown key"), "{e}");
    for bad in ["nohost", "a:port", ":80", "a:0", "a:70000"] {
        let e = err(&format!("[checks.a]\nkind = \"tcp\"\naddress = \"{bad}\"\n"));
        assert!(e.contains("c.toml:3") && e.contains("is not host:port"), "{bad}: {e}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = err("[checks.a]\nkind = \"http\"\nurl = \"https://x/\"\nhealthy_threshold = 0\n\
         [checks.b]\nkind = \"tcp\"\n[server]\nlisten = \"localhost\"\n");
    assert!(e.starts_with("4 problems"), "{e}");
    assert!(e.contains("c.toml:8") && e.contains("server.listen") && e.contains("127.0.0.1:9187"), "{e}");
}

#[test]
fn the_server_refuses_unknown_keys() {
    let e = err("[server]\nlisten = \"[::1]:9187\"\nport = 1\n");
    assert!(e.contains("c.toml:3") && e.contains("server.port") && e.contains("unknown key"), "{e}");
    let cfg = parse("[server]\n").unwrap();
    assert_eq!(cfg.server.listen, None);
}
