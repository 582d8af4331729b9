"""Driver for bench/pg-failover-patroni.sh: waits for a healthy Patroni
cluster, and runs one failover of it (the Patroni half of the PostgreSQL
failover benchmark; cirkel's half is `cirkel drill failover`).

One run: pgbench (4 clients, through HAProxy) loads the leader; two seconds
in, a canary thread does one autocommit `INSERT ... RETURNING
inet_server_port()` every 10 ms through HAProxy and records the monotonic
time of every acknowledged write and the port that served it. After a second
of canary writes the leader's Patroni process is killed with SIGKILL and,
right after, its postmaster. RTO = kill -> first canary write acknowledged by
another node. After 20 acknowledgements from the new leader the canary and
pgbench stop, the acknowledged rows missing on the new leader (queried
directly, not through HAProxy) are counted, the killed node's Patroni is
started again, and the driver waits until the cluster has one leader, two
streaming replicas (the old leader among them) and HAProxy leads to the
leader. The report uses the keys of `cirkel drill failover --json`.

Runs as root with the Python of the Patroni venv (it needs psycopg 3):
    python bench/patroni_failover.py --config WORK/bench.json wait --what healthy
    python bench/patroni_failover.py --config WORK/bench.json run --run 1 --out FILE
WORK/bench.json is written by bench/pg-failover-patroni.sh.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timezone

import psycopg

REPLICA_ROLES = ("replica", "sync_standby", "quorum_standby")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, path):
        with open(path) as f:
            c = json.load(f)
        self.work = c["work"]
        self.pgbin = c["pgbin"]
        self.venv = c["venv"]
        self.mode = c["mode"]
        self.haproxy_port = int(c["haproxy_port"])
        self.nodes = {}
        for name, n in c["nodes"].items():
            d = os.path.join(self.work, name)
            self.nodes[name] = {
                "name": name,
                "pg_port": int(n["pg_port"]),
                "rest_port": int(n["rest_port"]),
                "dir": d,
                "data": os.path.join(d, "data"),
                "sock": os.path.join(d, "sock"),
                "config": os.path.join(d, "patroni.yml"),
                "pidfile": os.path.join(d, "patroni.pid"),
                "log": os.path.join(d, "patroni.log"),
            }

    def as_pg(self, argv):
        return [
            "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
            "env", f"HOME={self.work}", *argv,
        ]

    def dsn(self, port, connect_timeout=2, statement_ms=2000):
        return (
            f"host=127.0.0.1 port={port} user=postgres dbname=postgres "
            f"connect_timeout={connect_timeout} sslmode=disable gssencmode=disable "
            f"tcp_user_timeout={statement_ms} options='-c statement_timeout={statement_ms}'"
        )

    def node_by_port(self, port):
        for n in self.nodes.values():
            if n["pg_port"] == port:
                return n
        return None


# ---------------------------------------------------------------- processes

def proc_state(pid):
    """'gone', 'zombie' or 'alive'."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "zombie" if line.split()[1] in ("Z", "X") else "alive"
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    return "alive"


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def first_line_pid(path):
    try:
        with open(path) as f:
            return int(f.readline().strip())
    except (OSError, ValueError):
        return None


def remove_stale_pidfiles(node):
    """A postmaster killed here may stay a zombie (nothing reaps orphans in
    this sandbox); its postmaster.pid and socket lock file would then keep
    PostgreSQL, and Patroni's view of it, from starting. Removes them when
    the pid they name is gone or a zombie."""
    removed = []
    pm = os.path.join(node["data"], "postmaster.pid")
    lock = os.path.join(node["sock"], f".s.PGSQL.{node['pg_port']}.lock")
    for path in (pm, lock):
        pid = first_line_pid(path)
        if pid is not None and proc_state(pid) != "alive":
            os.unlink(path)
            removed.append(f"{os.path.basename(path)} (pid {pid} {proc_state(pid)})")
    return removed


