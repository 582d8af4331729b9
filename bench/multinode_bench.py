"""Driver of bench/ha-multinode.sh: PostgreSQL failover across three hosts
in network namespaces, cirkel (an agent per host, leadership in etcd)
against Patroni 4 + etcd + HAProxy, in one run on one machine.

The hosts: a bridge in the root namespace (10.251.N.254) and three
namespaces, each with a veth to it and 10.251.N.1-3. Each host runs an etcd
member, a PostgreSQL 15 member and the system's agent (cirkel serve --node,
or Patroni). The clients (pgbench, the canary) run in the root namespace:
for cirkel they write through the endpoints (proxy_listen) of the hosts
that survive, for Patroni through one HAProxy in the root namespace that
checks every node's REST API, as Patroni documents it.

A run kills the primary's whole host: its link goes down (packets are
dropped, no reset) and every process in its namespace is killed with
SIGKILL (agent, PostgreSQL, etcd member) at the same moment. pgbench (4
clients) loads the cluster; a canary writes one row every 10 ms; RTO = kill
-> first canary write acknowledged by another server. Lost = acknowledged
canary rows missing on the new primary. Then the host comes back (link up,
etcd, PostgreSQL started as a boot would, the agent) and the driver waits
until it streams from the new primary again.

After each host kill, a flap (no fault): the primary's PostgreSQL, the
postmaster and every child, frozen with SIGSTOP twice, each time for 80% of
the longest freeze the system's own settings ride out whatever the phase
(cirkel: (unhealthy_threshold - 1) x interval + timeout of its health
check, 2.5 s at the defaults; Patroni: ttl - loop_wait, 18 s, since its
leader's loop waits on the frozen server before it refreshes the key), with
one check period and a second between, under pgbench.

Then RUNS kills of the primary's postmaster alone, its host and agent
alive (Patroni restarts it in place): RTO = kill -> first acknowledged write
after the first failed one (0 if none failed).

False failovers: every failover a system recorded (cirkel: the `failover`
events in every agent's state directory, by the time decided; Patroni:
"promoted self to leader" in its logs) whose time lies in no fault's
window, from the kill to the cluster healed; those during a flap are also
counted apart.

Usage: python multinode_bench.py --cirkel BIN --out DIR [--runs N]
       [--systems cirkel,patroni-fast] [--patroni VENV] [--synchronous]
Prints one JSON line per run and writes them to DIR/runs.jsonl.
"""

import argparse
import calendar
import itertools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import psycopg

PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
AS_PG = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
MEMBERS = ["a", "b", "c"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(args, check=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {r.stderr.strip()}")
    return r.stdout


class Net:
    """A bridge and three namespaces; removed by close()."""

    def __init__(self):
        self.id = 20 + os.getpid() % 200
        self.prefix = f"10.251.{self.id}"
        self.bridge = f"ckmb{self.id}"
        self.ns = [f"ckmb{self.id}-{i + 1}" for i in range(3)]
        self.ports = [f"ckmb{self.id}h{i + 1}" for i in range(3)]
        self.close()
        sh(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
        sh(["ip", "addr", "add", f"{self.prefix}.254/24", "dev", self.bridge])
        sh(["ip", "link", "set", "dev", self.bridge, "up"])
        for i in range(3):
            peer = f"ckmb{self.id}p{i + 1}"
            sh(["ip", "netns", "add", self.ns[i]])
            sh(["ip", "link", "add", "name", self.ports[i], "type", "veth", "peer", "name", peer])
            sh(["ip", "link", "set", "dev", peer, "netns", self.ns[i]])
            sh(["ip", "link", "set", "dev", self.ports[i], "master", self.bridge, "up"])
            n = ["ip", "-n", self.ns[i]]
            sh(n + ["link", "set", "dev", peer, "name", "eth0"])
            sh(n + ["addr", "add", f"{self.ip(i)}/24", "dev", "eth0"])
            sh(n + ["link", "set", "dev", "eth0", "up"])
            sh(n + ["link", "set", "dev", "lo", "up"])

    def ip(self, i):
        return f"{self.prefix}.{i + 1}"

    def cidr(self):
        return f"{self.prefix}.0/24"

    def cmd(self, i, args):
        return ["ip", "netns", "exec", self.ns[i]] + list(args)

    def isolate(self, i):
        sh(["ip", "link", "set", "dev", self.ports[i], "down"])

    def heal(self, i):
        sh(["ip", "link", "set", "dev", self.ports[i], "up"])

    def pids(self, i):
        out = sh(["ip", "netns", "pids", self.ns[i]], check=False)
        return [int(p) for p in out.split()]

    def kill_all(self, i):
        for _ in range(20):
            pids = self.pids(i)
            if not pids:
                return
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def close(self):
        for i, ns in enumerate(self.ns):
            if os.path.exists(f"/var/run/netns/{ns}"):
                self.kill_all(i)
                sh(["ip", "netns", "del", ns], check=False)
            sh(["ip", "link", "del", self.ports[i]], check=False)
        sh(["ip", "link", "del", self.bridge], check=False)


def spawn(args, logfile, env=None):
    f = open(logfile, "ab")
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env, start_new_session=True)


class Etcd:
    def __init__(self, net, work):
        self.net, self.work = net, work
        self.cluster = ",".join(f"e{i + 1}=http://{net.ip(i)}:2380" for i in range(3))
        self.started = [False] * 3
        for i in range(3):
            self.start(i)
        for i in range(3):
            self.wait(i)

    def endpoints(self):
        return [f"http://{self.net.ip(i)}:2379" for i in range(3)]

    def start(self, i):
        ip = self.net.ip(i)
        state = "existing" if self.started[i] else "new"
        self.started[i] = True
        spawn(self.net.cmd(i, [
            "etcd", "--name", f"e{i + 1}", "--data-dir", f"{self.work}/etcd-{i + 1}",
            "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
            "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
            "--initial-cluster", self.cluster, "--initial-cluster-state", state,
            "--initial-cluster-token", "cirkel-bench"]), f"{self.work}/etcd-{i + 1}.log")

    def wait(self, i, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.net.ip(i)}:2379/health", timeout=1) as r:
                    if json.load(r).get("health") == "true":
                        return
            except Exception:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"etcd member {i + 1} not healthy")


def psql_sock(sock, sql, port=5432):
    r = subprocess.run([f"{PGBIN}/psql", "-X", "-A", "-t", "-h", sock, "-p", str(port), "-U", "postgres",
                        "-d", "postgres", "-c", sql], capture_output=True, text=True,
                       env=dict(os.environ, PGCONNECT_TIMEOUT="2"))
    return r.stdout.strip() if r.returncode == 0 else None


# Every canary of the process draws its row numbers from here: the table
# keeps the rows of earlier runs, and a number written again would fail on
# the primary key, which would count as the system's outage.
SEQ = itertools.count(1)
SEQ_LOCK = threading.Lock()


class Canary:
    """Threads writing one row every 10 ms, each through one address; no
    two writes of the process carry the same row number."""

    def __init__(self, addrs, table="canary"):
        self.addrs, self.table = addrs, table
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acks = []  # (sent, acked, server, seq)
        self.fails = []  # (sent, failed)
        self.threads = [threading.Thread(target=self.loop, args=(a,), daemon=True) for a in addrs]
        for t in self.threads:
            t.start()

    def next_seq(self):
        with SEQ_LOCK:
            return next(SEQ)

    def loop(self, addr):
        host, port = addr
        conn = None
        while not self.stop.is_set():
            t0 = time.monotonic()
            seq = self.next_seq()
            timer = None
            try:
                if conn is None:
                    conn = psycopg.connect(host=host, port=port, user="postgres", dbname="postgres",
                                           connect_timeout=2, autocommit=True,
                                           options="-c statement_timeout=3000")
                fd = os.dup(conn.fileno())
                s = socket.socket(fileno=fd)
                def cut(s=s):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

                timer = threading.Timer(2.0, cut)
                timer.start()
                try:
                    row = conn.execute(f"INSERT INTO {self.table} (seq) VALUES (%s) RETURNING inet_server_addr()::text",
                                       (seq,)).fetchone()
                finally:
                    timer.cancel()
                    s.detach()
                    os.close(fd)
                with self.lock:
                    self.acks.append((t0, time.monotonic(), row[0].split("/")[0], seq))
            except Exception:
                with self.lock:
                    self.fails.append((t0, time.monotonic()))
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
            time.sleep(max(0.0, 0.01 - (time.monotonic() - t0)))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)

    def rto_other(self, t_kill, old):
        """Kill -> first ack by a server other than `old`."""
        with self.lock:
            acks = sorted(a for a in self.acks if a[0] >= t_kill and a[2] != old)
        return (acks[0][1] - t_kill, acks[0][2]) if acks else (None, None)

    def rto_after_failure(self, t_kill):
        with self.lock:
            fails = sorted(f for f in self.fails if f[0] >= t_kill)
            if not fails:
                return 0.0, None
            acks = sorted(a for a in self.acks if a[0] >= fails[0][0])
        return (acks[0][1] - t_kill, acks[0][2]) if acks else (None, None)

    def acked_after(self, t, n, old=None):
        with self.lock:
            return sum(1 for a in self.acks if a[0] >= t and a[2] != old) >= n


