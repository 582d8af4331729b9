#!/usr/bin/env bash
# What cirkel is for, on this machine: a PostgreSQL primary with two
# standbys, Redis with Sentinels, a web service, two repositories and the
# daemon with its dashboard (`cirkel lab up`); then a base backup, writes, a
# point-in-time restore that stops exactly between two writes, and a
# failover drill whose RTO is measured. Ends with the dashboard's URL.
#
#   bash scripts/demo.sh                  the lab demo (installs what is missing on Debian as root)
#   bash scripts/demo.sh files [DIR]      back up, verify and restore a directory (only a Rust toolchain)
#
# LAB=/some/dir puts the lab there (default /tmp/cirkel-lab); `cirkel lab down --dir "$LAB"` removes it.
# CIRKEL_BIN=/path/to/cirkel uses that binary instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = files ]; then
    shift
    cargo build --release -p cirkel
    BIN=$PWD/target/release/cirkel
    SRC=$(realpath "${1:-$PWD/crates}")
    WORK=${WORK:-$(mktemp -d /tmp/cirkel-demo.XXXXXX)}
    mkdir -p "$WORK"
    export CIRKEL_REPO=$WORK/repo CIRKEL_PASSWORD_FILE=$WORK/password
    [ -f "$CIRKEL_PASSWORD_FILE" ] || head -c 24 /dev/urandom | base64 > "$CIRKEL_PASSWORD_FILE"
    chmod 600 "$CIRKEL_PASSWORD_FILE"
    [ -f "$CIRKEL_REPO/config" ] || "$BIN" repo init
    "$BIN" backup files "$SRC" --tag demo
    "$BIN" backup files "$SRC" --tag demo
    "$BIN" snapshots
    "$BIN" repo verify --read-data
    rm -rf "$WORK/restore"
    "$BIN" restore files latest --to "$WORK/restore"
    diff -r "$SRC" "$WORK/restore$SRC"
    echo "restore of $SRC matches the source; repository: $CIRKEL_REPO"
    exit 0
fi

PG=/usr/lib/postgresql/15/bin
need=()
[ -x $PG/initdb ] || need+=(postgresql-15)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${need[*]}"
        apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "error: the lab needs ${need[*]}" >&2
        echo "hint: sudo apt-get install ${need[*]}   (or: bash scripts/demo.sh files)" >&2
        exit 1
    fi
fi
[ -n "${CIRKEL_BIN:-}" ] || command -v cargo >/dev/null || { echo "error: no cargo; hint: install Rust from https://rustup.rs" >&2; exit 1; }

if [ -z "${CIRKEL_BIN:-}" ]; then cargo build --release -p cirkel; fi
LAB=${LAB:-/tmp/cirkel-lab}
BIN=${CIRKEL_BIN:-$PWD/target/release/cirkel}
[ -f "$LAB/lab.json" ] && "$BIN" lab down --dir "$LAB"
T0=$(date +%s)
UP=$("$BIN" --json lab up --dir "$LAB")
field() { printf '%s' "$UP" | sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p"; }
URL=$(field url); USER_=$(field user); PROXY=$(field proxy)
echo "lab up and healthy in $(field ready_after_s | cut -c1-5) s: $LAB"
if [ "$(id -u)" = 0 ]; then AS=(setpriv --reuid="$USER_" --regid="$USER_" --init-groups); else AS=(); fi
C() { "${AS[@]}" "$LAB/bin/cirkel" --config "$LAB/cirkel.toml" "$@"; }
SQL() { "${AS[@]}" $PG/psql -h 127.0.0.1 -p "$1" -U postgres -d postgres -qAtX -c "$2"; }

echo "== a base backup of the primary, through the endpoint"
PGHOST=127.0.0.1 PGPORT=$PROXY PGUSER=postgres PGDATABASE=postgres C pg backup --label demo

echo "== writes: 1000 rows, a moment, 1000 more"
SQL "$PROXY" "CREATE TABLE demo (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"
SQL "$PROXY" "INSERT INTO demo (id) SELECT g FROM generate_series(1, 1000) g"
sleep 1
TARGET=$(SQL "$PROXY" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
sleep 1
SQL "$PROXY" "INSERT INTO demo (id) SELECT g FROM generate_series(1001, 2000) g"
SQL "$PROXY" "SELECT pg_switch_wal()" >/dev/null

echo "== point-in-time restore to $TARGET (between the two writes)"
R=$LAB/pitr
for _ in $(seq 1 60); do
    if C pg restore --to "$R/data" --target-time "$TARGET" >/dev/null 2>"$LAB/restore.err"; then break; fi
    rm -rf "$R"; sleep 1    # the segment with the target is archived within archive_timeout
done
[ -d "$R/data" ] || { cat "$LAB/restore.err" >&2; exit 1; }
RPORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])' 2>/dev/null || echo 55432)
printf "port = %s\narchive_mode = off\nunix_socket_directories = '%s'\ncluster_name = 'pitr'\n" "$RPORT" "$R" >> "$R/data/postgresql.conf"
"${AS[@]}" $PG/pg_ctl -D "$R/data" -l "$R/log" -w -t 120 start >/dev/null
for _ in $(seq 1 120); do [ "$(SQL "$RPORT" 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break; sleep 0.5; done
ROWS=$(SQL "$RPORT" "SELECT count(*) FROM demo")
"${AS[@]}" $PG/pg_ctl -D "$R/data" -m fast -w stop >/dev/null
rm -rf "$R"
echo "restored cluster holds $ROWS rows (the primary has 2000)"
[ "$ROWS" = 1000 ] || { echo "error: expected 1000 rows at $TARGET" >&2; exit 1; }

echo "== failover drill: kill the primary, measure, rejoin"
DRILL=$(C --json drill failover)
RTO=$(printf '%s' "$DRILL" | sed -n 's/^ *"rto_s": *\([0-9.]*\),\{0,1\}$/\1/p' | head -1)
RTO=$(printf '%.2f' "${RTO:-0}")
NEW=$(printf '%s' "$DRILL" | sed -n 's/^ *"new_primary": *"\([^"]*\)",\{0,1\}$/\1/p' | head -1)
echo "new primary: $NEW, RTO ${RTO} s"

echo
echo "Demo done in $(( $(date +%s) - T0 )) s after the build."
echo "Dashboard: $URL"
echo "Drill RTO: ${RTO} s"
echo "Remove the lab with: $BIN lab down --dir $LAB"
