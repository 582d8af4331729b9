//! PostgreSQL protection against real PostgreSQL 15 clusters: base backups,
//! WAL archiving through archive_command, point-in-time restore, timelines,
//! gaps, an unreachable repository, and streaming after the primary is lost.
//! cirkel runs as the `postgres` user, as it would on a database host.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use cirkel_testkit::pg::{PgCluster, as_postgres, chown_postgres};
use common::*;

struct PgEnv {
    env: Env,
    cache: std::path::PathBuf,
}

impl PgEnv {
    fn new() -> PgEnv {
        let env = Env::new();
        std::fs::set_permissions(&env.password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cache = env.path("cache");
        std::fs::create_dir_all(&cache).unwrap();
        chown_postgres(env.dir.path());
        PgEnv { env, cache }
    }

    /// cirkel as postgres, with the repository, passphrase and cluster env.
    fn cmd(&self, pg: Option<&PgCluster>, args: &[&str]) -> Command {
        self.cmd_on(as_postgres(shared_bin()), pg, args)
    }

    /// cirkel as postgres with CAP_NET_ADMIN, what network faults need.
    fn cmd_net_admin(&self, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--inh-caps=+net_admin"])
            .args(["--ambient-caps=+net_admin"])
            .arg(shared_bin());
        self.cmd_on(c, None, args)
    }

    fn cmd_on(&self, mut c: Command, pg: Option<&PgCluster>, args: &[&str]) -> Command {
        c.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("CIRKEL_") || k.starts_with("PG") {
                c.env_remove(k);
            }
        }
        c.env("CIRKEL_REPO", &self.env.repo)
            .env("CIRKEL_PASSWORD_FILE", &self.env.password_file)
            .env("CIRKEL_CACHE_DIR", &self.cache)
            .current_dir(self.env.dir.path());
        if let Some(pg) = pg {
            for (k, v) in pg.env() {
                c.env(k, v);
            }
        }
        c
    }

    fn ok(&self, pg: Option<&PgCluster>, args: &[&str]) -> String {
        let out = self.cmd(pg, args).output().unwrap();
        assert!(out.status.success(), "cirkel {args:?} failed: {}\n{}", stderr(&out), stdout(&out));
        stdout(&out)
    }

    fn json(&self, pg: Option<&PgCluster>, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(pg, &a)).unwrap()
    }

    fn fails(&self, pg: Option<&PgCluster>, args: &[&str]) -> String {
        let out = self.cmd(pg, args).output().unwrap();
        assert!(!out.status.success(), "cirkel {args:?} should fail: {}", stdout(&out));
        let err = stderr(&out);
        assert!(err.contains("error: ") && err.contains("hint: "), "{err}");
        err
    }

    fn archive_command(&self) -> String {
        format!(
            "CIRKEL_CACHE_DIR={} {} --repo {} --password-file {} wal-push %p",
            self.cache.display(),
            shared_bin(),
            self.env.repo,
            self.env.password_file.display()
        )
    }

    fn archiving_cluster(&self, extra: &[&str]) -> PgCluster {
        let ac = format!("archive_command = '{}'", self.archive_command());
        let mut conf = vec!["archive_mode = on", ac.as_str(), "track_commit_timestamp = on"];
        conf.extend_from_slice(extra);
        let mut pg = PgCluster::init(&conf);
        pg.start();
        pg
    }

    /// Restores into a fresh directory and starts it (without archiving) until promoted.
    fn restore_and_start(&self, args: &[&str]) -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        let to = data.display().to_string();
        let mut a = vec!["pg", "restore", "--to", to.as_str()];
        a.extend_from_slice(args);
        self.ok(None, &a);
        cirkel_testkit::pg::append_conf(&data, &["archive_mode = off".to_string()]);
        let mut restored = PgCluster::adopt(dir, data);
        restored.start_and_wait_promoted(Duration::from_secs(120));
        restored
    }
}

/// `cirkel pg stream-wal` on `pg`, spooling in the test's directory.
fn streamer(e: &PgEnv, pg: &PgCluster, interval: &str) -> Command {
    let spool = e.env.path("spool");
    e.cmd(Some(pg), &["-q", "pg", "stream-wal", "--interval", interval, "--spool", spool.to_str().unwrap()])
}

