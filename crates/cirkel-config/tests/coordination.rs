//! `[coordination]`: the defaults, and every setting that could never
//! reach etcd refused with its file and line.

use std::time::Duration;

use cirkel_config::{Config, CoordinationConfig};

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
fn without_the_table_there_is_no_coordination() {
    assert_eq!(parse("").unwrap().coordination, None);
}

#[test]
fn endpoints_alone_take_the_defaults() {
    let cfg = parse("[coordination]\netcd = [\"http://127.0.0.1:2379\"]\n").unwrap();
    let c = cfg.coordination.unwrap();
    assert_eq!(
        c,
        CoordinationConfig {
            etcd: vec!["http://127.0.0.1:2379".into()],
            ttl: Duration::from_secs(5),
            node: None,
            prefix: "/cirkel".into()
        }
    );
}

#[test]
fn every_setting_is_read_and_shown() {
    let cfg = parse(
        "[coordination]\netcd = [\"http://10.0.0.1:2379\", \"http://etcd-2.internal:2379/\"]\n\
         ttl = \"3s\"\nnode = \"db-1\"\nprefix = \"/prod/cirkel\"\n",
    )
    .unwrap();
    let c = cfg.coordination.clone().unwrap();
    assert_eq!(c.etcd.len(), 2);
    assert_eq!(c.ttl, Duration::from_secs(3));
    assert_eq!(c.node.as_deref(), Some("db-1"));
    assert_eq!(c.prefix, "/prod/cirkel");
    let shown = cfg.to_toml();
    assert!(shown.contains("[coordination]") && shown.contains("ttl = \"3s\""), "{shown}");
}

#[test]
fn an_empty_or_missing_endpoint_list_is_refused() {
    let e = err("[coordination]\netcd = []\n");
    assert!(e.contains("c.toml:2:") && e.contains("coordination.etcd") && e.contains("no endpoint"), "{e}");
    let e = err("[coordination]\nttl = \"5s\"\n");
    assert!(e.contains("c.toml:1:") && e.contains("coordination.etcd") && e.contains("missing"), "{e}");
    let e = err("[coordination]\netcd = \"http://127.0.0.1:2379\"\n");
    assert!(e.contains("c.toml:2:") && e.contains("an array of URLs"), "{e}");
}

#[test]
fn bad_urls_are_refused_each_with_its_line() {
    let e =
        err("[coordination]\netcd = [\n  \"http://127.0.0.1:2379\",\n  \"not a url\",\n  \"ftp://10.0.0.2:2379\",\n  \
                 \"http://10.0.0.3\",\n  \"http://u:p@10.0.0.4:2379\",\n  \"http://10.0.0.5:2379/v3\",\n  7,\n]\n");
    assert!(e.contains("6 problems"), "{e}");
    assert!(e.contains("c.toml:4:") && e.contains("`not a url` is not a URL"), "{e}");
    assert!(e.contains("c.toml:5:") && e.contains("scheme `ftp`"), "{e}");
    assert!(e.contains("c.toml:6:") && e.contains("names no port"), "{e}");
    assert!(e.contains("c.toml:7:") && e.contains("credentials"), "{e}");
    assert!(e.contains("c.toml:8:") && e.contains("no path"), "{e}");
    assert!(e.contains("c.toml:9:") && e.contains("a URL string"), "{e}");
}

#[test]
fn https_says_this_build_has_no_tls() {
    let e = err("[coordination]\netcd = [\"https://10.0.0.1:2379\"]\n");
    assert!(e.contains("c.toml:2:") && e.contains("https is not supported") && e.contains("no TLS support"), "{e}");
}

#[test]
fn a_ttl_etcd_would_not_grant_is_refused() {
    let e = err("[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nttl = \"1s\"\n");
    assert!(e.contains("c.toml:3:") && e.contains("too short") && e.contains("at least \"2s\""), "{e}");
    let e = err("[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nttl = \"2500ms\"\n");
    assert!(e.contains("c.toml:3:") && e.contains("whole seconds"), "{e}");
    let e = err("[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nttl = \"200d\"\n");
    assert!(e.contains("c.toml:3:") && e.contains("longest lease"), "{e}");
    let e = err("[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nttl = \"soon\"\n");
    assert!(e.contains("c.toml:3:") && e.contains("not a duration"), "{e}");
    assert!(parse("[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nttl = \"2s\"\n").is_ok());
}

#[test]
fn bad_names_prefixes_and_unknown_keys_are_refused() {
    let e = err(
        "[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"db 1/a\"\nprefix = \"cirkel/\"\nleader = 1\n",
    );
    assert!(e.contains("c.toml:3:") && e.contains("not a node name"), "{e}");
    assert!(e.contains("c.toml:4:") && e.contains("not a key prefix"), "{e}");
    assert!(e.contains("c.toml:5:") && e.contains("unknown key") && e.contains("etcd, node, prefix, ttl"), "{e}");
    let e = err("[coordination]\netcd = [\"http://127.0.0.1:2379\"]\nprefix = \"/\"\n");
    assert!(e.contains("not a key prefix"), "{e}");
}

#[test]
fn a_members_node_is_one_name() {
    let text = "[postgres.main.members.a]\nhost = \"10.0.0.1\"\nnode = \"db-1\"\n";
    let cfg = parse(text).unwrap();
    assert_eq!(cfg.postgres["main"].members["a"].node.as_deref(), Some("db-1"));
    let err = parse("[postgres.main.members.a]\nhost = \"10.0.0.1\"\nnode = \"db 1/x\"\n").unwrap_err().to_string();
    assert!(err.contains("node") && err.contains("not a node name"), "{err}");
}
