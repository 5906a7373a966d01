#!/usr/bin/env bash
# Builds the core (CPU) addon once more with node-gyp from binding.gyp, in a scratch copy so that cmake-js's
# build/ stays untouched, and loads it: binding.gyp is the build for machines without CMake and must not rot.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/binding.gyp" "$root/native" "$work/"
gyp=$(npm root -g 2>/dev/null)/npm/node_modules/node-gyp/bin/node-gyp.js
[[ -f $gyp ]] || gyp=$(command -v node-gyp)
nodedir=$(npm config get nodedir 2>/dev/null || true)
args=(rebuild -j 2)
[[ -n $nodedir && $nodedir != undefined && -d $nodedir/include/node ]] && args+=("--nodedir=$nodedir")
(cd "$work" && NODE_PATH="$root/node_modules" node "$gyp" "${args[@]}" >"$work/gyp.log" 2>&1) || { cat "$work/gyp.log"; exit 1; }
node -e "const a = require('$work/build/Release/tpkit_core.node'); if (typeof a.sgemm !== 'function') process.exit(1); console.log('node-gyp build of binding.gyp: ok (' + a.blasConfig().split(' ').slice(0, 2).join(' ') + ')')"
