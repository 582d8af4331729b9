//! `[server]`: the API's tokens come from files, are long enough, and never print.

use cirkel_config::Config;

fn parse(text: &str, dir: &std::path::Path) -> Result<Config, String> {
    Config::parse(text, "c.toml", Some(dir)).map_err(|e| e.to_string())
}

#[test]
fn tokens_are_read_from_files_and_short_or_literal_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("v"), "viewer-token-0123456789\n").unwrap();
    std::fs::write(dir.path().join("o"), "operator-token-0123456789").unwrap();
    std::fs::write(dir.path().join("short"), "abc\n").unwrap();
    let cfg = parse(
        "[server]\nlisten = \"127.0.0.1:9187\"\nviewer_token_file = \"v\"\noperator_token_file = \"o\"\n",
        dir.path(),
    )
    .unwrap();
    assert_eq!(cfg.server.viewer_token.as_ref().unwrap().expose(), "viewer-token-0123456789");
    assert_eq!(cfg.server.operator_token.as_ref().unwrap().expose(), "operator-token-0123456789");
    assert!(!format!("{cfg:?}").contains("viewer-token-0123456789"));

    let err = parse("[server]\nviewer_token_file = \"short\"\n", dir.path()).unwrap_err();
    assert!(err.contains("viewer_token_file") && err.contains("at least 16"), "{err}");
    let err = parse("[server]\nviewer_token = \"viewer-token-0123456789\"\n", dir.path()).unwrap_err();
    assert!(err.contains("viewer_token_file"), "{err}");
    let err = parse("[server]\noperator_token_file = \"missing\"\n", dir.path()).unwrap_err();
    assert!(err.contains("cannot read"), "{err}");
}
