#!/usr/bin/env bash
# pg-vs-pgbackrest.sh: `cirkel pg` against pgBackRest 2.45 (Debian package) on the
# same running PostgreSQL 15 cluster, both with zstd, encryption and 2 processes.
#
# What it measures, for each FILLER (blank = `pgbench -i` as generated, random =
# the same schema with 84 random hex characters in every filler column), on a
# pgbench database of scale SCALE:
#   load            pgbench -i (blank) or INSERT ... SELECT with md5() filler (random)
#   full_backup     cirkel `pg backup --type full` / pgbackrest `--type=full backup`
#                   (repo1, file-level) / pgbackrest-block (repo2: beta=y, bundle, block)
#   update          UPDATE 5 % of pgbench_accounts (a contiguous aid slice, a new one
#                   each run), VACUUM pgbench_accounts, CHECKPOINT (untimed setup)
#   incr_backup     cirkel `--type incr` / pgbackrest `--type=incr` (both repos)
#   restore         restore of the latest backup (the incr) into an empty directory
#                   (cirkel `pg restore --latest`, pgbackrest `restore` from repo1)
#   recovery        `pg_ctl start` of the restored copy (port RESTORE_PORT,
#                   archive_mode=off) until pg_is_in_recovery() = false; then a write,
#                   and sum(abalance) must equal the source's (ok=1)
#   walpush         one 16 MiB segment (a real one, produced by an UPDATE of this
#                   database) copied under unused names 00000001000000F0000000NN and
#                   pushed WALPUSH_N times by `cirkel wal-push` and by `pgbackrest
#                   archive-push`, each into a SCRATCH repository; the first call of
#                   each is reported separately (walpush_first: cirkel derives its key)
# Bytes: "bytes" of a backup is the growth of the tool's base-backup part of the
# repository (cirkel: du of the repo minus streams/; pgBackRest: du of backup/);
# WAL (cirkel streams/, pgBackRest archive/) and the totals are separate keys.
# Every line of results looks like
#   RESULT tool=... filler=... run=... step=... seconds=... bytes=... [key=value ...]
# (load1= is the 1-minute load average before the step). At the end a table of
# medians and ratios: pgbackrest time / cirkel time (>1 means cirkel is faster),
# cirkel bytes / pgbackrest bytes (<1 means cirkel stores less).
#
# Setup: one cluster (initdb -k, archive_mode=on) whose archive_command runs BOTH
#   cirkel wal-push %p && pgbackrest archive-push %p   (pgbackrest pushes to repo1 and repo2)
# so every repository has a complete archive. Every run starts with fresh, empty
# repositories (the archive_command is pointed at /bin/true while they are
# recreated), so every full backup is a first backup. The load itself runs with
# archive_command=/bin/true (its WAL is in no repository). The tool that goes first
# alternates per run. Everything PostgreSQL-related runs as the postgres user.
#
# Run (as root; it builds target/release/cirkel first and installs pgbackrest if missing):
#   bash bench/pg-vs-pgbackrest.sh 2>&1 | tee bench-pg.log          # FILLER=blank
#   FILLER=random bash bench/pg-vs-pgbackrest.sh 2>&1 | tee bench-pg-random.log
#   FILLER=both bash bench/pg-vs-pgbackrest.sh                      # blank, then random
#   SCALE=10 RUNS=1 bash bench/pg-vs-pgbackrest.sh                  # quick check
#   grep '^RESULT' bench-pg.log                                     # the raw figures
#
# Knobs (environment):
#   FILLER=blank     blank | random | both ("blank random")
#   SCALE=100        pgbench scale (100 = 10 M accounts, ~1.5 GB)
#   RUNS=3           runs per filler; medians are reported
#   BLOCK=1          0: leave out pgBackRest's block-incremental repo2
#   WALPUSH_N=20     pushes per tool in the latency test (after the first call)
#   BASE=/tmp/bench-pg   everything lives below it; removed at exit unless KEEP=1
#   PORT=55432  RESTORE_PORT=55433
#   KEEP=0           1: keep BASE (clusters are stopped anyway)
#   FS=host          host: BASE on the file system it is on; ext4: BASE on a new,
#                    journaled ext4 in a sparse image ($BASE.img, IMG_SIZE=24G) attached
#                    with direct I/O, as a server's data disk would be. This machine's
#                    root file system has no journal, so ext4 skips inodes freed in
#                    the last 5 minutes when it allocates new ones: every restore made
#                    right after deleting the previous one spends much of its time in
#                    the kernel (find_inode_bit, recently_deleted), for both tools
#   SKIP_BUILD=0     1: use the existing target/release/cirkel
#   CIRKEL_BIN=...   another cirkel binary (add SKIP_BUILD=1); it is copied into BASE/bin
#   PGBIN=/usr/lib/postgresql/15/bin
#   ARCHIVE_WAIT=900 seconds to wait for an archive backlog before giving up
set -euo pipefail
export LC_ALL=C LC_NUMERIC=C

FILLER=${FILLER:-blank}
SCALE=${SCALE:-100}
RUNS=${RUNS:-3}
BLOCK=${BLOCK:-1}
WALPUSH_N=${WALPUSH_N:-20}
BASE=${BASE:-/tmp/bench-pg}
PORT=${PORT:-55432}
RESTORE_PORT=${RESTORE_PORT:-55433}
KEEP=${KEEP:-0}
FS=${FS:-host}
IMG_SIZE=${IMG_SIZE:-24G}
SKIP_BUILD=${SKIP_BUILD:-0}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ARCHIVE_WAIT=${ARCHIVE_WAIT:-900}
RECOVERY_TIMEOUT=${RECOVERY_TIMEOUT:-900}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CIRKEL_SRC=${CIRKEL_BIN:-$ROOT/target/release/cirkel}

