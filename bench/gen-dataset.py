#!/usr/bin/env python3
"""Deterministic benchmark dataset for bench/files-vs-restic.sh (stdlib only).

    gen-dataset.py generate DIR [--seed N] [--scale X]   # SCALE env is the default for --scale
    gen-dataset.py mutate DIR SEED                      # change ~5 % of the bytes in DIR

`generate` writes, at scale 1.0 (about 3.2 GB in total):

    bin/bin-NN.bin          56 incompressible files, sizes log-uniform 1-200 MiB, 2.3 GB in total
    text/NNN/fNNNNN.txt     20,000 word-salad files of 1-20 KiB (zstd -3 gets ~3x) in 200 dirs
    dup/dup-NN-of-bin-MM.bin  14 byte-identical copies of 14 bin/ files, ~0.7 GB (dedup bait)

SCALE multiplies the bin/ file sizes (the count stays 56), the number of text
files and directories (their sizes stay 1-20 KiB) and the dup/ volume.

`mutate` changes ~5 % of the dataset's bytes, deterministically from SEED and
the current contents of DIR (same dataset + same SEED -> same result):

    35 %  overwrite 16 MiB regions at random offsets inside big bin/ files
          (the region shrinks to 1/8 of the largest bin/ file on small scales)
    20 %  append random bytes to bin/ files
    10 %  rewrite text files with new word salad
     -    delete 1 % of the text files
    35 %  add new files: 80 % of that as random bin/new-sS-NN.bin, 20 % as text
          files text/NNN/new-sS-NNNNN.txt

Every file's bytes come from its own random.Random seeded with a distinct
string, so no two files share content except the intentional dup/ copies.
"""

import argparse
import itertools
import math
import os
import random
import sys
import time

MiB = 1 << 20
KiB = 1 << 10
CHUNK = 4 * MiB  # fixed: the byte stream of a seeded generator depends on it

# Scale-1.0 shape of the dataset.
BIN_FILES = 56
BIN_MIN, BIN_MAX = 1 * MiB, 200 * MiB
BIN_TOTAL = 2.3e9
TEXT_FILES = 20_000
TEXT_DIRS = 200
TEXT_MIN, TEXT_MAX = 1 * KiB, 20 * KiB
DUP_COPIES = 14
DUP_TOTAL = 0.7e9

# Mutation shares of the ~5 % byte budget.
MUTATE_FRACTION = 0.05
SHARE_OVERWRITE, SHARE_APPEND, SHARE_REWRITE, SHARE_ADD = 0.35, 0.20, 0.10, 0.35
DELETE_TEXT_FRACTION = 0.01
REGION_MAX, REGION_MIN = 16 * MiB, 64 * KiB


# ---------------------------------------------------------------- content

def write_random(path, nbytes, seed, mode="wb"):
    """Writes (or appends) nbytes from random.Random(seed) to path."""
    rng = random.Random(seed)
    with open(path, mode) as f:
        left = nbytes
        while left > 0:
            n = min(CHUNK, left)
            f.write(rng.randbytes(CHUNK)[:n] if n < CHUNK else rng.randbytes(CHUNK))
            left -= n


def random_bytes(nbytes, seed):
    rng = random.Random(seed)
    parts, left = [], nbytes
    while left > 0:
        parts.append(rng.randbytes(CHUNK)[: min(CHUNK, left)])
        left -= CHUNK
    return b"".join(parts)


_SYLLABLES = ("ka lo mi ne ru sa te vo zu pi do fe gi ha ju be ci ar en os "
              "ul st tr pl qu wy xe ob ic um").split()


def _vocabulary():
    """1,000 pseudo-words with Zipf weights, plus a newline token (~1 in 11)."""
    rng = random.Random("cirkel-bench-vocabulary")
    seen, words = set(), []
    while len(words) < 1000:
        w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    weights = [1.0 / (k + 1) for k in range(len(words))]
    words.append("\n")
    weights.append(sum(weights) / 11)
    return words, list(itertools.accumulate(weights))


WORDS, CUM_WEIGHTS = _vocabulary()


