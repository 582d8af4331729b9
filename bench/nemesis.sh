#!/usr/bin/env bash
# The Jepsen-style nemesis against three cirkel agents in network
# namespaces (crates/cirkel/tests/multinode.rs, the test named nemesis_*),
# with ROUNDS randomized faults instead of the suite's three: kill the
# primary's whole host, kill or pause (SIGSTOP past the TTL) the leader's or
# the primary's agent, isolate the primary's host, cut it off from its peers
# only (clients still reach both sides), isolate any host; each fault
# followed by healing and a wait until one primary has both standbys
# streaming again. Synchronous mode. A canary writes every 100 ms through
# the list of endpoints, and every 500 ms each host writes through every
# host's endpoint at once: a sweep in which two servers acknowledge writes
# is a moment with two writable primaries. At the end every acknowledged
# write must be on the primary. Prints the summary (also in OUT).
#
# Usage (as root): bash bench/nemesis.sh      (ROUNDS=20; SEED=N replays a run)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-20}
OUT=${OUT:-$(mktemp /tmp/cirkel-nemesis.XXXXXX)}
export PATH=$PATH:/usr/sbin:/sbin
[ "$(id -u)" = 0 ] || { echo "run as root: the test makes network namespaces" >&2; exit 2; }
echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS rounds; summary in $OUT"
export CIRKEL_NEMESIS_ROUNDS=$ROUNDS CIRKEL_NEMESIS_SUMMARY=$OUT
[ -n "${SEED:-}" ] && export CIRKEL_NEMESIS_SEED=$SEED
status=0
cargo nextest run --test multinode --no-capture nemesis_ || status=$?
echo
cat "$OUT" 2>/dev/null || echo "no summary: the run did not get that far"
exit "$status"
