#!/usr/bin/env bash
# "50 browsers on the live stream": does serving the dashboard slow the
# PostgreSQL watcher? On a running lab (`cirkel lab up`), restarts its
# `cirkel serve` with the watcher's round times logged, measures them for
# SECONDS s alone, then for SECONDS s with 50 clients each holding
# /api/v1/events/stream open and fetching the dashboard every 5 s, while
# refused requests make 10 events a second for the streams to carry.
#
#   bash bench/sse.sh [LAB_DIR] [SECONDS]      (default /tmp/cirkel-lab, 60)
#
# CIRKEL_BIN=/path/to/cirkel runs that binary (else the lab's own). The lab's
# own daemon is stopped for the measure; `cirkel lab down` and `up` bring it back.
set -euo pipefail
LAB=${1:-/tmp/cirkel-lab}
SECS=${2:-60}
CLIENTS=${CLIENTS:-50}
[ -f "$LAB/lab.json" ] || { echo "error: no lab in $LAB; hint: cirkel lab up --dir $LAB" >&2; exit 1; }
num() { sed -n "s/^ *\"$1\": *\([0-9]*\),\{0,1\}$/\1/p" "$LAB/lab.json" | head -1; }
PORT=$(num server)
SERVE=$(grep -A2 '"serve"' "$LAB/lab.json" | grep -o '[0-9]\+' | head -1)
TOKEN=$(cat "$LAB/viewer.token")
USER_=$(sed -n 's/^ *"user": *"\([^"]*\)".*/\1/p' "$LAB/lab.json")
if [ "$(id -u)" = 0 ]; then AS=(setpriv --reuid="$USER_" --regid="$USER_" --init-groups); else AS=(); fi
kill "$SERVE" 2>/dev/null || true
while kill -0 "$SERVE" 2>/dev/null; do sleep 0.2; done
BIN=${CIRKEL_BIN:-$LAB/bin/cirkel}
LOG=$LAB/serve-bench.log
CIRKEL_LOG=warn,cirkel_pg::watch=debug "${AS[@]}" "$BIN" --config "$LAB/cirkel.toml" --log-format json serve 2>"$LOG" &
BENCH_SERVE=$!
trap 'kill $BENCH_SERVE 2>/dev/null; kill $(jobs -p) 2>/dev/null || true' EXIT
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/health"; do sleep 0.2; done
sleep 15

rounds() { # the round times logged between two line counts
    sed -n "$1,$2p" "$LOG" | grep '"watch round"' | sed -n 's/.*"round_ms":\([0-9.]*\).*/\1/p' |
        sort -n | awk '{a[NR]=$1; s+=$1} END {if (NR) printf "%d rounds: mean %.1f ms, median %.1f ms, p95 %.1f ms, max %.1f ms\n", NR, s/NR, a[int(NR/2)+1], a[int(NR*0.95)+1], a[NR]}'
}
cpu() { awk '{print $14+$15}' "/proc/$BENCH_SERVE/stat" 2>/dev/null || echo 0; }
A=$(wc -l < "$LOG"); T0=$(cpu); sleep "$SECS"; B=$(wc -l < "$LOG"); T1=$(cpu)
echo "alone:            $(rounds "$A" "$B")"
echo "cirkel serve CPU alone: $(( (T1 - T0) * 100 / $(getconf CLK_TCK) / SECS ))% of a core"

# One process plays the browsers (threads, not a process per request, so
# the load measured is the daemon's).
python3 - "$PORT" "$TOKEN" "$CLIENTS" "$LAB/sse-count" <<'PY' &
import socket, sys, threading, time
port, token, n, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def req(path, headers=""):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
    return s
counts = [0] * n
def stream(i):
    s = req("/api/v1/events/stream", f"Authorization: Bearer {token}\r\n")
    while True:
        b = s.recv(65536)
        if not b:
            return
        counts[i] += b.count(b"event: event")
        open(out, "w").write(str(counts[0]))
def page():
    while True:
        time.sleep(5 / n)  # every browser refetches the page every 5 s
        s = req("/", f"Cookie: cirkel_token={token}\r\n")
        while s.recv(65536):
            pass
def noise():
    while True:
        time.sleep(0.1)  # refused: an audited event each, for the streams to carry
        s = req("/api/v1/sources")
        while s.recv(65536):
            pass
for i in range(n):
    threading.Thread(target=stream, args=(i,), daemon=True).start()
threading.Thread(target=page, daemon=True).start()
threading.Thread(target=noise, daemon=True).start()
time.sleep(10**6)
PY
cpu() { awk '{print $14+$15}' "/proc/$BENCH_SERVE/stat" 2>/dev/null || echo 0; }
sleep 5
C=$(wc -l < "$LOG"); T0=$(cpu); sleep "$SECS"; D=$(wc -l < "$LOG"); T1=$(cpu)
echo "$CLIENTS browsers:       $(rounds "$C" "$D")"
echo "cirkel serve CPU with $CLIENTS browsers: $(( (T1 - T0) * 100 / $(getconf CLK_TCK) / SECS ))% of a core"
echo "events each stream carried: $(cat "$LAB/sse-count")"
rm -f "$LAB/sse-count"
