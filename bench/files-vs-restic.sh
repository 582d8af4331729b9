#!/usr/bin/env bash
# files-vs-restic.sh: `cirkel backup files` against restic 0.14 (Debian package),
# both with default settings, on the same generated dataset.
#
# What it measures, per run and per tool, each run with a FRESH repository
# (and, for restic, a fresh cache):
#   first_backup    full backup of $BASE/data          wall s, CPU s (user+sys), peak RSS, repo bytes
#   second_backup   the same data again, nothing changed   (the parent snapshot is found automatically)
#   changed_backup  after `gen-dataset.py mutate` changed ~5 % of the bytes
#   restore         `latest` into a fresh directory; in run 1 the result is `diff -r`-ed against the data
#   verify          read and check every byte of the repository (cirkel repo verify --read-data /
#                   restic check --read-data); VERIFY=0 skips it
# Repository size (du -sb) is recorded after every backup. The 1-minute load
# average before every step is recorded as load1=, because the machine may be shared.
#
# The dataset (bench/gen-dataset.py, deterministic from SEED): ~3.2 GB at SCALE=1:
# 56 incompressible files of 1-200 MiB, 20,000 small text files (~3x compressible),
# 14 byte-identical copies of big files (dedup bait). It is generated once into
# $BASE/pristine and copied to $BASE/data at the start of every run (copying is
# much faster than regenerating); run i mutates $BASE/data with seed i, so both
# tools back up exactly the same bytes. The tool that goes first alternates per run.
#
# Output: one `RESULT tool=... run=... step=... seconds=...` line per measurement,
# then a table of medians and ratios (restic/cirkel time: >1 means cirkel is
# faster; cirkel/restic repository bytes: <1 means cirkel's repository is smaller).
#
# Run (as root, from anywhere; it builds target/release/cirkel first):
#   bash bench/files-vs-restic.sh 2>&1 | tee bench-files.log
#   RUNS=1 SCALE=0.1 bash bench/files-vs-restic.sh          # quick check
#
# Knobs (environment):
#   BASE=/tmp/bench-files  everything is written below it (needs ~4.5x the dataset
#                          in free space: pristine + data + two repos + one restore)
#   RUNS=3  SCALE=1.0  SEED=1 (dataset seed)
#   KEEP=0          1: keep $BASE at the end and reuse an existing $BASE/pristine
#                   of the same SEED and SCALE
#   VERIFY=1        0: skip the verify step
#   DROP_CACHES=0   1: sync and drop the page cache before every timed step
#                   (default: warm cache, i.e. mostly CPU-bound; affects the whole machine)
#   SKIP_BUILD=0    1: use the existing target/release/cirkel
#   CIRKEL_BIN=...  another cirkel binary (implies nothing about building; add SKIP_BUILD=1)
set -euo pipefail

BASE=${BASE:-/tmp/bench-files}
RUNS=${RUNS:-3}
SCALE=${SCALE:-1.0}
SEED=${SEED:-1}
KEEP=${KEEP:-0}
VERIFY=${VERIFY:-1}
DROP_CACHES=${DROP_CACHES:-0}
SKIP_BUILD=${SKIP_BUILD:-0}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
GEN="$HERE/gen-dataset.py"
CIRKEL=${CIRKEL_BIN:-$ROOT/target/release/cirkel}

die() { echo "files-vs-restic: $*" >&2; exit 1; }

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
BASE=$(realpath -m -- "$BASE")
[[ $BASE != / && $BASE != "$ROOT"* ]] || die "refusing BASE=$BASE"

PRISTINE="$BASE/pristine"
DATA="$BASE/data"
LOGS="$BASE/logs"
RESULTS="$BASE/results.txt"
PASSWORD_FILE="$BASE/password"
DATASET_MARK="$BASE/pristine.done"

cleanup() {
    local rc=$?
    if [[ $KEEP == 1 ]]; then
        echo "# kept $BASE (logs in $LOGS)"
    else
        # Only what this script creates; BASE itself only if that leaves it empty.
        rm -rf -- "$PRISTINE" "$DATASET_MARK" "$DATA" "$LOGS" "$RESULTS" "$PASSWORD_FILE" \
            "$BASE"/repo-cirkel "$BASE"/repo-restic "$BASE"/cache-restic \
            "$BASE"/restore-cirkel "$BASE"/restore-restic "$BASE"/tmp
        rmdir -- "$BASE" 2>/dev/null || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ tools

[[ -d $HOME/.cargo/bin ]] && PATH="$PATH:$HOME/.cargo/bin"
if [[ $SKIP_BUILD != 1 ]]; then
    echo "# building cirkel (cargo build --release -p cirkel)"
    (cd "$ROOT" && cargo build --release -p cirkel)
fi
[[ -x $CIRKEL ]] || die "$CIRKEL missing"

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "$@" || { apt-get update && apt-get install -y "$@"; }
}
command -v restic >/dev/null || apt_install restic
RESTIC=$(command -v restic)
[[ -x /usr/bin/time ]] || apt_install time || echo "# /usr/bin/time unavailable: no RSS/CPU figures"

