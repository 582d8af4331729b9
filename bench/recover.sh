#!/usr/bin/env bash
# recover.sh: `cirkel recover --from dr` of a large PostgreSQL database plus
# Redis from the second repository on this machine, step by step, against
# the target of <= 10 min end to end (the plan's RTO for a region: 30 min).
#
# Set-up (not timed as part of the recovery, but reported): a PostgreSQL 15
# primary (as the postgres user, in BASE, on a free loopback port) archiving
# its WAL into a local main repository (archive_command = cirkel wal-push);
# a second local repository `dr` made with `repo init --copy-keys-from` and
# configured as [repositories.dr] continuous = true; `pgbench -i -s SCALE`
# (server-side generation; the load's own WAL is not archived: recovery
# starts at the base backup taken after it); `cirkel pg backup`; pgbench for
# LOAD_SECS so that WAL must be replayed; a canary row as the last commit;
# a Redis server with KEYS keys and `cirkel redis backup`. Then the
# originals are stopped, everything is copied with `cirkel repo copy --to
# dr`, and the first region is destroyed: the original data directory, the
# Redis directory and the main repository are deleted.
#
# Timed: `cirkel --json recover --from dr --to BASE/rebuilt`, run as root as
# an operator would. Printed: each step's seconds from its report (restore
# of each source, then PostgreSQL's replay and promotion, Redis's load), its
# RTO and RPO, the command's wall time, and checks of what came back
# (pgbench_history rows and the canary on the recovered primary, Redis
# keys). The peer comparison for restores is bench/pg-vs-pgbackrest.sh.
#
# Run (as root):  bash bench/recover.sh                 SCALE=680 (about 10 GB on disk)
#                 SCALE=50 LOAD_SECS=20 bash bench/recover.sh      (quick check)
# Other knobs: KEYS=200000, BASE=/tmp/bench-recover, MIN_FREE_GB=15 (the
# script refuses to start when the run would leave less free), KEEP=1 keeps
# BASE, CIRKEL_BIN=PATH SKIP_BUILD=1 measures that binary.
set -euo pipefail
SCALE=${SCALE:-680}
LOAD_SECS=${LOAD_SECS:-60}
KEYS=${KEYS:-200000}
BASE=${BASE:-/tmp/bench-recover}
MIN_FREE_GB=${MIN_FREE_GB:-15}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CIRKEL=${CIRKEL_BIN:-$ROOT/target/release/cirkel}
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -p cirkel >/dev/null)
CIRKEL=$(realpath "$CIRKEL")
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gib() { awk -v b="$1" 'BEGIN { printf "%.2f GiB", b / 2^30 }'; }

# Room at the peak (set-up): the data directory, its WAL (max_wal_size),
# and the two repositories (pgbench's pages compress well: REPO_RATIO of the
# data each); the recovery needs less, as the original data directory and
# the main repository are gone by then. A scale-1 pgbench is 15.6 MiB.
REPO_RATIO=${REPO_RATIO:-0.25}
need_gb=$(awk -v s="$SCALE" -v r="$REPO_RATIO" 'BEGIN { d = s * 15.6 / 1024; printf "%d", d * (1 + 2 * r) + 3 }')
avail_gb=$(df -BG --output=avail "$(dirname "$BASE")" | tail -1 | tr -dc 0-9)
if ((avail_gb - need_gb < MIN_FREE_GB)); then
    fit=$(awk -v a="$avail_gb" -v m="$MIN_FREE_GB" -v r="$REPO_RATIO" 'BEGIN { printf "%d", (a - m - 3) / (1 + 2 * r) * 1024 / 15.6 }')
    echo "not enough room: SCALE=$SCALE needs about $need_gb GB, $avail_gb GB free, $MIN_FREE_GB GB must stay free;" \
        "the largest scale that fits is about SCALE=$fit" >&2
    exit 1
fi