die() { echo "pg-vs-pgbackrest: $*" >&2; exit 1; }

[[ $EUID == 0 ]] || die "run as root (it switches to the postgres user)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
[[ $SCALE =~ ^[1-9][0-9]*$ ]] || die "SCALE must be a positive integer"
[[ $WALPUSH_N =~ ^[1-9][0-9]*$ && $WALPUSH_N -le 250 ]] || die "WALPUSH_N must be 1..250"
[[ $PORT =~ ^[0-9]+$ && $RESTORE_PORT =~ ^[0-9]+$ && $PORT != "$RESTORE_PORT" ]] || die "bad PORT/RESTORE_PORT"
[[ $FS == host || $FS == ext4 ]] || die "FS must be host or ext4"
case $FILLER in
    both) FILLERS=(blank random) ;;
    *) read -r -a FILLERS <<<"$FILLER" ;;
esac
for f in "${FILLERS[@]}"; do [[ $f == blank || $f == random ]] || die "FILLER must be blank, random or both"; done
BASE=$(realpath -m -- "$BASE")
[[ $BASE =~ ^/[A-Za-z0-9/._-]+$ ]] || die "BASE must be a plain path (it goes into archive_command): $BASE"
[[ $BASE != / && $BASE != "$ROOT"* && $BASE != /tmp && $BASE != /work* ]] || die "refusing BASE=$BASE"
MARK="$BASE/.pg-vs-pgbackrest"
if [[ -e $BASE && ! -e $MARK ]] && [[ -n $(ls -A -- "$BASE" 2>/dev/null) ]]; then
    die "$BASE exists, is not empty and was not made by this script; choose another BASE"
fi

PGDATA="$BASE/pgdata"
SOCK="$BASE/sock"
LOGS="$BASE/logs"
RESULTS="$BASE/results.txt"
PW="$BASE/password"
CIRKEL="$BASE/bin/cirkel"
REPO_C="$BASE/repo-cirkel"
REPO_P="$BASE/repo-pgbr"
REPO_B="$BASE/repo-pgbr-block"
PGBR_CONF="$BASE/pgbackrest.conf"
SCRATCH_CONF="$BASE/pgbackrest-scratch.conf"
PGBACKREST=/usr/bin/pgbackrest

# ------------------------------------------------------------------ tools

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "$@" || { apt-get update && apt-get install -y "$@"; }
}
[[ -x $PGBIN/initdb ]] || apt_install postgresql-15
[[ -x $PGBACKREST ]] || apt_install pgbackrest
[[ -x $PGBACKREST ]] || die "pgbackrest missing"
command -v python3 >/dev/null || die "python3 missing"
[[ -d $HOME/.cargo/bin ]] && PATH="$PATH:$HOME/.cargo/bin"
if [[ $SKIP_BUILD != 1 ]]; then
    echo "# building cirkel (cargo build --release -p cirkel)"
    (cd "$ROOT" && cargo build --release -p cirkel)
fi
[[ -x $CIRKEL_SRC ]] || die "$CIRKEL_SRC missing (build it, or unset SKIP_BUILD)"
id postgres >/dev/null 2>&1 || die "no postgres user"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_busy "$PORT" && die "port $PORT is in use (set PORT=...)"
port_busy "$RESTORE_PORT" && die "port $RESTORE_PORT is in use (set RESTORE_PORT=...)"

unset CIRKEL_PASSWORD CIRKEL_CONFIG CIRKEL_REPO CIRKEL_PASSWORD_FILE CIRKEL_S3_RETRY_TIMEOUT PGBACKREST_CONFIG

# Everything PostgreSQL-related as postgres, with a clean, explicit environment.
# setpriv (no PAM session, unlike runuser) keeps the per-call overhead small for
# the latency test; the overhead is measured and reported (step=spawn_overhead).
PG_ENV=(PATH="$PGBIN:/usr/local/bin:/usr/bin:/bin" HOME="$BASE" LANG=C.UTF-8 LC_ALL=C.UTF-8
    PGHOST="$SOCK" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres PGDATA="$PGDATA"
    CIRKEL_CACHE_DIR="$BASE/cache-cli")
AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups env -i "${PG_ENV[@]}")
as_pg() { "${AS_PG[@]}" "$@"; }
# The same as arrays, for timed (GNU time needs a program, not a shell function).
CIRKEL_CMD=("${AS_PG[@]}" "$CIRKEL" --repo "$REPO_C" --password-file "$PW")
PGBR_CMD=("${AS_PG[@]}" "$PGBACKREST" --config="$PGBR_CONF" --stanza=bench)

# ------------------------------------------------------------------ cleanup