/// Waits until the streamer's replication slot is in use. A checkpoint
/// taken while the slot is new and not yet streamed from can invalidate it
/// in PostgreSQL 15 (it terminates the receiver "to release" the slot), so
/// the tests start their base backup only once streaming runs.
fn wait_for_streaming(pg: &PgCluster) {
    let start = Instant::now();
    while pg.sql("SELECT count(*) FROM pg_stat_replication") != "1" {
        assert!(start.elapsed() < Duration::from_secs(60), "the streamer never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Forces a segment switch and waits until the archiver has pushed it.
fn switch_and_archive(pg: &PgCluster) {
    let seg = pg.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let start = Instant::now();
    loop {
        let last = pg.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if last.as_str() >= seg.as_str() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "segment {seg} never archived (last {last})\n{}",
            pg.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn insert_rows(pg: &PgCluster, from: i32, to: i32) {
    pg.sql(&format!(
        "DO $$ BEGIN FOR i IN {from}..{to} LOOP INSERT INTO t VALUES (i, now()::text); COMMIT; PERFORM pg_sleep(0.01); END LOOP; END $$"
    ));
}

#[test]
fn point_in_time_restore_is_exact() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    pg.sql("INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series(-5000, -1) g");
    let v = e.json(Some(&pg), &["pg", "backup", "--type", "full", "--label", "pre-deploy"]);
    assert_eq!(v["snapshot"]["kind"], "pg");
    assert_eq!(v["snapshot"]["meta"]["label"], "pre-deploy");
    insert_rows(&pg, 1, 40);
    let t20 = pg.sql(
        "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM t WHERE id = 20",
    );
    switch_and_archive(&pg);

    // The plan names the backup and the WAL range.
    let plan = e.json(None, &["pg", "restore", "--to", "/nonexistent/x", "--target-time", &t20, "--dry-run"]);
    assert_eq!(plan["backup"], v["id"]);
    assert!(plan["wal_from"].as_str().unwrap().len() == 24);

    let restored = e.restore_and_start(&["--target-time", &t20]);
    assert_eq!(restored.sql("SELECT count(*) FROM t WHERE id > 0"), "20", "exactly the commits up to T");
    assert_eq!(restored.sql("SELECT max(id) FROM t"), "20");
    assert_eq!(restored.sql("SELECT count(*) FROM t WHERE id < 0"), "5000");

    // And everything with --latest.
    let latest = e.restore_and_start(&["--latest"]);
    assert_eq!(latest.sql("SELECT count(*) FROM t WHERE id > 0"), "40");

    let list = e.json(None, &["pg", "backups"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let info = e.json(None, &["pg", "info"]);
    assert!(info[0]["archived_segments"].as_u64().unwrap() >= 2, "{info}");
    let earliest = chrono::DateTime::parse_from_rfc3339(info[0]["earliest_time"].as_str().unwrap()).unwrap();
    let latest = chrono::DateTime::parse_from_rfc3339(info[0]["latest_time"].as_str().unwrap()).unwrap();
    assert!(earliest <= latest, "the window runs from the oldest backup to the newest WAL: {info}");
    assert!(info[0]["problems"].as_array().unwrap().is_empty(), "{info}");
    e.ok(None, &["pg", "check"]);
}

#[test]
fn tablespaces_restore_in_place_or_where_they_are_mapped() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let loc = outside.path().join("ts");
    std::fs::create_dir(&loc).unwrap();
    chown_postgres(outside.path());
    pg.sql(&format!("CREATE TABLESPACE ts LOCATION '{}'", loc.display()));
    pg.sql("CREATE TABLE big (id int, note text) TABLESPACE ts");
    pg.sql("INSERT INTO big SELECT g, repeat('y', 100) FROM generate_series(1, 20000) g");
    let v = e.json(Some(&pg), &["pg", "backup", "--type", "full"]);
    let ts = &v["snapshot"]["meta"]["tablespaces"][0];
    assert_eq!(ts["location"], loc.display().to_string(), "{v}");
    let oid = ts["oid"].as_str().unwrap().to_string();
    pg.sql("INSERT INTO big SELECT g, 'later' FROM generate_series(20001, 20100) g");
    let v = e.json(Some(&pg), &["pg", "backup", "--type", "incr"]);
    assert!(v["snapshot"]["summary"]["bytes_added"].as_u64().unwrap() < 2_000_000, "only changed blocks: {v}");
    switch_and_archive(&pg);

    // Not mapped: a directory below pg_tblspc of the new data directory.
    let in_place = e.restore_and_start(&["--latest"]);
    assert_eq!(in_place.sql("SELECT count(*) FROM big"), "20100");
    let entry = in_place.data.join("pg_tblspc").join(&oid);
    assert!(std::fs::symlink_metadata(&entry).unwrap().is_dir(), "a directory, not a link back to {}", loc.display());

    // Mapped: moved where asked and linked from pg_tblspc; the original is untouched.
    let moved = outside.path().join("moved");
    let map = format!("{}={}", loc.display(), moved.display());
    let mapped = e.restore_and_start(&["--latest", "--tablespace-map", &map]);
    assert_eq!(mapped.sql("SELECT count(*) FROM big"), "20100");
    assert_eq!(std::fs::read_link(mapped.data.join("pg_tblspc").join(&oid)).unwrap(), moved);
    mapped.sql("INSERT INTO big VALUES (0, 'written to the moved tablespace')");
    assert_eq!(pg.sql("SELECT count(*) FROM big"), "20100");

    // As root: the tree, the moved tablespace and its link go to postgres,
    // and the cluster starts on them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let moved = outside.path().join("moved-by-root");
    let mut root = Command::new(shared_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("CIRKEL_") || k.starts_with("PG") {
            root.env_remove(k);
        }
    }
    let map = format!("{oid}={}", moved.display());
    let out = root
        .args(["pg", "restore", "--latest", "--to", data.to_str().unwrap(), "--tablespace-map", &map])
        .env("CIRKEL_REPO", &e.env.repo)
        .env("CIRKEL_PASSWORD_FILE", &e.env.password_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let (uid, _) = cirkel_testkit::pg::postgres_ids();
    for p in walkdir(&data).into_iter().chain(walkdir(&moved)).chain([data.clone(), moved.clone()]) {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::symlink_metadata(&p).unwrap().uid(), uid, "{} belongs to postgres", p.display());
    }
    cirkel_testkit::pg::append_conf(&data, &["archive_mode = off".to_string()]);
    let mut by_root = PgCluster::adopt(dir, data);
    by_root.start_and_wait_promoted(Duration::from_secs(120));
    assert_eq!(by_root.sql("SELECT count(*) FROM big"), "20100");

    let err = e.fails(None, &["pg", "restore", "--to", "/nonexistent/x", "--tablespace-map", "/nope=/tmp/y"]);
    assert!(err.contains("no tablespace at /nope") && err.contains(&oid), "{err}");
    let err = e.fails(None, &["pg", "restore", "--to", "/nonexistent/x", "--tablespace-map", &format!("{oid}=/tmp")]);
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn targets_outside_the_window_and_bad_names_are_clear_errors() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    let err = e.fails(Some(&pg), &["pg", "restore", "--to", "/tmp/x", "--latest"]);
    assert!(err.contains("no base backup"), "{err}");
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    e.ok(Some(&pg), &["pg", "backup"]);
    let err = e.fails(None, &["pg", "restore", "--to", "/tmp/x", "--target-time", &before.to_rfc3339()]);
    assert!(err.contains("before the end of the oldest usable backup"), "{err}");
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let err = e.fails(None, &["pg", "restore", "--to", "/tmp/x", "--target-time", &future.to_rfc3339()]);
    assert!(err.contains("in the future"), "{err}");
    let err = e.fails(None, &["pg", "restore", "--to", "/tmp/x", "--target-time", "yesterday"]);
    assert!(err.contains("not a time"), "{err}");

    // wal-fetch / wal-push with names that are not WAL files
    let mut c = e.cmd(Some(&pg), &["wal-fetch", "../../etc/passwd", "/tmp/out"]);
    let out = c.output().unwrap();
    assert!(!out.status.success() && stderr(&out).contains("not a WAL file name"), "{}", stderr(&out));
    let out = e.cmd(Some(&pg), &["wal-fetch", "0000000500000000000000AA", "/tmp/out"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a segment that is not archived: quiet exit 1");
    std::fs::write(e.env.path("notwal"), "x").unwrap();
    chown_postgres(&e.env.path("notwal"));
    let err = e.fails(Some(&pg), &["wal-push", e.env.path("notwal").to_str().unwrap()]);
    assert!(err.contains("not a WAL file name"), "{err}");

    // Restoring over existing data is refused.
    let occupied = e.env.path("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("PG_VERSION"), "15").unwrap();
    chown_postgres(&occupied);
    let err = e.fails(None, &["pg", "restore", "--to", occupied.to_str().unwrap()]);
    assert!(err.contains("not empty") && err.contains("empty or absent --to"), "{err}");

    // A time without a zone is this host's local time, and the command says so.
    let tokyo = (chrono::Utc::now() - chrono::Duration::hours(1) + chrono::Duration::hours(9)).naive_utc();
    let naive = tokyo.format("%Y-%m-%d %H:%M:%S").to_string();
    let out =
        e.cmd(None, &["pg", "restore", "--to", "/tmp/x", "--target-time", &naive]).env("TZ", "Asia/Tokyo").output();
    let err = stderr(&out.unwrap());
    assert!(err.contains("taken as this host's local time (UTC+09:00)"), "{err}");
    assert!(err.contains("before the end of the oldest usable backup"), "an hour ago, not eight hours ahead: {err}");
}

#[test]
fn a_missing_wal_segment_is_named() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    let v = e.json(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 1, 5);
    switch_and_archive(&pg);
    insert_rows(&pg, 6, 10);
    switch_and_archive(&pg);
    e.ok(None, &["pg", "check"]);
    // Lose the backup's first segment.
    let start_wal = v["snapshot"]["meta"]["start_wal"].as_str().unwrap().to_string();
    let victim = walk_files(&e.env.path("repo/streams")).into_iter().find(|p| p.ends_with(&start_wal)).unwrap();
    std::fs::remove_file(&victim).unwrap();
    let err = e.fails(None, &["pg", "check"]);
    assert!(err.contains("problem"), "{err}");
    let out = e.ok_allow_fail(&["pg", "check"]);
    assert!(out.contains(&start_wal), "{out}");
    let err = e.fails(None, &["pg", "restore", "--to", e.env.path("r").to_str().unwrap(), "--latest"]);
    assert!(err.contains(&start_wal) && err.contains("missing"), "{err}");
}

impl PgEnv {
    fn ok_allow_fail(&self, args: &[&str]) -> String {
        let out = self.cmd(None, args).output().unwrap();
        stdout(&out) + &stderr(&out)
    }
}

#[test]
fn restore_follows_the_timeline_after_a_promotion() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 1, 10);
    switch_and_archive(&pg);
    drop(pg);

    // Restore and promote onto timeline 2, archiving into the same repository.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_postgres(dir.path());
    let data = dir.path().join("data");
    // The primary is gone for good: the restore takes its place and archives on.
    e.ok(None, &["pg", "restore", "--to", data.to_str().unwrap(), "--latest", "--take-over"]);
    let mut promoted = PgCluster::adopt(dir, data);
    promoted.start();
    // At the end of the archived WAL recovery promotes onto a new timeline.
    let start = Instant::now();
    while promoted.try_sql("SELECT pg_is_in_recovery()").as_deref() != Ok("f") {
        assert!(start.elapsed() < Duration::from_secs(60), "{}", promoted.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    insert_rows(&promoted, 11, 20);
    switch_and_archive(&promoted);
    let info = e.json(None, &["pg", "info"]);
    assert!(info[0]["timelines"].as_array().unwrap().iter().any(|t| t.as_u64() == Some(2)), "{info}");
    assert!(info[0]["problems"].as_array().unwrap().is_empty(), "{info}");

    // The backup is on timeline 1; --latest follows the history to timeline 2.
    let again = e.restore_and_start(&["--latest"]);
    assert_eq!(again.sql("SELECT count(*) FROM t"), "20");
}

/// A copy restored next to production: by default it archives nowhere; with
/// archiving turned back on by hand, wal-push refuses its diverged timeline.
/// Either way production's archiving and its `--latest` restore are untouched.
#[test]
fn a_restored_copy_never_touches_production() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 1, 10);
    let t10 = pg.sql(
        "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM t WHERE id = 10",
    );
    switch_and_archive(&pg);

    // The default: the restore says it turned archiving off, and the copy
    // promotes, writes and switches segments without reaching the repository.
    let new_dir = || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_postgres(dir.path());
        let data = dir.path().join("data");
        (dir, data)
    };
    let (dir, data) = new_dir();
    let out = e.ok(None, &["pg", "restore", "--to", data.to_str().unwrap(), "--latest"]);
    assert!(out.contains("archiving: off"), "{out}");
    // The same repository is no place for a copy's WAL; a standby keeps its archive settings.
    let err = e.fails(None, &["pg", "restore", "--to", "/tmp/unused", "--archive-to", &e.env.repo]);
    assert!(err.contains("the repository this restore comes from") && err.contains("--take-over"), "{err}");
    let (_sdir, sdata) = new_dir();
    let out = e.ok(None, &["pg", "restore", "--to", sdata.to_str().unwrap(), "--standby"]);
    assert!(out.contains("as a standby"), "{out}");
    assert!(sdata.join("standby.signal").exists() && !sdata.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(sdata.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("archive_mode = off"), "{auto}");
    let (_odir, odata) = new_dir();
    let other = e.env.path("other-repo").display().to_string();
    e.ok(None, &["pg", "restore", "--to", odata.to_str().unwrap(), "--archive-to", &other]);
    let auto = std::fs::read_to_string(odata.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("archive_mode = on") && auto.contains(&format!("--repo {other} ")), "{auto}");
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.trim_end().ends_with("archive_mode = off"), "{auto}");
    let mut copy = PgCluster::adopt(dir, data);
    copy.start_and_wait_promoted(Duration::from_secs(120));
    copy.sql("INSERT INTO t VALUES (1000, 'only on the copy')");
    copy.sql("SELECT pg_switch_wal()");
    copy.sql("CHECKPOINT");

    // A second copy, to a time in the past, whose archive_command was put back.
    let (dir2, data2) = new_dir();
    e.ok(None, &["pg", "restore", "--to", data2.to_str().unwrap(), "--target-time", &t10]);
    {
        use std::io::Write;
        let mut auto = std::fs::OpenOptions::new().append(true).open(data2.join("postgresql.auto.conf")).unwrap();
        writeln!(auto, "archive_mode = on\narchive_command = '{}'", e.archive_command()).unwrap();
    }
    // Production writes on, past the point where the copy will branch off.
    insert_rows(&pg, 11, 20);
    switch_and_archive(&pg);
    insert_rows(&pg, 21, 30);
    switch_and_archive(&pg);
    let mut forgotten = PgCluster::adopt(dir2, data2.clone());
    forgotten.start_and_wait_promoted(Duration::from_secs(120));
    forgotten.sql("INSERT INTO t VALUES (2000, 'only on the forgotten copy')");
    forgotten.sql("SELECT pg_switch_wal()");
    wait_until("the forgotten copy's archiving to fail", &|| {
        forgotten.try_sql("SELECT failed_count > 0 FROM pg_stat_archiver").as_deref() == Ok("t")
    });
    let tli: u32 = forgotten.sql("SELECT timeline_id FROM pg_control_checkpoint()").parse().unwrap();
    let history = data2.join("pg_wal").join(format!("{tli:08X}.history"));
    let pgdata = data2.display().to_string();
    let err = e.fails(None, &["wal-push", "--pgdata", &pgdata, history.to_str().unwrap()]);
    assert!(err.contains("diverged") && err.contains("archive_mode = off"), "{err}");
    let history_objects = e.env.path("repo").join("streams");
    let found = walkdir(&history_objects).into_iter().any(|p| p.ends_with(format!("{tli:08X}.history")));
    assert!(!found, "no history of the copy in the repository");

    // Production archives on, and --latest restores exactly its rows.
    insert_rows(&pg, 31, 40);
    switch_and_archive(&pg);
    assert_eq!(pg.sql("SELECT failed_count FROM pg_stat_archiver"), "0");
    e.ok(None, &["pg", "check"]);
    let latest = e.restore_and_start(&["--latest"]);
    assert_eq!(latest.sql("SELECT count(*) FROM t"), "40");
    assert_eq!(latest.sql("SELECT count(*) FROM t WHERE id >= 1000"), "0");
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_unreachable_repository_stalls_archiving_without_losing_wal() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&["archive_timeout = 0"]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup"]);
    // The repository disappears (unmounted, network down).
    let repo = e.env.path("repo");
    let hidden = e.env.path("repo-away");
    std::fs::rename(&repo, &hidden).unwrap();
    insert_rows(&pg, 1, 10);
    let seg = pg.sql("SELECT pg_walfile_name(pg_switch_wal())");
    let start = Instant::now();
    while pg.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(start.elapsed() < Duration::from_secs(30), "archiving should fail while the repository is away");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(pg.data.join("pg_wal").join(&seg).exists(), "PostgreSQL keeps the segment");
    std::fs::rename(&hidden, &repo).unwrap();
    let start = Instant::now();
    while pg.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").as_str() < seg.as_str() {
        assert!(start.elapsed() < Duration::from_secs(90), "archiving catches up\n{}", pg.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let restored = e.restore_and_start(&["--latest"]);
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "10", "nothing lost");
}

/// An archive_command that fails on every try is reported by `pg check`,
/// `pg info`, `status` and `pg backup`, which says what it waits for and
/// gives up after its timeout.
#[test]
fn a_stopped_archive_never_goes_unnoticed() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup"]);
    // Right after the first backup: it is a full one, and the window runs forwards.
    assert_eq!(e.json(None, &["pg", "backups"])[0]["meta"]["backup_type"], "full");
    let info = e.json(None, &["pg", "info"]);
    let time = |k: &str| chrono::DateTime::parse_from_rfc3339(info[0][k].as_str().unwrap()).unwrap();
    assert!(time("earliest_time") <= time("latest_time"), "{info}");
    insert_rows(&pg, 1, 10);
    switch_and_archive(&pg);
    e.ok(Some(&pg), &["pg", "check"]);
    let out = e.ok(Some(&pg), &["pg", "info"]);
    assert!(out.contains("server archiving: working"), "{out}");

    pg.sql("ALTER SYSTEM SET archive_command = 'false'");
    pg.sql("SELECT pg_reload_conf()");
    insert_rows(&pg, 11, 20);
    pg.sql("SELECT pg_switch_wal()");
    wait_until("archiving to fail", &|| pg.sql("SELECT failed_count > 0 FROM pg_stat_archiver") == "t");

    let err = e.fails(Some(&pg), &["pg", "check"]);
    assert!(err.contains("archiving does not work") && err.contains("archive_command"), "{err}");
    let info = e.json(Some(&pg), &["pg", "info"]);
    assert_eq!(info[0]["archiver"]["failing"], true, "{info}");
    assert!(info[0]["archiver"]["last_failed_wal"].as_str().unwrap().len() == 24, "{info}");

    let cfg = e.env.path("status.toml");
    std::fs::write(
        &cfg,
        format!(
            "[postgres.main]\nuser = \"postgres\"\ndatabase = \"postgres\"\n\
             [postgres.main.members.a]\nhost = \"127.0.0.1\"\nport = {}\n",
            pg.port
        ),
    )
    .unwrap();
    chown_postgres(&cfg);
    let out = e.cmd(None, &["--config", cfg.to_str().unwrap(), "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "degraded: {}", stdout(&out));
    assert!(stdout(&out).contains("archiving fails"), "{}", stdout(&out));

    let out = e.cmd(Some(&pg), &["pg", "backup", "--archive-timeout", "2s"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("waiting for WAL segment"), "says what it waits for: {err}");
    assert!(err.contains("was not archived within") && err.contains("hint: "), "{err}");
}

/// Root writing a repository that postgres owns would leave root-owned
/// directories that postgres's wal-push cannot write into later: refused,
/// with the right user named, or fixed up with --fix-owner.
#[test]
fn commands_refuse_to_write_a_repository_as_another_user() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    let as_root = |args: &[&str]| {
        let mut c = Command::new(shared_bin());
        c.args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("CIRKEL_") || k.starts_with("PG") {
                c.env_remove(k);
            }
        }
        c.env("CIRKEL_REPO", &e.env.repo).env("CIRKEL_PASSWORD_FILE", &e.env.password_file).envs(pg.env());
        c.output().unwrap()
    };
    let out = as_root(&["pg", "backup"]);
    assert!(!out.status.success(), "root may not write postgres's repository");
    let err = stderr(&out);
    assert!(err.contains("belongs to postgres"), "{err}");
    assert!(err.contains("hint: run it as the repository's owner: `runuser -u postgres -- cirkel pg backup`"), "{err}");

    let out = as_root(&["--fix-owner", "pg", "backup"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (uid, _) = cirkel_testkit::pg::postgres_ids();
    for p in walkdir(std::path::Path::new(&e.env.repo)) {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), uid, "{} belongs to postgres", p.display());
    }
    // postgres archives into it as before.
    insert_rows(&pg, 1, 10);
    switch_and_archive(&pg);
    e.ok(Some(&pg), &["pg", "check"]);
}

#[test]
fn streaming_loses_seconds_at_most_when_the_primary_is_destroyed() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let mut pg = PgCluster::init(&["track_commit_timestamp = on"]);
    pg.start();
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, at timestamptz)");
    let mut streamer = streamer(&e, &pg, "500ms").spawn().unwrap();
    wait_for_streaming(&pg);
    e.ok(Some(&pg), &["pg", "backup"]);
    // A canary writer: one transaction per row, acknowledged rows remembered.
    let mut acked: Vec<(i32, Instant)> = Vec::new();
    let begin = Instant::now();
    let mut i = 0;
    while begin.elapsed() < Duration::from_secs(4) {
        i += 1;
        pg.sql(&format!("INSERT INTO t VALUES ({i}, now())"));
        acked.push((i, Instant::now()));
    }
    // The whole host is lost: the primary and the streamer die together, so
    // only what already reached the repository counts.
    let killed_at = Instant::now();
    let _ = streamer.kill();
    pg.kill9();
    let _ = streamer.wait();
    std::fs::remove_dir_all(&pg.data).unwrap();

    let restored = e.restore_and_start(&["--latest"]);
    let max: i32 = restored.sql("SELECT coalesce(max(id), 0) FROM t").parse().unwrap();
    let count: i32 = restored.sql("SELECT count(*) FROM t").parse().unwrap();
    assert_eq!(count, max, "no holes: a prefix of the commits survives");
    let lost: Vec<_> = acked.iter().filter(|(id, _)| *id > max).collect();
    let window = lost.first().map(|(_, at)| killed_at.duration_since(*at)).unwrap_or_default();
    eprintln!("acknowledged {}, restored {max}, lost {} ({window:?} of commits)", acked.len(), lost.len());
    assert!(max > 0, "the streamed WAL restores");
    assert!(window <= Duration::from_secs(5), "RPO {window:?} > 5 s");
}

#[test]
fn the_streamer_stops_cleanly_and_archives_completed_segments() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let mut pg = PgCluster::init(&[]);
    pg.start();
    let mut streamer = streamer(&e, &pg, "200ms").spawn().unwrap();
    wait_for_streaming(&pg);
    e.ok(Some(&pg), &["pg", "backup"]);
    pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g");
    pg.sql("SELECT pg_switch_wal()");
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: signalling our own child (setpriv execs cirkel in place).
    unsafe { libc::kill(streamer.id() as i32, libc::SIGTERM) };
    assert!(streamer.wait().unwrap().success(), "SIGTERM is a clean stop");
    assert_eq!(pg.sql("SELECT count(*) FROM pg_replication_slots"), "0", "a clean stop drops the slot");
    let info = e.json(None, &["pg", "info"]);
    assert!(info[0]["archived_segments"].as_u64().unwrap() >= 1, "{info}");
    e.ok(None, &["pg", "check"]);
    pg.kill9();
}

/// A streamer whose replication slot is gone stops with an error that says
/// WAL is not being archived, instead of retrying quietly forever.
#[test]
fn the_streamer_fails_loudly_when_its_slot_is_gone() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let mut pg = PgCluster::init(&[]);
    pg.start();
    let mut streamer = streamer(&e, &pg, "100ms").stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_streaming(&pg);
    pg.sql(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'cirkel'; \
         SELECT pg_sleep(0.2); SELECT pg_drop_replication_slot('cirkel')",
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = streamer.try_wait().unwrap() {
            break s;
        }
        // (a bound on a hung streamer, not a timing under test)
        assert!(start.elapsed() < Duration::from_secs(120), "the streamer kept retrying");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(streamer.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("WAL is not being streamed") && err.contains("replication slot `cirkel`"), "{err}");
    assert!(err.contains("hint: ") || err.contains("cirkel pg check"), "{err}");
    pg.kill9();
}

#[test]
fn table_export_round_trip() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let mut pg = PgCluster::init(&[]);
    pg.start();
    pg.sql("CREATE SCHEMA ai");
    pg.sql("CREATE TABLE ai.cirkelline_knowledge_vectors (id int PRIMARY KEY, embedding real[], body text)");
    pg.sql("INSERT INTO ai.cirkelline_knowledge_vectors SELECT g, ARRAY[random(), random(), random()]::real[], md5(g::text) FROM generate_series(1, 2000) g");
    let sum = pg.sql("SELECT sum(length(body)) || ':' || count(*) FROM ai.cirkelline_knowledge_vectors");
    let v = e.json(Some(&pg), &["pg", "dump", "--table", "ai.cirkelline_knowledge_vectors", "--tag", "vectors"]);
    assert_eq!(v["snapshot"]["kind"], "pg-dump");
    let err = e.fails(Some(&pg), &["pg", "dump", "--table", "ai.no_such_table"]);
    assert!(err.contains("pg_dump") && err.contains("no_such_table"), "{err}");
    pg.sql("DROP TABLE ai.cirkelline_knowledge_vectors");
    e.ok(Some(&pg), &["pg", "dump-restore", "latest"]);
    assert_eq!(pg.sql("SELECT sum(length(body)) || ':' || count(*) FROM ai.cirkelline_knowledge_vectors"), sum);
    // Restoring over the existing table needs --clean.
    let err = e.fails(Some(&pg), &["pg", "dump-restore", "latest"]);
    assert!(err.contains("--clean"), "{err}");
    e.ok(Some(&pg), &["pg", "dump-restore", "latest", "--clean"]);
    assert_eq!(pg.sql("SELECT count(*) FROM ai.cirkelline_knowledge_vectors"), "2000");
    pg.stop();
}