def utc_seconds(stamp):
    """Seconds since the epoch of an RFC 3339 UTC time with up to 9 decimals."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


def utc_str(t):
    return time.strftime("%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}"


def pctl(xs, p):
    xs = sorted(x for x in xs if x is not None)
    return xs[max(0, math.ceil(p * len(xs)) - 1)] if xs else float("nan")


class Pgbench:
    def __init__(self, host, port, logfile):
        self.p = subprocess.Popen(AS_PG + [f"{PGBIN}/pgbench", "-n", "-c", "4", "-T", "600", "-h", host,
                                           "-p", str(port), "-U", "postgres", "postgres"],
                                  stdout=open(logfile, "ab"), stderr=subprocess.STDOUT)

    def stop(self):
        self.p.kill()
        self.p.wait()


class Supervised:
    """Agents restarted a second after they exit, as systemd's
    Restart=always would (Patroni exits when etcd does not answer at its
    start); a killed host's agent is not, until the host comes back."""

    def sock(self, i):
        return f"{self.work}/{MEMBERS[i]}/sock"

    def primary(self):
        ps = [i for i in range(3) if psql_sock(self.sock(i), "SELECT pg_is_in_recovery()") == "f"]
        return ps[0] if len(ps) == 1 else None

    def postmaster_pid(self, i):
        with open(f"{self.work}/{MEMBERS[i]}/data/postmaster.pid") as f:
            return int(f.readline())

    def postgres_pids(self, i):
        """The member's postmaster and its children (backends, WAL senders, ...)."""
        pm = self.postmaster_pid(i)
        pids = [pm]
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pm:
                pids.append(int(d))
        return pids

    def start_if_down(self, i):
        """Patroni starts a member whose postmaster is gone by itself."""
        return False

    def flap_gap(self):
        """Between two freezes of a flap: long enough for one whole check to pass."""
        return self.check_period() + 1.0

    def flap_settle(self):
        """After the last freeze: long enough for a failover it caused to show."""
        return self.check_period() + 5.0

    def supervise(self):
        self.down = set()
        self.restarts = 0
        self.stop_supervisor = threading.Event()
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self):
        while not self.stop_supervisor.wait(1.0):
            for i in range(3):
                a = self.agents[i]
                if i not in self.down and a is not None and a.poll() is not None:
                    log(f"   {self.name}: the agent on host {i + 1} exited ({a.returncode}); restarting it")
                    self.restarts += 1
                    self.start_agent(i)


# ---- cirkel --------------------------------------------------------------