stop_cluster() { # DIR: stop a cluster this script started (immediate), if it runs
    local dir=$1
    [[ -f $dir/postmaster.pid ]] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$dir" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT
    for d in "$BASE"/restore-* "$PGDATA"; do
        [[ -d $d ]] && stop_cluster "$d"
    done
    if [[ $KEEP == 1 ]]; then
        echo "# kept $BASE (logs in $LOGS)"
    elif [[ -n ${LOOP_DEV:-} ]]; then
        cd / # the script works inside BASE
        mountpoint -q -- "$BASE" && umount -- "$BASE"
        losetup -d "$LOOP_DEV"
        rm -f -- "$BASE.img"
        rmdir -- "$BASE"
    elif [[ -e $MARK ]]; then # only a BASE this script set up
        rm -rf -- "$BASE"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ helpers

load1() { cut -d' ' -f1 /proc/loadavg; }
now_us() { local t=$EPOCHREALTIME; echo "${t/[.,]/}"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", (b - a) / 1e6 }'; }
mb_per_s() { awk -v bytes="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", bytes / s / 1e6; else print "NA" }'; }
# du -sb of each existing argument, summed (files may vanish while du runs).
bytes_of() {
    local p total=0 n
    for p in "$@"; do
        [[ -e $p ]] || continue
        n=$(du -sb -- "$p" 2>/dev/null | cut -f1) || true
        total=$((total + ${n:-0}))
    done
    echo "$total"
}
cirkel_base_bytes() { echo $(($(bytes_of "$REPO_C") - $(bytes_of "$REPO_C/streams"))); }
repo_base_bytes() { # TOOL
    case $1 in
        cirkel) cirkel_base_bytes ;;
        pgbackrest) bytes_of "$REPO_P/backup" ;;
        pgbackrest-block) bytes_of "$REPO_B/backup" ;;
    esac
}
repo_wal_bytes() {
    case $1 in
        cirkel) bytes_of "$REPO_C/streams" ;;
        pgbackrest) bytes_of "$REPO_P/archive" ;;
        pgbackrest-block) bytes_of "$REPO_B/archive" ;;
    esac
}
repo_total_bytes() {
    case $1 in
        cirkel) bytes_of "$REPO_C" ;;
        pgbackrest) bytes_of "$REPO_P" ;;
        pgbackrest-block) bytes_of "$REPO_B" ;;
    esac
}

# SQL on the source (DB default bench) or on another port.
q() { as_pg "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "${2:-bench}" -c "$1"; }
q_port() { as_pg PGPORT="$1" "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$2" -c "$3"; }

cirkel_cmd() { "${CIRKEL_CMD[@]}" "$@"; }
pgbr() { "${PGBR_CMD[@]}" "$@"; }

# run_logged NAME CMD...: stdout to NAME.out, stderr to NAME.err; on failure show them and stop.
run_logged() {
    local name=$1; shift
    if ! "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"; then
        echo "FAILED ($name): $*" >&2
        tail -n 30 "$LOGS/$name.out" "$LOGS/$name.err" >&2
        exit 1
    fi
}

# timed NAME CMD...: syncs, records load1, times CMD (wall, and GNU time's max RSS
# of the largest process in the tree when /usr/bin/time exists).
# Sets T_SECONDS, T_LOAD, T_RSS.
timed() {
    local name=$1; shift
    sync
    T_LOAD=$(load1)
    echo "# load1=$T_LOAD  $name"
    local timer=() t0 t1
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f '%M' -o "$LOGS/$name.time")
    t0=$(now_us)
    run_logged "$name" "${timer[@]}" "$@"
    t1=$(now_us)
    T_SECONDS=$(secs "$t0" "$t1")
    T_RSS=NA
    [[ -x /usr/bin/time ]] && T_RSS=$(tail -n 1 "$LOGS/$name.time")
    return 0
}