def word_salad(nbytes, seed):
    rng = random.Random(seed)
    out = b""
    while len(out) < nbytes:  # one round almost always suffices
        toks = rng.choices(WORDS, cum_weights=CUM_WEIGHTS, k=nbytes // 4 + 16)
        out += " ".join(toks).replace(" \n ", "\n").encode()
    return out[: nbytes - 1] + b"\n"


def write_text(path, nbytes, seed):
    with open(path, "wb") as f:
        f.write(word_salad(nbytes, seed))


# ---------------------------------------------------------------- generate

def plan_bin_sizes(rng, scale):
    lo, hi = math.log(BIN_MIN * scale), math.log(BIN_MAX * scale)
    raw = [math.exp(rng.uniform(lo, hi)) for _ in range(BIN_FILES)]
    k = BIN_TOTAL * scale / sum(raw)  # hit the total exactly; keeps the log-uniform shape
    return [max(1, int(s * k)) for s in raw]


def pick_dups(rng, sizes, target):
    """DUP_COPIES distinct bin indices whose sizes add up close to target."""
    n = min(DUP_COPIES, len(sizes))
    chosen = rng.sample(range(len(sizes)), n)
    rest = [i for i in range(len(sizes)) if i not in chosen]
    best = abs(sum(sizes[i] for i in chosen) - target)
    for _ in range(20_000):  # deterministic local search: swap one in, one out
        if not rest or best == 0:
            break
        a, b = rng.randrange(n), rng.randrange(len(rest))
        delta = sizes[rest[b]] - sizes[chosen[a]]
        cand = abs(sum(sizes[i] for i in chosen) + delta - target)
        if cand < best:
            chosen[a], rest[b] = rest[b], chosen[a]
            best = cand
    return sorted(chosen)


def generate(root, seed, scale):
    if os.path.isdir(root) and os.listdir(root):
        sys.exit(f"gen-dataset: {root} exists and is not empty")
    t0 = time.time()
    rng = random.Random(f"plan:{seed}:{scale!r}")
    sizes = plan_bin_sizes(rng, scale)
    os.makedirs(os.path.join(root, "bin"), exist_ok=True)
    bin_paths = []
    for i, size in enumerate(sizes):
        p = os.path.join(root, "bin", f"bin-{i:02d}.bin")
        write_random(p, size, f"bin:{seed}:{i}")
        bin_paths.append(p)
    total_bin = sum(sizes)

    n_text = max(1, round(TEXT_FILES * scale))
    n_dirs = max(1, round(TEXT_DIRS * scale))
    total_text = 0
    for j in range(n_text):
        d = os.path.join(root, "text", f"{j % n_dirs:03d}")
        if j < n_dirs:
            os.makedirs(d, exist_ok=True)
        size = rng.randint(TEXT_MIN, TEXT_MAX)
        write_text(os.path.join(d, f"f{j:05d}.txt"), size, f"text:{seed}:{j}")
        total_text += size

    os.makedirs(os.path.join(root, "dup"), exist_ok=True)
    total_dup = 0
    for k, i in enumerate(pick_dups(rng, sizes, DUP_TOTAL * scale)):
        dst = os.path.join(root, "dup", f"dup-{k:02d}-of-bin-{i:02d}.bin")
        with open(bin_paths[i], "rb") as src, open(dst, "wb") as out:
            while True:
                buf = src.read(CHUNK)
                if not buf:
                    break
                out.write(buf)
        total_dup += sizes[i]

    total = total_bin + total_text + total_dup
    print(f"gen-dataset: {root}: seed={seed} scale={scale} "
          f"bin={len(sizes)} files {total_bin / 1e6:.0f} MB, "
          f"text={n_text} files in {n_dirs} dirs {total_text / 1e6:.0f} MB, "
          f"dup={DUP_COPIES} files {total_dup / 1e6:.0f} MB, "
          f"total {total / 1e6:.0f} MB in {time.time() - t0:.1f}s")


# ---------------------------------------------------------------- mutate

def list_files(root, sub):
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, sub)):
        dirnames.sort()
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames))
    return out


