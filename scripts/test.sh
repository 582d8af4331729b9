#!/usr/bin/env bash
# Installs the test dependencies, then runs every test of the workspace.
#   - moto[server] (PyPI): the S3-compatible server the storage tests start
#   - aiosmtpd (PyPI): the SMTP server the e-mail notification tests start
#   - util-linux's setpriv: runs cirkel and PostgreSQL as unprivileged users
#     (PostgreSQL refuses to run as root; root would bypass file permissions)
#   - postgresql-15: the clusters the PostgreSQL tests create and destroy
#   - redis-server, redis-sentinel, redis-tools: the servers the Redis tests start
#   - acl, attr: set the ACLs and extended attributes the file tests round-trip
#   - restic: the reference the file-metadata tests compare restores with
#   - iproute2: the network namespaces, veths and bridges of the multi-host tests
#   - nftables: the network faults (partition, loss, latency) the drill tests inject
#   - chromium, chromium-driver: the browser the dashboard tests drive over WebDriver
#   - openssl, curl: the HTTPS test makes its certificate and fetches over TLS
#   - prometheus: promtool checks /metrics; a real Prometheus scrapes cirkel serve
#   - cargo-nextest: runs the tests of every binary side by side, each in its
#     own process, with the limits of .config/nextest.toml
# A missing service makes the tests that need it fail; none are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq util-linux python3-pip postgresql-15 postgresql-client-15 chromium chromium-driver openssl curl redis-server redis-sentinel redis-tools acl attr restic prometheus etcd-server iproute2 nftables protobuf-compiler >/dev/null
fi
if ! command -v moto_server >/dev/null; then
    python3 -m pip install --quiet 'moto[server]'
fi
if ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    python3 -m pip install --quiet aiosmtpd
fi
if ! command -v cargo-nextest >/dev/null; then
    cargo install cargo-nextest --locked
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo nextest run --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# nextest closes with "Summary [ time] N tests run: P passed, F failed, …".
elapsed=$((SECONDS - started))
printf 'elapsed: %dm %02ds\n' $((elapsed / 60)) $((elapsed % 60))
awk '/Summary \[/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^run:/) r = $(i-1); if ($(i+1) ~ /^passed/) p = $i } }
     END { printf "tests: %d passed, %d failed\n", p, r - p }' "$log"
exit "$status"
