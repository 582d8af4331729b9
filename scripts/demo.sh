#!/usr/bin/env bash
# cirkel's main job on the embedded default, from a fresh checkout: build the
# binary, create an encrypted local repository, back up a directory twice
# (the second run skips unchanged files), verify every byte, restore, and
# compare the restore with the source.
#
#   bash scripts/demo.sh [DIRECTORY]      (default: this repository's crates/)
#
# WORK=/some/dir keeps the repository there instead of a fresh temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p cirkel
BIN=$PWD/target/release/cirkel
SRC=$(realpath "${1:-$PWD/crates}")
WORK=${WORK:-$(mktemp -d /tmp/cirkel-demo.XXXXXX)}
mkdir -p "$WORK"
export CIRKEL_REPO=$WORK/repo CIRKEL_PASSWORD_FILE=$WORK/password
[ -f "$CIRKEL_PASSWORD_FILE" ] || head -c 24 /dev/urandom | base64 > "$CIRKEL_PASSWORD_FILE"
chmod 600 "$CIRKEL_PASSWORD_FILE"

[ -f "$CIRKEL_REPO/config" ] || "$BIN" repo init
"$BIN" backup files "$SRC" --tag demo
"$BIN" backup files "$SRC" --tag demo
"$BIN" snapshots
"$BIN" repo verify --read-data
rm -rf "$WORK/restore"
"$BIN" restore files latest --to "$WORK/restore"
diff -r "$SRC" "$WORK/restore$SRC"
echo "restore of $SRC matches the source; repository: $CIRKEL_REPO"
