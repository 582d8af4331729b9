//! `cirkel config check|show` and configuration-driven commands.

mod common;

use common::*;

#[test]
fn check_reports_every_error_with_line_and_expectation() {
    let env = Env::new();
    let cfg = env.path("cirkel.toml");
    std::fs::write(
        &cfg,
        r#"[repository]
url = "/tmp/x"
pasword_file = "typo"

[repository.s3]
retry_timeout = "soon"
allow_http = "yes"

[retention]
keep_daily = -3
keep_within = "7d"

[files.static]
exclude = ["node_modules"]
copy_to = ["dr"]

[surprise]
x = 1
"#,
    )
    .unwrap();
    let out = env.run(&["--config", cfg.to_str().unwrap(), "config", "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let expect = [
        ":3:1: `repository.pasword_file`: unknown key; expected one of:",
        ":6:17: `repository.s3.retry_timeout`: `soon` is not a duration",
        ":7:14: `repository.s3.allow_http`: expected true or false, found string",
        ":10:14: `retention.keep_daily`: -3 is out of range",
        "`files.static.paths`: missing",
        ":15:11: `files.static.copy_to`: names repository `dr`",
        ":17:2: `surprise`: unknown key",
    ];
    for e in expect {
        assert!(err.contains(e), "missing `{e}` in:\n{err}");
    }
    assert!(err.contains("7 problems"), "{err}");

    let v: serde_json::Value =
        serde_json::from_str(&stdout(&env.run(&["--json", "--config", cfg.to_str().unwrap(), "config", "check"])))
            .unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 7);

    // Other commands refuse a broken configuration too.
    let err = env.fails(&["--config", cfg.to_str().unwrap(), "snapshots"]);
    assert!(err.contains("problems in the configuration"), "{err}");

    std::fs::write(&cfg, "[repository\nurl=").unwrap();
    let err = stderr(&env.run(&["--config", cfg.to_str().unwrap(), "config", "check"]));
    assert!(err.contains(":1:") && err.contains("TOML syntax"), "{err}");
}

#[test]
fn secrets_come_from_files_and_are_never_shown() {
    let env = Env::new();
    let secret = env.path("s3-secret");
    std::fs::write(&secret, "SUPERSECRETVALUE\n").unwrap();
    let cfg = env.path("cirkel.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[repository]
url = "{repo}"
password_file = "password"

[repositories.dr]
url = "s3://dr-bucket/cirkel"
[repositories.dr.s3]
endpoint = "http://127.0.0.1:1"
access_key_id = "AKIA"
secret_access_key_file = "{secret}"
retry_timeout = "90s"

[retention]
keep_daily = 35
keep_weekly = 13
keep_within = "7d"

[files.static]
paths = ["/srv/static"]
exclude = ["node_modules", "venv/"]
copy_to = ["dr"]
"#,
            repo = env.repo,
            secret = secret.display()
        ),
    )
    .unwrap();
    let ok = env.ok(&["--config", cfg.to_str().unwrap(), "config", "check"]);
    assert!(ok.contains("configuration OK"), "{ok}");
    let shown = env.ok(&["--config", cfg.to_str().unwrap(), "config", "show"]);
    assert!(!shown.contains("SUPERSECRETVALUE") && !shown.contains("correct horse"), "{shown}");
    assert!(shown.contains("<redacted>") && shown.contains("keep_within = \"7days\""), "{shown}");
    let json = env.ok(&["--json", "--config", cfg.to_str().unwrap(), "config", "show"]);
    assert!(!json.contains("SUPERSECRETVALUE"));

    // A literal secret in the file is refused.
    std::fs::write(&cfg, "[repository]\nurl = \"/x\"\npassword = \"hunter2\"\n").unwrap();
    let err = stderr(&env.run(&["--config", cfg.to_str().unwrap(), "config", "check"]));
    assert!(err.contains("secrets are not written in the configuration") && !err.contains("hunter2"), "{err}");
}

