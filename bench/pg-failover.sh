#!/usr/bin/env bash
# PostgreSQL primary killed with SIGKILL under pgbench load; cirkel serve
# fails over and the endpoint leads to the new primary.
#
# A primary and two streaming standbys (PostgreSQL 15, initdb -k, on
# loopback), `cirkel serve` with the defaults of a [postgres.NAME] table
# (or a shorter health-check interval, INTERVAL), and a read-write endpoint. For every run pgbench (4 clients, through the
# endpoint) loads the current primary; two seconds in, `cirkel drill
# failover` writes one canary row every 10 ms through the endpoint, kills the
# primary's postmaster with SIGKILL, measures the time to the first canary
# write acknowledged by the new primary and the acknowledged canary rows
# missing afterwards, starts the old primary again and waits until cirkel has
# rewound it into a streaming standby.
#
# Then SWITCHOVERS planned switchovers (`cirkel drill switchover`) under the
# same load: the longest gap between acknowledged canary writes is the write
# pause a client saw.
#
# Usage (as root): bash bench/pg-failover.sh      (RUNS=10; INTERVAL=200ms, or
# INTERVAL=default for the health-check defaults: every 1 s, 500 ms timeout;
# SYNC=1 for synchronous mode; SWITCHOVERS=5)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
INTERVAL=${INTERVAL:-200ms}
SYNC=${SYNC:-0}
SWITCHOVERS=${SWITCHOVERS:-5}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cargo build --release -q -p cirkel
WORK=$(mktemp -d /tmp/cirkel-bench-pgfo.XXXXXX)
chmod 755 "$WORK"
cp target/release/cirkel "$WORK/cirkel"
BIN=$WORK/cirkel
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
chown -R postgres "$WORK"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK" "$@"; }
SERVE=
LOAD=
cleanup() {
    [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null || true
    [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null || true
    # as_pg runs in a subshell when put in the background: stop its children by name.
    pkill -f "^$WORK/cirkel " 2>/dev/null || true
    pkill -f "pgbench -h 127.0.0.1 -p $PROXY " 2>/dev/null || true
    for n in a b c; do
        [ -f "$WORK/$n/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/$n/data" -m immediate stop >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
read -r PA PB PC PROXY <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"
declare -A PORT=([a]=$PA [b]=$PB [c]=$PC)
for n in a b c; do as_pg mkdir -p "$WORK/$n/sock"; done
as_pg "$PGBIN/initdb" -D "$WORK/a/data" -U postgres --auth=trust --data-checksums -E UTF8 --locale=C >/dev/null
cat >>"$WORK/a/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_connections = 50
shared_buffers = 64MB
wal_keep_size = '512MB'
EOF
start_pg() { # member
    as_pg "$PGBIN/pg_ctl" -D "$WORK/$1/data" -l "$WORK/$1/log" -o "-p ${PORT[$1]} -k $WORK/$1/sock" -w start >/dev/null
}
start_pg a
for n in b c; do
    as_pg "$PGBIN/pg_basebackup" -D "$WORK/$n/data" -R -X stream -c fast -h "$WORK/a/sock" -p "$PA" -U postgres
    start_pg "$n"
done
as_pg "$PGBIN/pgbench" -i -s 10 -q -h "$WORK/a/sock" -p "$PA" -U postgres postgres >/dev/null 2>&1
{
    echo "[state]"; echo "dir = \"$WORK/state\""
    echo "[postgres.main]"; echo 'user = "postgres"'; echo 'database = "postgres"'
    echo "proxy_listen = \"127.0.0.1:$PROXY\""
    if [ "$SYNC" = 1 ]; then echo "synchronous = true"; fi
    if [ "$INTERVAL" != default ]; then
        echo "[postgres.main.health]"; echo "interval = \"$INTERVAL\""; echo 'timeout = "1s"'; echo 'unhealthy_threshold = 3'
    fi
    for n in a b c; do
        echo "[postgres.main.members.$n]"; echo "host = \"$WORK/$n/sock\""; echo "port = ${PORT[$n]}"
        echo "pgdata = \"$WORK/$n/data\""
    done
} >"$WORK/cirkel.toml"
chown postgres "$WORK/cirkel.toml"
as_pg "$BIN" --config "$WORK/cirkel.toml" -q serve 2>"$WORK/serve.log" &
SERVE=$!
healthy() {
    local i
    for i in $(seq 600); do
        as_pg "$BIN" --config "$WORK/cirkel.toml" -q status >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "cluster not healthy" >&2
    as_pg "$BIN" --config "$WORK/cirkel.toml" status >&2 || true
    return 1
}
healthy
echo "== cirkel (health interval $INTERVAL): $RUNS kills of the primary under pgbench load; work dir $WORK"
# One drill (failover|switchover) under pgbench load through the endpoint;
# the report goes to $OUT/<prefix>-<run>.json and a line to stdout.
drill_under_load() { # kind prefix run
    as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$PROXY" -U postgres -c 4 -T 600 -n postgres >/dev/null 2>&1 &
    LOAD=$!
    sleep 2
    as_pg "$BIN" --config "$WORK/cirkel.toml" --json drill "$1" >"$OUT/$2-$3.json" 2>"$OUT/$2-$3.err" || true
    kill "$LOAD" 2>/dev/null || true
    wait "$LOAD" 2>/dev/null || true
    LOAD=
    python3 - "$OUT/$2-$3.json" "$1" "$3" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
nan = float("nan")
what = "write pause" if sys.argv[2] == "switchover" else "RTO"
value = r["write_pause_s"] if sys.argv[2] == "switchover" else r["rto_s"]
print(f"  {sys.argv[2]} {sys.argv[3]:>2}: {r['killed']} -> {r['new_primary']}  {what} {value or nan:5.2f} s  "
      f"lost writes {r['writes_lost']} of {r['writes_acknowledged']}  old primary streaming after {r['rejoin_s'] or nan:5.2f} s  passed {r['passed']}")
EOF
    healthy
}
for run in $(seq "$RUNS"); do drill_under_load failover cirkel "$run"; done
for run in $(seq "$SWITCHOVERS"); do drill_under_load switchover switchover "$run"; done
python3 - "$OUT" "$INTERVAL" "$SYNC" <<'EOF'
import glob, json, math, statistics, sys
def med(xs):
    return statistics.median(xs) if xs else float("nan")
reps = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/cirkel-*.json"))]
rto = sorted(r["rto_s"] for r in reps if r["rto_s"] is not None)
p99 = rto[max(0, math.ceil(0.99 * len(rto)) - 1)] if rto else float("nan")
rejoin = [r["rejoin_s"] for r in reps if r["rejoin_s"] is not None]
print()
print("| endpoint | kills | RTO median | RTO p99 (= max) | lost acked writes | rejoin median | passed |")
print("|---|---|---|---|---|---|---|")
mode = ", synchronous" if sys.argv[3] == "1" else ""
print(f"| cirkel serve (health interval {sys.argv[2]}, down after 3 failed checks{mode}) | {len(reps)} | {med(rto):.2f} s | {p99:.2f} s | "
      f"{sum(r['writes_lost'] for r in reps)} of {sum(r['writes_acknowledged'] for r in reps)} | "
      f"{statistics.median(rejoin) if rejoin else float('nan'):.2f} s | {sum(r['passed'] for r in reps)} of {len(reps)} |")
sw = [json.load(open(f)) for f in sorted(glob.glob(f"{sys.argv[1]}/switchover-*.json"))]
if sw:
    pause = sorted(r["write_pause_s"] for r in sw if r["write_pause_s"] is not None)
    print()
    print("| planned switchover | runs | write pause median | write pause max | lost acked writes | passed |")
    print("|---|---|---|---|---|---|")
    print(f"| cirkel drill switchover{mode} | {len(sw)} | {med(pause):.2f} s | {max(pause, default=float('nan')):.2f} s | "
          f"{sum(r['writes_lost'] for r in sw)} of {sum(r['writes_acknowledged'] for r in sw)} | {sum(r['passed'] for r in sw)} of {len(sw)} |")
EOF