class CirkelSystem(Supervised):
    name = "cirkel"
    # [postgres.main.health] at its defaults (the run's config sets none):
    # a probe (a new connection and a query) every interval, given timeout;
    # the member is down after unhealthy_threshold failed probes in a row.
    INTERVAL, TIMEOUT, UNHEALTHY = 1.0, 0.5, 3

    def tolerated_freeze(self):
        """The longest freeze of the primary's PostgreSQL the settings ride
        out whatever the phase: the probes that fail are those started
        within (freeze - timeout), at most UNHEALTHY - 1 of them while
        freeze <= (UNHEALTHY - 1) x interval + timeout."""
        return (self.UNHEALTHY - 1) * self.INTERVAL + self.TIMEOUT

    def check_period(self):
        return self.INTERVAL

    def failovers(self):
        """(time decided, old primary, new primary) of every `failover`
        event any agent recorded in its state directory."""
        seen = {}
        for i in range(3):
            try:
                with open(f"{self.work}/state-n{i + 1}/events.jsonl") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("kind") != "failover":
                    continue
                d = e.get("details") or {}
                t = utc_seconds(d.get("decided") or e["time"])
                seen[(round(t, 3), d.get("old_primary"), d.get("new_primary"))] = None
        return sorted(seen)

    def __init__(self, net, work, binary, synchronous=False):
        self.net, self.work, self.bin = net, work, binary
        self.agents = [None] * 3
        os.makedirs(work, exist_ok=True)
        self.etcd = Etcd(net, work)
        for i, m in enumerate(MEMBERS):
            os.makedirs(f"{work}/{m}/sock", exist_ok=True)
            os.makedirs(f"{work}/state-n{i + 1}", exist_ok=True)
        sh(["chown", "-R", "postgres:postgres", work])
        a = f"{work}/a/data"
        sh(AS_PG + [f"{PGBIN}/initdb", "-D", a, "-U", "postgres", "--auth=trust", "--data-checksums",
                    "-E", "UTF8", "--locale=C"])
        with open(f"{a}/postgresql.conf", "a") as f:
            f.write("port = 5432\nlisten_addresses = '*'\nwal_level = replica\nhot_standby = on\n"
                    "wal_log_hints = on\nmax_wal_senders = 10\nmax_replication_slots = 10\n"
                    "max_connections = 50\nshared_buffers = 64MB\nwal_keep_size = 512MB\nfsync = on\n")
        with open(f"{a}/pg_hba.conf", "a") as f:
            f.write(f"host all all {net.cidr()} trust\nhost replication all {net.cidr()} trust\n")
        self.own_conf(0)
        self.pg_start(0, wait=True)
        for i in (1, 2):
            m = MEMBERS[i]
            sh(net.cmd(i, AS_PG + [f"{PGBIN}/pg_basebackup", "-D", f"{work}/{m}/data", "-R", "-X", "stream",
                                   "-c", "fast", "-d",
                                   f"host={net.ip(0)} port=5432 user=postgres application_name={m}"]))
            self.own_conf(i)
            self.pg_start(i, wait=True)
        members = ""
        for i, m in enumerate(MEMBERS):
            ip = net.ip(i)
            members += (f'\n[postgres.main.members.{m}]\nhost = "{ip}"\nport = 5432\nzone = "{m}"\n'
                        f'node = "n{i + 1}"\npgdata = "{work}/{m}/data"\napi_listen = "{ip}:8008"\n')
        eps = ", ".join(f'"{e}"' for e in self.etcd.endpoints())
        self.config = f"{work}/cirkel.toml"
        with open(self.config, "w") as f:
            f.write(f'[coordination]\netcd = [{eps}]\n\n[postgres.main]\nuser = "postgres"\ndatabase = "postgres"\n'
                    f'proxy_listen = "0.0.0.0:6432"\nproxy_listen_ro = "0.0.0.0:6433"\n'
                    f'{"synchronous = true" + chr(10) if synchronous else ""}{members}')
        sh(["chown", "-R", "postgres:postgres", work])
        for i in range(3):
            self.start_agent(i)
        self.supervise()

    def own_conf(self, i):
        m = MEMBERS[i]
        with open(f"{self.work}/{m}/data/postgresql.conf", "a") as f:
            f.write(f"unix_socket_directories = '{self.work}/{m}/sock'\ncluster_name = '{m}'\n")
        sh(["chown", "-R", "postgres:postgres", f"{self.work}/{m}"])

    def pg_start(self, i, wait=False):
        m = MEMBERS[i]
        args = [f"{PGBIN}/pg_ctl", "-D", f"{self.work}/{m}/data", "-l", f"{self.work}/{m}/postgres.log"]
        args += ["-w", "-t", "120"] if wait else ["-W"]
        sh(self.net.cmd(i, AS_PG + args + ["start"]), check=wait)

    def start_agent(self, i):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CIRKEL_", "PG"))}
        env["CIRKEL_STATE_DIR"] = f"{self.work}/state-n{i + 1}"
        self.agents[i] = spawn(self.net.cmd(i, AS_PG + [self.bin, "--config", self.config, "serve",
                                                        "--node", f"n{i + 1}"]),
                               f"{self.work}/agent-n{i + 1}.log", env=env)

    def endpoint(self, i):
        return (self.net.ip(i), 6432)

    def healthy(self):
        p = self.primary()
        if p is None:
            return False
        n = psql_sock(self.sock(p), "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        if n != "2":
            return False
        for i in range(3):
            try:
                with psycopg.connect(host=self.net.ip(i), port=6432, user="postgres", dbname="postgres",
                                     connect_timeout=2, autocommit=True) as c:
                    c.execute("SELECT 1")
            except Exception:
                return False
        return True

    def kill_host(self, i):
        self.down.add(i)
        self.net.isolate(i)
        self.net.kill_all(i)

    def revive_host(self, i):
        self.net.heal(i)
        self.etcd.start(i)
        m = MEMBERS[i]
        pid = f"{self.work}/{m}/data/postmaster.pid"
        try:
            os.unlink(pid)
        except FileNotFoundError:
            pass
        self.pg_start(i)
        self.start_agent(i)
        self.down.discard(i)

    def start_if_down(self, i):
        """A member whose postmaster is gone is started (as an operator would); whether it was."""
        try:
            os.kill(self.postmaster_pid(i), 0)
            return False
        except (OSError, ValueError):
            self.pg_start(i)
            return True

    def lost(self, p, seqs):
        out = psql_sock(self.sock(p), "SELECT seq FROM canary") or ""
        have = {int(x) for x in out.split()}
        return sum(1 for s in seqs if s not in have)

    def repair(self):
        """Clones afresh every member that does not stream from the primary
        (its agent stopped meanwhile), as an operator would; the members
        repaired."""
        p = self.primary()
        if p is None:
            return []
        out = psql_sock(self.sock(p), "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'")
        streaming = set((out or "").split())
        repaired = []
        for i, m in enumerate(MEMBERS):
            if i == p or m in streaming:
                continue
            self.down.add(i)
            self.agents[i].kill()
            self.agents[i].wait()
            sh(self.net.cmd(i, AS_PG + [f"{PGBIN}/pg_ctl", "-D", f"{self.work}/{m}/data", "-m", "immediate",
                                        "stop"]), check=False)
            subprocess.run(["rm", "-rf", f"{self.work}/{m}/data"])
            sh(self.net.cmd(i, AS_PG + [f"{PGBIN}/pg_basebackup", "-D", f"{self.work}/{m}/data", "-R", "-X",
                                        "stream", "-c", "fast", "-d",
                                        f"host={self.net.ip(p)} port=5432 user=postgres application_name={m}"]))
            self.own_conf(i)
            self.pg_start(i, wait=True)
            self.start_agent(i)
            self.down.discard(i)
            repaired.append(m)
        return repaired


# ---- Patroni -------------------------------------------------------------

class PatroniSystem(Supervised):
    def __init__(self, net, work, venv, mode, synchronous=False):
        self.net, self.work, self.venv, self.mode = net, work, venv, mode
        self.name = f"patroni-{mode}"
        ttl, loop, retry, checks = {"fast": (20, 2, 4, "inter 1s fall 2 rise 2"),
                                    "default": (30, 10, 10, "inter 3s fall 3 rise 2")}[mode]
        self.ttl, self.loop_wait = ttl, loop
        os.makedirs(work, exist_ok=True)
        self.etcd = Etcd(net, work)
        hosts = ",".join(f"{net.ip(i)}:2379" for i in range(3))
        for i, m in enumerate(MEMBERS):
            ip = net.ip(i)
            os.makedirs(f"{work}/{m}/sock", exist_ok=True)
            with open(f"{work}/{m}/patroni.yml", "w") as f:
                f.write(f"""scope: bench
namespace: /bench/
name: {m}
restapi:
  listen: {ip}:8008
  connect_address: {ip}:8008
etcd3:
  hosts: {hosts}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
    synchronous_mode: {'true' if synchronous else 'false'}
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        max_connections: 50
        shared_buffers: 64MB
        wal_keep_size: 512MB
  initdb:
    - data-checksums
    - encoding: UTF8
    - locale: C
postgresql:
  listen: {ip}:5432
  connect_address: {ip}:5432
  data_dir: {work}/{m}/data
  bin_dir: {PGBIN}
  pgpass: {work}/{m}/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: {work}/{m}/sock
  pg_hba:
    - local all all trust
    - host all all {net.cidr()} trust
    - host replication all {net.cidr()} trust
watchdog:
  mode: 'off'
""")
        sh(["chown", "-R", "postgres:postgres", work])
        self.agents = [None] * 3
        self.start_agent(0)
        wait_for("Patroni to bootstrap a leader", 120, lambda: self.primary() == 0)
        self.start_agent(1)
        self.start_agent(2)
        self.supervise()
        self.hap = 25000 + os.getpid() % 1000
        with open(f"{work}/haproxy.cfg", "w") as f:
            f.write(f"global\n    maxconn 200\n\ndefaults\n    mode tcp\n    retries 2\n    timeout connect 4s\n"
                    f"    timeout client 30m\n    timeout server 30m\n\nlisten primary\n"
                    f"    bind 127.0.0.1:{self.hap}\n    option httpchk OPTIONS /primary\n"
                    f"    http-check expect status 200\n    default-server {checks} on-marked-down shutdown-sessions\n")
            for i, m in enumerate(MEMBERS):
                f.write(f"    server {m} {net.ip(i)}:5432 maxconn 100 check port 8008\n")
        self.haproxy = spawn(["haproxy", "-db", "-f", f"{work}/haproxy.cfg"], f"{work}/haproxy.log")

    def tolerated_freeze(self):
        """The leader's loop queries its PostgreSQL (through a socket with no
        client-side timeout) before it refreshes the leader key every
        loop_wait; a frozen PostgreSQL holds the loop, and the key lapses ttl
        after its last refresh, which is at most loop_wait before the
        freeze."""
        return self.ttl - self.loop_wait

    def check_period(self):
        return self.loop_wait

    def failovers(self):
        """(time, None, new leader) of every promotion in the Patroni logs."""
        out = []
        for m in MEMBERS:
            try:
                with open(f"{self.work}/patroni-{m}.log", errors="replace") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                if "promoted self to leader by acquiring session lock" not in line:
                    continue
                stamp, ms = line[:23].split(",")
                t = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
                out.append((round(t, 3), None, m))
        return sorted(out)

    def start_agent(self, i):
        env = dict(os.environ, HOME=self.work)
        self.agents[i] = spawn(self.net.cmd(i, AS_PG + [f"{self.venv}/bin/patroni", f"{self.work}/{MEMBERS[i]}/patroni.yml"]),
                               f"{self.work}/patroni-{MEMBERS[i]}.log", env=env)

    def endpoint(self, _i):
        return ("127.0.0.1", self.hap)

    def healthy(self):
        p = self.primary()
        if p is None:
            return False
        n = psql_sock(self.sock(p), "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        if n != "2":
            return False
        try:
            with psycopg.connect(host="127.0.0.1", port=self.hap, user="postgres", dbname="postgres",
                                 connect_timeout=2, autocommit=True) as c:
                return c.execute("SELECT NOT pg_is_in_recovery()").fetchone()[0]
        except Exception:
            return False

    def kill_host(self, i):
        self.down.add(i)
        self.net.isolate(i)
        self.net.kill_all(i)

    def revive_host(self, i):
        self.net.heal(i)
        self.etcd.start(i)
        try:
            os.unlink(f"{self.work}/{MEMBERS[i]}/data/postmaster.pid")
        except FileNotFoundError:
            pass
        self.start_agent(i)
        self.down.discard(i)

    def lost(self, p, seqs):
        out = psql_sock(self.sock(p), "SELECT seq FROM canary") or ""
        have = {int(x) for x in out.split()}
        return sum(1 for s in seqs if s not in have)

    def close(self):
        self.stop_supervisor.set()
        self.haproxy.kill()


def heal_or_repair(sys_, timeout):
    """Waits until the cluster is healthy; if it is not within `timeout`,
    the members that do not stream are cloned afresh (logged and reported:
    the system did not heal by itself). The time, and what was repaired."""
    try:
        return wait_for("the cluster to heal", timeout, sys_.healthy), []
    except RuntimeError:
        if not hasattr(sys_, "repair"):
            raise
        repaired = sys_.repair()
        log(f"   {sys_.name} did not heal within {timeout} s; cloned afresh: {repaired}")
        return wait_for("the cluster to heal after a repair", 180, sys_.healthy), repaired


def wait_for(what, timeout, f):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f():
            return time.monotonic()
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def host_kill_run(sys_, run, out):
    p = sys_.primary()
    survivors = [i for i in range(3) if i != p]
    old_ip = sys_.net.ip(p)
    addrs = sorted({sys_.endpoint(i) for i in survivors})
    bench = Pgbench(*sys_.endpoint(survivors[0]), f"{sys_.work}/pgbench.log")
    canary = Canary(addrs)
    time.sleep(2)
    load1 = os.getloadavg()[0]
    t_kill = time.monotonic()
    wall_kill = time.time()
    killed_at = utc_str(wall_kill)
    sys_.kill_host(p)
    try:
        wait_for("20 acknowledgements from a new primary", 180, lambda: canary.acked_after(t_kill, 20, old_ip))
    finally:
        canary.finish()
        bench.stop()
    rto, new_ip = canary.rto_other(t_kill, old_ip)
    new = [i for i in range(3) if sys_.net.ip(i) == new_ip][0]
    seqs = [a[3] for a in canary.acks]
    lost = sys_.lost(new, seqs)
    t_back = time.monotonic()
    sys_.revive_host(p)
    t_ok, repaired = heal_or_repair(sys_, 120)
    sys_.fault_windows.append((wall_kill, time.time()))
    rep = {"system": sys_.name, "kind": "host", "run": run, "killed_at_utc": killed_at, "killed": MEMBERS[p], "new_primary": MEMBERS[new],
           "rto_s": round(rto, 3), "writes_acknowledged": len(seqs), "writes_lost": lost,
           "failed_attempts": len(canary.fails),
           "rejoin_after_restart_s": round(t_ok - t_back, 2) if not repaired else None, "repaired": repaired,
           "agent_restarts": sys_.restarts, "load1": round(load1, 2)}
    emit(rep, out)


def postmaster_kill_run(sys_, run, out):
    p = sys_.primary()
    addrs = sorted({sys_.endpoint(i) for i in range(3)})
    bench = Pgbench(*sys_.endpoint((p + 1) % 3), f"{sys_.work}/pgbench.log")
    canary = Canary(addrs)
    time.sleep(2)
    load1 = os.getloadavg()[0]
    t_kill = time.monotonic()
    wall_kill = time.time()
    killed_at = utc_str(wall_kill)
    os.kill(sys_.postmaster_pid(p), signal.SIGKILL)
    try:
        wait_for("acknowledgements after the kill", 180,
                 lambda: canary.rto_after_failure(t_kill)[0] is not None and canary.acked_after(t_kill + 0.5, 20))
    finally:
        canary.finish()
        bench.stop()
    rto, new_ip = canary.rto_after_failure(t_kill)
    new = sys_.primary()
    seqs = [a[3] for a in canary.acks]
    lost = sys_.lost(new, seqs) if new is not None else None
    t0 = time.monotonic()
    by_hand = False
    repaired = []
    try:
        wait_for("the cluster to heal", 60, sys_.healthy)
    except RuntimeError:
        by_hand = sys_.start_if_down(p)
        _, repaired = heal_or_repair(sys_, 120)
    sys_.fault_windows.append((wall_kill, time.time()))
    rep = {"system": sys_.name, "kind": "postmaster", "run": run, "killed_at_utc": killed_at, "killed": MEMBERS[p],
           "new_primary": MEMBERS[new] if new is not None else None, "served_by": new_ip,
           "rto_s": round(rto, 3), "writes_acknowledged": len(seqs), "writes_lost": lost,
           "failed_attempts": len([f for f in canary.fails if f[0] >= t_kill]),
           "healed_s": round(time.monotonic() - t0, 2), "started_by_hand": by_hand, "repaired": repaired, "agent_restarts": sys_.restarts,
           "load1": round(load1, 2)}
    emit(rep, out)


# A flap: the primary's PostgreSQL (postmaster and every child) frozen with
# SIGSTOP FLAP_FREEZES times, each for FLAP_SHARE of the longest freeze the
# system's own settings ride out (tolerated_freeze), with a gap between in
# which one whole check passes; pgbench keeps loading it. No fault: any
# failover it causes is a false one.
FLAP_FREEZES = 2
FLAP_SHARE = 0.8


def flap_period(sys_, rnd, out):
    p = sys_.primary()
    if p is None:
        raise RuntimeError("no primary before a flap")
    freeze = round(FLAP_SHARE * sys_.tolerated_freeze(), 2)
    gap = sys_.flap_gap()
    bench = Pgbench(*sys_.endpoint((p + 1) % 3), f"{sys_.work}/pgbench.log")
    time.sleep(2)
    load1 = os.getloadavg()[0]
    started = time.time()
    try:
        for k in range(FLAP_FREEZES):
            if k:
                time.sleep(gap)
            pids = sys_.postgres_pids(p)
            try:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
                time.sleep(freeze)
            finally:
                for pid in reversed(pids):
                    try:
                        os.kill(pid, signal.SIGCONT)
                    except ProcessLookupError:
                        pass
        time.sleep(sys_.flap_settle())
    finally:
        bench.stop()
    after = sys_.primary()
    ended = time.time()
    sys_.flap_windows.append((started, ended))
    t0 = time.monotonic()
    _, repaired = heal_or_repair(sys_, 120)
    rep = {"system": sys_.name, "kind": "flap", "run": rnd, "started_at_utc": utc_str(started),
           "primary": MEMBERS[p], "primary_after": MEMBERS[after] if after is not None else None,
           "freezes": FLAP_FREEZES, "freeze_s": freeze, "tolerated_freeze_s": sys_.tolerated_freeze(),
           "gap_s": gap, "healed_s": round(time.monotonic() - t0, 2), "repaired": repaired,
           "load1": round(load1, 2)}
    emit(rep, out)


def count_false_failovers(sys_, out):
    """Failovers whose time is in no fault window (kill to healed); those
    during a flap are also counted apart."""
    fos = sys_.failovers()
    def within(t, ws):
        return any(a <= t <= b for a, b in ws)
    false = [f for f in fos if not within(f[0], sys_.fault_windows)]
    rep = {"system": sys_.name, "kind": "false-failovers", "count": len(false), "failovers": len(fos),
           "in_fault_windows": len(fos) - len(false), "faults": len(sys_.fault_windows),
           "during_flaps": sum(1 for f in false if within(f[0], sys_.flap_windows)), "flaps": len(sys_.flap_windows),
           "false": [{"at_utc": utc_str(t), "old": old, "new": new} for t, old, new in false]}
    emit(rep, out)
    log(f"   {sys_.name}: false failovers: {len(false)} ({len(fos)} failovers, "
        f"{len(sys_.fault_windows)} faults, {len(sys_.flap_windows)} flaps)")


def emit(rep, out):
    line = json.dumps(rep)
    print(line, flush=True)
    with open(out, "a") as f:
        f.write(line + "\n")


def prepare(sys_):
    wait_for(f"{sys_.name} to be healthy", 300, sys_.healthy)
    p = sys_.primary()
    sh(AS_PG + [f"{PGBIN}/pgbench", "-i", "-s", "10", "-q", "-h", sys_.sock(p), "-p", "5432", "-U", "postgres",
                "postgres"])
    psql_sock(sys_.sock(p), "CREATE TABLE canary (seq bigint PRIMARY KEY)")
    wait_for(f"{sys_.name} to be healthy", 300, sys_.healthy)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cirkel", required=True)
    ap.add_argument("--patroni", default="/tmp/cirkel-bench-patroni-4.1.5")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--systems", default="cirkel,patroni-fast")
    ap.add_argument("--out", required=True)
    ap.add_argument("--synchronous", action="store_true",
                    help="synchronous replication for every system (cirkel: synchronous = true; Patroni: synchronous_mode)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    out = f"{a.out}/runs.jsonl"
    for name in a.systems.split(","):
        net = Net()
        work = tempfile.mkdtemp(prefix=f"cirkel-bench-mn-{name}.", dir="/tmp")
        os.chmod(work, 0o755)
        sys_ = None
        try:
            log(f"== {name}: three hosts in {net.prefix}.0/24, work dir {work}, "
                f"{'synchronous' if a.synchronous else 'asynchronous'} replication")
            if name == "cirkel":
                sys_ = CirkelSystem(net, work, a.cirkel, a.synchronous)
            else:
                sys_ = PatroniSystem(net, work, a.patroni, name.split("-", 1)[1], a.synchronous)
            prepare(sys_)
            sys_.fault_windows, sys_.flap_windows = [], []
            for run in range(1, a.runs + 1):
                host_kill_run(sys_, run, out)
                flap_period(sys_, run, out)
            for run in range(1, a.runs + 1):
                postmaster_kill_run(sys_, run, out)
            count_false_failovers(sys_, out)
        finally:
            if sys_ is not None:
                sys_.stop_supervisor.set()
                log(f"   {name}: agents restarted after exiting by themselves: {sys_.restarts}")
            if isinstance(sys_, PatroniSystem):
                sys_.close()
            net.close()
            if os.environ.get("KEEP") != "1":
                subprocess.run(["rm", "-rf", f"{work}/a/data", f"{work}/b/data", f"{work}/c/data"] +
                               [f"{work}/etcd-{i}" for i in (1, 2, 3)])
            log(f"   logs in {work}")
    summarize(out)


def summarize(out):
    reps = [json.loads(l) for l in open(out)]
    rows = {}
    false = {}
    for r in reps:
        if r["kind"] == "false-failovers":
            false[r["system"]] = r
        elif r["kind"] in ("host", "postmaster"):
            rows.setdefault((r["system"], r["kind"]), []).append(r)
    print()
    print("| system | fault | runs | RTO median | RTO p99 (= max) | lost acked writes | rejoin median |")
    print("|---|---|---|---|---|---|---|")
    stats = {}
    for (system, kind), rs in rows.items():
        rto = [r["rto_s"] for r in rs]
        med, p99 = statistics.median(rto), pctl(rto, 0.99)
        stats[(system, kind)] = (med, p99)
        lost = sum(r["writes_lost"] or 0 for r in rs)
        acked = sum(r["writes_acknowledged"] for r in rs)
        rej = [r.get("rejoin_after_restart_s") or r.get("healed_s") for r in rs]
        rej = [x for x in rej if x is not None] or [float("nan")]
        repaired = sum(1 for r in rs if r.get("repaired"))
        print(f"| {system} | {'whole host killed' if kind == 'host' else 'postmaster killed, agent alive'} | "
              f"{len(rs)} | {med:.2f} s | {p99:.2f} s | {lost} of {acked} | {statistics.median(rej):.1f} s "
              f"({repaired} needed a fresh clone) |")
    for system, r in false.items():
        print(f"{system}: false failovers: {r['count']} ({r['failovers']} failovers, {r['in_fault_windows']} of them "
              f"within the {r['faults']} faults; {r['during_flaps']} during the {r['flaps']} flaps)")
    for (system, kind), (med, p99) in stats.items():
        c = stats.get(("cirkel", kind))
        if system.startswith("patroni") and c:
            what = "whole host killed" if kind == "host" else "postmaster killed"
            target = " (target p99 <= 0.33x of Patroni's fastest)" if kind == "host" else ""
            print(f"cirkel / {system}, {what}: p99 {c[1] / p99:.2f}x, median {c[0] / med:.2f}x{target}")


def on_term(*_):
    raise SystemExit(143)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_term)
    if len(sys.argv) > 1 and sys.argv[1] == "summary":
        summarize(sys.argv[2])
    else:
        main()
