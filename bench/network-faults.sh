#!/usr/bin/env bash
# Network faults on a PostgreSQL cluster under pgbench load: what cirkel does
# when the primary is cut off the network, when its packets are lost or
# delayed, and when a standby is cut off.
#
# A primary and two streaming standbys (PostgreSQL 15 on loopback, every
# member and every replication stream over TCP), `cirkel serve` with a
# 200 ms health-check interval (1 s timeout, down after 3 failed checks) and
# a read-write endpoint. For every run, pgbench (4 clients through the
# endpoint) loads the cluster while one drill runs:
#   - `cirkel drill failover` (SIGKILL of the primary), the reference;
#   - `cirkel drill failover --fault partition`: every packet to and from
#     the primary's address and port dropped (nftables) until the failover is
#     done; reconnected, the old primary is rewound;
#   - `cirkel drill network --fault latency=LATENCY`, `--fault loss=LOSS`
#     on the primary, and `--member b --fault partition` (a standby cut off),
#     each held HOLD: the cluster must ride it out with no failover.
# Printed: a table per fault with medians over RUNS.
#
# Usage (as root): bash bench/network-faults.sh     (RUNS=5 HOLD=20s
#   LATENCY=50ms LOSS=10%; CIRKEL_BIN=target/debug/cirkel skips the release build;
#   FAULTS="kill partition latency loss standby-cut" to run only some)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
HOLD=${HOLD:-20s}
LATENCY=${LATENCY:-50ms}
LOSS=${LOSS:-10%}
FAULTS=${FAULTS:-kill partition latency loss standby-cut}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
command -v nft >/dev/null || { echo "nft is missing: apt-get install nftables" >&2; exit 1; }
if [ -z "${CIRKEL_BIN:-}" ]; then cargo build --release -q -p cirkel; CIRKEL_BIN=target/release/cirkel; fi
WORK=$(mktemp -d /tmp/cirkel-bench-net.XXXXXX)
chmod 755 "$WORK"
cp "$CIRKEL_BIN" "$WORK/cirkel"
BIN=$WORK/cirkel
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
chown -R postgres "$WORK"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK" "$@"; }
# The drills need CAP_NET_ADMIN for nftables, nothing else of root's.
as_pg_net() {
    setpriv --reuid=postgres --regid=postgres --init-groups --inh-caps=+net_admin --ambient-caps=+net_admin \
        -- env HOME="$WORK" "$@"
}
SERVE=
LOAD=
cleanup() {
    [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null || true
    [ -n "$SERVE" ] && kill "$SERVE" 2>/dev/null || true
    pkill -f "^$WORK/cirkel " 2>/dev/null || true
    pkill -f "pgbench -h 127.0.0.1 -p $PROXY " 2>/dev/null || true
    for n in a b c; do
        [ -f "$WORK/$n/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/$n/data" -m immediate stop >/dev/null 2>&1 || true
    done
    nft list tables 2>/dev/null | awk '/cirkel_drill_/ {print $3}' | while read -r t; do
        nft list table inet "$t" | grep -q "dport ${PA} " && nft delete table inet "$t"
    done || true
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
    as_pg "$PGBIN/pg_basebackup" -D "$WORK/$n/data" -R -X stream -c fast -h 127.0.0.1 -p "$PA" -U postgres
    echo "primary_conninfo = 'host=127.0.0.1 port=$PA user=postgres application_name=$n'" >>"$WORK/$n/data/postgresql.auto.conf"
    start_pg "$n"
done
as_pg "$PGBIN/pgbench" -i -s 10 -q -h 127.0.0.1 -p "$PA" -U postgres postgres >/dev/null 2>&1
{
    echo "[state]"; echo "dir = \"$WORK/state\""
    echo "[postgres.main]"; echo 'user = "postgres"'; echo 'database = "postgres"'
    echo "proxy_listen = \"127.0.0.1:$PROXY\""
    echo "[postgres.main.health]"; echo 'interval = "200ms"'; echo 'timeout = "1s"'; echo 'unhealthy_threshold = 3'
    for n in a b c; do
        echo "[postgres.main.members.$n]"; echo 'host = "127.0.0.1"'; echo "port = ${PORT[$n]}"
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
echo "== cirkel: network faults under pgbench load, $RUNS runs each; work dir $WORK"
# One drill under pgbench load through the endpoint: report to $OUT/<name>-<run>.json.
under_load() { # name run drill-args...
    local name=$1 run=$2
    shift 2
    as_pg "$PGBIN/pgbench" -h 127.0.0.1 -p "$PROXY" -U postgres -c 4 -T 600 -n postgres >/dev/null 2>&1 &
    LOAD=$!
    sleep 2
    as_pg_net "$BIN" --config "$WORK/cirkel.toml" --json drill "$@" >"$OUT/$name-$run.json" 2>"$OUT/$name-$run.err" || true
    kill "$LOAD" 2>/dev/null || true
    wait "$LOAD" 2>/dev/null || true
    LOAD=
    python3 - "$OUT/$name-$run.json" "$name" "$run" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
    r["passed"]
except Exception as e:
    print(f"  {sys.argv[2]} {sys.argv[3]}: no report ({e}): {open(sys.argv[1]).read().strip()}"); sys.exit(0)
nan = float("nan")
if "failed_over" in r:
    d = r.get("write_ms_during") or {}
    print(f"  {sys.argv[2]} {sys.argv[3]:>2}: failed over {r['failed_over']}  writes during p50 {d.get('p50', nan):6.1f} ms "
          f"p99 {d.get('p99', nan):7.1f} ms  pause {r['write_pause_s'] or nan:5.2f} s  lost {r['writes_lost']}  "
          f"healthy after {r['healthy_after_s'] or nan:5.2f} s  passed {r['passed']}")
else:
    print(f"  {sys.argv[2]} {sys.argv[3]:>2}: {r['old_primary']} -> {r['new_primary']}  RTO {r['rto_s'] or nan:5.2f} s  "
          f"lost {r['writes_lost']} of {r['writes_acknowledged']}  rejoin {r['rejoin_s'] or nan:5.2f} s  passed {r['passed']}")
EOF
    healthy
}
# A standby now (the failovers move the primary around).
standby() {
    { as_pg "$BIN" --config "$WORK/cirkel.toml" --json status || true; } |
        python3 -c 'import json, sys; print(next(m["name"] for c in json.load(sys.stdin)["postgres"] for m in c["members"] if m.get("role") == "standby"))'
}
for fault in $FAULTS; do
    for run in $(seq "$RUNS"); do
        case $fault in
            kill) under_load kill "$run" failover ;;
            partition) under_load partition "$run" failover --fault partition ;;
            latency) under_load latency "$run" network --fault "latency=$LATENCY" --hold "$HOLD" ;;
            loss) under_load loss "$run" network --fault "loss=$LOSS" --hold "$HOLD" ;;
            standby-cut) under_load standby-cut "$run" network --member "$(standby)" --fault partition --hold "$HOLD" ;;
            *) echo "unknown fault $fault" >&2; exit 1 ;;
        esac
    done
