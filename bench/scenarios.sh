#!/usr/bin/env bash
# The plan's five failures (§2) rehearsed on this machine: `cirkel lab up`
# (PostgreSQL 15 primary and two standbys in zones a, b, c; Redis master,
# two replicas, three Sentinels; a web service with its check; a main and a
# second-region repository; `cirkel serve`), then `cirkel drill suite`
# RUNS times on it. Each run: the web service killed (until its check is
# down and alarmed), the Redis master killed, the PostgreSQL primary
# killed, the primary's zone frozen (SIGSTOP of every process of every
# member in it), and the estate rebuilt from the second region with the
# main repository out of the rebuild's reach. Prints each run's table, then per
# scenario the median and worst RTO, the data lost, and the plan's and
# cirkel's targets.
#
# No peer runs here: none of the tools we measure against rehearses these
# five failures as one suite; the per-failure comparisons with Patroni,
# Sentinel and pgBackRest are in bench/ha*.sh, bench/redis*.sh and
# bench/restore*.sh.
#
# Usage: bash bench/scenarios.sh   (RUNS=3; CIRKEL_BIN=PATH measures that
# binary instead of a fresh release build; OUT=DIR keeps the reports; LAB=DIR
# is the lab's directory). About 1 minute per run after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
OUT=${OUT:-$(mktemp -d /tmp/cirkel-scenarios.XXXXXX)}
LAB=${LAB:-/tmp/cirkel-scenarios-lab}
mkdir -p "$OUT"

if [ -z "${CIRKEL_BIN:-}" ]; then
    cargo build --release -q -p cirkel
    CIRKEL_BIN=target/release/cirkel
fi
CIRKEL_BIN=$(realpath "$CIRKEL_BIN")

echo "== machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM," \
    "dd direct write $(dd if=/dev/zero of="$OUT/dd.tmp" bs=1M count=256 oflag=direct 2>&1 | awk -F', ' '/copied/ { print $NF }')," \
    "load $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$OUT/dd.tmp"
echo "== versions: $("$CIRKEL_BIN" --version); $(/usr/lib/postgresql/15/bin/postgres --version); $(redis-server --version | cut -d' ' -f1-3)"

"$CIRKEL_BIN" lab down --dir "$LAB" >/dev/null 2>&1 || true
trap '"$CIRKEL_BIN" lab down --dir "$LAB" >/dev/null 2>&1 || true' EXIT
"$CIRKEL_BIN" lab up --dir "$LAB" >"$OUT/lab-up.txt"
head -n 1 "$OUT/lab-up.txt"

# The lab's processes run as its user; so do the drills.
USER_OF_LAB=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["user"])' "$LAB/lab.json")
run_as_lab() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid="$USER_OF_LAB" --regid="$USER_OF_LAB" --init-groups "$LAB/bin/cirkel" --config "$LAB/cirkel.toml" "$@"
    else
        "$LAB/bin/cirkel" --config "$LAB/cirkel.toml" "$@"
    fi
}

for i in $(seq 1 "$RUNS"); do
    echo "== run $i of $RUNS (load $(cut -d' ' -f1 /proc/loadavg))"
    run_as_lab --json drill suite --markdown "$LAB/suite-$i.md" >"$OUT/suite-$i.json" || true
    cat "$LAB/suite-$i.md"
done

python3 - "$OUT" "$RUNS" <<'EOF'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
rows = {}
for i in range(1, runs + 1):
    try:
        suite = json.load(open(f"{out}/suite-{i}.json"))["suite"]
    except Exception as e:
        print(f"run {i}: no report ({e})")
        continue
    for s in suite["scenarios"]:
        rows.setdefault(s["scenario"], []).append(s)
def fmt(s):
    return f"{s / 60:.0f} min" if s >= 120 else f"{s:.0f} s"
print(f"\n== {runs} runs: per scenario")
print("| scenario | plan RTO | cirkel target | RTO median | RTO worst | data lost (worst) | passed | within target |")
print("|---|---|---|---|---|---|---|---|")
for name, ss in rows.items():
    rtos = [s["rto_s"] for s in ss if s.get("rto_s") is not None]
    lost = [s.get("writes_lost") for s in ss if s.get("writes_lost") is not None]
    rpo = [s.get("rpo_s") for s in ss if s.get("rpo_s") is not None]
    if lost:
        data = f"{max(lost)} writes"
    elif rpo:
        data = f"{max(rpo):.1f} s of history"
    else:
        data = "none (stateless)"
    med = f"{statistics.median(rtos):.2f} s" if rtos else "-"
    worst = f"{max(rtos):.2f} s" if rtos else "-"
    passed = sum(1 for s in ss if s["passed"])
    within = sum(1 for s in ss if s["within_target"])
    print(f"| {name} | {fmt(ss[0]['plan_rto_s'])} | {fmt(ss[0]['target_rto_s'])} | {med} | {worst} | {data} "
          f"| {passed} of {len(ss)} | {within} of {len(ss)} |")
for name, ss in rows.items():
    for s in ss:
        for f in s.get("failures", []):
            print(f"  {name}: {f}")
        if s.get("skipped"):
            print(f"  {name}: skipped: {s['skipped']}")
EOF
echo "== reports in $OUT"
