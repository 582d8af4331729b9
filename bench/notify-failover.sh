#!/usr/bin/env bash
# Notifications after a PostgreSQL primary is killed: how soon each receiver
# hears of it, and how soon a receiver that was down gets its backlog.
#
# A primary and two streaming standbys (PostgreSQL 15 on loopback) under
# `cirkel serve` (health interval 200 ms, down after 3 failed checks), with
# the plan's CRITICAL route: SMS (a Twilio-compatible API), Slack (an
# incoming webhook) and e-mail (SMTP). The receivers are real servers on
# loopback: Python's http.server for Slack and the SMS API, aiosmtpd for
# e-mail, each logging the time every message arrives. RUNS times,
# `cirkel drill failover` kills the primary's postmaster; for each receiver
# the time from the failover's detection (the `detected` time in its event)
# to the message's arrival is measured (target: <= 1 s), and from the kill.
# Alerts are acknowledged between runs, so each failover is a new alert.
#
# Then the HTTP receivers go down for DOWN seconds (default 120) while one
# more failover happens; they come back, and the time from their return to
# the last backlogged message delivered is measured (the outbox retries
# with a delay doubling from 2 s up to 5 min).
#
# No peer runs side by side: the plan routes through SNS and PagerDuty,
# which cannot run here.
#
# Usage (as root): bash bench/notify-failover.sh     (RUNS=5 DOWN=120)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DOWN=${DOWN:-120}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cargo build --release -q -p cirkel
WORK=$(mktemp -d /tmp/cirkel-bench-notify.XXXXXX)
chmod 755 "$WORK"
cp target/release/cirkel "$WORK/cirkel"
BIN=$WORK/cirkel
mkdir -p "$WORK/inbox"
chown -R postgres "$WORK"
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK" "$@"; }
cli() { as_pg "$BIN" --config "$WORK/cirkel.toml" "$@"; }
SERVE= HTTP= SMTP=
cleanup() {
    for p in $SERVE $HTTP $SMTP; do kill "$p" 2>/dev/null || true; done
    pkill -f "^$WORK/cirkel " 2>/dev/null || true
    for n in a b c; do
        [ -f "$WORK/$n/data/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/$n/data" -m immediate stop >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
read -r PA PB PC PROXY PHTTP PSMTP <<<"$(python3 -c '
import socket
s = [socket.socket() for _ in range(6)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))')"
declare -A PORT=([a]=$PA [b]=$PB [c]=$PC)

echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# dd write: $(dd if=/dev/zero of="$WORK/dd" bs=1M count=256 oflag=direct conv=fsync 2>&1 | tail -1)"
rm -f "$WORK/dd"

start_http() {
    python3 -c '
import sys, time, http.server, pathlib
port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        kind = "sms" if "Messages.json" in self.path else "slack"
        with open(out / "arrivals.log", "a") as f:
            f.write(f"{time.time():.6f} {kind} {body[:200]!r}\n")
        self.send_response(201); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()' "$PHTTP" "$WORK/inbox" &
    HTTP=$!
}
start_http
python3 -c '
import sys, time, pathlib
from aiosmtpd.controller import Controller
port, out = int(sys.argv[1]), pathlib.Path(sys.argv[2])
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out / "arrivals.log", "a") as f:
            f.write(f"{time.time():.6f} email {envelope.content[:200]!r}\n")
        return "250 OK"
Controller(Handler(), hostname="127.0.0.1", port=port).start()
while True: time.sleep(3600)' "$PSMTP" "$WORK/inbox" &
SMTP=$!

for n in a b c; do as_pg mkdir -p "$WORK/$n/sock"; done
as_pg "$PGBIN/initdb" -D "$WORK/a/data" -U postgres --auth=trust --data-checksums -E UTF8 --locale=C >/dev/null
cat >>"$WORK/a/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
wal_keep_size = '512MB'
EOF
start_pg() { as_pg "$PGBIN/pg_ctl" -D "$WORK/$1/data" -l "$WORK/$1/log" -o "-p ${PORT[$1]} -k $WORK/$1/sock" -w start >/dev/null; }
start_pg a
for n in b c; do
    as_pg "$PGBIN/pg_basebackup" -D "$WORK/$n/data" -R -X stream -c fast -h "$WORK/a/sock" -p "$PA" -U postgres
    start_pg "$n"
