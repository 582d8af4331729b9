//! PostgreSQL passwords given in a connection string reach pg_dump and
//! pg_restore in their environment, never in their arguments, which every
//! local user can read in `/proc/*/cmdline`.

mod common;

use std::os::unix::fs::PermissionsExt;

use cirkel_testkit::pg::PgCluster;
use common::*;

/// A directory of PostgreSQL programs that record their arguments (and
/// whether `PGPASSWORD` is set) in `log`, then run the real ones.
fn recording_bindir(env: &Env, log: &std::path::Path) -> std::path::PathBuf {
    let dir = env.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    for program in ["pg_dump", "pg_restore"] {
        let path = dir.join(program);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"$0 $* PGPASSWORD=${{PGPASSWORD:+set}}\" >> '{}'\nexec /usr/lib/postgresql/15/bin/{program} \"$@\"\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

#[test]
fn a_password_in_the_connection_string_stays_out_of_program_arguments() {
    let mut env = Env::new();
    env.init();
    let mut pg = PgCluster::init(&[]);
    pg.start();
    let secret = "pg-secret-6a1f03";
    // `dumper` must log in with its password.
    let hba = pg.data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all dumper scram-sha-256\n{rules}")).unwrap();
    pg.sql(&format!("CREATE ROLE dumper LOGIN PASSWORD '{secret}'"));
    pg.sql("GRANT CREATE ON SCHEMA public TO dumper");
    pg.sql("SET ROLE dumper; CREATE TABLE public.notes AS SELECT g AS id FROM generate_series(1, 100) g");
    pg.sql("SELECT pg_reload_conf()");
    let log = env.path("args.log");
    let bindir = recording_bindir(&env, &log);
    env.extra_env.push(("PG_BINDIR".into(), bindir.display().to_string()));
    let conninfo =
        format!("host={} port={} user=dumper dbname=postgres password={secret}", pg.socket_dir.display(), pg.port);
    env.ok(&["pg", "dump", "--table", "public.notes", "--conninfo", &conninfo]);
    pg.sql("DROP TABLE public.notes");
    env.ok(&["pg", "dump-restore", "latest", "--conninfo", &conninfo]);
    assert_eq!(pg.sql("SELECT count(*) FROM public.notes"), "100");
    // Without the password, the login is refused: it was really needed.
    let without = format!("host={} port={} user=dumper dbname=postgres", pg.socket_dir.display(), pg.port);
    let err = env.fails(&["pg", "dump", "--table", "public.notes", "--conninfo", &without]);
    assert!(!err.contains(secret), "{err}");
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert!(recorded.contains("pg_dump") && recorded.contains("pg_restore"), "{recorded}");
    assert!(!recorded.contains(secret), "a password in program arguments: {recorded}");
    assert!(recorded.lines().take(2).all(|l| l.ends_with("PGPASSWORD=set")), "{recorded}");
    pg.stop();
}
