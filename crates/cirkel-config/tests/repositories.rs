//! `[repositories.NAME]`: a second repository's own PostgreSQL retention.

use std::time::Duration;

use cirkel_config::Config;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, "c.toml", None).map_err(|e| e.to_string())
}

#[test]
fn a_second_repository_keeps_its_own_pg_retention() {
    let cfg = parse(
        "[repositories.dr]\nurl = \"s3://dr/cirkel\"\ncontinuous = true\n\
         [repositories.dr.pg_expire]\ndaily = \"90d\"\nweekly = \"365d\"\n",
    )
    .unwrap();
    let p = cfg.repositories["dr"].pg_expire.clone().unwrap();
    assert_eq!(p.daily, Some(Duration::from_secs(90 * 86400)));
    assert_eq!(p.weekly, Some(Duration::from_secs(365 * 86400)));
    assert_eq!((p.pre_deploy, p.wal), (None, None), "unset: pg expire's defaults");
    assert!(parse("[repositories.dr]\nurl = \"/srv/dr\"\n").unwrap().repositories["dr"].pg_expire.is_none());

    let err = parse("[repositories.dr]\nurl = \"/srv/dr\"\n[repositories.dr.pg_expire]\ndaily = \"soon\"\nkeep = 3\n")
        .unwrap_err();
    assert!(err.contains("repositories.dr.pg_expire.daily") && err.contains("not a duration"), "{err}");
    assert!(err.contains("keep"), "an unknown key is refused: {err}");
}