result() { # TOOL STEP SECONDS BYTES [key=value...]
    local line="RESULT tool=$1 filler=$FILL run=$RUN step=$2 seconds=$3 bytes=$4"
    shift 4
    [[ $# -gt 0 ]] && line+=" $*"
    echo "$line"
    echo "$line" >>"$RESULTS"
}

# Waits until PostgreSQL has archived every finished segment (no .ready left).
wait_archived() {
    local start=$SECONDS n
    while :; do
        n=$(find "$PGDATA/pg_wal/archive_status" -name '*.ready' 2>/dev/null | wc -l)
        ((n == 0)) && return 0
        if ((SECONDS - start > ARCHIVE_WAIT)); then
            q "SELECT * FROM pg_stat_archiver" postgres >&2 || true
            tail -n 20 "$LOGS/pg-source.log" >&2 || true
            die "archive backlog of $n segments after ${ARCHIVE_WAIT}s"
        fi
        sleep 0.2
    done
}

set_archive_command() {
    q "ALTER SYSTEM SET archive_command = '$1'" postgres
    q "SELECT pg_reload_conf()" postgres >/dev/null
    sleep 1 # let the archiver pick up the new setting before anything depends on it
}

# ------------------------------------------------------------------ setup

mkdir -p -- "$BASE"
for d in "$BASE"/restore-* "$PGDATA"; do [[ -d $d ]] && stop_cluster "$d"; done
mountpoint -q -- "$BASE" && die "$BASE is a mount point (left by an earlier FS=ext4 run?): umount it first"
find "$BASE" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
if [[ $FS == ext4 ]]; then
    rm -f -- "$BASE.img"
    truncate -s "$IMG_SIZE" -- "$BASE.img"
    mkfs.ext4 -q -F -- "$BASE.img"
    LOOP_DEV=$(losetup --direct-io=on -f --show -- "$BASE.img")
    mount -- "$LOOP_DEV" "$BASE"
    echo "# BASE on a new journaled ext4 ($IMG_SIZE image on $LOOP_DEV, direct I/O)"
fi
touch "$MARK"
mkdir -p -- "$LOGS" "$SOCK" "$BASE/bin" "$BASE/pgbr-log" "$BASE/pgbr-lock" "$BASE/pgbr-spool"
cp -- "$CIRKEL_SRC" "$CIRKEL" # a stable copy: a rebuild during the run cannot swap it
chmod 755 "$CIRKEL"
: >"$RESULTS"
printf 'bench-password-not-secret\n' >"$PW"
chmod 600 "$PW"
chown -R postgres:postgres "$BASE"
chmod 755 "$BASE"
cd "$BASE" # postgres must be able to stay in the working directory

ARCHIVE_CMD="CIRKEL_CACHE_DIR=$BASE/cache-archive $CIRKEL --repo $REPO_C --password-file $PW -q wal-push %p"
ARCHIVE_CMD+=" && $PGBACKREST --config=$PGBR_CONF --stanza=bench --log-level-file=info archive-push %p"

write_pgbr_conf() { # FILE STANZA REPO [BLOCK_REPO]
    local file=$1 stanza=$2 repo=$3 block_repo=${4:-}
    {
        echo "[global]"
        echo "repo1-path=$repo"
        echo "repo1-retention-full=99"
        echo "repo1-cipher-type=aes-256-cbc"
        echo "repo1-cipher-pass=bench-password-not-secret"
        if [[ -n $block_repo ]]; then
            echo "repo2-path=$block_repo"
            echo "repo2-retention-full=99"
            echo "repo2-cipher-type=aes-256-cbc"
            echo "repo2-cipher-pass=bench-password-not-secret"
            echo "repo2-bundle=y"
            echo "repo2-block=y"
            echo "beta=y"
        fi
        echo "compress-type=zst"
        echo "compress-level=3"
        echo "process-max=2"
        echo "start-fast=y"
        echo "archive-async=n"
        echo "log-path=$BASE/pgbr-log"
        echo "lock-path=$BASE/pgbr-lock"
        echo "spool-path=$BASE/pgbr-spool"
        echo "log-level-console=warn"
        echo "log-level-file=info"
        echo
        echo "[$stanza]"
        echo "pg1-path=$PGDATA"
        echo "pg1-port=$PORT"
        echo "pg1-socket-path=$SOCK"
    } >"$file"
    chown postgres:postgres "$file"
    chmod 640 "$file"
}
if [[ $BLOCK == 1 ]]; then
    write_pgbr_conf "$PGBR_CONF" bench "$REPO_P" "$REPO_B"
    TOOLS=(cirkel pgbackrest pgbackrest-block)
else
    write_pgbr_conf "$PGBR_CONF" bench "$REPO_P"
    TOOLS=(cirkel pgbackrest)
fi
write_pgbr_conf "$SCRATCH_CONF" scratch "$BASE/scratch-pgbr"

echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM"
echo "# $("$CIRKEL" --version) | $("$PGBACKREST" version) | $("$PGBIN/postgres" --version)"
echo "# BASE=$BASE FS=$FS FILLER=${FILLERS[*]} SCALE=$SCALE RUNS=$RUNS BLOCK=$BLOCK WALPUSH_N=$WALPUSH_N PORT=$PORT RESTORE_PORT=$RESTORE_PORT"
echo "# cirkel: encrypted repo (default), zstd-1 for heap and zstd-3 for index blocks, zstd-1 for WAL (its built-in choices), $(nproc) threads"
echo "# pgbackrest: aes-256-cbc, compress-type=zst compress-level=3, process-max=2, start-fast=y, archive-async=n"

# ------------------------------------------------------------------ the source cluster

start_source() {
    as_pg "$PGBIN/initdb" -k -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$LOGS/initdb.log" 2>&1 \
        || { tail -n 20 "$LOGS/initdb.log" >&2; die "initdb failed"; }
    cat >>"$PGDATA/postgresql.conf" <<EOF

# pg-vs-pgbackrest.sh
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCK'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
EOF
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGS/pg-source.log" -w -t 120 start >/dev/null \
        || { tail -n 20 "$LOGS/pg-source.log" >&2; die "the source cluster did not start"; }
    q "CREATE DATABASE bench" postgres
}

rand_text() { # N: N random hex characters per call
    echo "substr(md5(random()::text) || md5(random()::text) || md5(random()::text), 1, $1)"
}

load_data() {
    local t0 t1
    sync
    echo "# load1=$(load1)  load (FILLER=$FILL, scale $SCALE)"
    t0=$(now_us)
    if [[ $FILL == blank ]]; then
        run_logged "$FILL-load" as_pg "$PGBIN/pgbench" -i -s "$SCALE" -q bench
    else
        run_logged "$FILL-load-tables" as_pg "$PGBIN/pgbench" -i -s "$SCALE" -I dt bench
        run_logged "$FILL-load-insert" q "
            INSERT INTO pgbench_branches (bid, bbalance, filler)
                SELECT b, 0, $(rand_text 88) FROM generate_series(1, $SCALE) b;
            INSERT INTO pgbench_tellers (tid, bid, tbalance, filler)
                SELECT t, (t - 1) / 10 + 1, 0, $(rand_text 84) FROM generate_series(1, $SCALE * 10) t;
            INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
                SELECT a, (a - 1) / 100000 + 1, 0, $(rand_text 84) FROM generate_series(1, $SCALE * 100000) a;"
        run_logged "$FILL-load-vacuum-pkeys" as_pg "$PGBIN/pgbench" -i -I vp bench
    fi
    q "CHECKPOINT" postgres
    t1=$(now_us)
    DB_BYTES=$(q "SELECT sum(pg_database_size(oid)) FROM pg_database" postgres)
    result postgres load "$(secs "$t0" "$t1")" "$DB_BYTES" "pgdata_bytes=$(($(bytes_of "$PGDATA") - $(bytes_of "$PGDATA/pg_wal")))" \
        "accounts_rows=$((SCALE * 100000))" "load1=$(load1)"
}

# ------------------------------------------------------------------ per-run repositories

fresh_repos() {
    set_archive_command /bin/true
    wait_archived
    rm -rf -- "$REPO_C" "$REPO_P" "$REPO_B" "$BASE/cache-archive" "$BASE/cache-cli"
    as_pg mkdir -p "$BASE/cache-archive" "$BASE/cache-cli"
    run_logged "$FILL-r$RUN-cirkel-init" cirkel_cmd -q repo init
    run_logged "$FILL-r$RUN-pgbr-stanza-create" pgbr stanza-create
    set_archive_command "$ARCHIVE_CMD"
    q "SELECT pg_switch_wal()" postgres >/dev/null
    run_logged "$FILL-r$RUN-pgbr-check" pgbr check # switches WAL and waits for it in every repo
    wait_archived
}

# backup TOOL TYPE (full|incr)
backup() {
    local tool=$1 type=$2 name="$FILL-r$RUN-$1-$2" before after reported=NA start_lsn=NA
    wait_archived
    before=$(repo_base_bytes "$tool")
    case $tool in
        cirkel) timed "$name" "${CIRKEL_CMD[@]}" -q --json pg backup --type "$type" --label "bench-r$RUN-$type" ;;
        pgbackrest) timed "$name" "${PGBR_CMD[@]}" --repo=1 --type="$type" backup ;;
        pgbackrest-block) timed "$name" "${PGBR_CMD[@]}" --repo=2 --type="$type" backup ;;
    esac
    after=$(repo_base_bytes "$tool")
    case $tool in
        cirkel)
            read -r reported start_lsn < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["snapshot"]["summary"].get("bytes_added", "NA"), d["snapshot"]["meta"].get("start_lsn", "NA"))' "$LOGS/$name.out") || true
            ;;
        pgbackrest | pgbackrest-block)
            local r=1
            [[ $tool == pgbackrest-block ]] && r=2
            pgbr --repo="$r" --output=json info >"$LOGS/$name.info.json" 2>>"$LOGS/$name.err" || true
            read -r reported start_lsn < <(python3 -c '
import json, sys
try:
    b = json.load(open(sys.argv[1]))[0]["backup"][-1]
    print(b["info"]["repository"].get("delta", "NA"), b.get("lsn", {}).get("start", "NA"))
except Exception:
    print("NA NA")' "$LOGS/$name.info.json") || true
            ;;
    esac
    LAST_START_LSN[$tool]=$start_lsn
    local extra="repo_base_bytes=$after repo_wal_bytes=$(repo_wal_bytes "$tool") repo_total_bytes=$(repo_total_bytes "$tool")"
    extra+=" reported_added=${reported:-NA} pgdata_bytes=$PGDATA_BYTES db_bytes=$DB_BYTES"
    extra+=" mb_per_s=$(mb_per_s "$PGDATA_BYTES" "$T_SECONDS") rss_kib=$T_RSS load1=$T_LOAD"
    result "$tool" "${type}_backup" "$T_SECONDS" "$((after - before))" "$extra"
}

