#!/usr/bin/env bash
# copy-lag.sh: how far the second region trails the first under write load,
# with the continuous copy (`cirkel repo copy --to dr --follow`, what
# `cirkel serve` runs for `continuous = true`).
#
# A fresh PostgreSQL 15 cluster (as the postgres user) streams its WAL into
# the main repository with `cirkel pg stream-wal`, a base backup is taken,
# and pgbench (-c 4) loads it for LOAD_SECS while the follower copies to a
# second repository on an S3 server (moto, on loopback). Every second the
# script reads the follower's record and computes the lag the daemon
# exposes (cirkel_copy_lag_seconds: since the oldest object the second
# region lacks reached the first, or since the first was last listed), and
# the bytes pending. Printed: p50, p99 and max of both (the issue's target:
# p99 <= 60 s), and the WAL the main repository received.
#
# Run (as root):  bash bench/copy-lag.sh        SCALE=100 LOAD_SECS=300 INTERVAL=5s
#                 SCALE=10 LOAD_SECS=60 bash bench/copy-lag.sh      (quick check)
set -euo pipefail
SCALE=${SCALE:-100}
LOAD_SECS=${LOAD_SECS:-300}
INTERVAL=${INTERVAL:-5s}
BASE=${BASE:-/tmp/bench-copy-lag}
PORT=${PORT:-55443}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CIRKEL=${CIRKEL_BIN:-$ROOT/target/release/cirkel}
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -p cirkel >/dev/null)

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
# Background programs start through setpriv directly, so $! is the program itself.
AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$BASE/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$BASE/data" -m immediate stop >/dev/null 2>&1 || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$BASE"
}
trap cleanup EXIT

rm -rf "$BASE"; mkdir -p "$BASE"; chown postgres: "$BASE"; chmod 755 "$BASE"
S3PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$S3PORT" >"$BASE/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$S3PORT" && break; sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$S3PORT/cirkel-dr" >/dev/null
unset AWS_CA_BUNDLE
export AWS_ACCESS_KEY_ID=cirkeltest AWS_SECRET_ACCESS_KEY=cirkeltestsecret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3PORT AWS_ALLOW_HTTP=true
export PGHOST=$BASE PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres PGDATA=$BASE/data
export CIRKEL_REPO=$BASE/repo CIRKEL_PASSWORD_FILE=$BASE/pw CIRKEL_CACHE_DIR=$BASE/cache
export CIRKEL_CONFIG=$BASE/cirkel.toml CIRKEL_STATE_DIR=$BASE/state
head -c 24 /dev/urandom | base64 > "$BASE/pw"; chown postgres: "$BASE/pw"; chmod 600 "$BASE/pw"
printf '[repositories.dr]\nurl = "s3://cirkel-dr/cirkel"\ncontinuous = true\n[repositories.dr.s3]\nendpoint = "http://127.0.0.1:%s"\n' "$S3PORT" >"$CIRKEL_CONFIG"
chmod 644 "$CIRKEL_CONFIG"
as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust --data-checksums >/dev/null
cat >> "$PGDATA/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BASE'
wal_level = replica
max_wal_senders = 5
max_replication_slots = 5
max_wal_size = 4GB
CONF
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$BASE/pg.log" -w start >/dev/null
as_pg "$CIRKEL" -q repo init >/dev/null
as_pg \
    "$CIRKEL" -q repo init --repo dr --copy-keys-from "$CIRKEL_REPO" >/dev/null
echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# SCALE=$SCALE LOAD_SECS=$LOAD_SECS follow --interval $INTERVAL, second region on moto S3"
t0=$(date +%s)
as_pg "$PGBIN/pgbench" -i -s "$SCALE" -q >/dev/null 2>&1
echo "# pgbench -i -s $SCALE in $(( $(date +%s) - t0 )) s"
"${AS_PG[@]}" "$CIRKEL" -q pg stream-wal --interval 1s --spool "$BASE/spool" 2>"$BASE/stream.log" &
pids+=($!)
as_pg "$CIRKEL" -q pg backup >/dev/null
"${AS_PG[@]}" "$CIRKEL" -q repo copy --to dr --follow --interval "$INTERVAL" 2>"$BASE/follow.log" &
pids+=($!)
"${AS_PG[@]}" "$PGBIN/pgbench" -c 4 -T "$LOAD_SECS" >"$BASE/pgbench.log" 2>&1 &
bench=$!
: > "$BASE/samples"
while kill -0 "$bench" 2>/dev/null; do
    python3 - "$CIRKEL_STATE_DIR/copy-dr.json" >>"$BASE/samples" <<'EOF' || true
import json, sys, datetime
try:
    r = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(0)
since = r.get("oldest_pending") or r.get("checked") or r["updated"]
t = datetime.datetime.fromisoformat(since.replace("Z", "+00:00"))
lag = (datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()
print(f"{max(lag, 0):.1f} {r.get('pending_bytes', 0)}")
EOF
    sleep 1
done
grep -E "^tps" "$BASE/pgbench.log" | sed 's/^/# pgbench: /' | head -1
python3 - "$BASE/samples" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
lag = sorted(float(r[0]) for r in rows)
pend = sorted(int(r[1]) for r in rows)
def q(v, p):
    return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
print(f"samples {len(lag)}")
print(f"copy lag seconds: p50 {q(lag, .5):.1f}  p99 {q(lag, .99):.1f}  max {lag[-1]:.1f}")
print(f"pending MiB:      p50 {q(pend, .5) / 2**20:.1f}  p99 {q(pend, .99) / 2**20:.1f}  max {pend[-1] / 2**20:.1f}")
EOF
echo "# WAL in the main repository: $(find "$CIRKEL_REPO/streams" -type f | wc -l) objects, $(du -sh "$CIRKEL_REPO/streams" | cut -f1)"
