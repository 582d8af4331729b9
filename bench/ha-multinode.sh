#!/usr/bin/env bash
# PostgreSQL failover across three hosts, cirkel against Patroni, in one run:
# three network namespaces on a bridge (the hosts), each with an etcd
# member, a PostgreSQL 15 member and the system's agent; the clients run in
# the root namespace. For each system, RUNS times: the primary's whole host
# is killed (link down and SIGKILL to everything on it) under pgbench (4
# clients) and a canary writing every 10 ms, then the host comes back and
# rejoins; after each, a flap: the primary's PostgreSQL frozen (SIGSTOP)
# twice for 80% of the longest freeze the system's own settings ride out.
# Then RUNS kills of the primary's postmaster alone, its host and agent
# alive. Prints one JSON line per run, then RTO median and p99, lost
# acknowledged writes, the ratios and "false failovers: N" per system:
# failovers (cirkel's `failover` events, Patroni's promotions in its logs)
# outside every fault's window, kill to healed (bench/multinode_bench.py
# has the details).
#
#   cirkel: `cirkel serve --node nI` on every host, one shared config with
#           [coordination] etcd = the three members, every other setting
#           its default; clients write through the survivors' endpoints
#   Patroni 4.1.5 + etcd + HAProxy, the fastest settings Patroni accepts
#           (ttl 20, loop_wait 2, retry_timeout 4; HAProxy inter 1s fall 2
#           rise 2), HAProxy in the root namespace; SYSTEMS=...,patroni-default
#           adds Patroni's defaults (ttl 30, loop_wait 10)
#
# Usage (as root): bash bench/ha-multinode.sh     (RUNS=10)
# SYNCHRONOUS=1 runs every system with synchronous replication (cirkel's
# synchronous = true, Patroni's synchronous_mode).
# Installs etcd-server, haproxy and iproute2 with apt-get and Patroni into a
# venv (VENV) when missing. OUT=DIR keeps the reports there; KEEP=1 keeps
# the data directories; CIRKEL_BIN=PATH measures that cirkel binary rather
# than a fresh release build. About 30 minutes with RUNS=10.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
SYSTEMS=${SYSTEMS:-cirkel,patroni-fast}
PATRONI_VERSION=4.1.5
VENV=${VENV:-/tmp/cirkel-bench-patroni-$PATRONI_VERSION}
OUT=${OUT:-$(mktemp -d /tmp/cirkel-ha-multinode.XXXXXX)}
export PATH=$PATH:/usr/sbin:/sbin
[ "$(id -u)" = 0 ] || { echo "run as root: namespaces, and PostgreSQL as postgres through setpriv" >&2; exit 2; }

if ! command -v etcd >/dev/null || ! command -v haproxy >/dev/null || ! command -v ip >/dev/null; then
    echo "== installing etcd-server, haproxy and iproute2"
    POLICY=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY=/usr/sbin/policy-rc.d
    fi
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server haproxy iproute2 >/dev/null
    [ -n "$POLICY" ] && rm -f "$POLICY"
fi
if ! "$VENV/bin/patroni" --version 2>/dev/null | grep -qx "patroni $PATRONI_VERSION" ||
    ! "$VENV/bin/python" -c 'import psycopg, etcd' 2>/dev/null; then
    echo "== installing Patroni $PATRONI_VERSION into $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --use-pep517 \
        "patroni[etcd3,psycopg3]==$PATRONI_VERSION" 'psycopg[binary]'
fi
chmod -R a+rX "$VENV"

# CIRKEL_BIN=PATH measures that binary instead of a fresh release build.
if [ -z "${CIRKEL_BIN:-}" ]; then
    cargo build --release -q -p cirkel
    CIRKEL_BIN=target/release/cirkel
fi
BIN_DIR=$(mktemp -d /tmp/cirkel-bench-bin.XXXXXX)
chmod 755 "$BIN_DIR"
cp "$CIRKEL_BIN" "$BIN_DIR/cirkel"
chmod 755 "$BIN_DIR/cirkel"
trap 'rm -rf "$BIN_DIR"' EXIT

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM," \
    "dd direct write $(dd if=/dev/zero of="$OUT/dd.tmp" bs=1M count=256 oflag=direct 2>&1 | awk -F', ' '/copied/ { print $NF }')," \
    "load $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$OUT/dd.tmp"
echo "== versions: $("$BIN_DIR/cirkel" --version); $("$VENV/bin/patroni" --version); $(etcd --version | head -n1);" \
    "$(haproxy -v | head -n1); $(/usr/lib/postgresql/15/bin/postgres --version)"
echo "== results in $OUT"
"$VENV/bin/python" bench/multinode_bench.py --cirkel "$BIN_DIR/cirkel" --patroni "$VENV" \
    --runs "$RUNS" --systems "$SYSTEMS" --out "$OUT" ${SYNCHRONOUS:+--synchronous}