# Keep both tools at their defaults: no stray settings from the caller's environment.
unset CIRKEL_PASSWORD CIRKEL_CONFIG CIRKEL_S3_RETRY_TIMEOUT \
    RESTIC_PASSWORD RESTIC_PASSWORD_COMMAND RESTIC_COMPRESSION RESTIC_PACK_SIZE \
    RESTIC_KEY_HINT RESTIC_HOST RESTIC_READ_CONCURRENCY GOMAXPROCS GOGC
export CIRKEL_REPO="$BASE/repo-cirkel" CIRKEL_PASSWORD_FILE="$PASSWORD_FILE"
export RESTIC_REPOSITORY="$BASE/repo-restic" RESTIC_PASSWORD_FILE="$PASSWORD_FILE" \
    RESTIC_CACHE_DIR="$BASE/cache-restic"
# restic check puts a temporary cache into TMPDIR; keep that below BASE too.
export TMPDIR="$BASE/tmp"

# The command line of ACTION for TOOL, into the array CMD.
set_cmd() {
    local tool=$1 action=$2 dir=${3:-}
    case "$tool:$action" in
        cirkel:init)      CMD=("$CIRKEL" -q repo init) ;;
        cirkel:backup)    CMD=("$CIRKEL" -q backup files "$DATA") ;;
        cirkel:restore)   CMD=("$CIRKEL" -q restore files latest --to "$dir") ;;
        cirkel:verify)    CMD=("$CIRKEL" -q repo verify --read-data) ;;
        cirkel:snapshots) CMD=("$CIRKEL" --json snapshots) ;;
        restic:init)      CMD=("$RESTIC" init) ;;
        restic:backup)    CMD=("$RESTIC" backup --host bench "$DATA") ;;
        restic:restore)   CMD=("$RESTIC" restore latest --target "$dir") ;;
        restic:verify)    CMD=("$RESTIC" check --read-data) ;;
        restic:snapshots) CMD=("$RESTIC" snapshots --json) ;;
        *) die "set_cmd $tool $action" ;;
    esac
}

# ------------------------------------------------------------------ helpers

bytes_of() { du -sb -- "$1" | cut -f1; }
load1() { cut -d' ' -f1 /proc/loadavg; }
mb_per_s() { awk -v bytes="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.1f", bytes / s / 1e6; else print "NA" }'; }

# Runs CMD, output to $LOGS/NAME.log; on failure shows the log's tail and stops.
run_logged() {
    local name=$1; shift
    if ! "$@" >"$LOGS/$name.log" 2>&1; then
        echo "FAILED ($name): $*" >&2
        tail -n 40 "$LOGS/$name.log" >&2
        exit 1
    fi
}

# measure NAME CMD...: settles the machine, then times CMD.
# Sets M_LOAD (before), M_SECONDS (wall), M_CPU (user+sys s), M_RSS (peak KiB).
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

measure() {
    local name=$1; shift
    settle
    if [[ $DROP_CACHES == 1 ]]; then
        echo 3 >/proc/sys/vm/drop_caches || echo "# cannot drop caches" >&2
    fi
    M_LOAD=$(load1)
    local timer=() t0 t1
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f '%M %U %S' -o "$LOGS/time.out")
    t0=$(date +%s.%N)
    run_logged "$name" "${timer[@]}" "$@"
    t1=$(date +%s.%N)
    M_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    M_RSS=NA M_CPU=NA
    if [[ -x /usr/bin/time ]]; then
        read -r M_RSS M_CPU < <(tail -n 1 "$LOGS/time.out" | awk '{ printf "%s %.2f\n", $1, $2 + $3 }')
    fi
}

result() { # TOOL STEP key=value...
    local line="RESULT tool=$1 run=$RUN step=$2"
    shift 2
    line+=" $*"
    echo "$line"
    echo "$line" >>"$RESULTS"
}

