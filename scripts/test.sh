#!/usr/bin/env bash
# Installs the test dependencies, then runs every test of the workspace.
#   - moto[server] (PyPI): the S3-compatible server the storage tests start
#   - util-linux's setpriv: runs cirkel and PostgreSQL as unprivileged users
#     (PostgreSQL refuses to run as root; root would bypass file permissions)
#   - postgresql-15: the clusters the PostgreSQL tests create and destroy
#   - redis-server, redis-sentinel, redis-tools: the servers the Redis tests start
# A missing service makes the tests that need it fail; none are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq util-linux python3-pip postgresql-15 postgresql-client-15 redis-server redis-sentinel redis-tools >/dev/null
fi
if ! command -v moto_server >/dev/null; then
    python3 -m pip install --quiet 'moto[server]'
fi
# cargo prints one result line per test binary; the last one can be a crate
# without doc tests ("0 passed"), so close with the totals of the whole run.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
