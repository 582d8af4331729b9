#!/usr/bin/env bash
# PostgreSQL failover, cirkel against Patroni, in one run on the same
# machine: the same three-member PostgreSQL 15 cluster (pgbench scale 10,
# 4 pgbench clients through each system's endpoint, a canary writing every
# 10 ms), RUNS kill -9 failovers for each setting, then the ratios.
#
#   cirkel, defaults (health every 1 s, down after 3 failed checks)
#   cirkel, defaults, synchronous = true  (also SWITCHOVERS planned switchovers)
#   Patroni 4.1.5 + etcd + HAProxy, defaults (ttl 30, loop_wait 10)
#   Patroni, fastest accepted (ttl 20, loop_wait 2, retry_timeout 4)
#
# Usage (as root): bash bench/ha-vs-patroni.sh    (RUNS=10, SWITCHOVERS=5)
# Results: OUT (default /tmp/cirkel-ha-vs-patroni.*), one JSON per run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
SWITCHOVERS=${SWITCHOVERS:-5}
OUT=${OUT:-$(mktemp -d /tmp/cirkel-ha-vs-patroni.XXXXXX)}
chmod 755 "$OUT"
mkdir -p "$OUT"/{cirkel,cirkel-sync,patroni-default,patroni-fast}
echo "== results in $OUT"
OUT=$OUT/cirkel RUNS=$RUNS SWITCHOVERS=0 INTERVAL=default bash bench/pg-failover.sh
OUT=$OUT/cirkel-sync RUNS=$RUNS SWITCHOVERS=$SWITCHOVERS INTERVAL=default SYNC=1 bash bench/pg-failover.sh
OUT=$OUT/patroni-default RUNS=$RUNS MODE=default bash bench/pg-failover-patroni.sh
OUT=$OUT/patroni-fast RUNS=$RUNS MODE=fast bash bench/pg-failover-patroni.sh
python3 - "$OUT" <<'EOF'
import glob, json, math, statistics, sys
out = sys.argv[1]
def load(d, pattern):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{d}/{pattern}"))]
def summary(reps):
    rto = sorted(r["rto_s"] for r in reps if r["rto_s"] is not None)
    p99 = rto[max(0, math.ceil(0.99 * len(rto)) - 1)] if rto else float("nan")
    return {
        "n": len(reps),
        "median": statistics.median(rto) if rto else float("nan"),
        "p99": p99,
        "lost": sum(r["writes_lost"] for r in reps),
        "acked": sum(r["writes_acknowledged"] for r in reps),
        "passed": sum(1 for r in reps if r["rto_s"] is not None),
    }
rows = [
    ("cirkel serve, defaults (health every 1 s, 3 failed checks)", summary(load("cirkel", "cirkel-*.json"))),
    ("cirkel serve, defaults, synchronous mode", summary(load("cirkel-sync", "cirkel-*.json"))),
    ("Patroni 4.1.5 + etcd + HAProxy, defaults", summary(load("patroni-default", "*.json"))),
    ("Patroni, fastest accepted (ttl 20, loop_wait 2)", summary(load("patroni-fast", "*.json"))),
]
print()
print("| system | kills | RTO median | RTO p99 (= max) | lost acked writes | failed over |")
print("|---|---|---|---|---|---|")
for name, s in rows:
    print(f"| {name} | {s['n']} | {s['median']:.2f} s | {s['p99']:.2f} s | {s['lost']} of {s['acked']} | {s['passed']} of {s['n']} |")
fast = rows[3][1]
print()
for name, s in rows[:2]:
    print(f"{name}: p99 {s['p99']:.2f} s = {s['p99'] / fast['p99']:.2f}x Patroni's fastest p99 (target <= 0.5x), "
          f"median {s['median'] / fast['median']:.2f}x")
sw = load("cirkel-sync", "switchover-*.json")
if sw:
    pause = sorted(r["write_pause_s"] for r in sw if r["write_pause_s"] is not None)
    print(f"planned switchover (synchronous mode), {len(sw)} runs: write pause median "
          f"{statistics.median(pause):.2f} s, max {pause[-1]:.2f} s; "
          f"lost {sum(r['writes_lost'] for r in sw)} of {sum(r['writes_acknowledged'] for r in sw)}")
EOF