done
echo "http://127.0.0.1:$PHTTP/slack" >"$WORK/slack.url"
echo "t0ken" >"$WORK/sms.token"
{
    echo "[state]"; echo "dir = \"$WORK/state\""
    echo "[postgres.main]"; echo 'user = "postgres"'; echo 'database = "postgres"'
    echo "proxy_listen = \"127.0.0.1:$PROXY\""
    echo "[postgres.main.health]"; echo 'interval = "200ms"'; echo 'timeout = "1s"'; echo 'unhealthy_threshold = 3'
    for n in a b c; do
        echo "[postgres.main.members.$n]"; echo "host = \"$WORK/$n/sock\""; echo "port = ${PORT[$n]}"
        echo "pgdata = \"$WORK/$n/data\""
    done
    echo "[notify.slack]"; echo 'kind = "slack"'; echo "url_file = \"$WORK/slack.url\""
    echo "[notify.sms]"; echo 'kind = "sms"'; echo "base_url = \"http://127.0.0.1:$PHTTP\""
    echo 'account_sid = "AC1"'; echo "auth_token_file = \"$WORK/sms.token\""; echo 'from = "+4500000001"'; echo 'to = ["+4500000002"]'
    echo "[notify.email]"; echo 'kind = "email"'; echo 'from = "cirkel@example.org"'; echo 'to = ["oncall@example.org"]'
    echo "[notify.email.smtp]"; echo 'host = "127.0.0.1"'; echo "port = $PSMTP"; echo 'starttls = false'
} >"$WORK/cirkel.toml"
chown postgres "$WORK/cirkel.toml" "$WORK/slack.url" "$WORK/sms.token"
as_pg "$BIN" --config "$WORK/cirkel.toml" -q serve 2>"$WORK/serve.log" &
SERVE=$!
healthy() {
    local i
    for i in $(seq 600); do cli -q status >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "cluster not healthy" >&2; return 1
}
ack_all() {
    cli --json alerts | python3 -c 'import json,sys; [print(a["id"]) for a in json.load(sys.stdin)["alerts"]]' |
        while read -r id; do cli -q alerts ack "$id" --by bench >/dev/null; done
}
healthy
echo "== $RUNS kills of the primary; receivers: sms, slack, email; work dir $WORK"
for run in $(seq "$RUNS"); do
    cli --json drill failover >"$WORK/drill-$run.json" 2>"$WORK/drill-$run.err" || true
    sleep 3
    cli --json events --kind failover | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[-1]))' >"$WORK/failover-$run.json"
    ack_all
    healthy
done
python3 - "$WORK" "$RUNS" <<'EOF'
import json, sys, statistics
from datetime import datetime
work, runs = sys.argv[1], int(sys.argv[2])
arr = []
for line in open(f"{work}/inbox/arrivals.log"):
    t, kind, body = line.split(" ", 2)
    arr.append((float(t), kind, body.lower()))
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
rows = {k: [] for k in ("sms", "slack", "email")}
for run in range(1, runs + 1):
    ev = json.load(open(f"{work}/failover-{run}.json"))
    detected = ts(ev["details"]["detected"])
    for kind in rows:
        first = min((t for t, k, b in arr if k == kind and t >= detected - 1 and "failover" in b), default=None)
        if first is not None:
            rows[kind].append(first - detected)
print()
print("| receiver | failovers heard | detection → arrival median | max | target |")
print("|---|---|---|---|---|")
for kind, xs in rows.items():
    med = statistics.median(xs) if xs else float("nan")
    print(f"| {kind} | {len(xs)} of {runs} | {med:.3f} s | {max(xs, default=float('nan')):.3f} s | ≤ 1 s |")
EOF

echo
echo "== the HTTP receivers (Slack, SMS) down for ${DOWN} s during one more failover"
kill "$HTTP"; wait "$HTTP" 2>/dev/null || true
cli --json drill failover >"$WORK/drill-down.json" 2>/dev/null || true
sleep "$DOWN"
back=$(python3 -c 'import time; print(f"{time.time():.6f}")')
start_http
for i in $(seq 600); do
    pending=$(cli --json alerts | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["failing_deliveries"]))')
    [ "$pending" = 0 ] && break
    sleep 1
done
python3 - "$WORK" "$back" <<'EOF'
import sys
work, back = sys.argv[1], float(sys.argv[2])
late = [float(l.split(" ", 1)[0]) for l in open(f"{work}/inbox/arrivals.log") if float(l.split(" ", 1)[0]) >= back]
print(f"backlog delivered after the receivers' return: {len(late)} message(s), the last {max(late) - back if late else float('nan'):.1f} s after")
EOF