pids=()
cleanup() {
    set +e
    for d in "$BASE"/rebuilt/postgres-* "$BASE/data"; do
        [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1
    done
    for f in "$BASE"/rebuilt/redis-*/redis.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null
    done
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    sleep 1
    [ "${KEEP:-0}" = 1 ] || rm -rf "$BASE"
}
trap cleanup EXIT

rm -rf "$BASE"; mkdir -p "$BASE"; chown postgres: "$BASE"; chmod 755 "$BASE"
PORT=$(free_port)
RPORT=$(free_port)
CONF=$BASE/cirkel.toml
export PGHOST=$BASE PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres PGDATA=$BASE/data
export CIRKEL_STATE_DIR=$BASE/state CIRKEL_CACHE_DIR=$BASE/cache
unset CIRKEL_REPO CIRKEL_PASSWORD_FILE CIRKEL_CONFIG
head -c 24 /dev/urandom | base64 > "$BASE/pw"; chown postgres: "$BASE/pw"; chmod 600 "$BASE/pw"
cat >"$CONF" <<CONF
[repository]
url = "$BASE/main"
password_file = "$BASE/pw"

[repositories.dr]
url = "$BASE/dr"
password_file = "$BASE/pw"
continuous = true
CONF
chmod 644 "$CONF"
cz() { "$CIRKEL" --config "$CONF" "$@"; }
pgz() { as_pg "$CIRKEL" --config "$CONF" "$@"; }
psql_v() { as_pg "$PGBIN/psql" -X -Atq -c "$1"; }

echo "# $(date -u +%FT%TZ) $(uname -srm)"
echo "== machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM," \
    "dd direct write $(dd if=/dev/zero of="$BASE/dd.tmp" bs=1M count=256 oflag=direct 2>&1 | awk -F', ' '/copied/ { print $NF }')," \
    "load $(cut -d' ' -f1-3 /proc/loadavg), $avail_gb GB free"
rm -f "$BASE/dd.tmp"
echo "== versions: $("$CIRKEL" --version) ($CIRKEL); $("$PGBIN/postgres" --version); $(redis-server --version | cut -d' ' -f1-3)"
echo "== SCALE=$SCALE LOAD_SECS=$LOAD_SECS KEYS=$KEYS"

# --- the original estate -------------------------------------------------
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --data-checksums >/dev/null
cat >> "$PGDATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BASE'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_senders = 5
shared_buffers = 512MB
maintenance_work_mem = 512MB
max_wal_size = 2GB
checkpoint_timeout = 30min
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$BASE/pg.log" -w start >/dev/null
pgz -q repo init >/dev/null
pgz -q repo init --repo dr --copy-keys-from "$BASE/main" >/dev/null

t=$(date +%s)
as_pg "$PGBIN/pgbench" -i -s "$SCALE" -I dtGvp -q >"$BASE/pgbench-init.log" 2>&1
echo "set-up: pgbench -i -s $SCALE in $(($(date +%s) - t)) s; database $(gib "$(psql_v 'SELECT pg_database_size(current_database())')")," \
    "data directory $(gib "$(du -sb "$PGDATA" | cut -f1)")"
# From here on every segment is archived into the main repository.
psql_v "ALTER SYSTEM SET archive_command = '$CIRKEL --config $CONF wal-push %p'"
psql_v "SELECT pg_reload_conf()" >/dev/null
psql_v "CHECKPOINT"
settle
t=$(date +%s)
pgz -q pg backup >/dev/null
echo "set-up: cirkel pg backup in $(($(date +%s) - t)) s"
lsn0=$(psql_v "SELECT pg_current_wal_lsn()")
as_pg "$PGBIN/pgbench" -c 4 -j 2 -T "$LOAD_SECS" >"$BASE/pgbench.log" 2>&1
echo "set-up: pgbench -c 4 -T $LOAD_SECS: $(grep -E '^tps' "$BASE/pgbench.log" | head -1)"
psql_v "CREATE TABLE canary (at timestamptz); INSERT INTO canary VALUES (clock_timestamp())"
wal=$(psql_v "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0'))")
last=$(psql_v "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql_v "SELECT pg_switch_wal()" >/dev/null
for _ in $(seq 600); do
    done_=$(psql_v "SELECT coalesce(last_archived_wal >= '$last', false) FROM pg_stat_archiver")
    [ "$done_" = t ] && break
    sleep 0.5
done
[ "$done_" = t ] || { echo "the last segment $last was not archived" >&2; exit 1; }
rows=$(psql_v "SELECT count(*) FROM pgbench_history")
canary=$(psql_v "SELECT max(at) FROM canary")
echo "set-up: $wal of WAL written after the base backup (to replay); $rows pgbench_history rows; last commit $canary"

mkdir -p "$BASE/redis"
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$BASE/redis" --save '' --appendonly no \
    --logfile "$BASE/redis/redis.log" &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
python3 - "$KEYS" <<'EOF' | redis-cli -p "$RPORT" --pipe >/dev/null
import sys
out = sys.stdout.buffer
for i in range(int(sys.argv[1])):
    k, v = f"key:{i}".encode(), (f"value {i} " * 8).encode()
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, len(v), v))
EOF
keys=$(redis-cli -p "$RPORT" dbsize)
t=$(date +%s)
pgz -q redis backup --port "$RPORT" >/dev/null
echo "set-up: $keys Redis keys, cirkel redis backup in $(($(date +%s) - t)) s"

