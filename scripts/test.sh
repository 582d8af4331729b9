#!/usr/bin/env bash
# Installs the test dependencies, then runs every test of the workspace.
#   - moto[server] (PyPI): the S3-compatible server the storage tests start
#   - util-linux's setpriv: runs cirkel as an unprivileged user where root
#     would bypass file permissions
# A missing service makes the tests that need it fail; none are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq util-linux python3-pip >/dev/null
fi
if ! command -v moto_server >/dev/null; then
    python3 -m pip install --quiet 'moto[server]'
fi
cargo test --workspace --locked