#[test]
fn verify_drills_a_restore_and_cleans_up() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g");
    e.ok(Some(&pg), &["pg", "backup"]);
    switch_and_archive(&pg);
    let before: Vec<_> =
        std::fs::read_dir(std::env::temp_dir()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    let v = e.json(None, &["pg", "verify", "--query", "SELECT count(*) FROM t"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["query_result"], "1000");
    assert!(v["tables"].as_array().unwrap().iter().any(|t| t["table"] == "public.t" && t["rows"] == 1000), "{v}");
    assert!(v["indexes_checked"].as_u64().unwrap() >= 1, "amcheck ran: {v}");
    assert!(v["total_seconds"].as_f64().unwrap() > 0.0);
    let after: Vec<_> =
        std::fs::read_dir(std::env::temp_dir()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(
        after.iter().all(|n| before.contains(n) || !n.to_string_lossy().starts_with("cirkel-verify-")),
        "scratch removed"
    );
    // A failing check fails the drill.
    let err = e.fails(None, &["pg", "verify", "--query", "SELECT count(*) FROM missing_table"]);
    assert!(err.contains("missing_table"), "{err}");
    // A table created after the backup is not in it: the query failed on the
    // backup's state, which is no fault of the backup.
    pg.sql("CREATE TABLE later (id int)");
    switch_and_archive(&pg);
    let err = e.fails(None, &["pg", "verify", "--query", "SELECT count(*) FROM later"]);
    assert!(err.contains("failed on the backup's state"), "{err}");
    assert!(!err.contains("may be unusable"), "the backup is not blamed: {err}");
}

#[test]
fn expire_keeps_what_kept_backups_need() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    let first = e.json(Some(&pg), &["pg", "backup", "--label", "pre-deploy"]);
    insert_rows(&pg, 1, 5);
    switch_and_archive(&pg);
    e.json(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 6, 10);
    switch_and_archive(&pg);
    // With a zero pre-deploy window the first backup goes, the newest stays,
    // and WAL older than the kept backup goes (no extra window).
    let v = e.json(None, &["pg", "expire", "--pre-deploy", "0s", "--wal", "0s", "--dry-run"]);
    assert_eq!(v["expire"]["backups_removed"], 1);
    assert_eq!(e.json(None, &["pg", "backups"]).as_array().unwrap().len(), 2, "dry run");
    let v = e.json(None, &["pg", "expire", "--pre-deploy", "0s", "--wal", "0s"]);
    assert_eq!(v["expire"]["backups_removed"], 1);
    assert!(v["expire"]["wal_removed"].as_u64().unwrap() >= 1, "{v}");
    let left = e.json(None, &["pg", "backups"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_ne!(left[0]["id"], first["id"]);
    e.ok(None, &["pg", "check"]);
    e.ok(None, &["repo", "verify", "--read-data"]);
    let restored = e.restore_and_start(&["--latest"]);
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "10");
}

#[test]
fn page_checksum_failures_are_reported_by_the_backup() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let mut pg = PgCluster::init(&[]);
    pg.start();
    pg.sql("CREATE TABLE victim (id int, pad text)");
    pg.sql("INSERT INTO victim SELECT g, repeat('v', 500) FROM generate_series(1, 2000) g");
    pg.sql("CHECKPOINT");
    // A clean cluster backs up without warnings.
    let out = e.cmd(Some(&pg), &["pg", "backup"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rel = pg.sql("SELECT pg_relation_filepath('victim')");
    pg.stop();
    // Flip a byte inside block 3 (not its header), as failing storage would.
    let path = pg.data.join(&rel);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3 * 8192 + 4000] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    pg.start();
    let out = e.cmd(Some(&pg), &["--json", "pg", "backup", "--type", "full"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("failed their checksum") && err.contains(&rel) && err.contains("block 3"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["snapshot"]["meta"]["checksum_error_count"], 1);
    pg.stop();
}

#[test]
fn incremental_backups_store_only_changed_blocks() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE big (id int PRIMARY KEY, pad text) WITH (fillfactor = 100)");
    pg.sql("INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 200000) g");
    // Settle hint bits and the visibility map first, as a long-lived table has.
    pg.sql("VACUUM (FREEZE, ANALYZE) big");
    pg.sql("CHECKPOINT");
    // Files written within the safety margin before a backup are always re-read.
    std::thread::sleep(Duration::from_secs(3));
    let full = e.json(Some(&pg), &["pg", "backup", "--type", "full"]);
    let full_added = full["snapshot"]["summary"]["bytes_added"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    pg.sql("UPDATE big SET pad = upper(pad) WHERE id <= 10000");
    pg.sql("CHECKPOINT");
    let incr = e.json(Some(&pg), &["pg", "backup", "--type", "incr"]);
    let incr_added = incr["snapshot"]["summary"]["bytes_added"].as_u64().unwrap();
    assert_eq!(incr["snapshot"]["parent"], full["id"]);
    assert!(incr_added * 4 < full_added, "a 5 % update adds far less than a full backup: {incr_added} vs {full_added}");
    assert!(
        incr["snapshot"]["summary"]["files_read"].as_u64().unwrap()
            < full["snapshot"]["summary"]["files_read"].as_u64().unwrap(),
        "untouched files are not read again"
    );
    insert_rows_big(&pg);
    switch_and_archive(&pg);
    let restored = e.restore_and_start(&["--latest"]);
    assert_eq!(restored.sql("SELECT count(*) FROM big WHERE pad = upper(pad) AND pad ~ '[A-F]'"), "10000");
    assert_eq!(restored.sql("SELECT count(*) FROM big"), "200001");
}

fn insert_rows_big(pg: &PgCluster) {
    pg.sql("INSERT INTO big VALUES (200001, 'last')");
}

/// The plan's region failover: weekly backups and the WAL archive are copied
/// to a second repository, and a point-in-time restore runs from there alone.
#[test]
fn restore_from_the_second_region() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let dr = e.env.path("dr-repo").display().to_string();
    e.ok(None, &["repo", "init", "--repo", &dr, "--copy-keys-from", &e.env.repo]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup", "--tag", "weekly"]);
    e.ok(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 1, 30);
    switch_and_archive(&pg);
    let v = e.json(None, &["repo", "copy", "--to", &dr, "--tag", "weekly"]);
    assert_eq!(v["copied"].as_array().unwrap().len(), 1, "only the weekly backup: {v}");
    assert!(v["streams_copied"].as_u64().unwrap() >= 2, "the WAL archive travels too: {v}");
    let again = e.json(None, &["repo", "copy", "--to", &dr, "--tag", "weekly"]);
    assert_eq!(again["streams_copied"], 0);
    drop(pg);
    // The primary region is gone: restore from the second one.
    assert_eq!(restore_from_second_region(&e, &dr).sql("SELECT count(*) FROM t"), "30");
}

/// The first region's repository is lost: the newest point restored from
/// the second one (`dr`) alone, started and promoted.
fn restore_from_second_region(e: &PgEnv, dr: &str) -> PgCluster {
    std::fs::rename(e.env.path("repo"), e.env.path("repo-lost")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_postgres(dir.path());
    let data = dir.path().join("data");
    e.ok(None, &["--repo", dr, "pg", "restore", "--to", data.to_str().unwrap(), "--latest"]);
    cirkel_testkit::pg::append_conf(&data, &["archive_mode = off".to_string()]);
    let mut restored = PgCluster::adopt(dir, data);
    restored.start_and_wait_promoted(Duration::from_secs(120));
    restored
}

/// The second region keeps its own retention: `pg expire --repo dr` expires
/// there and nowhere else, and what it keeps restores with every commit;
/// `cirkel serve`'s continuous copy runs it after a copy with the
/// repository's `[repositories.dr.pg_expire]`.
#[test]
fn the_second_region_keeps_its_own_retention() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let dr = e.env.path("dr-repo").display().to_string();
    let config = e.env.path("cirkel.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n[repositories.dr]\nurl = \"{dr}\"\ncontinuous = true\n\
             [repositories.dr.pg_expire]\ndaily = \"1s\"\nwal = \"0s\"\n",
            e.env.path("state").display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    e.ok(None, &["--config", c, "repo", "init", "--repo", "dr", "--copy-keys-from", &e.env.repo]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 1, 10);
    switch_and_archive(&pg);
    e.ok(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 11, 20);
    switch_and_archive(&pg);
    e.ok(None, &["--config", c, "repo", "copy", "--to", "dr"]);
    let backups = |repo: &str| -> Vec<String> {
        let v = e.json(None, &["--config", c, "--repo", repo, "pg", "backups"]);
        v.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(backups("dr").len(), 2);
    // Both backups are older than a second now, so the daily window keeps only the newest.
    std::thread::sleep(Duration::from_secs(1));
    let v = e.json(None, &["--config", c, "--repo", "dr", "pg", "expire", "--daily", "1s", "--wal", "0s"]);
    assert_eq!(v["expire"]["backups_removed"], 1, "{v}");
    assert!(v["expire"]["wal_removed"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(backups("dr").len(), 1);
    assert_eq!(backups(&e.env.repo).len(), 2, "the main repository keeps its own");

    // A third backup reaches the second region by the continuous copy `cirkel
    // serve` runs, which then expires there with the repository's own retention.
    e.ok(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 21, 30);
    switch_and_archive(&pg);
    let main = backups(&e.env.repo);
    assert_eq!(main.len(), 3);
    let daemon = Daemon::start(&e, c);
    let start = Instant::now();
    while backups("dr") != vec![main.last().unwrap().clone()] {
        assert!(start.elapsed() < Duration::from_secs(120), "dr holds {:?}, main {main:?}", backups("dr"));
        std::thread::sleep(Duration::from_millis(500));
    }
    // SIGTERM: the daemon stops its copy worker before it exits.
    let mut daemon = daemon;
    // SAFETY: sends a signal to our own child.
    unsafe { libc::kill(daemon.child.id() as libc::pid_t, libc::SIGTERM) };
    let start = Instant::now();
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "cirkel serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    e.ok(None, &["--config", c, "--repo", "dr", "repo", "verify", "--read-data"]);
    drop(pg);
    assert_eq!(restore_from_second_region(&e, &dr).sql("SELECT count(*) FROM t"), "30");
}

#[test]
fn backup_from_a_standby_restores() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let primary = e.archiving_cluster(&[]);
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    insert_rows(&primary, 1, 10);
    let mut standby = PgCluster::standby_of(&primary);
    standby.start();
    let start = Instant::now();
    while standby.try_sql("SELECT count(*) FROM t").as_deref() != Ok("10") {
        assert!(start.elapsed() < Duration::from_secs(60), "standby never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let v = e.json(Some(&standby), &["pg", "backup"]);
    assert_eq!(v["snapshot"]["meta"]["from_standby"], true);
    insert_rows(&primary, 11, 20);
    switch_and_archive(&primary);
    let restored = e.restore_and_start(&["--latest"]);
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "20");
}

#[test]
fn status_and_failover_explain_see_primary_standbys_and_lag() {
    let e = PgEnv::new();
    let mut primary = PgCluster::init(&[]);
    primary.start();
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    let mut b = PgCluster::standby_of(&primary);
    b.start();
    let mut c = PgCluster::standby_of(&primary);
    c.start();
    insert_rows(&primary, 1, 100);
    let member = |name: &str, pg: &PgCluster, zone: &str, prio: u32| {
        format!(
            "[postgres.main.members.{name}]\nhost = \"{}\"\nport = {}\nzone = \"{zone}\"\npriority = {prio}\n",
            pg.socket_dir.display(),
            pg.port
        )
    };
    let config = e.env.path("ha.toml");
    std::fs::write(
        &config,
        format!(
            "[postgres.main]\nuser = \"postgres\"\ndatabase = \"postgres\"\n[postgres.main.health]\ninterval = \"200ms\"\n{}{}{}",
            member("a", &primary, "z1", 100),
            member("b", &b, "z2", 100),
            member("c", &c, "z3", 0)
        ),
    )
    .unwrap();
    chown_postgres(&config);
    let cfg = config.to_str().unwrap();
    let start = Instant::now();
    let status = loop {
        let out = e.cmd(None, &["--json", "--config", cfg, "status"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if out.status.success() {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "cluster never healthy: {v:#} {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(200));
    };
    let pg = &status["postgres"][0];
    assert_eq!(pg["primary"], "a", "{pg:#}");
    let members = pg["members"].as_array().unwrap();
    for m in &members[1..] {
        assert_eq!(m["role"], "standby");
        assert!(m["receiver"].as_str().unwrap().starts_with("streaming"), "{m:#}");
        assert!(m["lag_bytes"].as_u64().is_some(), "{m:#}");
    }
    assert_eq!(members[1]["zone"], "z2");

    let ex = e.json(None, &["--config", cfg, "pg", "failover", "--explain"]);
    assert_eq!(ex["explanation"]["candidate"], "b", "{ex:#}");
    let rejected = ex["explanation"]["rejections"].to_string();
    assert!(rejected.contains("\"c\"") && rejected.contains("priority 0"), "{rejected}");
    let err = e.fails(None, &["--config", cfg, "pg", "failover"]);
    assert!(err.contains("--explain"), "{err}");

    // The daemon watches the members.
    let daemon = Daemon::start(&e, cfg);
    let wait_event = |kind: &str| daemon.wait_event(kind);
    wait_event("watch-started");

    // The only promotable standby goes away: nobody qualifies, and status says why.
    b.kill9();
    let down = wait_event("member-down");
    assert_eq!(down["details"]["member"], "b", "{down:#}");
    let out = e.cmd(None, &["--json", "--config", cfg, "pg", "failover", "--explain"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let ex: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(ex["explanation"]["candidate"].is_null(), "{ex:#}");
    let why = ex["explanation"]["rejections"].to_string();
    assert!(why.contains("unhealthy") && why.contains("never-promote"), "{why}");
    let out = e.cmd(None, &["--json", "--config", cfg, "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["postgres"][0]["problems"].to_string().contains("member b unreachable"), "{v:#}");

    // Then the primary, in maintenance mode: nothing is done, and it says so.
    daemon.ok(&["pg", "pause"]);
    primary.kill9();
    let held = wait_event("paused-primary-down");
    assert!(held["message"].as_str().unwrap().contains("resume"), "{held:#}");
    // Resumed, the decision core finds nobody to promote, and says so.
    daemon.ok(&["pg", "resume"]);
    let alarm = wait_event("no-failover-candidate");
    assert!(alarm["message"].as_str().unwrap().contains("never-promote"), "{alarm:#}");
}

/// The HTTP status of `GET path` on 127.0.0.1:`port` (0 when nothing answers).
fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Runs one statement through the endpoint (TCP, as a client would).
fn through(port: u16, sql: &str) -> Result<String, String> {
    cirkel_testkit::pg::psql("127.0.0.1", port, sql)
}

/// `cirkel serve` as postgres with its own state directory, killed when
/// the test ends.
struct Daemon<'a> {
    e: &'a PgEnv,
    cfg: String,
    state: std::path::PathBuf,
    child: std::process::Child,
}

impl<'a> Daemon<'a> {
    fn start(e: &'a PgEnv, cfg: &str) -> Daemon<'a> {
        Daemon::start_with(e, cfg, &[])
    }

    fn start_with(e: &'a PgEnv, cfg: &str, env: &[(&str, &str)]) -> Daemon<'a> {
        let state = e.env.path("state");
        let mut cmd = e.cmd(None, &["--config", cfg, "serve"]);
        cmd.env("CIRKEL_STATE_DIR", &state);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon { e, cfg: cfg.to_string(), state, child }
    }

    /// Runs a command that shares the daemon's configuration and state, and
    /// returns its output whatever its exit.
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.e
            .cmd(None, &[&["--config", self.cfg.as_str()], args].concat())
            .env("CIRKEL_STATE_DIR", &self.state)
            .output()
            .unwrap()
    }

    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let out = self
            .e
            .cmd(None, &["--json", "--config", &self.cfg, "events", "--kind", kind])
            .env("CIRKEL_STATE_DIR", &self.state)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Runs a command that shares the daemon's configuration and state.
    fn ok(&self, args: &[&str]) -> String {
        let out = self
            .e
            .cmd(None, &[&["--config", self.cfg.as_str()], args].concat())
            .env("CIRKEL_STATE_DIR", &self.state)
            .output()
            .unwrap();
        assert!(out.status.success(), "cirkel {args:?} failed: {}", stderr(&out));
        stdout(&out)
    }

    /// Runs a command with CAP_NET_ADMIN that shares the daemon's
    /// configuration and state, and returns its output whatever its exit.
    fn run_net_admin(&self, args: &[&str]) -> std::process::Output {
        self.e
            .cmd_net_admin(&[&["--config", self.cfg.as_str()], args].concat())
            .env("CIRKEL_STATE_DIR", &self.state)
            .output()
            .unwrap()
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "cirkel {args:?} succeeded: {}", stdout(&out));
        stderr(&out)
    }

    fn wait_event(&self, kind: &str) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(e) = self.events(kind).pop() {
                return e;
            }
            if start.elapsed() > Duration::from_secs(90) {
                let all = std::fs::read_to_string(self.state.join("events.jsonl")).unwrap_or_default();
                panic!("timed out waiting for a {kind} event; events:\n{all}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(what: &str, f: &dyn Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(90), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A primary and two streaming standbys, described in a configuration with
/// an endpoint and health endpoints per member.
struct Ha {
    a: PgCluster,
    b: PgCluster,
    c: PgCluster,
    proxy: u16,
    proxy_ro: u16,
    api: Vec<u16>,
    config: std::path::PathBuf,
    hook_log: std::path::PathBuf,
}

impl Ha {
    fn start(e: &PgEnv) -> Ha {
        Ha::start_with_wal(e, None)
    }

    /// With the primary's WAL on its own volume (`wal`), as `initdb
    /// --waldir` puts it.
    fn start_with_wal(e: &PgEnv, wal: Option<&std::path::Path>) -> Ha {
        Ha::start_opts(e, wal, false)
    }

    /// Every member reached over TCP on 127.0.0.1, the standbys' streams
    /// too, as members on their own hosts are: what network faults cut.
    fn start_tcp(e: &PgEnv) -> Ha {
        Ha::start_opts(e, None, true)
    }

    fn start_opts(e: &PgEnv, wal: Option<&std::path::Path>, tcp: bool) -> Ha {
        // pg_rewind needs the old primary's WAL back to the fork.
        let keep = if wal.is_some() { "wal_keep_size = '32MB'" } else { "wal_keep_size = '256MB'" };
        let mut a = PgCluster::init(&[keep]);
        if let Some(wal) = wal {
            let to = wal.join("pg_wal");
            let moved = Command::new("cp").arg("-a").arg(a.data.join("pg_wal")).arg(&to).status().unwrap();
            assert!(moved.success());
            std::fs::remove_dir_all(a.data.join("pg_wal")).unwrap();
            std::os::unix::fs::symlink(&to, a.data.join("pg_wal")).unwrap();
        }
        a.start();
        a.sql("CREATE TABLE t (id serial PRIMARY KEY, note text)");
        // Standbys stream under their member names, as a deployment names
        // them (cirkel renames any that do not).
        let standby = |name: &str| {
            let s = PgCluster::standby_of(&a);
            cirkel_testkit::pg::append_conf(&s.data, &[format!("cluster_name = '{name}'")]);
            if tcp {
                // After pg_basebackup -R's own line, so it wins.
                let auto = s.data.join("postgresql.auto.conf");
                let mut text = std::fs::read_to_string(&auto).unwrap();
                text.push_str(&format!(
                    "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name={name}'\n",
                    a.port
                ));
                std::fs::write(&auto, text).unwrap();
            }
            s
        };
        let mut b = standby("b");
        b.start();
        let mut c = standby("c");
        c.start();
        let proxy = cirkel_testkit::free_port();
        let proxy_ro = cirkel_testkit::free_port();
        let api: Vec<u16> = (0..3).map(|_| cirkel_testkit::free_port()).collect();
        let hook_log = e.env.path("hooks.log");
        let member = |name: &str, pg: &PgCluster, api: u16| {
            format!(
                "[postgres.main.members.{name}]\nhost = \"{}\"\nport = {}\npgdata = \"{}\"\napi_listen = \"127.0.0.1:{api}\"\n",
                if tcp { "127.0.0.1".into() } else { pg.socket_dir.display().to_string() },
                pg.port,
                pg.data.display()
            )
        };
        let config = e.env.path("ha.toml");
        std::fs::write(
            &config,
            format!(
                "[postgres.main]\nuser = \"postgres\"\ndatabase = \"postgres\"\nproxy_listen = \"127.0.0.1:{proxy}\"\n\
                 proxy_listen_ro = \"127.0.0.1:{proxy_ro}\"\n\
                 on_role_change = \"echo $CIRKEL_EVENT $CIRKEL_MEMBER $CIRKEL_PRIMARY >> {}\"\n\
                 [postgres.main.health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nunhealthy_threshold = 3\n{}{}{}",
                hook_log.display(),
                member("a", &a, api[0]),
                member("b", &b, api[1]),
                member("c", &c, api[2])
            ),
        )
        .unwrap();
        chown_postgres(&config);
        Ha { a, b, c, proxy, proxy_ro, api, config, hook_log }
    }

    fn cfg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// Adds settings to the cluster's table, or to a member's.
    fn configure(&self, table: &str, lines: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let header = format!("[{table}]\n");
        assert!(text.contains(&header), "no [{table}] in {text}");
        std::fs::write(&self.config, text.replacen(&header, &format!("{header}{lines}\n"), 1)).unwrap();
    }
}

fn healthy(e: &PgEnv, cfg: &str) -> bool {
    e.cmd(None, &["--config", cfg, "status"]).output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn drill_failover_measures_rto_and_lost_writes_and_restores_the_cluster() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    wait_until("a healthy cluster", &|| {
        e.cmd(None, &["--config", ha.cfg(), "status"]).output().map(|o| o.status.success()).unwrap_or(false)
    });
    let out = daemon.ok(&["--json", "drill", "failover"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["killed"], "a");
    assert!(report["new_primary"] == "b" || report["new_primary"] == "c", "{report:#}");
    assert!(report["rto_s"].as_f64().unwrap() > 0.0);
    assert!(report["writes_acknowledged"].as_u64().unwrap() > 20, "{report:#}");
    assert!(report["rejoin_s"].as_f64().is_some());
    assert_eq!(daemon.events("drill").len(), 1);
    // The old primary is a streaming standby again, and takes no writes.
    assert_eq!(ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
}

#[test]
fn kill9_of_the_primary_fails_over_through_the_endpoint_and_the_old_primary_rejoins() {
    let e = PgEnv::new();
    let Ha { mut a, b, c, proxy, proxy_ro, api, config, hook_log } = Ha::start(&e);
    let cfg = config.to_str().unwrap();
    let daemon = Daemon::start(&e, cfg);
    let events = |kind: &str| daemon.events(kind);
    let state = daemon.state.clone();
    let wait = wait_until;
    wait("the endpoint", &|| through(proxy, "INSERT INTO t (note) VALUES ('before')").is_ok());
    for _ in 0..9 {
        through(proxy, "INSERT INTO t (note) VALUES ('before')").unwrap();
    }
    // Patroni-compatible health endpoints, as HAProxy would ask them.
    wait("the health endpoints", &|| http_status(api[0], "/primary") == 200);
    assert_eq!(http_status(api[1], "/primary"), 503);
    wait("b as a streaming replica", &|| http_status(api[1], "/replica") == 200);
    assert_eq!(http_status(api[0], "/replica"), 503);
    assert_eq!(http_status(api[2], "/health"), 200);
    wait("the read-only endpoint on a standby", &|| {
        through(proxy_ro, "SELECT pg_is_in_recovery()").as_deref() == Ok("t")
    });

    a.kill9();
    wait("a write through the endpoint after the kill", &|| {
        through(proxy, "INSERT INTO t (note) VALUES ('after')").is_ok()
    });
    wait("the failover event", &|| !events("failover").is_empty());
    let failover = events("failover").pop().expect("a failover event");
    let new = failover["details"]["new_primary"].as_str().unwrap().to_string();
    assert!(new == "b" || new == "c", "{failover:#}");
    let new_api = if new == "b" { api[1] } else { api[2] };
    wait("the role-change hook", &|| {
        std::fs::read_to_string(&hook_log).is_ok_and(|h| h.contains(&format!("failover {new} {new}")))
    });
    wait("the read-only endpoint on the remaining standby", &|| {
        through(proxy_ro, "SELECT pg_is_in_recovery()").as_deref() == Ok("t")
    });
    wait("the new primary's /primary", &|| http_status(new_api, "/primary") == 200);
    assert_eq!(http_status(api[0], "/primary"), 503);
    assert_eq!(failover["details"]["old_primary"], "a");
    assert!(failover["details"]["endpoint_writable_after_s"].as_f64().is_some(), "{failover:#}");
    let rows: i64 = through(proxy, "SELECT count(*) FROM t WHERE note = 'before'").unwrap().parse().unwrap();
    assert_eq!(rows, 10, "every acknowledged write before the kill is there");
    // The other standby follows the new primary.
    let other = if new == "b" { &c } else { &b };
    wait("the other standby to stream from the new primary", &|| {
        other.try_sql("SELECT count(*) FROM t WHERE note = 'after'").map(|n| n != "0").unwrap_or(false)
    });
    // Its timeline is the one it receives, not the one of its last restartpoint.
    let other_name = if new == "b" { "c" } else { "b" };
    let out = e.cmd(None, &["--json", "--config", cfg, "status"]).output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tl = |m: &str| {
        st["postgres"][0]["members"].as_array().unwrap().iter().find(|x| x["name"] == m).unwrap()["timeline"].clone()
    };
    assert_eq!(tl(&new), serde_json::json!(2), "{st:#}");
    assert_eq!(tl(other_name), serde_json::json!(2), "{st:#}");

    // The old primary comes back (as a primary, on the old timeline): it is
    // never routed to, and is rewound into a standby.
    // A setting of a's own: pg_rewind copies the new primary's configuration
    // files, and the rejoin must put a's back.
    cirkel_testkit::pg::append_conf(&a.data, &["cluster_name = 'a'".to_string()]);
    a.start_nowait();
    wait("the old primary to rejoin", &|| {
        let failed = events("rejoin-failed");
        assert!(failed.is_empty(), "{failed:#?}");
        !events("rejoined").is_empty()
    });
    wait("the old primary to be a standby", &|| a.try_sql("SELECT pg_is_in_recovery()").as_deref() == Ok("t"));
    let refused = a.try_sql("INSERT INTO t (note) VALUES ('split brain')");
    assert!(refused.is_err(), "the old primary took a write");
    through(proxy, "INSERT INTO t (note) VALUES ('later')").unwrap();
    wait("the rejoin hook", &|| {
        std::fs::read_to_string(&hook_log).is_ok_and(|h| h.contains(&format!("rejoin a {new}")))
    });
    let start = Instant::now();
    while a.try_sql("SELECT count(*) FROM t WHERE note = 'later'").as_deref() != Ok("1") {
        let log = std::fs::read_to_string(state.join("logs/rejoin-a.log")).unwrap_or_default();
        let conf = std::fs::read_to_string(a.data.join("postgresql.auto.conf")).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(60), "the rejoined standby does not replay:\n{conf}\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.sql("SHOW cluster_name"), "a", "the rejoined member keeps its own postgresql.conf");
    assert_eq!(a.sql("SHOW port"), a.port.to_string());
    let conf = std::fs::read_to_string(a.data.join("postgresql.conf")).unwrap();
    assert!(conf.contains("cluster_name = 'a'"), "{conf}");
}

#[test]
fn switchover_moves_the_endpoint_and_the_old_primary_follows() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    let cfg = ha.cfg();
    // Without a watcher, cirkel switches over by itself; wrong targets are refused first.
    wait_until("a healthy cluster", &|| healthy(&e, cfg));
    for (to, says) in [("a", "already the primary"), ("x", "no member"), ("c", "priority 0")] {
        if to == "c" {
            ha.configure("postgres.main.members.c", "priority = 0");
        }
        let err = e.fails(None, &["--config", cfg, "pg", "switchover", "--to", to]);
        assert!(err.contains(says), "{to}: {err}");
    }
    let err = e.fails(None, &["--config", cfg, "pg", "switchover", "--at", "2030-01-01T00:00:00Z"]);
    assert!(err.contains("needs a running `cirkel serve`"), "{err}");
    ha.a.sql("INSERT INTO t (note) SELECT 'before' FROM generate_series(1, 100)");
    // A setting of a's own, which the rejoin after pg_rewind must keep.
    cirkel_testkit::pg::append_conf(&ha.a.data, &["cluster_name = 'a'".to_string()]);
    let state = e.env.path("state");
    let out = e
        .cmd(None, &["--json", "--config", cfg, "pg", "switchover", "--to", "b"])
        .env("CIRKEL_STATE_DIR", &state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev["details"]["new_primary"], "b", "{ev:#}");
    assert!(ev["details"]["rejoin_s"].as_f64().is_some(), "{ev:#}");
    assert_eq!(ha.b.sql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(ha.a.sql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(ha.b.sql("SELECT count(*) FROM t WHERE note = 'before'"), "100", "no commit lost");
    assert_eq!(ha.a.sql("SHOW cluster_name"), "a", "the rejoined member keeps its own configuration");
    let conf = std::fs::read_to_string(ha.a.data.join("postgresql.conf")).unwrap();
    assert!(!conf.contains("cluster_name = 'b'"), "not b's postgresql.conf");
    assert_eq!(ha.a.sql("SHOW port"), ha.a.port.to_string());

    // With the watcher: it moves the endpoint, and every commit made through
    // the endpoint before the switchover is on the new primary.
    let daemon = Daemon::start(&e, cfg);
    wait_until("the endpoint on b", &|| {
        through(ha.proxy, "SHOW port").as_deref() == Ok(ha.b.port.to_string().as_str())
    });
    wait_until("a healthy cluster", &|| healthy(&e, cfg));
    for _ in 0..10 {
        through(ha.proxy, "INSERT INTO t (note) VALUES ('endpoint')").unwrap();
    }
    let out = daemon.run(&["--json", "pg", "switchover"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ev: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev["kind"], "switchover", "{ev:#}");
    assert_eq!(ev["details"]["old_primary"], "b");
    assert_eq!(ev["details"]["new_primary"], "a", "c has priority 0: {ev:#}");
    assert!(ev["details"]["write_pause_s"].as_f64().is_some(), "{ev:#}");
    assert_eq!(through(ha.proxy, "SHOW port").unwrap(), ha.a.port.to_string());
    assert_eq!(through(ha.proxy, "SELECT count(*) FROM t WHERE note = 'endpoint'").unwrap(), "10");
    wait_until("b streaming from a", &|| {
        ha.b.try_sql("SELECT status FROM pg_stat_wal_receiver").as_deref() == Ok("streaming")
    });
    assert!(ha.b.try_sql("INSERT INTO t (note) VALUES ('old primary')").is_err());
    // A scheduled switchover returns at once and happens at its time.
    let at = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    wait_until("a healthy cluster", &|| healthy(&e, cfg));
    let said = daemon.ok(&["pg", "switchover", "--to", "b", "--at", &at]);
    assert!(said.contains("scheduled"), "{said}");
    assert_eq!(ha.a.sql("SELECT pg_is_in_recovery()"), "f", "not before its time");
    // The first two were the one without a watcher and the one just before.
    wait_until("the scheduled switchover", &|| daemon.events("switchover").len() == 3);
    assert_eq!(daemon.events("switchover")[2]["details"]["new_primary"], "b");
    assert_eq!(through(ha.proxy, "SHOW port").unwrap(), ha.b.port.to_string());
    // The switchover drill: a canary through the endpoint sees a pause and no loss.
    wait_until("a healthy cluster", &|| healthy(&e, cfg));
    let out = daemon.ok(&["--json", "drill", "switchover", "--to", "a"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["kind"], "postgres-switchover");
    assert_eq!(report["old_primary"], "b", "{report:#}");
    assert!(report.get("killed").is_none(), "a switchover kills nobody: {report:#}");
    assert_eq!(report["new_primary"], "a", "{report:#}");
    assert_eq!(report["writes_lost"], 0, "{report:#}");
    assert!(report["write_pause_s"].as_f64().is_some(), "{report:#}");
}

#[test]
fn synchronous_mode_loses_no_acknowledged_commit_and_tracks_its_set() {
    let e = PgEnv::new();
    let mut ha = Ha::start(&e);
    ha.configure("postgres.main", "synchronous = true");
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("both standbys in the synchronous set", &|| {
        ha.a.try_sql(
            "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY application_name) FROM pg_stat_replication",
        )
        .as_deref()
            == Ok("b:quorum,c:quorum")
    });
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
    // pgbench loads the primary through the endpoint while the drill's
    // canary writes and the primary is killed.
    let bench = std::process::Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
        .arg(cirkel_testkit::pg::pg_bindir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &ha.proxy.to_string(), "-U", "postgres", "-i", "-s", "2", "-q", "postgres"])
        .output()
        .unwrap();
    assert!(bench.status.success(), "{}", String::from_utf8_lossy(&bench.stderr));
    let mut load = std::process::Command::new("setpriv")
        .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
        .arg(cirkel_testkit::pg::pg_bindir().join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &ha.proxy.to_string(), "-U", "postgres", "-c", "4", "-T", "600", "-n"])
        .arg("postgres")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let out = daemon.run(&["--json", "drill", "failover"]);
    let _ = load.kill();
    let _ = load.wait();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(out.status.success(), "{report:#} {}", stderr(&out));
    assert_eq!(report["writes_lost"], 0, "{report:#}");
    assert!(report["writes_acknowledged"].as_u64().unwrap() > 20, "{report:#}");
    let failover = daemon.wait_event("failover");
    assert_eq!(failover["details"]["synchronous"], true);
    let new = report["new_primary"].as_str().unwrap().to_string();
    let (primary, other) = if new == "b" { (&ha.b, "c") } else { (&ha.c, "b") };
    // The set regrows from nothing on the new primary.
    wait_until("the set on the new primary", &|| {
        primary.try_sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'").as_deref() == Ok("2")
    });
    // A standby that stops (the old primary, rejoined by the drill) leaves
    // the set, and writes go on.
    ha.a.kill9();
    wait_until("the set to shrink", &|| {
        daemon
            .events("synchronous-set")
            .iter()
            .any(|e| e["message"].as_str().unwrap_or("").contains(&format!("shrinks to {{{other}}}")))
    });
    through(ha.proxy, "INSERT INTO t (note) VALUES ('after shrink')").unwrap();
    assert_eq!(primary.sql("SHOW synchronous_standby_names"), format!("ANY 1 (\"{other}\")"));
}

#[test]
fn cirkel_restarted_in_the_middle_of_a_failover_finishes_it() {
    let e = PgEnv::new();
    let Ha { mut a, b, c, proxy, config, .. } = Ha::start(&e);
    let cfg = config.to_str().unwrap();
    let mut daemon = Daemon::start_with(&e, cfg, &[("CIRKEL_FAILPOINT", "pg-failover-promoted")]);
    wait_until("the endpoint", &|| through(proxy, "INSERT INTO t (note) VALUES ('before')").is_ok());
    wait_until("a healthy cluster", &|| healthy(&e, cfg));
    a.kill9();
    // cirkel stops right after promoting, before anything else.
    let start = Instant::now();
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(60), "the failpoint was never reached");
        std::thread::sleep(Duration::from_millis(50));
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(daemon.state.join("postgres-main.json")).unwrap()).unwrap();
    let new = record["failover"]["new"].as_str().expect("the failover in flight is recorded").to_string();
    let (promoted, other) = if new == "b" { (&b, &c) } else { (&c, &b) };
    assert_eq!(promoted.sql("SELECT pg_is_in_recovery()"), "f");
    assert!(daemon.events("failover").is_empty());

    // Started again, it finishes: the endpoint leads to the new primary, the
    // other standby follows it, and the old primary rejoins when it returns.
    drop(daemon);
    let daemon = Daemon::start(&e, cfg);
    let resumed = daemon.wait_event("failover-resumed");
    assert_eq!(resumed["details"]["new_primary"], new.as_str(), "{resumed:#}");
    wait_until("a write through the endpoint", &|| through(proxy, "INSERT INTO t (note) VALUES ('after')").is_ok());
    assert_eq!(through(proxy, "SHOW port").unwrap(), promoted.port.to_string());
    wait_until("the other standby to follow the new primary", &|| {
        other.try_sql("SELECT count(*) FROM t WHERE note = 'after'").is_ok_and(|n| n != "0")
    });
    a.start_nowait();
    wait_until("the old primary to rejoin", &|| !daemon.events("rejoined").is_empty());
    wait_until("the old primary to be a standby", &|| a.try_sql("SELECT pg_is_in_recovery()").as_deref() == Ok("t"));
    assert_eq!(through(proxy, "SELECT count(*) FROM t WHERE note = 'before'").unwrap(), "1");
}

#[test]
fn a_standby_beyond_the_lag_limit_is_not_promoted() {
    let e = PgEnv::new();
    let mut ha = Ha::start(&e);
    ha.configure("postgres.main", "max_lag_bytes = 65536");
    ha.configure("postgres.main.members.c", "priority = 0");
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
    let names = || {
        ha.a.try_sql("SELECT string_agg(application_name || ' ' || state, ',' ORDER BY application_name) FROM pg_stat_replication")
    };
    let start = Instant::now();
    while names().as_deref() != Ok("b streaming,c streaming") {
        let all = std::fs::read_to_string(daemon.state.join("events.jsonl")).unwrap_or_default();
        assert!(start.elapsed() < Duration::from_secs(90), "standbys not streaming by name: {:?}\n{all}", names());
        std::thread::sleep(Duration::from_millis(100));
    }
    // b's WAL receiver freezes: b answers, but receives nothing more.
    let receiver = ha.b.sql("SELECT pid FROM pg_stat_wal_receiver");
    assert!(std::process::Command::new("kill").args(["-STOP", &receiver]).status().unwrap().success());
    ha.a.sql("INSERT INTO t (note) SELECT repeat('x', 1000) FROM generate_series(1, 2000)");
    let out = e.cmd(None, &["--json", "--config", ha.cfg(), "pg", "failover", "--explain"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "nobody to promote");
    let ex: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = ex["explanation"]["rejections"].to_string();
    assert!(ex["explanation"]["candidate"].is_null(), "{ex:#}");
    assert!(why.contains("over the 65536 byte limit") && why.contains("priority 0"), "{why}");
    // The watcher has seen it too (its Patroni-style endpoint says so).
    wait_until("the watcher to see b lag", &|| http_status(ha.api[1], "/replica?lag=64kB") == 503);
    ha.a.kill9();
    let alarm = daemon.wait_event("no-failover-candidate");
    let msg = alarm["message"].as_str().unwrap();
    assert!(msg.contains("b ") && msg.contains("over the 65536 byte limit"), "{msg}");
    assert!(daemon.events("failover").is_empty());
    assert_eq!(ha.b.sql("SELECT pg_is_in_recovery()"), "t", "the lagging standby was not promoted");
    let _ = std::process::Command::new("kill").args(["-CONT", &receiver]).status();
}

#[test]
fn wrong_credentials_and_two_primaries_are_clear_errors_and_nothing_is_done() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
    let good = std::fs::read_to_string(&ha.config).unwrap();
    std::fs::write(&ha.config, good.replace("user = \"postgres\"", "user = \"nobody\"")).unwrap();
    let out = e.cmd(None, &["--config", ha.cfg(), "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(text.contains("role \"nobody\" does not exist"), "{text}");
    let err = e.fails(None, &["--config", ha.cfg(), "pg", "switchover"]);
    assert!(err.contains("no single primary"), "{err}");
    {
        let daemon = Daemon::start(&e, ha.cfg());
        let alarm = daemon.wait_event("cluster-misconfigured");
        assert!(alarm["message"].as_str().unwrap().contains("no member is a primary"), "{alarm:#}");
        std::thread::sleep(Duration::from_secs(2));
        assert!(daemon.events("failover").is_empty());
    }
    assert_eq!(ha.a.sql("SELECT pg_is_in_recovery()"), "f");

    // b promoted by hand before cirkel starts: two primaries, and no action.
    std::fs::write(&ha.config, &good).unwrap();
    std::fs::remove_dir_all(e.env.path("state")).unwrap();
    ha.b.sql("SELECT pg_promote()");
    let out = e.cmd(None, &["--config", ha.cfg(), "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("split brain"), "{}", stdout(&out));
    let daemon = Daemon::start(&e, ha.cfg());
    let alarm = daemon.wait_event("cluster-misconfigured");
    assert!(alarm["message"].as_str().unwrap().contains("2 members claim to be primary"), "{alarm:#}");
    assert!(through(ha.proxy, "SELECT 1").is_err());
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.events("failover").is_empty() && daemon.events("rejoined").is_empty());
    assert_eq!(ha.a.sql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(ha.b.sql("SELECT pg_is_in_recovery()"), "f");
}

/// Sends raw lines to the daemon's control socket and reads one reply line.
fn control_line(path: &std::path::Path, line: &[u8]) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A daemon may stop reading once a line is too long; what it says counts.
    let _ = s.write_all(line);
    let mut reply = String::new();
    std::io::BufReader::new(&s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply}"))
}

#[test]
fn the_control_socket_serves_its_user_refuses_others_and_pauses_durably() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let e = PgEnv::new();
    let mut primary = PgCluster::init(&[]);
    primary.start();
    let config = e.env.path("one.toml");
    let text = format!(
        "[postgres.main]\nuser = \"postgres\"\ndatabase = \"postgres\"\n[postgres.main.health]\ninterval = \"200ms\"\n[postgres.main.members.a]\nhost = \"{}\"\nport = {}\n",
        primary.socket_dir.display(),
        primary.port
    );
    std::fs::write(&config, &text).unwrap();
    chown_postgres(&config);
    let cfg = config.to_str().unwrap();
    let daemon = Daemon::start(&e, cfg);
    daemon.wait_event("watch-started");
    let sock = daemon.state.join("control.sock");
    wait_until("the control socket", &|| std::os::unix::net::UnixStream::connect(&sock).is_ok());
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);

    // Typed, versioned status; bad and oversized requests get an error reply.
    let st = control_line(&sock, b"{\"v\":1,\"type\":\"status\"}\n");
    assert_eq!(st["type"], "status", "{st:#}");
    assert_eq!(st["pid"], daemon.child.id(), "{st:#}");
    assert_eq!(st["clusters"], serde_json::json!(["main"]), "{st:#}");
    assert_eq!(st["v"], 1);
    for bad in [&b"hello\n"[..], b"{\"v\":1,\"type\":\"explode\"}\n", b"{\"type\":\"status\"}\n"] {
        let r = control_line(&sock, bad);
        assert_eq!(r["type"], "error", "{r:#}");
    }
    let r = control_line(&sock, &vec![b'{'; 1 << 20]);
    assert_eq!(r["type"], "error", "{r:#}");
    assert!(r["message"].as_str().unwrap().contains("longer than"), "{r:#}");
    let r = control_line(&sock, b"{\"v\":1,\"type\":\"pause\",\"cluster\":\"nope\"}\n");
    assert!(r["message"].as_str().unwrap().contains("does not watch"), "{r:#}");

    // A second daemon does not take the live one's socket.
    let out = daemon.run(&["serve"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("another cirkel serve answers"), "{}", stderr(&out));
    assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok(), "the first still answers");

    // Another user is refused even where file permissions let them reach the socket.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::hard_link(&sock, open.path().join("control.sock")).unwrap();
    std::fs::set_permissions(open.path().join("control.sock"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let copy = open.path().join("cirkel.toml");
    std::fs::write(&copy, &text).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", shared_bin().as_str()])
        .args(["--config", copy.to_str().unwrap(), "pg", "pause"])
        .env("CIRKEL_STATE_DIR", open.path())
        .env("HOME", open.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("error: cirkel serve refused") && err.contains("hint: "), "{err}");
    let refused = daemon.wait_event("control-refused");
    assert_eq!(refused["details"]["uid"], 65534, "{refused:#}");
    assert!(daemon.events("paused").is_empty(), "nobody paused nothing");

    // Pause through the socket; it outlives the daemon.
    assert!(daemon.ok(&["pg", "pause"]).contains("paused"));
    assert_eq!(daemon.events("paused").len(), 1);
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(daemon.state.join("postgres-main.json")).unwrap()).unwrap();
    assert_eq!(rec["paused"], true, "{rec:#}");
    // A switchover for later is kept in the same record.
    let said = daemon.ok(&["pg", "switchover", "--at", "2030-01-01T00:00:00Z"]);
    assert!(said.contains("scheduled"), "{said}");
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(daemon.state.join("postgres-main.json")).unwrap()).unwrap();
    assert_eq!(rec["scheduled"]["at"], "2030-01-01T00:00:00Z", "{rec:#}");
    drop(daemon);
    // Killed, it left its socket behind: the next one replaces it.
    assert!(sock.exists());
    let daemon = Daemon::start(&e, cfg);
    wait_until("the new daemon's status", &|| {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
            && control_line(&sock, b"{\"v\":1,\"type\":\"status\"}\n")["pid"] == daemon.child.id()
    });
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(daemon.state.join("postgres-main.json")).unwrap()).unwrap();
    assert!(rec["scheduled"].is_object(), "still scheduled after a restart: {rec:#}");
    primary.kill9();
    daemon.wait_event("paused-primary-down");
    assert!(daemon.ok(&["pg", "resume"]).contains("resumed"));
    assert_eq!(daemon.events("resumed").len(), 1);
}

/// Reads `/metrics` from `addr` (plain HTTP).
fn metrics_text(addr: &str) -> String {
    match http_get(addr, "/metrics") {
        Ok((200, text)) => text,
        _ => String::new(),
    }
}

/// The RPO exposure `cirkel serve` reports for cluster `main` in the main repository.
fn exposure(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with("cirkel_rpo_exposure_seconds{") && l.contains("source=\"postgres/main\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn rpo_exposure_alarms_while_archiving_is_broken_and_prometheus_reads_it() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let pg = e.archiving_cluster(&["archive_timeout = 2"]);
    pg.sql("CREATE TABLE canary (id serial PRIMARY KEY, at timestamptz DEFAULT now())");
    e.ok(Some(&pg), &["pg", "backup"]);
    let env: std::collections::HashMap<String, String> = pg.env().into_iter().collect();
    let listen = format!("127.0.0.1:{}", cirkel_testkit::free_port());
    let config = e.env.path("cirkel.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\nurl = \"{}\"\npassword_file = \"{}\"\n[state]\ndir = \"{}\"\n\
             [postgres.main]\nhost = \"{}\"\nport = {}\nuser = \"postgres\"\n\
             [server]\nlisten = \"{listen}\"\n\
             # Ten-second periods and an 8 s limit keep the test short (the plan: 5 min).\n\
             [alarms.rpo-exposure]\nperiod = \"10s\"\nthreshold = 8\n",
            e.env.repo,
            e.env.password_file.display(),
            e.env.path("state").display(),
            env["PGHOST"],
            env["PGPORT"],
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let mut serve = e.cmd(None, &["--config", cfg, "serve"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _serve = Kill(&mut serve);

    // A real Prometheus scrapes cirkel every second.
    let prom_port = cirkel_testkit::free_port();
    let prom_dir = tempfile::tempdir().unwrap();
    let prom_conf = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_conf,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cirkel\n    static_configs:\n      - targets: ['{listen}']\n"
        ),
    )
    .unwrap();
    let mut c = Command::new(cirkel_testkit::require_program("prometheus", "apt-get install prometheus"));
    c.arg(format!("--config.file={}", prom_conf.display()))
        .arg(format!("--storage.tsdb.path={}", prom_dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let _prometheus = cirkel_testkit::Service::spawn("prometheus", c);

    // Writes keep WAL flowing; archive_timeout switches segments.
    let wait_for = |what: &str, limit: Duration, mut done: Box<dyn FnMut() -> bool + '_>| {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
            pg.sql("INSERT INTO canary DEFAULT VALUES");
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait_for(
        "a small RPO exposure",
        Duration::from_secs(120),
        Box::new(|| exposure(&metrics_text(&listen)).is_some_and(|s| s < 8.0)),
    );
    promtool_check(&metrics_text(&listen));
    let prom = format!("127.0.0.1:{prom_port}");
    wait_for(
        "Prometheus answering for the RPO exposure",
        Duration::from_secs(120),
        Box::new(|| {
            http_get(&prom, "/api/v1/query?query=cirkel_rpo_exposure_seconds").is_ok_and(|(code, body)| {
                code == 200 && body.contains("\"source\":\"postgres/main\"") && body.contains("\"status\":\"success\"")
            })
        }),
    );

    // archive_command breaks: the exposure grows and the alarm fires.
    pg.sql("ALTER SYSTEM SET archive_command = 'false'");
    pg.sql("SELECT pg_reload_conf()");
    let cmd = |args: &[&str]| {
        let mut a = vec!["--config", cfg];
        a.extend_from_slice(args);
        e.json(None, &a)
    };
    let raised = |h: &serde_json::Value| h.as_array().unwrap().iter().any(|x| x["details"]["to"] == "ALARM");
    wait_for(
        "the rpo-exposure alarm",
        Duration::from_secs(180),
        Box::new(|| raised(&cmd(&["alarms", "history", "rpo-exposure"]))),
    );
    let out = e.cmd(None, &["--json", "--config", cfg, "alarms"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "cirkel alarms exits 2 while an alarm fires");
    let alarms: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let firing = alarms["alarms"].as_array().unwrap().iter().find(|a| a["alarm"] == "rpo-exposure").unwrap();
    assert_eq!(firing["state"], "ALARM", "{alarms:#}");
    assert_eq!(firing["labels"]["source"], "postgres/main");
    assert_eq!(firing["severity"], "critical");
    assert!(exposure(&metrics_text(&listen)).is_some_and(|s| s > 8.0));

    // Fixed: the backlog is archived, the exposure drops, the alarm clears.
    pg.sql("ALTER SYSTEM RESET archive_command");
    pg.sql("SELECT pg_reload_conf()");
    wait_for(
        "the rpo-exposure alarm to clear",
        Duration::from_secs(180),
        Box::new(|| {
            let h = cmd(&["alarms", "history", "rpo-exposure"]);
            h.as_array().unwrap().last().is_some_and(|x| x["details"]["from"] == "ALARM" && x["details"]["to"] == "OK")
        }),
    );
}

/// A real HTTP receiver standing in for Slack and the SMS API: Python's
/// http.server writing every POST body into `dir`, named by its path.
const RECEIVER: &str = r#"
import sys, http.server, pathlib, itertools
port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
n = itertools.count()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        name = self.path.strip("/").replace("/", "_")
        (out / f"{next(n):04}-{name}.txt").write_bytes(body)
        self.send_response(201)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// A real SMTP server (aiosmtpd) writing every message into `dir`.
const SMTP: &str = r#"
import sys, time, pathlib, itertools
from aiosmtpd.controller import Controller
port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
n = itertools.count()
class Handler:
    async def handle_DATA(self, server, session, envelope):
        (out / f"{next(n):04}.eml").write_bytes(envelope.content)
        return "250 OK"
Controller(Handler(), hostname="127.0.0.1", port=port).start()
while True:
    time.sleep(3600)
"#;

/// The files in `dir` whose name contains `part`, with their contents.
fn received(dir: &std::path::Path, part: &str) -> Vec<String> {
    let mut names: Vec<_> =
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains(part)))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

#[test]
fn a_failover_opens_an_incident_notifies_sms_slack_and_email_and_escalates_until_acknowledged() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    let inbox = tempfile::tempdir().unwrap();
    let (http_port, smtp_port) = (cirkel_testkit::free_port(), cirkel_testkit::free_port());
    let mut c = Command::new("python3");
    c.args(["-c", RECEIVER, &http_port.to_string()]).arg(inbox.path());
    let _receiver = cirkel_testkit::Service::spawn("receiver", c);
    let mut c = Command::new("python3");
    c.args(["-c", SMTP, &smtp_port.to_string()]).arg(inbox.path());
    let _smtp = cirkel_testkit::Service::spawn("aiosmtpd", c);
    assert!(cirkel_testkit::wait_for_port(http_port, Duration::from_secs(30)));
    assert!(cirkel_testkit::wait_for_port(smtp_port, Duration::from_secs(30)));
    let secret = |name: &str, value: &str| {
        let p = e.env.path(name);
        std::fs::write(&p, value).unwrap();
        chown_postgres(&p);
        p.display().to_string()
    };
    let slack_url = secret("slack.url", &format!("http://127.0.0.1:{http_port}/slack"));
    let token = secret("sms.token", "t0ken");
    let mut config = std::fs::read_to_string(&ha.config).unwrap();
    config.push_str(&format!(
        "\n[notify.slack]\nkind = \"slack\"\nurl_file = \"{slack_url}\"\n\
         [notify.sms]\nkind = \"sms\"\nbase_url = \"http://127.0.0.1:{http_port}\"\naccount_sid = \"AC1\"\n\
         auth_token_file = \"{token}\"\nfrom = \"+4500000001\"\nto = [\"+4500000002\"]\n\
         [notify.email]\nkind = \"email\"\nfrom = \"cirkel@example.org\"\nto = [\"oncall@example.org\"]\n\
         [notify.email.smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nstarttls = false\n\
         # Nobody acknowledges: after 3 s the on-call lead is texted (the plan: 5 min).\n\
         [[escalation.critical]]\nafter = \"3s\"\nreceivers = [\"sms\"]\n"
    ));
    std::fs::write(&ha.config, config).unwrap();
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    let mut a = ha.a;
    a.kill9();
    wait_until("the failover event", &|| !daemon.events("failover").is_empty());

    // The plan's §5.2 for CRITICAL: SMS, Slack and e-mail.
    wait_until("the Slack message", &|| received(inbox.path(), "slack").iter().any(|m| m.contains("failover")));
    wait_until("the SMS", &|| received(inbox.path(), "Messages.json").iter().any(|m| m.contains("Body=")));
    wait_until("the e-mail", &|| received(inbox.path(), ".eml").iter().any(|m| m.to_lowercase().contains("failover")));
    let sms = received(inbox.path(), "Messages.json");
    assert!(sms[0].contains("To=%2B4500000002") && sms[0].contains("From=%2B4500000001"), "{sms:?}");

    // An incident opened, with the failover's own steps in its timeline.
    let incidents: serde_json::Value = serde_json::from_str(&daemon.ok(&["--json", "incident", "list"])).unwrap();
    let incident = &incidents[0];
    assert_eq!(incident["priority"], "P1", "{incidents:#}");
    let id = incident["id"].to_string();
    let shown: serde_json::Value = serde_json::from_str(&daemon.ok(&["--json", "incident", "show", &id])).unwrap();
    assert!(shown["timeline"].as_array().unwrap().len() >= 3, "{shown:#}");

    // Nobody acknowledges: the escalation texts again; acknowledging stops it.
    let failover_alert = || -> serde_json::Value {
        let alerts: serde_json::Value = serde_json::from_str(&daemon.ok(&["--json", "alerts"])).unwrap();
        alerts["alerts"].as_array().unwrap().iter().find(|a| a["name"] == "failover").cloned().unwrap_or_default()
    };
    let texts = received(inbox.path(), "Messages.json").len();
    wait_until("the escalation", &|| failover_alert()["level"].as_u64().unwrap_or(0) >= 1);
    wait_until("the escalation's text", &|| received(inbox.path(), "Messages.json").len() > texts);
    // Every open alert (the member that went down is one too) acknowledged.
    let alerts: serde_json::Value = serde_json::from_str(&daemon.ok(&["--json", "alerts"])).unwrap();
    for a in alerts["alerts"].as_array().unwrap() {
        daemon.ok(&["alerts", "ack", &a["id"].to_string(), "--by", "oncall"]);
    }
    assert_eq!(failover_alert()["acknowledged_by"], "oncall");
    std::thread::sleep(Duration::from_secs(1));
    // Texts about the acknowledged failover; an alarm that starts later
    // (the alarm loop evaluates each minute) is another alert.
    let failover_texts = || {
        received(inbox.path(), "Messages.json")
            .iter()
            .filter(|m| m.contains("failover") || m.contains("Failover"))
            .count()
    };
    let texts = failover_texts();
    assert!(texts >= 2, "the failover's first text and its escalation");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(failover_texts(), texts, "no escalation after the acknowledgement");

    // The post-mortem carries the measured RTO.
    let pm = daemon.ok(&["incident", "postmortem", &id]);
    assert!(pm.contains("RTO"), "{pm}");
    let rto = daemon.events("failover")[0]["details"]["endpoint_writable_after_s"].as_f64().unwrap();
    assert!(pm.contains(&format!("{rto:.1}")) || pm.contains(&format!("{rto:.2}")), "{pm}");
}

/// Opens an incident about `source` in the daemon's store, as a real alert
/// would.
fn open_incident(state: &std::path::Path, source: &str) -> i64 {
    std::fs::create_dir_all(state).unwrap();
    let store = cirkel_notify::Store::open_in(state).unwrap();
    let id = store
        .transaction(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO incidents (priority, title, source, phase, opened_at) \
                     VALUES ('P1', 'checkout is down', '{source}', 'detection', {})",
                    chrono_now_ms()
                ),
                [],
            )
            .unwrap();
            Ok(tx.last_insert_rowid())
        })
        .unwrap();
    let _ = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(state).status();
    id
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn drill_history(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.ok(&["--json", "drill", "history", name]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn scheduled_drills_run_under_serve_keep_their_history_and_a_slow_one_alarms() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    let text = std::fs::read_to_string(&ha.config).unwrap();
    std::fs::write(
        &ha.config,
        format!(
            "{text}\n[drills.monthly]\nkind = \"failover\"\nschedule = \"0 10 * * *\"\nrto_target = \"60s\"\n\
             [drills.tight]\nkind = \"failover\"\nrto_target = \"1ms\"\n"
        ),
    )
    .unwrap();
    // The scheduler's clock starts ten seconds before 10:00 and runs 60×.
    let daemon = Daemon::start_with(
        &e,
        ha.cfg(),
        &[("CIRKEL_TEST_CLOCK_START", "2026-11-26T09:59:30Z"), ("CIRKEL_TEST_CLOCK_SPEED", "60")],
    );
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    let start = Instant::now();
    let runs = loop {
        let h = drill_history(&daemon, "monthly");
        if h["runs"].as_array().is_some_and(|r| !r.is_empty()) {
            break h;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no scheduled run: {}", daemon.events("drill").len());
        std::thread::sleep(Duration::from_millis(500));
    };
    let run = &runs["runs"][0];
    assert_eq!(run["outcome"], "passed", "{runs:#}");
    assert_eq!(run["kind"], "failover");
    assert_eq!(run["target"], "main");
    assert!(run["rto_s"].as_f64().unwrap() > 0.0);
    assert_eq!(run["rto_target_s"], 60.0);
    assert_eq!(runs["drills"][0]["runs"], 1);
    wait_until("a healthy cluster again", &|| healthy(&e, ha.cfg()));
    // By hand, against a target no failover meets: recorded as over its
    // target, and told at high severity (what the notification routes carry).
    let out = daemon.run(&["drill", "run", "tight"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let tight = drill_history(&daemon, "tight");
    assert_eq!(tight["runs"][0]["outcome"], "over-target", "{tight:#}");
    let told = daemon.events("drill").into_iter().find(|e| e["details"]["name"] == "tight").unwrap();
    assert_eq!(told["severity"], "high", "{told:#}");
    assert!(told["message"].as_str().unwrap().contains("SLOWER"), "{told:#}");
    // The history of every drill, with the worst run and the trend.
    let all: serde_json::Value = serde_json::from_str(&daemon.ok(&["--json", "drill", "history"])).unwrap();
    assert!(all["drills"].as_array().unwrap().len() >= 2, "{all:#}");
}

#[test]
fn a_guardrail_skips_a_drill_while_an_incident_is_open_and_aborts_one_when_something_real_happens() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    let text = std::fs::read_to_string(&ha.config).unwrap();
    // Every two minutes of a clock that runs 60×: every two seconds.
    std::fs::write(&ha.config, format!("{text}\n[drills.often]\nkind = \"failover\"\nschedule = \"*/2 * * * *\"\n"))
        .unwrap();
    let state = e.env.path("state");
    let incident = open_incident(&state, "http/checkout");
    let daemon = Daemon::start_with(
        &e,
        ha.cfg(),
        &[("CIRKEL_TEST_CLOCK_START", "2026-11-26T09:59:50Z"), ("CIRKEL_TEST_CLOCK_SPEED", "60")],
    );
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    let skipped = daemon.wait_event("drill-skipped");
    assert!(skipped["message"].as_str().unwrap().contains("checkout is down"), "{skipped:#}");
    assert_eq!(drill_history(&daemon, "often")["runs"][0]["outcome"], "skipped");
    // The incident is resolved: the next slot runs the drill.
    daemon.ok(&["incident", "resolve", &incident.to_string()]);
    let lock = state.join("drill.lock");
    wait_until("a drill holding its lock", &|| std::fs::File::open(&lock).is_ok_and(|f| f.try_lock().is_err()));
    // Something real starts elsewhere while it runs: the drill stops, its
    // fault is undone, and the incident is not the drill's.
    open_incident(&state, "http/checkout");
    let aborted = daemon.wait_event("drill-aborted");
    assert!(aborted["message"].as_str().unwrap().contains("checkout is down"), "{aborted:#}");
    let h = drill_history(&daemon, "often");
    let runs = h["runs"].as_array().unwrap();
    assert!(runs.iter().any(|r| r["outcome"] == "aborted"), "{h:#}");
    // The killed primary was started again and cirkel serve rejoins it.
    wait_until("a healthy cluster after the aborted drill", &|| healthy(&e, ha.cfg()));
}

#[test]
fn a_drill_killed_in_the_middle_has_its_fault_undone_by_the_next_start() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
    let state = daemon.state.clone();
    let mut drill = e
        .cmd(None, &["--config", ha.cfg(), "drill", "failover", "--name", "monthly"])
        .env("CIRKEL_STATE_DIR", &state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The drill has killed the primary and cirkel serve failed over: the
    // drill is killed before it starts the old primary again.
    daemon.wait_event("failover");
    assert!(state.join("drill-fault.json").exists(), "the fault is on record until undone");
    drill.kill().unwrap();
    drill.wait().unwrap();
    assert!(ha.a.try_sql("SELECT 1").is_err(), "the killed primary stays down");
    drop(daemon);
    // The next start finds the fault, undoes it, and records the drill.
    let daemon = Daemon::start(&e, ha.cfg());
    let aborted = daemon.wait_event("drill-aborted");
    assert!(aborted["message"].as_str().unwrap().contains("started again"), "{aborted:#}");
    assert!(!state.join("drill-fault.json").exists());
    assert_eq!(drill_history(&daemon, "monthly")["runs"][0]["outcome"], "aborted");
    wait_until("the old primary rejoined", &|| ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref() == Ok("t"));
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
}

#[test]
fn a_hung_primary_sigstop_is_failed_over_and_rewound_once_it_continues() {
    let e = PgEnv::new();
    let ha = Ha::start(&e);
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
    // A WAL that shares a large disk is never filled.
    let err = daemon.fails(&["drill", "failover", "--fault", "disk-full"]);
    assert!(err.contains("its own volume") && err.contains("MiB free"), "{err}");
    assert_eq!(ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref(), Ok("f"), "nothing was done");
    let out = daemon.ok(&["--json", "drill", "failover", "--fault", "stop"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["stopped"], "a", "{report:#}");
    assert!(report.get("killed").is_none(), "{report:#}");
    assert!(report["rto_s"].as_f64().unwrap() > 0.0);
    // Continued, it came back as an old primary and was rewound.
    assert_eq!(ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
    assert!(!daemon.state.join("drill-fault.json").exists());
    let h = drill_history(&daemon, "failover");
    assert_eq!(h["runs"][0]["outcome"], "passed", "{h:#}");
}

/// The second region kept current: a continuous copy (what `cirkel serve`
/// runs for `continuous = true`) carries the base backup and every archived
/// segment as it lands, so when the first region is lost a restore from
/// the second one alone has the commits made after the backup, without any
/// copy having been scheduled.
#[test]
fn a_continuous_copy_carries_the_wal_to_the_second_region() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let dr = e.env.path("dr-repo").display().to_string();
    e.ok(None, &["repo", "init", "--repo", &dr, "--copy-keys-from", &e.env.repo]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup"]);
    let state = e.env.path("state");
    std::fs::create_dir_all(&state).unwrap();
    chown_postgres(&state);
    let mut follower = e
        .cmd(None, &["repo", "copy", "--to", &dr, "--follow", "--interval", "200ms"])
        .env("CIRKEL_STATE_DIR", &state)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    insert_rows(&pg, 1, 30);
    switch_and_archive(&pg);
    // Every object of the main repository's WAL archive reaches the second.
    let names = |root: &str| -> std::collections::BTreeSet<String> {
        walkdir(&std::path::Path::new(root).join("streams"))
            .into_iter()
            .filter_map(|p| p.strip_prefix(root).ok().map(|r| r.display().to_string()))
            .collect()
    };
    let start = Instant::now();
    while !names(&e.env.repo).is_subset(&names(&dr)) {
        assert!(start.elapsed() < Duration::from_secs(60), "the WAL never reached the second region");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join(cirkel_repo::follow::record_name(&dr))).unwrap()).unwrap();
    assert!(record["caught_up"].is_string(), "{record}");
    drop(pg);
    assert_eq!(restore_from_second_region(&e, &dr).sql("SELECT count(*) FROM t"), "30");
}

/// The first region lost: `cirkel recover --from dr --no-start` rebuilds
/// PostgreSQL (to the newest archived commit), Redis and a file set on this
/// host from the second repository alone, without starting them, refuses a
/// directory that holds data, and keeps a report with each step's time and
/// the data's age.
#[test]
fn recover_rebuilds_postgres_redis_and_files_from_the_second_region() {
    let e = PgEnv::new();
    e.ok(None, &["repo", "init"]);
    let dr = e.env.path("dr-repo").display().to_string();
    e.ok(None, &["repo", "init", "--repo", &dr, "--copy-keys-from", &e.env.repo]);
    let pg = e.archiving_cluster(&[]);
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    e.ok(Some(&pg), &["pg", "backup"]);
    insert_rows(&pg, 1, 30);
    switch_and_archive(&pg);
    let redis = cirkel_testkit::RedisServer::start();
    for i in 0..25 {
        redis.cli(&["SET", &format!("key:{i}"), &format!("value {i}")]);
    }
    e.ok(None, &["redis", "backup", "--host", "127.0.0.1", "--port", &redis.port.to_string()]);
    let files = e.env.path("uploads");
    std::fs::create_dir_all(files.join("a")).unwrap();
    std::fs::write(files.join("a/report.txt"), "quarterly numbers").unwrap();
    chown_postgres(&files);
    e.ok(None, &["backup", "files", files.to_str().unwrap()]);
    e.ok(None, &["repo", "copy", "--to", &dr, "--follow", "--once"]);
    drop(pg);
    drop(redis);
    std::fs::rename(e.env.path("repo"), e.env.path("repo-lost")).unwrap();

    let plan = e.json(None, &["recover", "--from", &dr, "--dry-run"]);
    let steps = plan["steps"].as_array().unwrap();
    let sources: Vec<&str> = steps.iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(sources.len(), 3, "{plan:#}");
    assert!(sources[0].starts_with("postgres/") && sources[1].starts_with("redis/127.0.0.1:"), "{plan:#}");
    assert!(sources[2].starts_with("files/"), "{plan:#}");
    assert!(plan["rpo_s"].as_f64().unwrap() < 3600.0 && plan["predicted_s"].as_f64().unwrap() > 0.0, "{plan:#}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let to = dir.path().join("rebuilt");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("precious"), "someone's data").unwrap();
    chown_postgres(dir.path());
    let state = e.env.path("state");
    let out = e
        .cmd(None, &["recover", "--from", &dr, "--to", to.to_str().unwrap()])
        .env("CIRKEL_STATE_DIR", &state)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("already holds data") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(to.join("precious")).unwrap(), "someone's data");

    let out = e
        .cmd(None, &["--json", "recover", "--from", &dr, "--to", to.to_str().unwrap(), "--force", "--no-start"])
        .env("CIRKEL_STATE_DIR", &state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v["report"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["services"], serde_json::json!([]), "--no-start starts nothing: {report:#}");
    assert!(report["rto_s"].as_f64().unwrap() > 0.0);
    assert!(report["steps"].as_array().unwrap().iter().all(|s| s["seconds"].as_f64().is_some()), "{report:#}");
    assert_eq!(std::fs::read_to_string(to.join("precious")).unwrap(), "someone's data", "nothing is overwritten");

    let dir_of = |prefix: &str| {
        std::fs::read_dir(&to)
            .unwrap()
            .flatten()
            .map(|d| d.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
    };
    // PostgreSQL: every archived commit.
    let pgdir = tempfile::tempdir().unwrap();
    let data = dir_of("postgres-").unwrap();
    let mut restored = PgCluster::adopt(pgdir, data);
    restored.start_and_wait_promoted(Duration::from_secs(120));
    assert_eq!(restored.sql("SELECT count(*) FROM t"), "30");
    // Redis: every key.
    let rdb_dir = dir_of("redis-").unwrap();
    let again = cirkel_testkit::RedisServer::start_in(Some(&rdb_dir));
    assert_eq!(again.cli(&["DBSIZE"]), "25");
    assert_eq!(again.cli(&["GET", "key:7"]), "value 7");
    // Files.
    let files_dir = dir_of("files-").unwrap();
    let report_txt = walkdir(&files_dir).into_iter().find(|p| p.ends_with("a/report.txt")).unwrap();
    assert_eq!(std::fs::read_to_string(report_txt).unwrap(), "quarterly numbers");

    // The same as a drill: rebuilt in a scratch directory, checked, removed.
    let out =
        e.cmd(None, &["--json", "drill", "region", "--from", &dr]).env("CIRKEL_STATE_DIR", &state).output().unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let drill = &v["drill"];
    assert_eq!(drill["passed"], true, "{drill:#}");
    assert_eq!(drill["scratch_removed"], true);
    let checks = drill["checks"].as_array().unwrap();
    assert_eq!(checks[0]["counts"]["postgres.public.t"], 30, "{drill:#}");
    assert_eq!(checks[1]["counts"]["keys"], 25, "{drill:#}");
    assert_eq!(checks[2]["counts"]["files"], 1, "{drill:#}");
    let out = e.cmd(None, &["--json", "events", "--kind", "drill"]).env("CIRKEL_STATE_DIR", &state).output().unwrap();
    assert!(stdout(&out).contains("region drill passed"), "{}", stdout(&out));
}

/// A tmpfs of `mb` MiB mounted on a new directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(mb: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=0755"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mount a tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr));
        chown_postgres(dir.path());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_wal_volume_stops_the_primary_a_standby_takes_over_and_the_old_one_is_freed_and_rejoins() {
    let e = PgEnv::new();
    let wal = Tmpfs::mount(160);
    let ha = Ha::start_with_wal(&e, Some(wal.0.path()));
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
    let out = daemon.ok(&["--json", "drill", "failover", "--fault", "disk-full"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["filled"], "a", "{report:#}");
    assert!(report["balloon_bytes"].as_u64().unwrap() > 0, "{report:#}");
    assert!(report["new_primary"] == "b" || report["new_primary"] == "c", "{report:#}");
    assert!(report["rto_s"].as_f64().is_some(), "{report:#}");
    // PostgreSQL stopped on the full volume, as it does.
    assert!(ha.a.log_text().contains("No space left on device"), "{}", ha.a.log_text());
    // Freed, started again and rewound into a standby; nothing left behind.
    assert_eq!(ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
    assert!(!wal.0.path().join("pg_wal/cirkel-drill-balloon").exists());
    assert!(!daemon.state.join("drill-fault.json").exists());
    let h = drill_history(&daemon, "failover");
    assert_eq!(h["runs"][0]["outcome"], "passed", "{h:#}");
}

/// The drills' nftables tables in place that match `port` (other tests'
/// drills may have theirs meanwhile).
fn drill_tables(port: u16) -> Vec<String> {
    let out = Command::new("nft").args(["list", "tables"]).output().expect("nft (apt-get install nftables)");
    assert!(out.status.success(), "nft list tables: {}", stderr(&out));
    stdout(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .filter(|t| t.starts_with("cirkel_drill_"))
        .filter(|t| {
            let rules = Command::new("nft").args(["list", "table", "inet", t]).output().unwrap();
            stdout(&rules).contains(&format!("tcp dport {port} "))
        })
        .map(String::from)
        .collect()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

/// The primary cut off the network (nftables, both ways) is failed over,
/// and once reconnected the old primary, still a primary for itself, is
/// rewound. Without CAP_NET_ADMIN the drill refuses before doing anything.
#[test]
fn a_primary_cut_off_the_network_is_failed_over_and_rewound_once_it_is_back() {
    let e = PgEnv::new();
    let ha = Ha::start_tcp(&e);
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));
    let err = daemon.fails(&["drill", "failover", "--fault", "partition"]);
    assert!(err.contains("need root") || err.contains("not permitted"), "{err}");
    assert!(!daemon.state.join("drill-fault.json").exists(), "nothing was injected, nothing is left to undo");
    assert_eq!(ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref(), Ok("f"), "nothing was done");

    let out = daemon.run_net_admin(&["--json", "drill", "failover", "--fault", "partition"]);
    let report = json_of(&out);
    assert!(out.status.success(), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["passed"], true, "{report:#}");
    assert_eq!(report["partitioned"], "a", "{report:#}");
    assert!(report["rto_s"].as_f64().unwrap() > 0.0, "{report:#}");
    assert_ne!(report["new_primary"], "a", "{report:#}");
    assert_eq!(report["writes_lost"], 0, "{report:#}");
    // Reconnected, the old primary was rewound into a standby.
    assert_eq!(ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
    assert!(drill_tables(ha.a.port).is_empty(), "the drill's rules are gone");
    assert!(!daemon.state.join("drill-fault.json").exists());
    let h = drill_history(&daemon, "failover");
    assert_eq!(h["runs"][0]["outcome"], "passed", "{h:#}");
}

/// A slow and a lossy network on the primary, and a standby cut off, are
/// ridden out: no failover, no acknowledged write lost, writes going on,
/// healthy again after. A drill killed with its fault in place leaves it
/// on record, and the next drill removes it and records the run aborted.
#[test]
fn a_slow_or_lossy_network_is_ridden_out_and_a_killed_drills_fault_is_removed() {
    let e = PgEnv::new();
    let ha = Ha::start_tcp(&e);
    let daemon = Daemon::start(&e, ha.cfg());
    wait_until("the endpoint", &|| through(ha.proxy, "SELECT 1").is_ok());
    wait_until("a healthy cluster", &|| healthy(&e, ha.cfg()));

    let out = daemon.run_net_admin(&["--json", "drill", "network", "--fault", "latency=50ms", "--hold", "5s"]);
    let r = json_of(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    assert_eq!((r["passed"].clone(), r["failed_over"].clone()), (true.into(), false.into()), "{r:#}");
    assert_eq!((r["member"].as_str(), r["fault"].as_str()), (Some("a"), Some("latency=50ms")), "{r:#}");
    assert!(r["connections_ended"].as_i64().unwrap() > 0, "the standbys' streams came back slowed: {r:#}");
    // Each write is at least one round trip through the slowed path.
    assert!(r["write_ms_during"]["p50"].as_f64().unwrap() >= 100.0, "{r:#}");
    assert!(r["writes_during"].as_u64().unwrap() > 0 && r["writes_lost"] == 0, "{r:#}");
    assert!(drill_tables(ha.a.port).is_empty());

    let out =
        daemon.run_net_admin(&["--json", "drill", "network", "--fault", "loss=10%", "--hold", "5s", "--name", "lossy"]);
    let r = json_of(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    assert_eq!((r["passed"].clone(), r["writes_lost"].clone()), (true.into(), 0.into()), "{r:#}");

    let out =
        daemon.run_net_admin(&["--json", "drill", "network", "--member", "b", "--fault", "partition", "--hold", "3s"]);
    let r = json_of(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    assert_eq!((r["passed"].clone(), r["primary_after"].clone()), (true.into(), "a".into()), "{r:#}");
    // The primary itself is not for this drill.
    let out = daemon.run_net_admin(&["drill", "network", "--fault", "partition"]);
    assert!(!out.status.success() && stderr(&out).contains("--fault partition"), "{}", stderr(&out));

    // Killed with its fault in place: the rules stay, on record.
    let mut drill = e
        .cmd_net_admin(&[
            "--config",
            ha.cfg(),
            "drill",
            "network",
            "--fault",
            "loss=5%",
            "--hold",
            "120s",
            "--name",
            "lossy",
        ])
        .env("CIRKEL_STATE_DIR", &daemon.state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let table = format!("cirkel_drill_{}", drill.id());
    wait_until("the fault in place", &|| drill_tables(ha.a.port).contains(&table));
    assert!(daemon.state.join("drill-fault.json").exists());
    drill.kill().unwrap();
    drill.wait().unwrap();
    assert!(drill_tables(ha.a.port).contains(&table), "a killed drill cannot undo its fault");
    // A drill without CAP_NET_ADMIN cannot remove it, and starts nothing on top of it.
    let err = daemon.fails(&["drill", "failover"]);
    assert!(err.contains("still in place") && err.contains(&table), "{err}");
    assert!(drill_tables(ha.a.port).contains(&table) && daemon.state.join("drill-fault.json").exists());
    assert_eq!(ha.a.try_sql("SELECT pg_is_in_recovery()").as_deref(), Ok("f"), "nothing was done");
    // The next drill removes it first, and records the killed one.
    let out = daemon.run_net_admin(&["--json", "drill", "network", "--fault", "loss=5%", "--hold", "2s"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(drill_tables(ha.a.port).is_empty());
    let aborted = daemon.wait_event("drill-aborted");
    assert!(aborted["message"].as_str().unwrap().contains("was removed"), "{aborted:#}");
    let h = drill_history(&daemon, "lossy");
    assert_eq!(h["runs"][0]["outcome"], "aborted", "{h:#}");
    assert!(h["runs"].as_array().unwrap().iter().any(|r| r["outcome"] == "passed"), "{h:#}");
    assert!(healthy(&e, ha.cfg()));
}