# step TOOL STEP: one timed step of one tool, with its RESULT line.
step() {
    local tool=$1 name=$2 extra=""
    case $name in
        *_backup)
            set_cmd "$tool" backup
            measure "run$RUN-$tool-$name" "${CMD[@]}"
            extra="repo_bytes=$(bytes_of "$BASE/repo-$tool")"
            [[ $name == first_backup ]] && extra+=" data_bytes=$DATA_BYTES mb_per_s=$(mb_per_s "$DATA_BYTES" "$M_SECONDS")"
            ;;
        restore)
            local dir="$BASE/restore-$tool"
            rm -rf -- "$dir" && mkdir -p -- "$dir"
            set_cmd "$tool" restore "$dir"
            measure "run$RUN-$tool-$name" "${CMD[@]}"
            extra="data_bytes=$DATA_BYTES mb_per_s=$(mb_per_s "$DATA_BYTES" "$M_SECONDS")"
            ;;
        verify)
            set_cmd "$tool" verify
            measure "run$RUN-$tool-$name" "${CMD[@]}"
            ;;
        *) die "step $name" ;;
    esac
    result "$tool" "$name" "seconds=$M_SECONDS cpu_s=$M_CPU rss_kib=$M_RSS load1=$M_LOAD $extra"
}

# The restored tree must equal the data (contents and file set; not metadata).
check_restore() {
    local tool=$1 restored="$BASE/restore-$tool$DATA"
    if [[ -d $restored ]] && diff -r -- "$DATA" "$restored" >"$LOGS/run$RUN-$tool-diff.log" 2>&1; then
        result "$tool" diff "ok=1"
    else
        result "$tool" diff "ok=0"
        echo "RESTORE MISMATCH ($tool): see below (first 20 lines of diff -r)" >&2
        head -n 20 "$LOGS/run$RUN-$tool-diff.log" >&2 || true
        FAILED=1
    fi
}

snapshot_count() {
    local out
    set_cmd "$1" snapshots
    out=$("${CMD[@]}" 2>/dev/null) || out=""
    python3 -c 'import json, sys; print(len(json.loads(sys.argv[1])))' "$out" 2>/dev/null || echo "?"
}

# ------------------------------------------------------------------ setup

mkdir -p -- "$BASE"
rm -rf -- "$LOGS" "$RESULTS" "$DATA" "$TMPDIR" "$BASE"/repo-cirkel "$BASE"/repo-restic \
    "$BASE"/cache-restic "$BASE"/restore-cirkel "$BASE"/restore-restic
mkdir -p -- "$LOGS" "$TMPDIR"
: >"$RESULTS"
printf 'bench-password-not-secret\n' >"$PASSWORD_FILE"
chmod 600 "$PASSWORD_FILE"

echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM"
echo "# $("$CIRKEL" --version) | $("$RESTIC" version)"
echo "# BASE=$BASE RUNS=$RUNS SCALE=$SCALE SEED=$SEED KEEP=$KEEP VERIFY=$VERIFY DROP_CACHES=$DROP_CACHES"

want="seed=$SEED scale=$SCALE"
if [[ $KEEP == 1 && -f $DATASET_MARK && $(cat "$DATASET_MARK") == "$want" ]]; then
    echo "# reusing dataset $PRISTINE ($want)"
else
    rm -rf -- "$PRISTINE" "$DATASET_MARK"
    echo "# generating dataset into $PRISTINE ($want)"
    python3 "$GEN" generate "$PRISTINE" --seed "$SEED" --scale "$SCALE"
    echo "$want" >"$DATASET_MARK"
fi

# ------------------------------------------------------------------ runs

FAILED=0
for RUN in $(seq 1 "$RUNS"); do
    if ((RUN % 2)); then ORDER=(cirkel restic); else ORDER=(restic cirkel); fi
    rm -rf -- "$DATA"
    cp -a -- "$PRISTINE" "$DATA"
    DATA_BYTES=$(bytes_of "$DATA")
    echo "# run $RUN/$RUNS: order ${ORDER[*]}; data $DATA_BYTES bytes; load1 $(load1)"

    for tool in "${ORDER[@]}"; do
        rm -rf -- "$BASE/repo-$tool" "$BASE/cache-$tool"
        set_cmd "$tool" init
        run_logged "run$RUN-$tool-init" "${CMD[@]}"
        step "$tool" first_backup
        step "$tool" second_backup
    done

    echo "# run $RUN: mutating the data (seed $RUN); load1 $(load1)"
    python3 "$GEN" mutate "$DATA" "$RUN"
    DATA_BYTES=$(bytes_of "$DATA")

    for tool in "${ORDER[@]}"; do
        step "$tool" changed_backup
        step "$tool" restore
        ((RUN == 1)) && check_restore "$tool"
        rm -rf -- "$BASE/restore-$tool"
        [[ $VERIFY == 1 ]] && step "$tool" verify
        n=$(snapshot_count "$tool")
        [[ $n == 3 ]] || echo "# WARNING: $tool has $n snapshots after 3 backups" >&2
        rm -rf -- "$BASE/repo-$tool" "$BASE/cache-$tool"
    done
