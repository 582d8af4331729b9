#!/usr/bin/env bash
# dr-outage.sh: the second repository unreachable for OUTAGE_SECS under
# pgbench with WAL streaming on. What must hold: the primary is never held
# back, the copy catches up, and the copy-lag alarm fires and clears.
#
# A fresh PostgreSQL 15 cluster (as the postgres user) streams its WAL into
# a local main repository with `cirkel pg stream-wal` (a replication slot),
# a base backup is taken, and `cirkel serve` runs with [repositories.dr]
# continuous = true: the second repository lives on an S3 server (moto) that
# the daemon reaches only through a TCP relay this script can cut. moto
# keeps its data in memory and the relay sits in front of it, so what was
# copied before the outage survives it, as a region's storage would.
#
# pgbench -c 4 runs throughout, one run with per-5-s progress: BASELINE_SECS
# with the relay up, OUTAGE_SECS cut, then up again until the copy has
# caught up (lag under 60 s and nothing pending) and the alarm has cleared,
# plus AFTER_SECS. Every 5 s the script samples the daemon's
# cirkel_copy_lag_seconds and cirkel_copy_lag_bytes (/metrics), the size of
# pg_wal, and how far the stream-wal slot trails the primary's WAL insert
# position. Printed: pgbench tps per phase ("never held back": the outage's
# tps within noise of the baseline's), the slot's lag and pg_wal at most
# during the outage, the copy lag's maximum, how long after the outage ended
# the copy caught up, when `copy-lag` fired and cleared (`cirkel alarms
# history copy-lag`), and at the end, with pgbench stopped and the last
# segment switched out and copied, whether the second repository covers the
# main one (`pg info` of both, `pg check` of the second, same snapshots).
#
# CUT=refuse (default) resets and refuses connections while cut (a region
# whose endpoint answers "connection refused"); CUT=blackhole accepts and
# holds them without a byte (packets dropped: every request waits for its
# timeout). CUT=none never cuts: the control run, same phases, same load,
# the second repository reachable throughout. CYCLE_SECS=60 cuts and
# restores in turn every 60 s for OUTAGE_SECS instead of one long cut
# (phases `cut` and `up`): slow drifts (checkpoints, other load) then fall
# on both alike, which tells the outage's own cost on the primary from them.
#
# Run (as root):  bash bench/dr-outage.sh        SCALE=20 BASELINE_SECS=120 OUTAGE_SECS=600 AFTER_SECS=60
#                 OUTAGE_SECS=60 BASELINE_SECS=30 bash bench/dr-outage.sh   (quick check)
# CIRKEL_BIN=PATH SKIP_BUILD=1 measures that binary; KEEP=1 keeps BASE.
set -euo pipefail
SCALE=${SCALE:-20}
BASELINE_SECS=${BASELINE_SECS:-120}
OUTAGE_SECS=${OUTAGE_SECS:-600}
AFTER_SECS=${AFTER_SECS:-60}
# Longest wait for the catch-up and the alarm's clearing after the outage.
CATCHUP_MAX_SECS=${CATCHUP_MAX_SECS:-1800}
CUT=${CUT:-refuse}
CYCLE_SECS=${CYCLE_SECS:-0}
BASE=${BASE:-/tmp/bench-dr-outage}
PORT=${PORT:-55445}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CIRKEL=${CIRKEL_BIN:-$ROOT/target/release/cirkel}
[ "${SKIP_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -p cirkel >/dev/null)
CIRKEL=$(realpath "$CIRKEL")

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$BASE/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$BASE/data" -m immediate stop >/dev/null 2>&1 || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$BASE"
}
trap cleanup EXIT

rm -rf "$BASE"; mkdir -p "$BASE"; chown postgres: "$BASE"; chmod 755 "$BASE"
S3PORT=$(free_port)
RELAY=$(free_port)
LISTEN=$(free_port)
moto_server -H 127.0.0.1 -p "$S3PORT" >"$BASE/moto.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$S3PORT" && break; sleep 0.2; done
curl -s -X PUT "http://127.0.0.1:$S3PORT/cirkel-dr" >/dev/null

# The relay: forwards 127.0.0.1:RELAY to moto while $BASE/cut is absent.
cat >"$BASE/relay.py" <<'EOF'
import os, socket, sys, threading, time
port, target, cutfile, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
live, lock = [], threading.Lock()
def cut():
    return mode != "none" and os.path.exists(cutfile)
