#!/usr/bin/env bash
# The health-check engine under the plan's application check, scaled up:
# CHECKS HTTP checks (GET /health, body must contain "ok") every INTERVAL
# seconds on one engine, for DURATION seconds.
#
# The targets are one hyper server process listening on CHECKS loopback
# ports (one target per port, so one can be killed alone), started by the
# measured process but separate from it: the engine's CPU and memory are its
# own. Printed: the start jitter of every probe (scheduled vs actual start,
# p50/p99/max; the goal is p99 <= 100 ms on 2 cores), the engine's CPU
# (user+sys, % of one core) and peak RSS, then the time from killing one
# target to its Down transition (bound: unhealthy_threshold x interval + 1 s,
# 3 x 10 s + 1 s by default) and how many other checks went down (0).
#
# Usage: bash bench/checks.sh     (CHECKS=1000 INTERVAL=10 DURATION=60;
#                                  SKIP_BUILD=1 to reuse the built example)
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKS=${CHECKS:-1000}
INTERVAL=${INTERVAL:-10}
DURATION=${DURATION:-60}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -q -p cirkel-health --example checks_bench
fi
BIN=target/release/examples/checks_bench
WORK=$(mktemp -d /tmp/cirkel-bench-checks.XXXXXX)
trap 'rm -rf -- "$WORK"' EXIT

echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# dd write: $(dd if=/dev/zero of="$WORK/dd" bs=1M count=256 oflag=direct conv=fsync 2>&1 | tail -1)"
echo "# CHECKS=$CHECKS INTERVAL=${INTERVAL}s DURATION=${DURATION}s"
"$BIN" engine "$CHECKS" "$INTERVAL" "$DURATION"
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