def start_patroni(b, node):
    logf = open(node["log"], "ab")
    p = subprocess.Popen(
        b.as_pg([os.path.join(b.venv, "bin", "patroni"), node["config"]]),
        stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
    )
    logf.close()
    with open(node["pidfile"], "w") as f:
        f.write(f"{p.pid}\n")
    return p


# ---------------------------------------------------------------- cluster

def rest(port, path, timeout=1.0):
    """(status, parsed JSON or None) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read() or b"null")
        except ValueError:
            body = None
        return e.code, body


def cluster(b, prefer=None):
    order = list(b.nodes.values())
    if prefer is not None:
        order.sort(key=lambda n: n["name"] != prefer)
    for n in order:
        try:
            status, body = rest(n["rest_port"], "/cluster")
            if status == 200 and body:
                return body
        except (OSError, ValueError):
            continue
    return None


def health(b, rejoined=None):
    """(ok, leader name or a description of what is wrong)."""
    c = cluster(b)
    if c is None:
        return False, "no Patroni REST API answers /cluster"
    members = c.get("members", [])
    desc = ", ".join(f"{m.get('name')}={m.get('role')}/{m.get('state')}" for m in members) or "no members"
    leaders = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
    streaming = [m for m in members if m.get("role") in REPLICA_ROLES and m.get("state") == "streaming"]
    if len(members) != len(b.nodes) or len(leaders) != 1 or len(streaming) != len(b.nodes) - 1:
        return False, desc
    if rejoined is not None and rejoined not in [m.get("name") for m in streaming]:
        return False, f"{desc}; {rejoined} is not streaming"
    leader = leaders[0]
    try:
        with psycopg.connect(b.dsn(b.haproxy_port), autocommit=True) as conn:
            port, recovery = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    except Exception as e:  # noqa: BLE001 - any failure means "not yet"
        return False, f"{desc}; through HAProxy: {str(e).strip() or type(e).__name__}"
    if port != int(leader.get("port", -1)) or recovery:
        return False, f"{desc}; HAProxy leads to port {port} (in recovery: {recovery})"
    return True, leader["name"]


def diagnostics(b):
    out = []
    try:
        any_cfg = next(iter(b.nodes.values()))["config"]
        r = subprocess.run(
            [os.path.join(b.venv, "bin", "patronictl"), "-c", any_cfg, "list"],
            capture_output=True, text=True, timeout=20,
        )
        out.append(r.stdout + r.stderr)
    except Exception as e:  # noqa: BLE001
        out.append(f"patronictl list failed: {e}")
    for n in b.nodes.values():
        try:
            with open(n["log"], errors="replace") as f:
                tail = f.readlines()[-15:]
        except OSError:
            tail = []
        out.append(f"--- last lines of {n['log']}\n" + "".join(tail))
    return "\n".join(out)


def wait_for(b, what, timeout, rejoined=None):
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if what == "leader":
            c = cluster(b)
            leaders = [m for m in (c or {}).get("members", []) if m.get("role") == "leader" and m.get("state") == "running"]
            if leaders:
                return True, leaders[0]["name"]
            last = "no leader yet"
        else:
            ok, last = health(b, rejoined)
            if ok:
                return True, last
        time.sleep(0.1)
    return False, last


# ---------------------------------------------------------------- the run

class Canary(threading.Thread):
    def __init__(self, b, run_id):
        super().__init__(daemon=True)
        self.b = b
        self.run_id = run_id
        self.acks = []  # (seq, monotonic time of the acknowledgement, serving port)
        self.failed = 0
        self.stopping = threading.Event()

    def run(self):
        conn = None
        seq = 0
        dsn = self.b.dsn(self.b.haproxy_port)
        while not self.stopping.is_set():
            seq += 1
            try:
                if conn is None:
                    conn = psycopg.connect(dsn, autocommit=True, prepare_threshold=None)
                port = conn.execute(
                    "INSERT INTO canary(run, seq) VALUES (%s, %s) RETURNING inet_server_port()",
                    (self.run_id, seq),
                ).fetchone()[0]
                self.acks.append((seq, time.monotonic(), port))
            except Exception:  # noqa: BLE001 - reconnect at the next tick
                self.failed += 1
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001
                        pass
                conn = None
            time.sleep(0.01)
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


class PrimaryWatch(threading.Thread):
    """Kill -> the first time a surviving node's REST API answers /primary
    with 200 (Patroni holds the leader key and PostgreSQL runs as primary):
    splits the RTO into Patroni's part and HAProxy's."""

    def __init__(self, ports, start):
        super().__init__(daemon=True)
        self.ports = ports
        self.start_t = start
        self.found = None
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set() and self.found is None:
            for p in self.ports:
                try:
                    status, _ = rest(p, "/primary", timeout=0.5)
                except (OSError, ValueError):
                    continue
                if status == 200:
                    self.found = time.monotonic() - self.start_t
                    return
            time.sleep(0.1)


def stop_process(p, pidfile):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    try:
        os.unlink(pidfile)
    except OSError:
        pass


def one_run(b, run_no, rto_timeout, rejoin_timeout):
    failures = []
    ok, leader = health(b)
    if not ok:
        raise SystemExit(f"the cluster is not healthy before run {run_no}: {leader}")
    old = b.nodes[leader]
    patroni_pid = first_line_pid(old["pidfile"])
    if patroni_pid is None or proc_state(patroni_pid) != "alive" or "patroni" not in cmdline(patroni_pid):
        raise SystemExit(f"no live Patroni process for the leader {leader} (pid file {old['pidfile']}: {patroni_pid})")
    pm_pid = first_line_pid(os.path.join(old["data"], "postmaster.pid"))
    if pm_pid is None or proc_state(pm_pid) != "alive":
        raise SystemExit(f"no live postmaster for the leader {leader} in {old['data']}/postmaster.pid")
    others = [n for n in b.nodes.values() if n["name"] != leader]

    started = datetime.now(timezone.utc)
    run_id = f"{run_no}-{uuid.uuid4().hex[:8]}"
    load_log = open(os.path.join(b.work, f"pgbench-{run_no}.log"), "wb")
    load = subprocess.Popen(
        b.as_pg([os.path.join(b.pgbin, "pgbench"), "-h", "127.0.0.1", "-p", str(b.haproxy_port),
                 "-U", "postgres", "-c", "4", "-T", "600", "-n", "postgres"]),
        stdin=subprocess.DEVNULL, stdout=load_log, stderr=subprocess.STDOUT,
    )
    load_log.close()
    load_pidfile = os.path.join(b.work, "pgbench.pid")
    with open(load_pidfile, "w") as f:
        f.write(f"{load.pid}\n")
    time.sleep(2)
    canary = Canary(b, run_id)
    canary.start()
    time.sleep(1)

    fault = time.monotonic()
    os.kill(patroni_pid, signal.SIGKILL)
    os.kill(pm_pid, signal.SIGKILL)
    watch = PrimaryWatch([n["rest_port"] for n in others], fault)
    watch.start()

    first = None
    while time.monotonic() - fault < rto_timeout:
        first = next(((s, t, p) for (s, t, p) in list(canary.acks) if t > fault and p != old["pg_port"]), None)
        if first is not None:
            break
        time.sleep(0.005)
    new = None
    if first is None:
        failures.append(f"no canary write went through HAProxy to another node within {rto_timeout} s of the kill")
    else:
        new = b.node_by_port(first[2])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(1 for (_, t, p) in list(canary.acks) if t >= first[1] and p == first[2]) >= 20:
                break
            time.sleep(0.01)
        else:
            failures.append("fewer than 20 canary writes acknowledged by the new leader within 30 s")
    canary.stopping.set()
    canary.join(10)
    watch.stopping.set()
    stop_process(load, load_pidfile)
    acks = list(canary.acks)

    lost = 0
    lost_writes = []
    if new is not None:
        present, err = None, None
        for _ in range(20):
            try:
                with psycopg.connect(b.dsn(new["pg_port"], statement_ms=10000), autocommit=True) as conn:
                    present = {r[0] for r in conn.execute("SELECT seq FROM canary WHERE run = %s", (run_id,))}
                break
            except Exception as e:  # noqa: BLE001
                err = e
                time.sleep(0.5)
        if present is None:
            failures.append(f"could not read the canary rows on the new leader {new['name']}: {err}")
        else:
            missing = [(s, t, p) for (s, t, p) in acks if s not in present]
            lost = len(missing)
            if lost:
                failures.append(f"{lost} acknowledged canary writes are missing on the new leader {new['name']}")
            # which writes: acknowledged how long before (-) or after the kill, by which node
            lost_writes = [
                {"seq": s, "acked_after_kill_s": round(t - fault, 4), "by": (b.node_by_port(p) or {}).get("name", p)}
                for (s, t, p) in missing[:20]
            ]

    # Start the killed node's Patroni again; with use_pg_rewind it rewinds the
    # old leader into a replica of the new one.
    removed = remove_stale_pidfiles(old)
    restart = time.monotonic()
    start_patroni(b, old)
    rejoin = None
    ok, state = wait_for(b, "healthy", rejoin_timeout, rejoined=leader)
    if ok:
        rejoin = time.monotonic()
    else:
        failures.append(f"{leader} did not come back as a streaming replica within {rejoin_timeout} s: {state}")
        log(diagnostics(b))

    pre_kill = sum(1 for (_, t, p) in acks if t <= fault and p == old["pg_port"])
    if pre_kill == 0:
        failures.append("no canary write reached the old leader before the kill")
    report = {
        "kind": "patroni-failover",
        "mode": b.mode,
        "run": run_no,
        "started": started.isoformat(),
        # passed = a new leader took writes and no acknowledged write was lost
        "passed": new is not None and lost == 0,
        "failures": failures,
        "killed": leader,
        "new_primary": new["name"] if new else None,
        "rto_s": (first[1] - fault) if first else None,
        "primary_rest_s": watch.found,
        "writes_acknowledged": len(acks),
        "writes_acknowledged_before_kill": pre_kill,
        "writes_failed": canary.failed,
        "writes_lost": lost,
        "lost_writes": lost_writes,
        "rejoin_s": (rejoin - fault) if rejoin else None,
        "rejoin_after_restart_s": (rejoin - restart) if rejoin else None,
        "restart_after_kill_s": restart - fault,
        "stale_files_removed": removed,
    }
    return report


def fmt(x, spec="5.2f"):
    return "  n/a" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait", help="wait until the cluster has a leader, or is healthy")
    w.add_argument("--what", choices=["leader", "healthy"], default="healthy")
    w.add_argument("--timeout", type=float, default=300)
    r = sub.add_parser("run", help="one failover run")
    r.add_argument("--run", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--rto-timeout", type=float, default=180)
    r.add_argument("--rejoin-timeout", type=float, default=300)
    a = ap.parse_args()
    b = Bench(a.config)
    if a.cmd == "wait":
        ok, state = wait_for(b, a.what, a.timeout)
        if ok:
            print(state)
            return 0
        log(f"timed out after {a.timeout:.0f} s waiting for the Patroni cluster to be {a.what}: {state}")
        log(diagnostics(b))
        return 1
    rep = one_run(b, a.run, a.rto_timeout, a.rejoin_timeout)
    with open(a.out, "w") as f:
        json.dump(rep, f, indent=2)
        f.write("\n")
    print(
        f"  run {a.run:>2}: killed {rep['killed']} -> {rep['new_primary']}  RTO {fmt(rep['rto_s'])} s "
        f"(leader on REST after {fmt(rep['primary_rest_s'])} s)  lost writes {rep['writes_lost']} of "
        f"{rep['writes_acknowledged']}  rejoin {fmt(rep['rejoin_s'])} s ({fmt(rep['rejoin_after_restart_s'])} s "
        f"after restart)  passed {rep['passed']}",
        flush=True,
    )
    for f_ in rep["failures"]:
        print(f"          failure: {f_}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