def pump(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            while cut() and mode == "blackhole":
                time.sleep(0.1)
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
def watch():
    while True:
        if cut() and mode == "refuse":
            with lock:
                for s in live:
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                live.clear()
        time.sleep(0.1)
threading.Thread(target=watch, daemon=True).start()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(128)
while True:
    c, _ = srv.accept()
    if cut():
        if mode == "refuse":
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
        else:
            live.append(c)  # held open, never answered
        continue
    try:
        s = socket.create_connection(("127.0.0.1", target))
    except OSError:
        c.close()
        continue
    with lock:
        live.extend([c, s])
    threading.Thread(target=pump, args=(c, s), daemon=True).start()
    threading.Thread(target=pump, args=(s, c), daemon=True).start()
EOF
python3 "$BASE/relay.py" "$RELAY" "$S3PORT" "$BASE/cut" "$CUT" &
pids+=($!)

unset AWS_CA_BUNDLE AWS_ENDPOINT_URL
export AWS_ACCESS_KEY_ID=cirkeltest AWS_SECRET_ACCESS_KEY=cirkeltestsecret AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
export PGHOST=$BASE PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres PGDATA=$BASE/data
export CIRKEL_REPO=$BASE/repo CIRKEL_PASSWORD_FILE=$BASE/pw CIRKEL_CACHE_DIR=$BASE/cache
export CIRKEL_CONFIG=$BASE/cirkel.toml CIRKEL_STATE_DIR=$BASE/state
head -c 24 /dev/urandom | base64 > "$BASE/pw"; chown postgres: "$BASE/pw"; chmod 600 "$BASE/pw"
cat >"$CIRKEL_CONFIG" <<CONF
[server]
listen = "127.0.0.1:$LISTEN"
[repositories.dr]
url = "s3://cirkel-dr/cirkel"
continuous = true
[repositories.dr.s3]
endpoint = "http://127.0.0.1:$RELAY"
CONF
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
as_pg "$CIRKEL" -q repo init --repo dr --copy-keys-from "$CIRKEL_REPO" >/dev/null
echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB," \
    "dd direct write $(dd if=/dev/zero of="$BASE/dd.tmp" bs=1M count=256 oflag=direct 2>&1 | awk -F', ' '/copied/ { print $NF }')," \
    "load $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$BASE/dd.tmp"
echo "# cirkel: $CIRKEL"
echo "# SCALE=$SCALE BASELINE_SECS=$BASELINE_SECS OUTAGE_SECS=$OUTAGE_SECS AFTER_SECS=$AFTER_SECS CUT=$CUT CYCLE_SECS=$CYCLE_SECS"
t0=$(date +%s)
as_pg "$PGBIN/pgbench" -i -s "$SCALE" -q >/dev/null 2>&1
echo "# pgbench -i -s $SCALE in $(( $(date +%s) - t0 )) s"
"${AS_PG[@]}" "$CIRKEL" -q pg stream-wal --interval 1s --spool "$BASE/spool" 2>"$BASE/stream.log" &
pids+=($!)
as_pg "$CIRKEL" -q pg backup >/dev/null
"${AS_PG[@]}" "$CIRKEL" serve >"$BASE/serve.log" 2>&1 &
serve=$!
pids+=($serve)
metric() { curl -s "http://127.0.0.1:$LISTEN/metrics" | awk -v m="$1{repository=\"dr\"}" '$1 == m { print $2 }'; }
lag_s() { local v; v=$(metric cirkel_copy_lag_seconds); echo "${v:-nan}"; }
lag_b() { local v; v=$(metric cirkel_copy_lag_bytes); echo "${v:-nan}"; }
caught_up() { awk -v s="$(lag_s)" -v b="$(lag_b)" 'BEGIN { exit !(s != "nan" && s + 0 < 60 && b + 0 == 0) }'; }
alarm_state() {
    as_pg "$CIRKEL" --json alarms history copy-lag 2>/dev/null |
        python3 -c 'import json, sys; e = json.load(sys.stdin); print(e[-1]["details"]["to"] if e else "none")' 2>/dev/null || echo none
}
for _ in $(seq 300); do caught_up && break; sleep 1; done
caught_up || { echo "the first copy did not finish in 300 s (serve.log: $BASE/serve.log)" >&2; exit 1; }
echo "# base backup copied to the second repository; load starts"

# One pgbench for the whole run, progress every 5 s with Unix timestamps.
"${AS_PG[@]}" "$PGBIN/pgbench" -c 4 -T 100000 -P 5 --progress-timestamp >"$BASE/pgbench.log" 2>"$BASE/progress.log" &
bench=$!
pids+=($bench)
sample() {
    local now wal slot
    now=$(date +%s)
    wal=$(du -sb "$PGDATA/pg_wal" | cut -f1)
    slot=$(as_pg psql -XAtc "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn))::bigint, max(pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn))::bigint, -1) FROM pg_replication_slots" 2>/dev/null || echo -1)
    echo "$now $1 $(lag_s) $(lag_b) $wal $slot $(cut -d' ' -f1 /proc/loadavg)" >>"$BASE/samples"
}
: >"$BASE/samples"
phase_until() { # PHASE END_EPOCH
    while (($(date +%s) < $2)); do sample "$1"; sleep 5; done
}
start=$(date +%s)
echo "baseline $start" >"$BASE/phases"
phase_until baseline $((start + BASELINE_SECS))
if ((CYCLE_SECS > 0)); then
    # Cut and reachable in turn, CYCLE_SECS each, for OUTAGE_SECS: each cut
    # minute is compared with the reachable ones around it.
    echo "# $(date -u +%T) the second repository cut off ($CUT) and reachable in turn, $CYCLE_SECS s each, for $OUTAGE_SECS s"
    cycles_end=$(($(date +%s) + OUTAGE_SECS))
    while (($(date +%s) < cycles_end)); do
        touch "$BASE/cut"
        echo "cut $(date +%s)" >>"$BASE/phases"
        phase_until cut $(($(date +%s) + CYCLE_SECS))
        rm -f "$BASE/cut"
        echo "up $(date +%s)" >>"$BASE/phases"
        phase_until up $(($(date +%s) + CYCLE_SECS))
    done
else
    touch "$BASE/cut"
    cut_at=$(date +%s)
    echo "outage $cut_at" >>"$BASE/phases"
    echo "# $(date -u +%T) the second repository cut off ($CUT) for $OUTAGE_SECS s"
    phase_until outage $((cut_at + OUTAGE_SECS))
    rm -f "$BASE/cut"
fi
back_at=$(date +%s)
echo "after $back_at" >>"$BASE/phases"
echo "# $(date -u +%T) the second repository reachable again"
caught=""
cleared=""
while (($(date +%s) < back_at + CATCHUP_MAX_SECS)); do
    sample after
    [ -z "$caught" ] && caught_up && caught=$(date +%s)
    # Cleared, or (an outage shorter than the alarm's threshold) never raised.
    [ -z "$cleared" ] && [ "$(alarm_state)" != ALARM ] && cleared=$(date +%s)
    [ -n "$caught" ] && [ -n "$cleared" ] && break
    sleep 5
done
phase_until after $(($(date +%s) + AFTER_SECS))
end=$(date +%s)
echo "end $end" >>"$BASE/phases"
kill "$bench" 2>/dev/null || true
wait "$bench" 2>/dev/null || true

# Nothing lost: the last segment switched out and streamed, the copy caught
# up, and the second repository covers the main one.
as_pg psql -XAtc "SELECT pg_walfile_name(pg_switch_wal())" >"$BASE/last-segment"
sleep 5
for _ in $(seq 120); do
    sleep 2
    n_main=$(find "$CIRKEL_REPO/streams" -type f | wc -l)
    caught_up && [ "$(as_pg "$CIRKEL" --json --repo dr snapshots 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" = \
        "$(as_pg "$CIRKEL" --json snapshots | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" ] && break
done
as_pg "$CIRKEL" --json pg info >"$BASE/info-main.json" 2>"$BASE/info-main.err" || true
as_pg "$CIRKEL" --json --repo dr pg info >"$BASE/info-dr.json" 2>"$BASE/info-dr.err" || true
set +e
as_pg "$CIRKEL" --repo dr pg check >"$BASE/check-dr.txt" 2>&1
check_rc=$?
set -e
as_pg "$CIRKEL" --json alarms history copy-lag >"$BASE/alarm-history.json" 2>/dev/null || echo '[]' >"$BASE/alarm-history.json"

echo "# pgbench progress: $BASE/progress.log; samples (epoch phase lag_s lag_bytes pg_wal_bytes slot_lag_bytes load1): $BASE/samples"
python3 - "$BASE" "$back_at" "${caught:-}" "${cleared:-}" "$check_rc" "$n_main" <<'EOF'
import json, re, sys, datetime
base, back_at, caught, cleared, check_rc, n_main = sys.argv[1:7]
back_at = int(back_at)
phases = [l.split() for l in open(f"{base}/phases")]
bounds = [(p, int(t), int(phases[i + 1][1])) for i, (p, t) in enumerate(phases[:-1])]
prog = []
for l in open(f"{base}/progress.log"):
    m = re.match(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms", l)
    if m:
        prog.append((float(m.group(1)), float(m.group(2)), float(m.group(3))))
def stats(v):
    v = sorted(v)
    if not v:
        return "no samples"
    q = lambda p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
    mean = sum(v) / len(v)
    return f"mean {mean:7.1f}  p10 {q(.1):7.1f}  p50 {q(.5):7.1f}  p90 {q(.9):7.1f}  (n={len(v)})"
# Each phase name once, over all its stretches; an interval counts when it
# lies wholly inside one.
names = list(dict.fromkeys(p for p, _, _ in bounds))
def inside(name, ts):
    return any(p == name and a <= ts - 5 and ts <= b for p, a, b in bounds)
print("pgbench tps per 5 s interval, by phase:")
for n in names:
    secs = sum(b - a for p, a, b in bounds if p == n)
    print(f"  {n:<9} {secs:5d} s  tps {stats([t for ts, t, _ in prog if inside(n, ts)])}")
for n in names:
    lat = [l for ts, _, l in prog if inside(n, ts)]
    print(f"  {n:<9} latency ms mean {sum(lat) / max(len(lat), 1):.2f}")
rows = [l.split() for l in open(f"{base}/samples") if l.strip()]
def num(x):
    try:
        return float(x)
    except ValueError:
        return float("nan")
for p in names:
    r = [x for x in rows if x[1] == p]
    if not r:
        continue
    lag = [num(x[2]) for x in r if num(x[2]) == num(x[2])]
    by = [num(x[3]) for x in r if num(x[3]) == num(x[3])]
    wal = [int(x[4]) for x in r]
    slot = [int(x[5]) for x in r if int(x[5]) >= 0]
    load = [float(x[6]) for x in r]
    print(f"  {p:<9} copy lag max {max(lag, default=0):7.1f} s, pending max {max(by, default=0) / 2**20:7.1f} MiB;"
          f" pg_wal max {max(wal) / 2**20:6.1f} MiB; slot behind insert max {max(slot, default=0) / 2**20:6.2f} MiB"
          f" (median {sorted(slot)[len(slot) // 2] / 2**20 if slot else 0:.2f}); load {min(load):.1f}-{max(load):.1f}")
if caught:
    print(f"caught up (lag < 60 s, 0 bytes pending) {int(caught) - back_at} s after the outage ended (sampled every 5 s)")
else:
    print("NOT caught up within CATCHUP_MAX_SECS")
hist = json.load(open(f"{base}/alarm-history.json"))
start = int(phases[0][1])
for e in hist:
    t = datetime.datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp()
    d = e.get("details", {})
    rel = f"{t - start:+.0f} s after the load began"
    for p, a, b in bounds:
        if a <= t < b:
            rel += f", {t - a:.0f} s into {p}"
    print(f"copy-lag {d.get('from')} -> {d.get('to')} at {e['time']} ({rel})")
if not cleared:
    print("copy-lag did NOT clear within CATCHUP_MAX_SECS")
if not any(e.get("details", {}).get("to") == "ALARM" for e in hist):
    print("copy-lag never fired")
def window(f):
    try:
        return json.load(open(f))
    except Exception:
        return None
print(f"main repository: {n_main} WAL objects")
for name in ("main", "dr"):
    v = window(f"{base}/info-{name}.json")
    print(f"pg info {name}: {json.dumps(v)[:600] if v is not None else open(f'{base}/info-{name}.err').read().strip()[:300]}")
print(f"pg check of the second repository: exit {check_rc}; " + " | ".join(open(f"{base}/check-dr.txt").read().strip().splitlines()[-3:]))
print(f"last segment switched out: {open(f'{base}/last-segment').read().strip()}")
EOF
