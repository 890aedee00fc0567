#!/usr/bin/env bash
# Dedup/ingest benchmark of Strata against restic and borg (see benchmarks/README.md).
#   npm run bench            (= npm run build && bash benchmarks/run.sh)
#   bash benchmarks/run.sh   (if dist/ is already built)
# Installs missing Debian packages (restic, borgbackup, e2fsprogs, time) with apt-get, builds or
# reuses the datasets in benchmarks/work/, runs every tool into a fresh repository and writes
# benchmarks/results/latest.md and latest.json. Environment: BENCH_TOOLS, BENCH_DATASETS,
# BENCH_TIMEOUT (see benchmarks/dedup-bench.mjs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
cd "$root"
export PATH="$PATH:/usr/sbin:/sbin"

say() { printf '[bench] %s\n' "$*" >&2; }

# --- tools --------------------------------------------------------------------------------------
missing=()
command -v restic >/dev/null 2>&1 || missing+=(restic)
command -v borg >/dev/null 2>&1 || missing+=(borgbackup)
if ! command -v mkfs.ext4 >/dev/null 2>&1 || ! command -v debugfs >/dev/null 2>&1 \
   || ! command -v e2fsck >/dev/null 2>&1; then
  missing+=(e2fsprogs)
fi
[[ -x /usr/bin/time ]] || missing+=(time)
command -v timeout >/dev/null 2>&1 || missing+=(coreutils)
command -v tar >/dev/null 2>&1 || missing+=(tar)

if ((${#missing[@]})); then
  sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      say "missing packages: ${missing[*]}; install them as root: apt-get install -y ${missing[*]}"
      exit 1
    fi
  fi
  say "installing missing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for c in node npm restic borg mkfs.ext4 debugfs e2fsck timeout tar; do
  command -v "$c" >/dev/null 2>&1 || { say "required command '$c' not found"; exit 1; }
done
say "$(restic version | head -n1); $(borg --version); node $(node --version)"

# --- datasets (cached in benchmarks/work/datasets) ------------------------------------------------
node benchmarks/datasets.mjs

# --- the benchmark ---------------------------------------------------------------------------------
export BENCH_COMMAND="${BENCH_COMMAND:-npm run bench}"
node benchmarks/dedup-bench.mjs
