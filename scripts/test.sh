#!/usr/bin/env bash
# Installs the test dependencies, then runs every test of the workspace.
#   - moto[server] (PyPI): the S3-compatible server the storage tests start
#   - util-linux's setpriv: runs cirkel and PostgreSQL as unprivileged users
#     (PostgreSQL refuses to run as root; root would bypass file permissions)
#   - postgresql-15: the clusters the PostgreSQL tests create and destroy
# A missing service makes the tests that need it fail; none are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq util-linux python3-pip postgresql-15 postgresql-client-15 >/dev/null
fi
if ! command -v moto_server >/dev/null; then
    python3 -m pip install --quiet 'moto[server]'
fi
cargo test --workspace --locked