done
python3 - "$OUT" "$LATENCY" "$LOSS" "$HOLD" <<'EOF'
import glob, json, statistics, sys
out, latency, loss, hold = sys.argv[1:]
nan = float("nan")
def load(name):
    rs = []
    for f in sorted(glob.glob(f"{out}/{name}-*.json")):
        try:
            r = json.load(open(f))
        except Exception:
            continue
        if "passed" in r:
            rs.append(r)
    return rs
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else nan
def worst(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else nan
print()
print("| fault on the primary | runs | RTO median | RTO worst | lost acked writes | old primary streaming again (median) | passed |")
print("|---|---|---|---|---|---|---|")
for name, what in [("kill", "SIGKILL (reference)"), ("partition", "cut off the network (all packets dropped)")]:
    rs = load(name)
    if not rs:
        continue
    print(f"| {what} | {len(rs)} | {med([r['rto_s'] for r in rs]):.2f} s | {worst([r['rto_s'] for r in rs]):.2f} s | "
          f"{sum(r['writes_lost'] for r in rs)} of {sum(r['writes_acknowledged'] for r in rs)} | "
          f"{med([r['rejoin_s'] for r in rs]):.2f} s | {sum(r['passed'] for r in rs)} of {len(rs)} |")
print()
print(f"| degraded network, held {hold} | runs | failovers | canary write p50 before → during | p99 during | longest write pause (median) | lost acked writes | healthy again after (median) | passed |")
print("|---|---|---|---|---|---|---|---|---|")
for name, what in [("latency", f"primary: latency {latency} each way"), ("loss", f"primary: loss {loss} each way"),
                   ("standby-cut", "a standby cut off the network")]:
    rs = load(name)
    if not rs:
        continue
    b = med([(r.get("write_ms_before") or {}).get("p50") for r in rs])
    d = med([(r.get("write_ms_during") or {}).get("p50") for r in rs])
    d99 = med([(r.get("write_ms_during") or {}).get("p99") for r in rs])
    print(f"| {what} | {len(rs)} | {sum(r['failed_over'] for r in rs)} | {b:.1f} → {d:.1f} ms | {d99:.1f} ms | "
          f"{med([r['write_pause_s'] for r in rs]):.2f} s | {sum(r['writes_lost'] for r in rs)} of {sum(r['writes_acknowledged'] for r in rs)} | "
          f"{med([r['healthy_after_s'] for r in rs]):.2f} s | {sum(r['passed'] for r in rs)} of {len(rs)} |")
EOF