update_slice() {
    local n5=$((SCALE * 5000)) k lo hi lsn0 t0 t1 wal
    k=$(((RUN - 1) % 20))
    lo=$((k * n5))
    hi=$((lo + n5))
    wait_archived
    echo "# load1=$(load1)  update aid $((lo + 1))..$hi (5 %), VACUUM pgbench_accounts, CHECKPOINT"
    lsn0=$(q "SELECT pg_current_wal_lsn()")
    t0=$(now_us)
    q "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > $lo AND aid <= $hi"
    q "VACUUM pgbench_accounts"
    q "CHECKPOINT"
    t1=$(now_us)
    wal=$(q "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')::bigint")
    q "SELECT pg_switch_wal()" >/dev/null
    SRC_SUM=$(q "SELECT sum(abalance) FROM pgbench_accounts")
    result postgres update "$(secs "$t0" "$t1")" "$wal" "rows=$n5 sum_abalance=$SRC_SUM load1=$(load1)"
    wait_archived
}

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"

# restore TOOL: restore the latest backup, then start it and wait for promotion.
restore() {
    local tool=$1 dir="$BASE/restore-$1" name="$FILL-r$RUN-$1-restore" cache="$BASE/cache-restore"
    rm -rf -- "$dir" "$cache"
    settle
    # A fresh key cache, as on a new host. cirkel's restore puts CIRKEL_CACHE_DIR
    # (when set) into the restore_command it writes, so wal-fetch uses this one too.
    as_pg mkdir -p "$cache"
    case $tool in
        cirkel)
            timed "$name" "${AS_PG[@]}" CIRKEL_CACHE_DIR="$cache" "$CIRKEL" --repo "$REPO_C" --password-file "$PW" \
                -q pg restore --to "$dir" --latest
            ;;
        pgbackrest)
            as_pg mkdir -m 700 "$dir"
            timed "$name" "${PGBR_CMD[@]}" --repo=1 --pg1-path="$dir" restore
            ;;
    esac
    local restored restore_s=$T_SECONDS
    restored=$(bytes_of "$dir")
    result "$tool" restore "$restore_s" "$restored" "mb_per_s=$(mb_per_s "$restored" "$restore_s") rss_kib=$T_RSS load1=$T_LOAD"
    cp -- "$dir/postgresql.auto.conf" "$LOGS/$name.auto.conf" 2>/dev/null || true

    # Recovery: pg_ctl start (no wait) -> accepts connections -> promoted.
    local log="$LOGS/$name-postgres.log" t0 t1 tready="" now pid state
    sync
    local l1
    l1=$(load1)
    echo "# load1=$l1  $FILL-r$RUN-$tool-recovery"
    t0=$(now_us)
    as_pg CIRKEL_CACHE_DIR="$cache" "$PGBIN/pg_ctl" -D "$dir" -l "$log" -W \
        -o "-c port=$RESTORE_PORT -c archive_mode=off" start >/dev/null
    while :; do
        now=$(now_us)
        if [[ -z $tready ]]; then
            as_pg "$PGBIN/pg_isready" -q -h "$SOCK" -p "$RESTORE_PORT" && tready=$now
        fi
        if [[ -n $tready ]]; then
            state=$(q_port "$RESTORE_PORT" postgres "SELECT pg_is_in_recovery()" 2>/dev/null) || state=""
            if [[ $state == f ]]; then
                t1=$(now_us)
                break
            fi
        fi
        if (((now - t0) / 1000000 > 3)); then
            pid=$(head -n 1 "$dir/postmaster.pid" 2>/dev/null) || pid=""
            if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
                tail -n 30 "$log" >&2
                die "the restored $tool cluster stopped during recovery (log above)"
            fi
        fi
        if (((now - t0) / 1000000 > RECOVERY_TIMEOUT)); then
            tail -n 30 "$log" >&2
            die "the restored $tool cluster was not promoted within ${RECOVERY_TIMEOUT}s"
        fi
        sleep 0.05
    done
    # It must accept writes and hold the source's data.
    local ok=1 sum replay
    q_port "$RESTORE_PORT" bench "CREATE TABLE bench_probe AS SELECT 1 AS x; DROP TABLE bench_probe" >/dev/null 2>&1 || ok=0
    sum=$(q_port "$RESTORE_PORT" bench "SELECT sum(abalance) FROM pgbench_accounts" 2>/dev/null) || sum=ERR
    [[ $sum == "$SRC_SUM" ]] || ok=0
    replay=NA
    if [[ ${LAST_START_LSN[$tool]:-NA} != NA ]]; then
        replay=$(q_port "$RESTORE_PORT" postgres \
            "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '${LAST_START_LSN[$tool]}')::bigint" 2>/dev/null) || replay=NA
    fi
    local fetched
    fetched=$(grep -c 'restored log file' "$log" 2>/dev/null) || fetched=0
    result "$tool" recovery "$(secs "$t0" "$t1")" "${replay:-NA}" \
        "ready_s=$(secs "$t0" "$tready") total_s=$(awk -v a="$restore_s" -v b="$(secs "$t0" "$t1")" 'BEGIN { printf "%.4f", a + b }')" \
        "wal_segments_fetched=$fetched ok=$ok sum_abalance=$sum load1=$l1"
    if [[ $ok != 1 ]]; then
        echo "# WARNING: restored $tool cluster: write or data check failed (sum $sum, source $SRC_SUM)" >&2
        FAILED=1
    fi
    as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 120 stop >/dev/null 2>&1 || stop_cluster "$dir"
    rm -rf -- "$dir" "$cache"
}

