#!/usr/bin/env bash
# The demo: an embedded default store, three versions of a source tree, a disk image over two
# generations, and what deduplication saved. Runs from a fresh clone after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${STRATA_STORE:-demo/store}
WORK=demo/work
strata() { node bin/strata "$@" --store "$STORE"; }

rm -rf demo && mkdir -p "$WORK"
strata init

# Sample data: this project's own dependencies, changed a little between versions.
mkdir -p "$WORK/src"
cp -r node_modules/typescript node_modules/better-sqlite3 "$WORK/src/"
echo "== import v1 (a source tree)"
strata import "$WORK/src" --name v1
echo "// local patch" >> "$WORK/src/typescript/lib/tsc.js"
rm -rf "$WORK/src/better-sqlite3/deps"
echo "== import v2 (one file edited, a directory removed)"
strata import "$WORK/src" --name v2
cp -r node_modules/fast-check "$WORK/src/"
echo "== import v3 (a package added)"
strata import "$WORK/src" --name v3

echo "== a 64 MiB ext4 disk image, two generations (fixed-size chunking)"
mkdir -p "$WORK/imgsrc" && cp -r node_modules/lru-cache "$WORK/imgsrc/"
mkfs.ext4 -q -F -d "$WORK/imgsrc" "$WORK/disk.img" 64M
strata import "$WORK/disk.img" --name disk-gen1
debugfs -w -R "write bin/strata strata-launcher" "$WORK/disk.img" >/dev/null 2>&1
strata import "$WORK/disk.img" --name disk-gen2

echo "== log";   strata log
echo "== diff v1 v2"; strata diff v1 v2
echo "== diff disk-gen1 disk-gen2"; strata diff disk-gen1 disk-gen2
echo "== stats"; strata stats
echo "== restore v3 and compare with its source"
strata restore v3 "$WORK/restored"
diff -r "$WORK/src" "$WORK/restored" && echo "restored tree is identical to the source"
echo "== verify"; strata verify
echo "demo store left at $STORE (remove with: rm -rf demo)"