#[test]
fn configured_repository_and_file_set_drive_the_commands() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let cfg = env.path("cirkel.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\nurl = \"{}\"\npassword_file = \"password\"\n\n[files.site]\npaths = [\"{}\"]\nexclude = [\"bin\"]\ntags = [\"static\"]\n\n[retention]\nkeep_last = 1\n",
            env.repo,
            src.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut c = env.cmd(args);
        c.env_remove("CIRKEL_REPO").env_remove("CIRKEL_PASSWORD_FILE").env("CIRKEL_CONFIG", &cfg);
        c.output().unwrap()
    };
    assert!(run(&["repo", "init"]).status.success());
    assert!(run(&["backup", "files", "--set", "site"]).status.success());
    assert!(run(&["backup", "files", "--set", "site"]).status.success());
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["--json", "snapshots", "--tag", "static"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let pruned: serde_json::Value = serde_json::from_str(&stdout(&run(&["--json", "repo", "prune"]))).unwrap();
    assert_eq!(pruned["snapshots_removed"], 1, "[retention] applies when no flags are given: {pruned}");
    let out = env.path("out");
    assert!(run(&["restore", "files", "latest", "--to", out.to_str().unwrap()]).status.success());
    assert!(!restored(&out, &src).join("bin").exists());
    assert!(restored(&out, &src).join("docs/readme.txt").exists());
    let out = run(&["backup", "files", "--set", "nope"]);
    assert!(stderr(&out).contains("no file set named `nope`"));
}

#[test]
fn help_explains_and_every_command_has_json() {
    let env = Env::new();
    let help = env.ok(&["--help"]);
    for cmd in ["config", "repo", "backup", "restore", "snapshots", "--json", "--repo", "--password-file"] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
    let help = env.ok(&["repo", "prune", "--help"]);
    assert!(help.contains("--keep-daily") && help.contains("--dry-run"), "{help}");
    let err = env.fails(&["snapshots", "--repo", "/nonexistent/cirkel"]);
    assert!(err.contains("no cirkel repository"));
}