one_run() {
    local order=("${TOOLS[@]}") restore_order=(cirkel pgbackrest) tool i
    if ((RUN % 2 == 0)); then
        order=()
        for ((i = ${#TOOLS[@]} - 1; i >= 0; i--)); do order+=("${TOOLS[i]}"); done
        restore_order=(pgbackrest cirkel)
    fi
    echo "# ---- FILLER=$FILL run $RUN/$RUNS: order ${order[*]}; load1 $(load1)"
    fresh_repos
    q "CHECKPOINT" postgres
    PGDATA_BYTES=$(($(bytes_of "$PGDATA") - $(bytes_of "$PGDATA/pg_wal")))
    DB_BYTES=$(q "SELECT sum(pg_database_size(oid)) FROM pg_database" postgres)
    echo "# data directory without pg_wal: $PGDATA_BYTES bytes; sum(pg_database_size): $DB_BYTES bytes"
    for tool in "${order[@]}"; do backup "$tool" full; done
    update_slice
    for tool in "${order[@]}"; do backup "$tool" incr; done
    for tool in "${restore_order[@]}"; do restore "$tool"; done
    # Not timed: the state of each repository, for the log.
    cirkel_cmd --json pg info >"$LOGS/$FILL-r$RUN-cirkel-info.json" 2>&1 || true
    cirkel_cmd pg check >"$LOGS/$FILL-r$RUN-cirkel-check.txt" 2>&1 \
        || echo "# WARNING: cirkel pg check reports problems (see $LOGS/$FILL-r$RUN-cirkel-check.txt)" >&2
    pgbr info >"$LOGS/$FILL-r$RUN-pgbr-info.txt" 2>&1 || true
    local failed
    failed=$(q "SELECT failed_count FROM pg_stat_archiver" postgres)
    [[ $failed == 0 ]] || echo "# note: pg_stat_archiver.failed_count=$failed so far (retried archive_command calls)" >&2
}

# ------------------------------------------------------------------ wal-push latency

walpush_test() {
    RUN=0
    wait_archived
    # A real segment of this database's WAL: UPDATE slices until the segment after
    # the current one is complete, then copy it before any checkpoint recycles it.
    local lsn0 target cur n1=$((SCALE * 1000)) lo hi i=0 seg="$BASE/walseg"
    lsn0=$(q "SELECT pg_current_wal_lsn()")
    target=$(q "SELECT pg_walfile_name('$lsn0'::pg_lsn + 16777216)")
    while :; do
        lo=$(((i % 100) * n1))
        hi=$((lo + n1))
        q "UPDATE pgbench_accounts SET abalance = abalance + 0 WHERE aid > $lo AND aid <= $hi"
        cur=$(q "SELECT pg_walfile_name(pg_current_wal_lsn())")
        [[ $cur > $target ]] && break
        ((++i < 2000)) || die "could not produce a WAL segment for the latency test"
    done
    cp -- "$PGDATA/pg_wal/$target" "$seg"
    [[ $(stat -c %s "$seg") == 16777216 ]] || die "$target is not 16 MiB"
    echo "# latency test segment: copy of $target ($((i + 1)) UPDATEs of $n1 rows)"

    rm -rf -- "$BASE/scratch-cirkel" "$BASE/scratch-pgbr" "$BASE/cache-scratch" "$BASE/walscratch"
    as_pg mkdir -p "$BASE/cache-scratch" "$BASE/walscratch"
    run_logged "$FILL-scratch-cirkel-init" as_pg "$CIRKEL" --repo "$BASE/scratch-cirkel" --password-file "$PW" -q repo init
    run_logged "$FILL-scratch-pgbr-stanza" as_pg "$PGBACKREST" --config="$SCRATCH_CONF" --stanza=scratch stanza-create

    # What starting a process as postgres costs by itself (included in every figure below).
    local t0 t1 k samples=()
    for k in 1 2 3 4 5 6 7 8 9 10 11; do
        t0=$(now_us)
        as_pg /bin/true
        t1=$(now_us)
        samples+=("$((t1 - t0))")
    done
    local median_us
    median_us=$(printf '%s\n' "${samples[@]}" | sort -n | sed -n 6p)
    result none spawn_overhead "$(secs 0 "$median_us")" NA "what=setpriv+env+/bin/true median_of=11"

    local name path tool before after step order l1
    echo "# load1=$(load1)  walpush x$((WALPUSH_N + 1)) per tool"
    for ((k = 0; k <= WALPUSH_N; k++)); do
        name=$(printf '00000001000000F0000000%02X' "$k")
        path="$BASE/walscratch/$name"
        cp -- "$seg" "$path"
        chown postgres:postgres "$path"
        step=walpush
        ((k == 0)) && step=walpush_first
        if ((k % 2 == 0)); then order=(cirkel pgbackrest); else order=(pgbackrest cirkel); fi
        for tool in "${order[@]}"; do
            l1=$(load1)
            if [[ $tool == cirkel ]]; then
                before=$(bytes_of "$BASE/scratch-cirkel")
                t0=$(now_us)
                run_logged "$FILL-walpush-cirkel-$k" as_pg CIRKEL_CACHE_DIR="$BASE/cache-scratch" "$CIRKEL" \
                    --repo "$BASE/scratch-cirkel" --password-file "$PW" -q wal-push --pgdata "$PGDATA" "$path"
                t1=$(now_us)
                after=$(bytes_of "$BASE/scratch-cirkel")
            else
                before=$(bytes_of "$BASE/scratch-pgbr")
                t0=$(now_us)
                run_logged "$FILL-walpush-pgbr-$k" as_pg "$PGBACKREST" --config="$SCRATCH_CONF" --stanza=scratch \
                    --log-level-file=info archive-push "$path"
                t1=$(now_us)
                after=$(bytes_of "$BASE/scratch-pgbr")
            fi
            result "$tool" "$step" "$(secs "$t0" "$t1")" "$((after - before))" "seq=$k segment=$name load1=$l1"
        done
        rm -f -- "$path"
    done
    rm -rf -- "$BASE/scratch-cirkel" "$BASE/scratch-pgbr" "$BASE/walscratch" "$seg"
}

# ------------------------------------------------------------------ main

FAILED=0
declare -A LAST_START_LSN=()
for FILL in "${FILLERS[@]}"; do
    RUN=0
    echo "# ================ FILLER=$FILL"
    start_source
    load_data
    for RUN in $(seq 1 "$RUNS"); do
        one_run
    done
    walpush_test
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 120 stop >/dev/null || stop_cluster "$PGDATA"
    rm -rf -- "$PGDATA" "$REPO_C" "$REPO_P" "$REPO_B"
done

# ------------------------------------------------------------------ summary

python3 - "$RESULTS" <<'EOF'
import math, statistics, sys

rows = []
for line in open(sys.argv[1]):
    parts = line.split()
    if not parts or parts[0] != "RESULT":
        continue
    rows.append(dict(p.split("=", 1) for p in parts[1:]))

def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None

def vals(filler, tool, step, key):
    out = [num(r.get(key)) for r in rows if r["filler"] == filler and r["tool"] == tool and r["step"] == step]
    return [v for v in out if v is not None]

def med(filler, tool, step, key):
    v = vals(filler, tool, step, key)
    return statistics.median(v) if v else None

def p90(filler, tool, step, key):
    v = sorted(vals(filler, tool, step, key))
    return v[max(0, math.ceil(0.9 * len(v)) - 1)] if v else None

def f(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)

def ratio(a, b, spec="{:.2f}"):
    return "-" if a is None or b is None or b == 0 else spec.format(a / b)

def mb(v):
    return None if v is None else v / 1e6

tools = ["cirkel", "pgbackrest", "pgbackrest-block"]
for filler in dict.fromkeys(r["filler"] for r in rows):
    have_block = any(r["tool"] == "pgbackrest-block" and r["filler"] == filler for r in rows)
    runs = len({r["run"] for r in rows if r["filler"] == filler and r["run"] != "0"})
    load = [r for r in rows if r["filler"] == filler and r["step"] == "load"]
    print()
    print(f"SUMMARY FILLER={filler} (medians over {runs} run(s); ratio = pgbackrest / cirkel time, >1 means cirkel is faster)")
    if load:
        print(f"  load {float(load[0]['seconds']):.1f} s, sum(pg_database_size) {int(load[0]['bytes']) / 1e6:.1f} MB, "
              f"data directory {int(load[0]['pgdata_bytes']) / 1e6:.1f} MB")
    hdr = f"{'step':<16}{'cirkel s':>10}{'pgbr s':>10}{'ratio':>7}"
    if have_block:
        hdr += f"{'pgbr-blk s':>12}{'ratio':>7}"
    hdr += f"{'cirkel MB/s':>12}{'pgbr MB/s':>11}{'load1':>7}"
    print(hdr)
    for step in ("full_backup", "incr_backup", "restore", "recovery", "restore+recovery"):
        if step == "restore+recovery":
            c, p = med(filler, "cirkel", "recovery", "total_s"), med(filler, "pgbackrest", "recovery", "total_s")
            b = None
        else:
            c, p = med(filler, "cirkel", step, "seconds"), med(filler, "pgbackrest", step, "seconds")
            b = med(filler, "pgbackrest-block", step, "seconds")
        if c is None and p is None:
            continue
        line = f"{step:<16}{f(c):>10}{f(p):>10}{ratio(p, c):>7}"
        if have_block:
            line += f"{f(b):>12}{ratio(b, c):>7}"
        key = "mb_per_s" if step in ("full_backup", "restore") else None
        cm = med(filler, "cirkel", step, key) if key else None
        pm = med(filler, "pgbackrest", step, key) if key else None
        loads = [num(r.get("load1")) for r in rows if r["filler"] == filler and r["step"] == step.split("+")[0]]
        loads = [x for x in loads if x is not None]
        line += f"{f(cm, '{:.1f}'):>12}{f(pm, '{:.1f}'):>11}{f(statistics.median(loads) if loads else None):>7}"
        print(line)
    rc, rp = med(filler, "cirkel", "recovery", "ready_s"), med(filler, "pgbackrest", "recovery", "ready_s")
    wc, wp = med(filler, "cirkel", "recovery", "bytes"), med(filler, "pgbackrest", "recovery", "bytes")
    print(f"  recovery: start -> accepts connections cirkel {f(rc)} s, pgbackrest {f(rp)} s; "
          f"WAL replayed from the backup start cirkel {f(mb(wc), '{:.1f}')} MB, pgbackrest {f(mb(wp), '{:.1f}')} MB")
    oks = [r for r in rows if r["filler"] == filler and r["step"] == "recovery"]
    print("  restore check (write + sum(abalance)): "
          + ", ".join(f"{r['tool']} r{r['run']} {'ok' if r.get('ok') == '1' else 'FAILED'}" for r in oks))

    print()
    print(f"REPOSITORY FILLER={filler} (MB = 1e6 bytes; ratio = cirkel / pgbackrest, <1 means cirkel stores less)")
    hdr = f"{'what':<34}{'cirkel MB':>11}{'pgbr MB':>10}{'ratio':>7}"
    if have_block:
        hdr += f"{'pgbr-blk MB':>13}{'ratio':>7}"
    print(hdr)
    for label, step, key in (("full: base backup stored", "full_backup", "bytes"),
                             ("incr after 5 % UPDATE: growth", "incr_backup", "bytes"),
                             ("incr: tool-reported added", "incr_backup", "reported_added"),
                             ("after incr: WAL archive", "incr_backup", "repo_wal_bytes"),
                             ("after incr: repo total", "incr_backup", "repo_total_bytes")):
        c, p, b = (med(filler, t, step, key) for t in tools)
        line = f"{label:<34}{f(mb(c), '{:.1f}'):>11}{f(mb(p), '{:.1f}'):>10}{ratio(c, p, '{:.3f}'):>7}"
        if have_block:
            line += f"{f(mb(b), '{:.1f}'):>13}{ratio(c, b, '{:.3f}'):>7}"
        print(line)
    d = med(filler, "cirkel", "full_backup", "pgdata_bytes")
    c = med(filler, "cirkel", "full_backup", "bytes")
    p = med(filler, "pgbackrest", "full_backup", "bytes")
    if d:
        print(f"  compression of the full (data directory without pg_wal {d / 1e6:.1f} MB): "
              f"cirkel {ratio(d, c, '{:.2f}')}x, pgbackrest {ratio(d, p, '{:.2f}')}x")

    print()
    spawn = med(filler, "none", "spawn_overhead", "seconds")
    print(f"WAL PUSH FILLER={filler} (one 16 MiB segment into a scratch repository, ms per call; "
          f"ratio = pgbackrest / cirkel; includes ~{f(spawn and spawn * 1000, '{:.1f}')} ms process start as postgres)")
    print(f"{'':<16}{'cirkel':>10}{'pgbr':>10}{'ratio':>7}")
    for label, step, fn in (("first call", "walpush_first", med), ("median", "walpush", med), ("p90", "walpush", p90)):
        c, p = fn(filler, "cirkel", step, "seconds"), fn(filler, "pgbackrest", step, "seconds")
        print(f"{label:<16}{f(c and c * 1000, '{:.1f}'):>10}{f(p and p * 1000, '{:.1f}'):>10}{ratio(p, c):>7}")
    c, p = med(filler, "cirkel", "walpush", "bytes"), med(filler, "pgbackrest", "walpush", "bytes")
    print(f"{'stored MB/seg':<16}{f(mb(c), '{:.2f}'):>10}{f(mb(p), '{:.2f}'):>10}   (cirkel/pgbr {ratio(c, p, '{:.3f}')})")
    n = len(vals(filler, "cirkel", "walpush", "seconds"))
    print(f"  ({n} pushes per tool after the first; serial capacity at the median: "
          f"cirkel {f(1 / med(filler, 'cirkel', 'walpush', 'seconds') if n else None, '{:.1f}')} seg/s, "
          f"pgbackrest {f(1 / med(filler, 'pgbackrest', 'walpush', 'seconds') if n else None, '{:.1f}')} seg/s)")
EOF

if ((FAILED)); then
    die "a restored cluster failed its checks (see the WARNING lines above)"
fi