def mutate(root, seed):
    t0 = time.time()
    if not os.path.isdir(os.path.join(root, "bin")) or not os.path.isdir(os.path.join(root, "text")):
        sys.exit(f"gen-dataset: {root} does not look like a generated dataset")
    rng = random.Random(f"mutate:{seed}")
    bins = list_files(root, "bin")
    texts = list_files(root, "text")
    size = {p: os.path.getsize(p) for p in bins}
    total = sum(size.values()) + sum(os.path.getsize(p) for p in texts) \
        + sum(os.path.getsize(p) for p in list_files(root, "dup"))
    budget = MUTATE_FRACTION * total
    region = min(REGION_MAX, max(REGION_MIN, max(size.values()) // 8 // 4096 * 4096))
    done = {}

    # 1. overwrite regions inside big files
    big = [p for p in bins if size[p] >= 2 * region] or [p for p in bins if size[p] >= region]
    n = 0
    if big:
        for k in range(max(1, round(SHARE_OVERWRITE * budget / region))):
            p = rng.choice(big)
            off = rng.randrange(0, size[p] - region + 1)
            with open(p, "r+b") as f:
                f.seek(off)
                f.write(random_bytes(region, f"overwrite:{seed}:{k}"))
            n += region
    done["overwrite"] = n

    # 2. append to binary files
    n = k = 0
    while n < SHARE_APPEND * budget:
        p = rng.choice(bins)
        add = min(rng.randint(region // 4, region), max(4096, int(SHARE_APPEND * budget - n)))
        write_random(p, add, f"append:{seed}:{k}", mode="ab")
        n += add
        k += 1
    done["append"] = n

    # 3. delete 1 % of the text files, 4. rewrite others
    rng.shuffle(texts)
    n_del = max(1, round(DELETE_TEXT_FRACTION * len(texts)))
    n = 0
    for p in texts[:n_del]:
        n += os.path.getsize(p)
        os.unlink(p)
    done["delete"] = n
    n = k = 0
    for p in texts[n_del:]:
        if n >= SHARE_REWRITE * budget:
            break
        new = rng.randint(TEXT_MIN, TEXT_MAX)
        write_text(p, new, f"rewrite:{seed}:{k}")
        n += new
        k += 1
    done["rewrite"] = n

    # 5. new random files and new text files
    add_budget = SHARE_ADD * budget
    n = k = 0
    lo, hi = math.log(max(4096, region // 16)), math.log(2 * region)
    while n < 0.8 * add_budget:
        new = min(int(math.exp(rng.uniform(lo, hi))), max(4096, int(0.8 * add_budget - n)))
        write_random(os.path.join(root, "bin", f"new-s{seed}-{k:02d}.bin"), new, f"new-bin:{seed}:{k}")
        n += new
        k += 1
    text_dirs = sorted({os.path.dirname(p) for p in texts})
    k = 0
    while n < add_budget:
        new = rng.randint(TEXT_MIN, TEXT_MAX)
        d = rng.choice(text_dirs)
        write_text(os.path.join(d, f"new-s{seed}-{k:05d}.txt"), new, f"new-text:{seed}:{k}")
        n += new
        k += 1
    done["add"] = n

    changed = sum(v for key, v in done.items() if key != "delete")
    print(f"gen-dataset: mutate {root} seed={seed}: region={region // KiB} KiB, "
          + ", ".join(f"{key}={v / 1e6:.1f} MB" for key, v in done.items())
          + f", {n_del} text files deleted; {changed / 1e6:.0f} MB written "
          f"= {100 * changed / total:.1f} % of {total / 1e6:.0f} MB in {time.time() - t0:.1f}s")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a fresh dataset into DIR")
    g.add_argument("dir")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--scale", type=float, default=float(os.environ.get("SCALE", "1.0")))
    m = sub.add_parser("mutate", help="change ~5 %% of the bytes of the dataset in DIR")
    m.add_argument("dir")
    m.add_argument("seed", help="integer (SEED=N is accepted too)")
    a = ap.parse_args()
    if a.cmd == "generate":
        if a.scale <= 0:
            sys.exit("gen-dataset: scale must be > 0")
        generate(a.dir, a.seed, a.scale)
    else:
        s = a.seed.split("=", 1)[1] if a.seed.upper().startswith("SEED=") else a.seed
        mutate(a.dir, int(s))


if __name__ == "__main__":
    main()