done

# ------------------------------------------------------------------ summary

python3 - "$RESULTS" <<'EOF'
import statistics, sys
from collections import defaultdict

rows = []
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split()[1:])
    rows.append(kv)

def med(tool, step, key):
    vals = [float(r[key]) for r in rows
            if r["tool"] == tool and r["step"] == step and r.get(key, "NA") not in ("NA", "")]
    return statistics.median(vals) if vals else None

def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)

def ratio(a, b, spec="{:.2f}"):
    return "-" if a is None or b is None or b == 0 else spec.format(a / b)

runs = len({r["run"] for r in rows})
steps = [s for s in ("first_backup", "second_backup", "changed_backup", "restore", "verify")
         if any(r["step"] == s for r in rows)]
print()
print(f"SUMMARY (medians over {runs} run(s); ratio = restic / cirkel, >1 means cirkel is faster)")
print(f"{'step':<16}{'cirkel s':>10}{'restic s':>10}{'ratio':>8}"
      f"{'cirkel cpu':>12}{'restic cpu':>12}{'cpu ratio':>10}"
      f"{'cirkel MiB':>12}{'restic MiB':>12}{'load1':>7}")
for s in steps:
    c, r = med("cirkel", s, "seconds"), med("restic", s, "seconds")
    cc, rc = med("cirkel", s, "cpu_s"), med("restic", s, "cpu_s")
    cm, rm = med("cirkel", s, "rss_kib"), med("restic", s, "rss_kib")
    loads = [float(x["load1"]) for x in rows if x["step"] == s and "load1" in x]
    print(f"{s:<16}{fmt(c):>10}{fmt(r):>10}{ratio(r, c):>8}"
          f"{fmt(cc):>12}{fmt(rc):>12}{ratio(rc, cc):>10}"
          f"{fmt(cm and cm / 1024, '{:.0f}'):>12}{fmt(rm and rm / 1024, '{:.0f}'):>12}"
          f"{fmt(statistics.median(loads) if loads else None):>7}")

print()
print("THROUGHPUT (data bytes / median seconds, MB/s = 1e6 bytes/s)")
for s in ("first_backup", "restore"):
    parts = []
    for t in ("cirkel", "restic"):
        secs, data = med(t, s, "seconds"), med(t, s, "data_bytes")
        parts.append(f"{t} {fmt(data / secs / 1e6 if secs and data else None, '{:.1f}')}")
    print(f"{s:<16}" + "   ".join(parts))

print()
print("REPOSITORY SIZE (du -sb; ratio = cirkel / restic, <1 means cirkel's repository is smaller)")
print(f"{'after':<16}{'cirkel bytes':>16}{'restic bytes':>16}{'ratio':>8}{'data bytes':>16}")
for s in ("first_backup", "second_backup", "changed_backup"):
    c, r = med("cirkel", s, "repo_bytes"), med("restic", s, "repo_bytes")
    d = med("cirkel", "first_backup", "data_bytes")
    print(f"{s:<16}{fmt(c, '{:.0f}'):>16}{fmt(r, '{:.0f}'):>16}{ratio(c, r, '{:.3f}'):>8}"
          f"{fmt(d, '{:.0f}') if s == 'first_backup' else '':>16}")
for s in ("changed_backup",):
    for t in ("cirkel", "restic"):
        grow = [float(a["repo_bytes"]) - float(b["repo_bytes"])
                for a in rows if a["tool"] == t and a["step"] == s
                for b in rows if b["tool"] == t and b["step"] == "second_backup" and b["run"] == a["run"]]
        if grow:
            print(f"  {t}: repository growth for the ~5 % change: {statistics.median(grow) / 1e6:.1f} MB (median)")

diffs = [r for r in rows if r["step"] == "diff"]
if diffs:
    print()
    print("RESTORE CHECK (diff -r, run 1): "
          + ", ".join(f"{r['tool']} {'ok' if r['ok'] == '1' else 'MISMATCH'}" for r in diffs))
EOF

if ((FAILED)); then
    die "a restored tree differed from the data (see above)"
fi
