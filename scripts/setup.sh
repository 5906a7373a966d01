#!/usr/bin/env bash
# Sets tpkit up on Debian / Ubuntu: the system packages it builds against — cmake, g++, make, libopenblas-dev
# (OpenBLAS) and libgloo-dev (Gloo) — then `npm install`, which builds the native addon. Works as root (no sudo
# needed, e.g. in a fresh container) and as a user with sudo. Extra packages: TPKIT_EXTRA_PACKAGES="a b".
set -euo pipefail
cd "$(dirname "$0")/.."
packages="cmake g++ make libopenblas-dev libgloo-dev ${TPKIT_EXTRA_PACKAGES:-}"
if [ "$(id -u)" = 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup.sh: run as root, or as a user with sudo, to install: $packages" >&2
  exit 1
fi
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086 # the package list is meant to split
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null
npm install
