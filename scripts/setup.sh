#!/usr/bin/env bash
# Sets up a fresh Debian machine for Strata: system packages, then the npm dependencies and build.
# Safe to run again; skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the project needs at run time and in tests:
#   libfuse2 + fuse: fuse-native's binary and its fusermount (the mount);
#   e2fsprogs: mkfs.ext4 for the disk-image tests and benchmarks;
#   attr: getfattr/setfattr, handy when inspecting xattrs.
PACKAGES=(libfuse2 fuse e2fsprogs attr)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# npm install (not npm ci): it follows package-lock.json too, but npm ci refuses this lock because
# @napi-rs/blake-hash names platform packages that were never published at its version.
npm install --no-audit --no-fund
npm run build
