#!/usr/bin/env bash
# A bucket of many small objects backed up from an S3-compatible server
# (moto, on loopback): cirkel into an encrypted local repository vs rclone
# (Debian's 1.60) syncing to a local directory, the peer that copies
# buckets incrementally. restic cannot read a bucket as a source (only
# through an rclone mount), so it is not measured.
#
# Steps, each timed: the first backup (every object read), a second with
# nothing changed (a listing only), and a third after CHANGE objects were
# rewritten. rclone runs with --checksum (ETag against the local MD5, the
# same test cirkel makes, without a HEAD per object), 16 transfers and 16
# checkers; cirkel reads 16 objects at once. Then the restore of the
# snapshot into an empty bucket, and the check that it matches.
#
# Usage: bash bench/bucket.sh     (OBJECTS=100000 SIZE=2048 CHANGE=1000;
#                                  CIRKEL=target/release/cirkel, SKIP_BUILD=1
#                                  to use a binary already built)
set -euo pipefail
cd "$(dirname "$0")/.."
OBJECTS=${OBJECTS:-100000}
SIZE=${SIZE:-2048}
CHANGE=${CHANGE:-1000}
CIRKEL=${CIRKEL:-target/release/cirkel}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release -q -p cirkel
fi
command -v rclone >/dev/null || { echo "rclone missing: apt-get install rclone" >&2; exit 1; }
command -v moto_server >/dev/null || { echo "moto_server missing: pip install 'moto[server]'" >&2; exit 1; }
TOOL=crates/cirkel/tests/common/s3tool.py
WORK=$(mktemp -d /tmp/cirkel-bench-bucket.XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$PORT" >"$WORK/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null; rm -rf -- "$WORK"' EXIT
EP=http://127.0.0.1:$PORT
for _ in $(seq 100); do curl -s -o /dev/null "$EP" && break; sleep 0.2; done

# A CA bundle from the environment makes rclone refuse its plain-HTTP client.
unset AWS_CA_BUNDLE
export AWS_ACCESS_KEY_ID=cirkeltest AWS_SECRET_ACCESS_KEY=cirkeltestsecret AWS_REGION=us-east-1
export CIRKEL_REPO=$WORK/repo CIRKEL_PASSWORD_FILE=$WORK/pass CIRKEL_CONFIG=$WORK/cirkel.toml
echo "bench-password" >"$WORK/pass"; chmod 600 "$WORK/pass"
printf '[buckets.uploads]\nurl = "s3://uploads"\n[buckets.uploads.s3]\nendpoint = "%s"\n' "$EP" >"$WORK/cirkel.toml"
export RCLONE_CONFIG_SRC_TYPE=s3 RCLONE_CONFIG_SRC_PROVIDER=Other RCLONE_CONFIG_SRC_ENDPOINT=$EP \
    RCLONE_CONFIG_SRC_ACCESS_KEY_ID=cirkeltest RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY=cirkeltestsecret \
    RCLONE_CONFIG_SRC_FORCE_PATH_STYLE=true
RCLONE=(rclone sync src:uploads "$WORK/rclone" --checksum --fast-list --transfers 16 --checkers 16 -q)

echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# OBJECTS=$OBJECTS SIZE=$SIZE CHANGE=$CHANGE, cirkel $CIRKEL, $(rclone version | head -1)"
python3 "$TOOL" "$EP" create uploads </dev/null
python3 "$TOOL" "$EP" create restored </dev/null
t0=$(date +%s.%N)
python3 "$TOOL" "$EP" many uploads "$OBJECTS" "$SIZE" </dev/null
echo "# filled in $(echo "$(date +%s.%N) - $t0" | bc) s"
"$CIRKEL" -q repo init >/dev/null

timed() { # label command...: prints "label seconds peak-RSS-MiB"
    local label=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "%M" -o "$WORK/rss" "$@" >/dev/null
    t1=$(date +%s.%N)
    printf '%-34s %8.1f s %6d MiB\n' "$label" "$(echo "$t1 - $t0" | bc)" "$(($(cat "$WORK/rss") / 1024))"
}

timed "cirkel backup, first" "$CIRKEL" -q backup bucket uploads
timed "rclone sync, first" "${RCLONE[@]}"
timed "cirkel backup, unchanged" "$CIRKEL" -q backup bucket uploads
timed "rclone sync, unchanged" "${RCLONE[@]}"
python3 - "$EP" "$CHANGE" "$OBJECTS" <<'EOF'
import sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], config=Config(s3={"addressing_style": "path"}))
n, total = int(sys.argv[2]), int(sys.argv[3])
for i in range(0, total, max(1, total // n))[:n]:
    s3.put_object(Bucket="uploads", Key=f"d{i % 100:02}/{i:07}", Body=f"changed {i}".encode())
EOF
timed "cirkel backup, $CHANGE changed" "$CIRKEL" -q backup bucket uploads
timed "rclone sync, $CHANGE changed" "${RCLONE[@]}"
"$CIRKEL" --json backup bucket uploads | python3 -c 'import json, sys; print("# stats of a fourth backup:", json.load(sys.stdin)["stats"])'
timed "cirkel restore" "$CIRKEL" -q restore bucket latest --to s3://restored
echo "# repository: $(du -sh "$WORK/repo" | cut -f1), rclone copy: $(du -sh "$WORK/rclone" | cut -f1)"
a=$(python3 "$TOOL" "$EP" dump uploads </dev/null | sha256sum)
b=$(python3 "$TOOL" "$EP" dump restored </dev/null | sha256sum)
[[ $a == "$b" ]] && echo "# restored bucket matches the source (keys, bytes, headers, metadata)" || { echo "# MISMATCH"; exit 1; }