# --- the region is lost ----------------------------------------------------
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
redis-cli -p "$RPORT" shutdown nosave >/dev/null 2>&1 || true
stopped=$(date -u +%FT%T.%3NZ)
t=$(date +%s)
pgz -q repo copy --to dr >/dev/null
echo "set-up: cirkel repo copy --to dr in $(($(date +%s) - t)) s; main $(du -sh "$BASE/main" | cut -f1), dr $(du -sh "$BASE/dr" | cut -f1)"
orig=$(du -sb "$PGDATA" | cut -f1)
rm -rf "$PGDATA" "$BASE/main" "$BASE/redis"
echo "== originals stopped at $stopped; their data ($(gib "$orig") of PostgreSQL) and the main repository deleted"

cz --json recover --from dr --dry-run >"$BASE/plan.json"
python3 - "$BASE/plan.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
for s in p["steps"]:
    print(f"plan: {s['source']:<32} {s['bytes'] / 2**30:6.2f} GiB  predicted {s['predicted_s']:.0f} s")
print(f"plan: predicted {p['predicted_s']:.0f} s, implied RPO {p['rpo_s']:.1f} s")
EOF

settle
echo "== recover (load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "\$ cirkel --json recover --from dr --to $BASE/rebuilt --timeout 30m"
t0=$(date +%s.%N)
began=$(date -u +%FT%T.%3NZ)
rc=0
cz --json recover --from dr --to "$BASE/rebuilt" --timeout 30m >"$BASE/recover.json" 2>"$BASE/recover.err" || rc=$?
wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "exit $rc, wall time $wall s (load after $(cut -d' ' -f1-3 /proc/loadavg))"
[ -s "$BASE/recover.err" ] && sed 's/^/stderr: /' "$BASE/recover.err" | tail -20
[ -s "$BASE/recover.json" ] || exit 1
python3 - "$BASE/recover.json" "$wall" <<'EOF' | tee "$BASE/summary"
import json, sys
r = json.load(open(sys.argv[1]))["recover"]
wall = float(sys.argv[2])
print("| step | data | seconds |")
print("|---|---|---|")
for s in r["steps"]:
    what = f"{s['bytes'] / 2**30:.2f} GiB" if s["bytes"] >= 2**30 else f"{s['bytes'] / 2**20:.1f} MiB"
    err = f" FAILED: {s['error']}" if s.get("error") else ""
    print(f"| restore {s['source']} | {what} | {s.get('seconds', 0):.1f}{err} |")
for v in r["services"]:
    what = {"primary": "start PostgreSQL primary (WAL replay, promotion)",
            "standby": f"clone and start standby {v.get('member')}",
            "redis": "start redis-server (RDB load)"}[v["role"]]
    extra = f"{v['keys']} keys" if v.get("keys") is not None else v["address"]
    err = f" FAILED: {v['error']}" if v.get("error") else ""
    print(f"| {what} | {extra} | {v['seconds']:.1f}{err} |")
print(f"| **total (RTO in the report)** | | **{r['rto_s']:.1f}** |")
print(f"| command's wall time | | {wall:.1f} |")
print(f"ok {r['ok']}; report's RPO {r['rpo_s']:.1f} s; target 600 s: {'within' if r['rto_s'] <= 600 else 'OVER'}; plan 1800 s")
EOF
# What came back: every commit and key?
read -r sock port < <(python3 - "$BASE/recover.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["recover"]
p = [v for v in r["services"] if v["role"] == "primary" and not v.get("error")]
print(p[0]["socket_dir"], p[0]["port"]) if p else print("- 0")
EOF
)
if [ "$port" != 0 ]; then
    got_rows=$(as_pg "$PGBIN/psql" -X -Atq -h "$sock" -p "$port" -c "SELECT count(*) FROM pgbench_history")
    got_canary=$(as_pg "$PGBIN/psql" -X -Atq -h "$sock" -p "$port" -c "SELECT max(at) FROM canary")
    lag=$(as_pg "$PGBIN/psql" -X -Atq -h "$sock" -p "$port" \
        -c "SELECT extract(epoch FROM '$canary'::timestamptz - '$got_canary'::timestamptz)")
    echo "check: pgbench_history $got_rows of $rows rows; last commit recovered $got_canary (original $canary," \
        "history lost $lag s)"
    age=$(as_pg "$PGBIN/psql" -X -Atq -h "$sock" -p "$port" \
        -c "SELECT round(extract(epoch FROM '$began'::timestamptz - '$got_canary'::timestamptz), 1)")
    echo "check: the newest recovered commit was $age s old when the recovery began (the originals stopped at $stopped)"
fi
rport=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["recover"]; print(next((v["port"] for v in r["services"] if v["role"]=="redis" and not v.get("error")), 0))' "$BASE/recover.json")
[ "$rport" != 0 ] && echo "check: Redis $(redis-cli -p "$rport" dbsize) of $keys keys"
echo "rebuilt: $(du -sh "$BASE/rebuilt" | cut -f1) on disk"
exit "$rc"
