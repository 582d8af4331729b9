#!/usr/bin/env bash
# The Patroni half of the PostgreSQL failover benchmark (cirkel's half is
# bench/pg-failover.sh): the leader's Patroni and postmaster killed with
# SIGKILL under pgbench load; Patroni fails over through etcd and HAProxy
# leads clients to the new leader.
#
# One etcd, three Patroni 4.1.5 nodes (PostgreSQL 15, initdb -k, loopback,
# pg_rewind and replication slots on, watchdog off; wal_keep_size 512MB as in
# bench/pg-failover.sh; free ports picked at start) and HAProxy in front with
# Patroni's documented health check (OPTIONS /primary, shutdown-sessions when
# a server is marked down). pgbench -i -s 10 through HAProxy; then for every
# run pgbench (4 clients, through HAProxy) loads the leader; two seconds in,
# bench/patroni_failover.py writes one canary row every 10 ms through HAProxy,
# kills the leader's Patroni process and then its postmaster with SIGKILL,
# measures the time to the first canary write acknowledged by another node
# (RTO) and the acknowledged canary rows missing on the new leader afterwards,
# starts the killed node's Patroni again and waits until it is a streaming
# replica (pg_rewind) and HAProxy leads to the leader. The next run kills the
# new leader. One JSON report per run in the results dir, with the keys of
# `cirkel drill failover --json` (rejoin_s counts from the kill there too;
# rejoin_after_restart_s from the restart).
#
#   MODE=default  Patroni's defaults: ttl 30, loop_wait 10, retry_timeout 10;
#                 HAProxy checks inter 3s fall 3 rise 2 (Patroni's template)
#   MODE=fast     ttl 20 (Patroni 4's minimum), loop_wait 2, retry_timeout 4;
#                 HAProxy checks inter 1s fall 2 rise 2
#
# Usage (as root; installs etcd-server and haproxy with apt-get if missing,
# and Patroni into a venv, VENV, /tmp/cirkel-bench-patroni-4.1.5 by default):
#   MODE=fast RUNS=10 bash bench/pg-failover-patroni.sh
#   bash bench/pg-failover-patroni.sh               (MODE=default RUNS=10)
# OUT=DIR puts the reports elsewhere; KEEP=1 keeps the data directories.
# A run gives up after 180 s without a new leader taking canary writes and
# 300 s without the rejoin; setup steps have their own limits. Everything it
# started is stopped on exit. About 30 s a run in fast mode, 40 s by default.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${MODE:-default}
RUNS=${RUNS:-10}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PATRONI_VERSION=4.1.5
VENV=${VENV:-/tmp/cirkel-bench-patroni-$PATRONI_VERSION}
export PATH=$PATH:/usr/sbin:/sbin
case $MODE in
default) TTL=30 LOOP_WAIT=10 RETRY_TIMEOUT=10 CHECKS="inter 3s fall 3 rise 2" ;;
fast) TTL=20 LOOP_WAIT=2 RETRY_TIMEOUT=4 CHECKS="inter 1s fall 2 rise 2" ;;
*) echo "MODE must be default or fast, not '$MODE'" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "run as root: PostgreSQL and Patroni run as postgres through setpriv" >&2; exit 2; }
[ -x "$PGBIN/postgres" ] || { echo "no PostgreSQL binaries in $PGBIN" >&2; exit 2; }
id postgres >/dev/null 2>&1 || { echo "there is no postgres user" >&2; exit 2; }

# ---- what it needs
if ! command -v etcd >/dev/null || ! command -v haproxy >/dev/null; then
    echo "== installing etcd-server and haproxy"
    # Keep the packages from starting their own services (on the default
    # ports) while they install.
    POLICY=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY=/usr/sbin/policy-rc.d
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server haproxy >/dev/null
    [ -n "$POLICY" ] && rm -f "$POLICY"
fi
if ! "$VENV/bin/patroni" --version 2>/dev/null | grep -qx "patroni $PATRONI_VERSION" ||
    ! "$VENV/bin/python" -c 'import psycopg, etcd' 2>/dev/null; then
    echo "== installing Patroni $PATRONI_VERSION into $VENV"
    rm -rf "$VENV"
    # The system Python, not one under /root: the postgres user runs Patroni.
    if ! /usr/bin/python3 -m venv "$VENV" 2>/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        rm -rf "$VENV"
        /usr/bin/python3 -m venv "$VENV"
    fi
    # etcd3 brings python-etcd (Patroni's etcd3 module uses its exceptions);
    # psycopg3 brings psycopg[binary], which the canary writer uses too.
    "$VENV/bin/pip" install -q --disable-pip-version-check --use-pep517 \
        "patroni[etcd3,psycopg3]==$PATRONI_VERSION" 'psycopg[binary]'
fi
chmod -R a+rX "$VENV"
PY=$VENV/bin/python
DRIVER=$ROOT/bench/patroni_failover.py

