#!/usr/bin/env bash
# pg-rpo.sh: the data loss (RPO) when the database host is destroyed while
# pgbench loads it, with `cirkel pg stream-wal` as the only WAL path.
#
# Each round: a fresh PostgreSQL 15 cluster (as the postgres user), a fresh
# encrypted repository, `cirkel pg stream-wal --interval $INTERVAL`, a base
# backup, then pgbench (-c 2) plus a canary writer that inserts one row per
# transaction and records the wall-clock time each insert was acknowledged.
# After $LOAD_SECS the primary, the streamer and pgbench are all killed with
# SIGKILL and the data directory is deleted (the host is gone). cirkel then
# restores `--latest` from the repository alone, PostgreSQL replays, and the
# script counts the acknowledged canary rows that are missing. RPO = time
# between the first lost acknowledged commit and the kill (0 if none lost).
#
# Run (as root):  bash bench/pg-rpo.sh            ROUNDS=10 INTERVAL=1s LOAD_SECS=20 SCALE=10
#                 ROUNDS=2 LOAD_SECS=5 bash bench/pg-rpo.sh     (quick check)
set -euo pipefail
ROUNDS=${ROUNDS:-10}
INTERVAL=${INTERVAL:-1s}
LOAD_SECS=${LOAD_SECS:-20}
SCALE=${SCALE:-10}
BASE=${BASE:-/tmp/bench-rpo}
PORT=${PORT:-55442}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CIRKEL=${CIRKEL_BIN:-$ROOT/target/release/cirkel}
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -p cirkel >/dev/null)

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
cleanup() {
    pkill -9 -f "$BASE/" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$BASE"
}
trap cleanup EXIT

results=()
for round in $(seq 1 "$ROUNDS"); do
    rm -rf "$BASE"; mkdir -p "$BASE"; chown postgres: "$BASE"; chmod 755 "$BASE"
    export PGHOST=$BASE PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres PGDATA=$BASE/data
    export CIRKEL_REPO=$BASE/repo CIRKEL_PASSWORD_FILE=$BASE/pw CIRKEL_CACHE_DIR=$BASE/cache
    head -c 24 /dev/urandom | base64 > "$BASE/pw"; chown postgres: "$BASE/pw"; chmod 600 "$BASE/pw"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --data-checksums >/dev/null
    cat >> "$PGDATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BASE'
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
CONF
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$BASE/pg.log" -w start >/dev/null
    as_pg "$CIRKEL" -q repo init >/dev/null
    as_pg "$PGBIN/pgbench" -i -s "$SCALE" -q >/dev/null 2>&1
    as_pg "$PGBIN/psql" -X -q -c "CREATE TABLE canary (id int PRIMARY KEY, at timestamptz DEFAULT now())"
    as_pg "$CIRKEL" -q pg stream-wal --interval "$INTERVAL" --spool "$BASE/spool" 2>"$BASE/stream.log" &
    streamer=$!
    as_pg "$CIRKEL" -q pg backup >/dev/null
    as_pg "$PGBIN/pgbench" -c 2 -T $((LOAD_SECS + 30)) >/dev/null 2>&1 &
    pgbench=$!
    # Canary: one row per transaction; the ack time is taken after psql returns.
    : > "$BASE/acks"
    end=$(( $(date +%s) + LOAD_SECS ))
    i=0
    while [ "$(date +%s)" -lt "$end" ]; do
        i=$((i + 1))
        as_pg "$PGBIN/psql" -X -q -c "INSERT INTO canary (id) VALUES ($i)" && echo "$i $(date +%s.%N)" >> "$BASE/acks"
    done
    kill_at=$(date +%s.%N)
    postmaster=$(head -1 "$PGDATA/postmaster.pid")
    # (as_pg runs in a subshell: kill the programs themselves, not just it)
    kill -9 "$postmaster" 2>/dev/null || true
    pkill -9 -f "pg stream-wal --interval $INTERVAL --spool $BASE/spool" 2>/dev/null || true
    pkill -9 -f pg_receivewal 2>/dev/null || true
    pkill -9 -x pgbench 2>/dev/null || true
    kill -9 "$streamer" "$pgbench" 2>/dev/null || true
    # The restored server reuses the port: wait until the old one is gone.
    for _ in $(seq 100); do kill -0 "$postmaster" 2>/dev/null || break; sleep 0.1; done
    wait "$streamer" "$pgbench" 2>/dev/null || true
    rm -rf "$PGDATA"
    as_pg "$CIRKEL" -q pg restore --to "$BASE/restored" --latest >/dev/null
    echo "archive_mode = off" >> "$BASE/restored/postgresql.conf"
    as_pg "$PGBIN/pg_ctl" -D "$BASE/restored" -l "$BASE/restored.log" -w -t 300 start >/dev/null
    tries=0
    until [ "$(as_pg "$PGBIN/psql" -X -At -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
        tries=$((tries + 1))
        if [ "$tries" -gt 1200 ]; then echo "round $round: recovery did not finish"; tail -20 "$BASE/restored.log"; exit 1; fi
        sleep 0.1
    done
    max=$(as_pg "$PGBIN/psql" -X -At -c "SELECT coalesce(max(id), 0) FROM canary")
    acked=$(wc -l < "$BASE/acks")
    lost=$(awk -v m="$max" '$1 > m' "$BASE/acks" | wc -l)
    first_lost=$(awk -v m="$max" '$1 > m { print $2; exit }' "$BASE/acks")
    rpo=$(python3 -c "print(f'{max(0.0, ${kill_at} - ${first_lost:-$kill_at}):.3f}')")
    xacts=$(as_pg "$PGBIN/psql" -X -At -c "SELECT count(*) FROM pgbench_history")
    echo "RESULT round=$round interval=$INTERVAL acked=$acked restored=$max lost=$lost rpo_s=$rpo pgbench_xacts_restored=$xacts"
    results+=("$rpo")
    as_pg "$PGBIN/pg_ctl" -D "$BASE/restored" -m immediate stop >/dev/null
done
printf '%s\n' "${results[@]}" | python3 -c "
import sys
v = sorted(float(x) for x in sys.stdin)
p99 = v[min(len(v) - 1, int(round(0.99 * (len(v) - 1))))]
print(f'SUMMARY rounds={len(v)} interval=$INTERVAL rpo_median_s={v[len(v)//2]:.3f} rpo_max_s={v[-1]:.3f} rpo_p99_s={p99:.3f}')"
