#!/usr/bin/env bash
# files-sparse-hardlinks.sh: restoring a sparse file and many hard links,
# `cirkel restore files` against `restic restore` 0.14 (Debian package).
#
# What it measures, per run and per tool (one repository per tool, made once):
#   sparse     a SPARSE_GIB GiB file holding SPARSE_DATA_MIB MiB of random data in
#              1 MiB pieces spread over it, the rest holes: restore wall seconds and
#              the blocks the restored file allocates (stat %b x %B). restic gets
#              `--sparse` when it has it (0.14 does not, and writes the holes as zeros).
#   hardlinks  LINK_FILES small files, each with a second hard link in another
#              directory: restore wall seconds, and how many restored files share
#              their inode with another (2 x LINK_FILES when every link is kept).
# Every restore is checked against the data (cmp for the sparse file, diff -r for the
# link tree). The 1-minute load average before every step is recorded as load1=.
#
# Output: one `RESULT tool=... run=... case=... key=value...` line per restore, then
# medians and ratios: time ratio = restic / cirkel (>1: cirkel faster), allocated
# ratio = cirkel / restic (<1: cirkel's restore takes less disk).
#
# Run (as root, from anywhere; it builds target/release/cirkel first):
#   bash bench/files-sparse-hardlinks.sh 2>&1 | tee bench-sparse-links.log
#
# Knobs (environment):
#   BASE=/tmp/bench-sparse-links   everything is written below it and removed at the end
#   RUNS=3  SPARSE_GIB=1  SPARSE_DATA_MIB=16  LINK_FILES=10000
#   SKIP_BUILD=0    1: use the existing target/release/cirkel
#   CIRKEL_BIN=...  another cirkel binary (add SKIP_BUILD=1)
set -euo pipefail

BASE=${BASE:-/tmp/bench-sparse-links}
RUNS=${RUNS:-3}
SPARSE_GIB=${SPARSE_GIB:-1}
SPARSE_DATA_MIB=${SPARSE_DATA_MIB:-16}
LINK_FILES=${LINK_FILES:-10000}
SKIP_BUILD=${SKIP_BUILD:-0}

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CIRKEL=${CIRKEL_BIN:-$ROOT/target/release/cirkel}

die() { echo "files-sparse-hardlinks: $*" >&2; exit 1; }

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"
BASE=$(realpath -m -- "$BASE")
[[ $BASE != / && $BASE != "$ROOT"* ]] || die "refusing BASE=$BASE"
DATA="$BASE/data"
LOGS="$BASE/logs"
RESULTS="$BASE/results.txt"
PASSWORD_FILE="$BASE/password"

cleanup() {
    local rc=$?
    rm -rf -- "$DATA" "$LOGS" "$RESULTS" "$PASSWORD_FILE" "$BASE"/repo-cirkel "$BASE"/repo-restic \
        "$BASE"/restore-cirkel "$BASE"/restore-restic
    rmdir -- "$BASE" 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -d $HOME/.cargo/bin ]] && PATH="$PATH:$HOME/.cargo/bin"
if [[ $SKIP_BUILD != 1 ]]; then
    echo "# building cirkel (cargo build --release -p cirkel)"
    (cd "$ROOT" && cargo build --release -p cirkel)
fi
[[ -x $CIRKEL ]] || die "$CIRKEL missing"
command -v restic >/dev/null || die "restic missing (apt-get install restic)"
RESTIC=$(command -v restic)
RESTIC_SPARSE=()
"$RESTIC" restore --help 2>/dev/null | grep -q -- '--sparse' && RESTIC_SPARSE=(--sparse)

unset CIRKEL_PASSWORD CIRKEL_CONFIG RESTIC_PASSWORD RESTIC_PASSWORD_COMMAND RESTIC_COMPRESSION \
    RESTIC_PACK_SIZE GOMAXPROCS GOGC
export CIRKEL_REPO="$BASE/repo-cirkel" CIRKEL_PASSWORD_FILE="$PASSWORD_FILE"
export RESTIC_REPOSITORY="$BASE/repo-restic" RESTIC_PASSWORD_FILE="$PASSWORD_FILE"

# shellcheck source=bench/lib.sh
source "$HERE/lib.sh"
load1() { cut -d' ' -f1 /proc/loadavg; }

run_logged() {
    local name=$1; shift
    if ! "$@" >"$LOGS/$name.log" 2>&1; then
        echo "FAILED ($name): $*" >&2
        tail -n 40 "$LOGS/$name.log" >&2
        exit 1
    fi
}

# timed NAME CMD...: settles the machine, runs CMD; sets T_SECONDS and T_LOAD.
timed() {
    local name=$1; shift
    settle
    T_LOAD=$(load1)
    local t0 t1
    t0=$(date +%s.%N)
    run_logged "$name" "$@"
    t1=$(date +%s.%N)
    T_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}

result() { # TOOL CASE key=value...
    local line="RESULT tool=$1 run=$RUN case=$2"
    shift 2
    line+=" $*"
    echo "$line"
    echo "$line" >>"$RESULTS"
}

# ------------------------------------------------------------------ data