# ---- work dir, ports
WORK=$(mktemp -d /tmp/cirkel-bench-patroni.XXXXXX)
chmod 755 "$WORK"
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
NODES=(a b c)
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK" "$@"; }

ETCD=
HAPROXY=
DRV=
is_live() { # pid: running and not a zombie
    [ -n "$1" ] && [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*[ZX]' "/proc/$1/status" 2>/dev/null
}
cleanup() {
    local rc=$? n pid
    set +e
    trap - EXIT INT TERM
    [ -n "$DRV" ] && kill "$DRV" 2>/dev/null && sleep 0.5
    pid=$(cat "$WORK/pgbench.pid" 2>/dev/null)
    is_live "$pid" && kill -9 "$pid" 2>/dev/null
    for n in "${NODES[@]}"; do
        pid=$(cat "$WORK/$n/patroni.pid" 2>/dev/null)
        is_live "$pid" && kill -9 "$pid" 2>/dev/null
        # and a Patroni the driver started but had no time to record
        for pid in $(grep -l "$WORK/$n/patroni\.ym[l]" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
            kill -9 "$pid" 2>/dev/null
        done
    done
    for n in "${NODES[@]}"; do
        pid=$(head -n1 "$WORK/$n/data/postmaster.pid" 2>/dev/null)
        if is_live "$pid"; then
            timeout 30 setpriv --reuid=postgres --regid=postgres --init-groups -- \
                "$PGBIN/pg_ctl" -D "$WORK/$n/data" -m immediate -t 20 stop >/dev/null 2>&1 ||
                kill -9 "$pid" 2>/dev/null
        fi
    done
    [ -n "$HAPROXY" ] && kill "$HAPROXY" 2>/dev/null
    [ -n "$ETCD" ] && kill "$ETCD" 2>/dev/null
    if [ "${KEEP:-0}" != 1 ]; then
        sleep 0.5
        rm -rf "$WORK"/{a,b,c}/data "$WORK/etcd"
    fi
    echo "work dir (logs, reports) $WORK" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

read -r ETCD_CLIENT ETCD_PEER PA PB PC RA RB RC HAP <<<"$(/usr/bin/python3 -c '
import socket
s = [socket.socket() for _ in range(9)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"
declare -A PGPORT=([a]=$PA [b]=$PB [c]=$PC) RESTPORT=([a]=$RA [b]=$RB [c]=$RC)

# ---- etcd
etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" --initial-cluster-state new \
    --initial-cluster-token "cirkel-bench-$$" >"$WORK/etcd.log" 2>&1 &
ETCD=$!
disown "$ETCD"
if ! /usr/bin/python3 - "$ETCD_CLIENT" <<'EOF'; then
import json, sys, time, urllib.request
for _ in range(300):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1) as r:
            if json.load(r).get("health") == "true":
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
    echo "etcd did not become healthy within 30 s; $WORK/etcd.log:" >&2
    tail -n 20 "$WORK/etcd.log" >&2
    exit 1
fi

# ---- Patroni
for n in "${NODES[@]}"; do
    mkdir -p "$WORK/$n/sock" "$WORK/$n/pglog"
    cat >"$WORK/$n/patroni.yml" <<EOF
scope: cirkel-bench
namespace: /cirkel-bench/
name: $n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${RESTPORT[$n]}
  connect_address: 127.0.0.1:${RESTPORT[$n]}
etcd3:
  hosts: 127.0.0.1:$ETCD_CLIENT
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 50
        shared_buffers: 64MB
        wal_keep_size: 512MB
  initdb:
    - data-checksums
    - encoding: UTF8
    - locale: C
postgresql:
  listen: 127.0.0.1:${PGPORT[$n]}
  connect_address: 127.0.0.1:${PGPORT[$n]}
  data_dir: $WORK/$n/data
  bin_dir: $PGBIN
  pgpass: $WORK/$n/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: $WORK/$n/sock
    logging_collector: 'on'
    log_directory: $WORK/$n/pglog
    log_filename: postgresql-%Y%m%d-%H%M%S.log
    log_line_prefix: '%m [%p] '
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
watchdog:
  mode: 'off'
EOF
    cat >"$WORK/$n/node.json" <<EOF
{"pg_port": ${PGPORT[$n]}, "rest_port": ${RESTPORT[$n]}}
EOF
done
cat >"$WORK/bench.json" <<EOF
{"work": "$WORK", "pgbin": "$PGBIN", "venv": "$VENV", "mode": "$MODE", "haproxy_port": $HAP,
 "nodes": {"a": $(cat "$WORK/a/node.json"), "b": $(cat "$WORK/b/node.json"), "c": $(cat "$WORK/c/node.json")}}
EOF
chown -R postgres:postgres "$WORK"
start_patroni() { # node; run straight through setpriv so that $! is Patroni's pid
    setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK" \
        "$VENV/bin/patroni" "$WORK/$1/patroni.yml" </dev/null >>"$WORK/$1/patroni.log" 2>&1 &
    echo $! >"$WORK/$1/patroni.pid"
    disown $! # no "Killed" job notice when a run kills it
}
driver() { # in the background, so that INT and TERM reach the trap at once
    local rc=0
    "$PY" "$DRIVER" --config "$WORK/bench.json" "$@" &
    DRV=$!
    wait "$DRV" || rc=$?
    DRV=
    return "$rc"
}
start_patroni a
driver wait --what leader --timeout 120 >/dev/null ||
    { echo "Patroni did not bootstrap a leader within 120 s" >&2; exit 1; }
start_patroni b
start_patroni c

# ---- HAProxy, as Patroni's documentation sets it up
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 200

defaults
    mode tcp
    retries 2
    timeout connect 4s
    timeout client 30m
    timeout server 30m

listen primary
    bind 127.0.0.1:$HAP
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server $CHECKS on-marked-down shutdown-sessions
EOF
for n in "${NODES[@]}"; do
    echo "    server $n 127.0.0.1:${PGPORT[$n]} maxconn 100 check port ${RESTPORT[$n]}" >>"$WORK/haproxy.cfg"
done
haproxy -c -q -f "$WORK/haproxy.cfg"
haproxy -db -f "$WORK/haproxy.cfg" </dev/null >"$WORK/haproxy.log" 2>&1 &
HAPROXY=$!
disown "$HAPROXY"

driver wait --what healthy --timeout 300 >/dev/null ||
    { echo "the Patroni cluster did not become healthy within 300 s" >&2; exit 1; }
echo "== pgbench -i -s 10 through HAProxy"
as_pg "$PGBIN/pgbench" -i -s 10 -q -h 127.0.0.1 -p "$HAP" -U postgres postgres >"$WORK/pgbench-init.log" 2>&1 ||
    { echo "pgbench -i failed:" >&2; tail -n 20 "$WORK/pgbench-init.log" >&2; exit 1; }
as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$HAP" -U postgres -d postgres \
    -c 'CREATE TABLE canary (run text, seq bigint, PRIMARY KEY (run, seq))'
driver wait --what healthy --timeout 300 >/dev/null ||
    { echo "the Patroni cluster was not healthy within 300 s after pgbench -i" >&2; exit 1; }

V_PATRONI=$("$VENV/bin/patroni" --version)
V_ETCD=$(etcd --version)
V_ETCD=${V_ETCD%%$'\n'*}
V_HAPROXY=$(haproxy -v)
V_HAPROXY=${V_HAPROXY%%$'\n'*}
V_PG=$("$PGBIN/postgres" --version)
echo "== Patroni ($MODE: ttl $TTL, loop_wait $LOOP_WAIT, retry_timeout $RETRY_TIMEOUT; HAProxy $CHECKS):" \
    "$RUNS kills of the leader under pgbench load; work dir $WORK"
for run in $(seq "$RUNS"); do
    driver run --run "$run" --out "$OUT/patroni-$MODE-$run.json" ||
        { echo "run $run did not complete" >&2; exit 1; }
    driver wait --what healthy --timeout 300 >/dev/null ||
        { echo "the Patroni cluster was not healthy within 300 s after run $run" >&2; exit 1; }
done

echo
echo "versions: $V_PATRONI; $V_ETCD; $V_HAPROXY; $V_PG"
/usr/bin/python3 - "$OUT" "$MODE" "${V_PATRONI#patroni }" "$TTL" "$LOOP_WAIT" "$RETRY_TIMEOUT" "$CHECKS" <<'EOF'
import glob, json, math, statistics, sys
out, mode, version, ttl, loop_wait, retry, checks = sys.argv[1:]
reps = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/patroni-{mode}-*.json"))]
nan = float("nan")
rto = sorted(r["rto_s"] for r in reps if r["rto_s"] is not None)
p99 = rto[max(0, math.ceil(0.99 * len(rto)) - 1)] if rto else nan
rejoin = [r["rejoin_s"] for r in reps if r["rejoin_s"] is not None]
after = [r["rejoin_after_restart_s"] for r in reps if r.get("rejoin_after_restart_s") is not None]
med = lambda xs: statistics.median(xs) if xs else nan
print()
print("| endpoint | kills | RTO median | RTO p99 (= max) | lost acked writes | rejoin median | passed |")
print("|---|---|---|---|---|---|---|")
print(f"| Patroni {version} + etcd + HAProxy ({mode}: ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry}; "
      f"checks {checks}) | {len(reps)} | {med(rto):.2f} s | {p99:.2f} s | "
      f"{sum(r['writes_lost'] for r in reps)} of {sum(r['writes_acknowledged'] for r in reps)} | "
      f"{med(rejoin):.2f} s ({med(after):.2f} s after the restart) | {sum(r['passed'] for r in reps)} of {len(reps)} |")
EOF
