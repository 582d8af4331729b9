#!/usr/bin/env bash
# Redis master kill -9 under write load, through real Redis Sentinel:
# Sentinel's default settings against cirkel's recommended ones, in one run.
#
# Each mode gets a fresh group: three redis-server (a master, two replicas)
# and three redis-sentinel on loopback, configured by `cirkel redis
# configure`. For every run, redis-benchmark loads the current master, then
# `cirkel drill redis-failover` writes a canary key every 10 ms through
# Sentinel discovery, kills the master with SIGKILL, and measures the time to
# the first write acknowledged by the new master, the acknowledged canary
# writes missing afterwards, and the replication bytes the promoted replica
# lacked. It then restarts the old master and waits until it replicates again.
#
#   sentinel-defaults: down-after 30 s, failover-timeout 180 s; no watcher.
#   cirkel:            down-after 1 s, failover-timeout 10 s, loss limit 1 MiB
#                      enforced by `cirkel redis watch` running beside it.
#
# Usage: bash bench/redis-failover.sh            (RUNS=10 per mode)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
MODES=${MODES:-"sentinel-defaults cirkel"}
cargo build --release -q -p cirkel
BIN=$PWD/target/release/cirkel
WORK=$(mktemp -d /tmp/cirkel-bench-redis.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
echo "work dir $WORK; results in $OUT"

pids() { cat "$WORK"/g/*.pid 2>/dev/null || true; }
stop_group() {
    for p in $(pids); do kill -9 "$p" 2>/dev/null || true; done
    [ -n "${WATCH:-}" ] && kill "$WATCH" 2>/dev/null || true
    [ -n "${LOAD:-}" ] && kill "$LOAD" 2>/dev/null || true
    WATCH= LOAD=
    [ -d "$WORK/g" ] && mv "$WORK/g" "$WORK/g-$(date +%s%N)"
    return 0
}
trap 'stop_group' EXIT

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

start_group() {
    mkdir -p "$WORK/g"
    read -r -a P <<<"$(free_ports 6)"
    NODES=("${P[@]:0:3}") SENTS=("${P[@]:3:3}")
    local i port
    for i in 0 1 2; do
        port=${NODES[$i]}
        mkdir -p "$WORK/g/data-$port"
        {
            echo "port $port"; echo "bind 127.0.0.1"; echo 'save ""'; echo "appendonly no"; echo "daemonize yes"
            echo "dir $WORK/g/data-$port"; echo "pidfile $WORK/g/node-$port.pid"; echo "logfile $WORK/g/node-$port.log"
            [ "$i" -gt 0 ] && echo "replicaof 127.0.0.1 ${NODES[0]}"
        } >"$WORK/g/node-$port.conf"
        redis-server "$WORK/g/node-$port.conf"
    done
    for port in "${SENTS[@]}"; do
        printf 'port %s\nbind 127.0.0.1\ndaemonize yes\ndir %s\npidfile %s\nlogfile %s\n' \
            "$port" "$WORK/g" "$WORK/g/node-$port.pid" "$WORK/g/node-$port.log" >"$WORK/g/node-$port.conf"
        redis-sentinel "$WORK/g/node-$port.conf"
    done
    sleep 1
}

write_config() { # mode
    local list_n list_s
    list_n=$(printf '"127.0.0.1:%s", ' "${NODES[@]}")
    list_s=$(printf '"127.0.0.1:%s", ' "${SENTS[@]}")
    {
        echo "[state]"; echo "dir = \"$WORK/state-$1\""
        echo "[redis.bench]"
        echo "members = [${list_n%, }]"
        echo "sentinels = [${list_s%, }]"
        echo "restart_command = \"redis-server $WORK/g/node-{port}.conf\""
        if [ "$1" = sentinel-defaults ]; then
            echo 'down_after = "30s"'; echo 'failover_timeout = "180s"'; echo 'on_lag = "warn"'
        fi
    } >"$WORK/cirkel-$1.toml"
    export CIRKEL_CONFIG=$WORK/cirkel-$1.toml
}

wait_healthy() {
    local i
    for i in $(seq 600); do
        if "$BIN" --json status 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
g = s["redis"][0]
ok = s["healthy"] and all(x["other_sentinels"] == 2 and x["replicas"] == 2 for x in g["sentinels"])
sys.exit(0 if ok else 1)'; then
            return 0
        fi
        sleep 0.2
    done
    echo "group not healthy after 120 s" >&2
    "$BIN" status >&2 || true
    return 1
}

master_port() { "$BIN" --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["redis"][0]["master"]["port"])'; }

for mode in $MODES; do
    echo "== $mode: $RUNS kills"
    start_group
    write_config "$mode"
    "$BIN" -q redis configure
    wait_healthy
    if [ "$mode" = cirkel ]; then
        "$BIN" -q redis watch 2>"$WORK/watch.log" &
        WATCH=$!
    fi
    for run in $(seq "$RUNS"); do
        m=$(master_port)
        redis-benchmark -h 127.0.0.1 -p "$m" -t set -d 256 -c 4 -r 100000 -n 2000000000 -q >/dev/null 2>&1 &
        LOAD=$!
        sleep 2
        # How far the replicas trail the loaded master, sampled once.
        "$BIN" --json status 2>/dev/null | python3 -c '
import json, sys
g = json.load(sys.stdin)["redis"][0]
print(max((m.get("lag_bytes") or 0) for m in g["members"]))' >"$OUT/$mode-$run.lag" || echo 0 >"$OUT/$mode-$run.lag"
        "$BIN" --json drill redis-failover --timeout 120s >"$OUT/$mode-$run.json" 2>"$OUT/$mode-$run.err" || true
        kill "$LOAD" 2>/dev/null || true
        wait "$LOAD" 2>/dev/null || true
        LOAD=
        python3 - "$OUT/$mode-$run.json" "$run" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["timeline_s"]
lag = open(sys.argv[1].replace(".json", ".lag")).read().strip()
print(f"  run {sys.argv[2]:>2}: replica lag {lag:>7} B  RTO {r['rto_s'] or float('nan'):6.2f} s  sdown {t.get('sdown_s', float('nan')):6.2f} s  "
      f"switch {t.get('switch_master_s', float('nan')):6.2f} s  lost writes {r['writes_lost']}  "
      f"lost bytes >= {r['lost_bytes_at_least']}  rejoin {r['rejoin_s'] or float('nan'):5.2f} s  passed {r['passed']}")
EOF
        wait_healthy
        sleep 1
    done
    if [ "$mode" = cirkel ]; then
        cp "$WORK/state-cirkel/events.jsonl" "$OUT/cirkel-watch-events.jsonl" 2>/dev/null || true
    fi
    stop_group
done

python3 - "$OUT" <<'EOF'
import glob, json, math, os, statistics, sys
out = sys.argv[1]
def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(xs)) - 1)
    return xs[k]
rows = {}
for mode in ("sentinel-defaults", "cirkel"):
    reps = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{mode}-*.json")) if os.path.getsize(f) > 0]
    if not reps:
        continue
    rto = [r["rto_s"] for r in reps if r["rto_s"] is not None]
    rows[mode] = dict(
        runs=len(reps), failed=sum(1 for r in reps if r["rto_s"] is None),
        rto_med=statistics.median(rto) if rto else float("nan"), rto_p99=pct(rto, 99), rto_max=max(rto, default=float("nan")),
        sdown=statistics.median([r["timeline_s"].get("sdown_s", float("nan")) for r in reps]),
        lost=sum(r["writes_lost"] for r in reps), lost_max=max(r["writes_lost"] for r in reps),
        bytes_max=max((r["lost_bytes_at_least"] or 0) for r in reps), limit=reps[0]["max_lag_bytes"],
        rejoin=statistics.median([r["rejoin_s"] for r in reps if r["rejoin_s"] is not None] or [float("nan")]),
        acked=sum(r["writes_acknowledged"] for r in reps),
        lag=[int(open(f.replace(".json", ".lag")).read().strip() or 0) for f in sorted(glob.glob(f"{out}/{mode}-*.json")) if os.path.exists(f.replace(".json", ".lag"))],
    )
print()
print("| settings | kills | replica lag under load (median / max sample) | RTO median | RTO p99 | RTO max | +sdown median | lost acked writes (total / worst run) | lost bytes, worst run | loss limit | rejoin median |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for mode, r in rows.items():
    lag = f"{statistics.median(r['lag']):.0f} / {max(r['lag'])} B" if r["lag"] else "-"
    print(f"| {mode} | {r['runs']} ({r['failed']} without failover) | {lag} | {r['rto_med']:.2f} s | {r['rto_p99']:.2f} s | {r['rto_max']:.2f} s | "
          f"{r['sdown']:.2f} s | {r['lost']} of {r['acked']} / {r['lost_max']} | {r['bytes_max']} | {r['limit']} | {r['rejoin']:.2f} s |")
if len(rows) == 2:
    a, b = rows["sentinel-defaults"], rows["cirkel"]
    print(f"\nRTO ratio, Sentinel defaults / cirkel: median {a['rto_med'] / b['rto_med']:.1f}x, p99 {a['rto_p99'] / b['rto_p99']:.1f}x")
EOF