rm -rf -- "$BASE"
mkdir -p -- "$DATA/sparse" "$DATA/links/a" "$DATA/links/b" "$LOGS"
: >"$RESULTS"
printf 'bench-password-not-secret\n' >"$PASSWORD_FILE"
chmod 600 "$PASSWORD_FILE"

echo "# $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB RAM"
echo "# $("$CIRKEL" --version) | $("$RESTIC" version) | restic sparse flag: ${RESTIC_SPARSE[*]:-none}"
echo "# BASE=$BASE RUNS=$RUNS SPARSE_GIB=$SPARSE_GIB SPARSE_DATA_MIB=$SPARSE_DATA_MIB LINK_FILES=$LINK_FILES"

python3 - "$DATA" "$SPARSE_GIB" "$SPARSE_DATA_MIB" "$LINK_FILES" <<'EOF'
import os, random, sys
data, gib, mib, links = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(1)
size = gib << 30
with open(os.path.join(data, "sparse", "disk.img"), "wb") as f:
    step = size // mib
    for i in range(mib):
        f.seek(i * step)
        f.write(rng.randbytes(1 << 20))
    f.truncate(size)
for i in range(links):
    a = os.path.join(data, "links", "a", f"f{i:05}")
    with open(a, "wb") as f:
        f.write(rng.randbytes(64 + i % 512))
    os.link(a, os.path.join(data, "links", "b", f"f{i:05}"))
EOF
echo "# sparse file: $(stat -c '%s bytes, %b blocks of %B' "$DATA/sparse/disk.img"); link tree: $LINK_FILES files x 2 links"

# One snapshot per case in each repository.
run_logged init-cirkel "$CIRKEL" -q repo init
run_logged init-restic "$RESTIC" init
declare -A CIRKEL_SNAP
for case in sparse links; do
    CIRKEL_SNAP[$case]=$("$CIRKEL" --json backup files "$DATA/$case" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
    run_logged "backup-restic-$case" "$RESTIC" backup --host bench "$DATA/$case"
done

# ------------------------------------------------------------------ runs

FAILED=0
for RUN in $(seq 1 "$RUNS"); do
    if ((RUN % 2)); then ORDER=(cirkel restic); else ORDER=(restic cirkel); fi
    for tool in "${ORDER[@]}"; do
        dir="$BASE/restore-$tool"
        rm -rf -- "$dir" && mkdir -p -- "$dir"
        for case in sparse links; do
            case $tool in
                cirkel) cmd=("$CIRKEL" -q restore files "${CIRKEL_SNAP[$case]}" --to "$dir") ;;
                restic) cmd=("$RESTIC" restore latest --path "$DATA/$case" --target "$dir")
                        [[ $case == sparse ]] && cmd+=("${RESTIC_SPARSE[@]}") ;;
            esac
            timed "run$RUN-$tool-$case" "${cmd[@]}"
            if [[ $case == sparse ]]; then
                f="$dir$DATA/sparse/disk.img"
                ok=0; cmp -s -- "$DATA/sparse/disk.img" "$f" && ok=1
                alloc=$(stat -c '%b %B' -- "$f" | awk '{ print $1 * $2 }')
                result "$tool" sparse "seconds=$T_SECONDS allocated_bytes=$alloc ok=$ok load1=$T_LOAD"
            else
                ok=0; diff -r -- "$DATA/links" "$dir$DATA/links" >/dev/null && ok=1
                shared=$(find "$dir$DATA/links" -type f -links +1 | wc -l)
                result "$tool" links "seconds=$T_SECONDS files_sharing_an_inode=$shared ok=$ok load1=$T_LOAD"
            fi
            ((ok)) || { echo "RESTORE MISMATCH ($tool $case)" >&2; FAILED=1; }
        done
        rm -rf -- "$dir"
    done
done

# ------------------------------------------------------------------ summary

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = [dict(f.split("=", 1) for f in line.split()[1:]) for line in open(sys.argv[1])]
def med(tool, case, key):
    v = [float(r[key]) for r in rows if r["tool"] == tool and r["case"] == case and key in r]
    return statistics.median(v) if v else None
def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"
runs = len({r["run"] for r in rows})
print()
print(f"SUMMARY (medians over {runs} run(s))")
c, r = med("cirkel", "sparse", "seconds"), med("restic", "sparse", "seconds")
print(f"sparse restore   cirkel {c:.2f} s   restic {r:.2f} s   time ratio restic/cirkel {ratio(r, c)}")
c, r = med("cirkel", "sparse", "allocated_bytes"), med("restic", "sparse", "allocated_bytes")
print(f"sparse allocated cirkel {c / 2**20:.1f} MiB   restic {r / 2**20:.1f} MiB   ratio cirkel/restic {ratio(c, r)}")
c, r = med("cirkel", "links", "seconds"), med("restic", "links", "seconds")
print(f"hard-link restore cirkel {c:.2f} s   restic {r:.2f} s   time ratio restic/cirkel {ratio(r, c)}")
c, r = med("cirkel", "links", "files_sharing_an_inode"), med("restic", "links", "files_sharing_an_inode")
print(f"files restored as shared inodes: cirkel {c:.0f}   restic {r:.0f}")
EOF

((FAILED)) && die "a restore differed from the data (see above)"
exit 0