/// Settings that would be silent no-ops are refused when the configuration
/// is read: a schedule that never fires, a retention that can never run,
/// exclusions a backup would reject, a window of zero, credentials in an
/// endpoint URL and an integer too large for any setting.
#[test]
fn settings_that_would_do_nothing_are_refused() {
    let env = Env::new();
    let cfg = env.path("cirkel.toml");
    let missing = env.path("no-such-excludes");
    let bad_file = env.path("bad-excludes");
    std::fs::write(&bad_file, "# cache\n*.tmp\nsrc/[\n").unwrap();
    let text = format!(
        r#"[repository]
url = "/tmp/x"

[repository.s3]
endpoint = "http://admin:hunter2@127.0.0.1:9000"

[files.static]
paths = ["/srv/static"]
schedule = "0 0 31 2 *"
exclude = ["ok", "a[b"]
exclude_file = "{missing}"

[files.static.retention]
keep_daily = 7

[files.logs]
paths = ["/srv/logs"]
tags = ["logs"]
exclude_file = "{bad}"

[files.logs.retention]
keep_within = "0s"
keep_last = 99999999999999999999
"#,
        missing = missing.display(),
        bad = bad_file.display()
    );
    std::fs::write(&cfg, text).unwrap();
    let out = env.run(&["--config", cfg.to_str().unwrap(), "config", "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    let expect = [
        "`repository.s3.endpoint`: the URL contains credentials",
        "`files.static.schedule`: `0 0 31 2 *` never fires",
        "`files.static.exclude`: bad exclude pattern `a[b`",
        "`files.static.exclude_file`: read exclude file",
        "`files.static.retention`: a retention needs a tag",
        "tags = [\"static\"]",
        "`files.logs.exclude_file`:",
        "bad exclude pattern `src/[`",
        "`files.logs.retention.keep_within`: a duration of 0 keeps nothing",
        "`files.logs.retention.keep_last`: out of range; expected 0..=1000000",
    ];
    for e in expect {
        assert!(err.contains(e), "missing `{e}` in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "the endpoint's password is printed:\n{err}");

    // Files that never end are refused, not read into memory.
    std::fs::write(&cfg, "[repository]\nurl = \"/tmp/x\"\npassword_file = \"/dev/zero\"\n").unwrap();
    let err = stderr(&env.run(&["--config", cfg.to_str().unwrap(), "config", "check"]));
    assert!(err.contains("`repository.password_file`: cannot read /dev/zero: longer than"), "{err}");
    let err = stderr(&env.run(&["--config", "/dev/zero", "config", "check"]));
    assert!(err.contains("longer than"), "{err}");
    assert!(!err.contains("found integer"), "{err}");
}

/// Locations that are not repositories are refused instead of becoming
/// directories; a relative path that does not exist yet works.
#[test]
fn repository_locations_are_read_as_users_mean_them() {
    let env = Env::new();
    for (location, expect) in [
        ("http://example.invalid/repo", "`http://` is not a repository location"),
        ("https://example.invalid/repo", "`https://` is not a repository location"),
        ("S3://", "an S3 location needs a bucket"),
    ] {
        let err = env.fails(&["--repo", location, "repo", "init"]);
        assert!(err.contains(expect), "{location}: {err}");
    }
    assert!(std::fs::read_dir(env.dir.path()).unwrap().all(|e| {
        let n = e.unwrap().file_name();
        n == "password"
    }));
    // A relative path below a directory that does not exist yet.
    let out = env.cmd(&["--repo", "new/repo", "-q", "repo", "init"]).current_dir(env.dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "-q silences repo init");
    assert!(env.path("new/repo/config").exists());
    let out = env.cmd(&["--repo", "new/repo", "snapshots"]).current_dir(env.dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `repo prune` with a mistyped `--keep-tag` or a window shorter than the
/// time since the last backup keeps the newest snapshot and says why;
/// `--keep-within 0s` is refused.
#[test]
fn prune_never_forgets_the_newest_snapshot() {
    let env = Env::new();
    env.init();
    let src = env.path("src");
    make_tree(&src);
    env.ok(&["backup", "files", src.to_str().unwrap(), "--tag", "daily"]);
    std::fs::write(src.join("new"), b"x").unwrap();
    env.ok(&["backup", "files", src.to_str().unwrap(), "--tag", "daily"]);
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 2);

    let err = stderr(&env.run(&["repo", "prune", "--keep-within", "0s"]));
    assert!(err.contains("a duration of 0 keeps nothing"), "{err}");
    assert_eq!(env.snapshot_ids().len(), 2);

    let out = env.run(&["repo", "prune", "--keep-tag", "dialy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("--keep-tag dialy: no snapshot carries this tag"), "{}", stderr(&out));
    assert_eq!(env.snapshot_ids(), vec![ids[1].clone()], "the newest is kept");
    assert!(stdout(&out).contains("newest"), "{}", stdout(&out));
}

/// `--repo` naming a repository the configuration does not list still takes
/// the configuration's `password_file`, as `--password-file`'s help says.
#[test]
fn repo_flag_falls_back_to_the_configured_password_file() {
    let env = Env::new();
    env.init();
    let cfg = env.path("cirkel.toml");
    std::fs::write(
        &cfg,
        format!("[repository]\nurl = \"/elsewhere\"\npassword_file = \"{}\"\n", env.password_file.display()),
    )
    .unwrap();
    let out = env
        .cmd(&["--config", cfg.to_str().unwrap(), "--repo", &env.repo, "snapshots"])
        .env_remove("CIRKEL_PASSWORD_FILE")
        .env_remove("CIRKEL_REPO")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A closed stdout (`cirkel … | head`) ends the command quietly, whatever it prints.
#[test]
fn a_closed_stdout_is_a_quiet_exit() {
    let env = Env::new();
    let cfg = env.path("cirkel.toml");
    std::fs::write(&cfg, "[repository]\nurl = \"/tmp/x\"\n").unwrap();
    for args in [vec!["--config", cfg.to_str().unwrap(), "config", "show"], vec!["--help"]] {
        let mut child =
            env.cmd(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn the_readmes_monitoring_configuration_is_valid() {
    // The block after `<!-- plan-5 -->` in the README, with the Redis group
    // its `health` table belongs to.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = readme.split("<!-- plan-5 -->\n```toml\n").nth(1).unwrap().split("```").next().unwrap();
    let env = Env::new();
    let config = env.path("plan.toml");
    std::fs::write(
        &config,
        format!("[redis.cache]\nmembers = [\"10.0.1.30:6379\"]\nsentinels = [\"10.0.1.30:26379\"]\n\n{block}"),
    )
    .unwrap();
    let out = env.ok(&["--config", config.to_str().unwrap(), "config", "check"]);
    assert!(!out.contains("error"), "{out}");
    let shown = env.ok(&["--config", config.to_str().unwrap(), "config", "show"]);
    assert!(shown.contains("[alarms.http-5xx-high]") && shown.contains("rate = true"), "{shown}");
}

#[test]
fn the_readmes_notification_configuration_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = readme.split("<!-- plan-notify -->\n```toml\n").nth(1).unwrap().split("```").next().unwrap();
    let env = Env::new();
    // The secret files it names, here.
    let block = block.replace("/etc/cirkel/", &format!("{}/", env.dir.path().display()));
    for f in ["twilio.token", "slack.url", "smtp.password"] {
        let body = if f == "slack.url" { "https://hooks.slack.com/services/T0/B0/X" } else { "s3cret" };
        std::fs::write(env.path(f), body).unwrap();
    }
    let config = env.path("notify.toml");
    std::fs::write(&config, block).unwrap();
    let out = env.ok(&["--config", config.to_str().unwrap(), "config", "check"]);
    assert!(!out.contains("error"), "{out}");
    let shown = env.ok(&["--config", config.to_str().unwrap(), "config", "show"]);
    assert!(!shown.contains("s3cret") && !shown.contains("hooks.slack.com"), "secrets are never shown: {shown}");
}

#[test]
fn agents_name_themselves_and_never_act_around_the_lease() {
    let env = Env::new();
    let alone = env.path("alone.toml");
    std::fs::write(&alone, "[postgres.main.members.a]\nhost = \"127.0.0.1\"\nport = 1\n").unwrap();
    let out = env.run(&["--config", alone.to_str().unwrap(), "serve", "--node", "db-1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no [coordination] table"), "{}", stderr(&out));
    let shared = env.path("shared.toml");
    std::fs::write(
        &shared,
        "[coordination]\netcd = [\"http://127.0.0.1:1\"]\n[postgres.main.members.a]\nhost = \"127.0.0.1\"\nport = 1\nnode = \"db-1\"\n",
    )
    .unwrap();
    let cfg = shared.to_str().unwrap();
    let state = env.path("state");
    let run =
        |args: &[&str]| env.cmd(&[&["--config", cfg], args].concat()).env("CIRKEL_STATE_DIR", &state).output().unwrap();
    let out = run(&["serve"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("pass --node NAME"), "{}", stderr(&out));
    let out = run(&["serve", "--node", "db 1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a node name"), "{}", stderr(&out));
    // Without an agent on this host, nothing changes the cluster behind
    // the leader's back.
    for args in [&["pg", "pause"][..], &["pg", "switchover"]] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains("only through the agents"), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn drills_are_configured_with_a_known_kind_and_target() {
    let env = Env::new();
    let cfg = env.path("drills.toml");
    std::fs::write(
        &cfg,
        "[postgres.main.members.a]\nhost = \"127.0.0.1\"\nport = 1\n\
         [drills.monthly]\nkind = \"failover\"\nschedule = \"0 3 1 * *\"\n\
         [drills.odd]\nkind = \"chaos\"\n\
         [drills.elsewhere]\nkind = \"switchover\"\ntarget = \"other\"\n\
         [drills.cache]\nkind = \"redis-failover\"\n\
         [drills.restore]\nkind = \"restore\"\ntarget = \"main\"\nfault = \"stop\"\n\
         [drills.never]\nkind = \"failover\"\nschedule = \"0 0 31 2 *\"\n\
         [drills.zone]\nkind = \"scenario\"\ntarget = \"zone\"\nschedule = \"0 4 1 */3 *\"\n\
         [drills.moon]\nkind = \"scenario\"\ntarget = \"moon\"\n\
         [drills.which]\nkind = \"scenario\"\n\
         [drills.slow]\nkind = \"network\"\nfault = \"latency=100ms\"\nhold = \"30s\"\nschedule = \"0 5 * * 1\"\n\
         [drills.blind]\nkind = \"network\"\n\
         [drills.lossy]\nkind = \"network\"\nfault = \"loss=150%\"\n\
         [drills.held]\nkind = \"failover\"\nhold = \"10s\"\nmember = \"a\"\n",
    )
    .unwrap();
    let out = env.run(&["--config", cfg.to_str().unwrap(), "config", "check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    for expected in [
        "`chaos` is not a drill kind",
        "`moon` is not a scenario; expected one of app-instance, redis-master, pg-primary, zone, region",
        "drills.which.target`: missing: a scenario drill names its scenario",
        "names `other`, which is no configured postgres cluster",
        "missing: 0 redis groups are configured",
        "remove `target`",
        "only a failover or network drill takes a fault",
        "drills.never.schedule",
        "drills.blind.fault`: missing: a network drill names its fault",
        "`150%` is not a loss between 1% and 100%",
        "drills.held.hold`: only a network drill holds its fault",
        "drills.held.member`: only a network drill faults a chosen member",
    ] {
        assert!(err.contains(expected), "{expected}: {err}");
    }
    for fine in ["drills.monthly", "drills.zone", "drills.slow"] {
        assert!(!err.contains(fine), "{fine}: {err}");
    }
}
