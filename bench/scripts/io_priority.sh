#!/usr/bin/env bash
# Gloo's I/O thread priority (TPKIT_GLOO_IO_PRIORITY; raw peer: --device-nice): 2-rank all-reduce means and
# per-op medians, K alternating runs of raw Gloo (default / SCHED_IDLE I/O thread) and tpkit (normal / idle),
# then tpkit under CPU load (two busy-looping processes on the same cores) at normal, idle, nice 10 and 19.
#
#   bench/scripts/io_priority.sh [K=2] [ITERS=100]      (needs build/bench-native: see bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
K=${1:-2}; N=${2:-100}
RAW=${TPKIT_BENCH_NATIVE_DIR:-build/bench-native}/tpkit_bench_gloo
TMP=$(mktemp -d); HOGS=(); trap 'kill "${HOGS[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT

raw() {  # raw OUT-NAME extra-args...: 2 ranks of the raw peer over a file store
  local name=$1; shift
  "$RAW" --rank 0 --size 2 --store "$TMP/store.$name" -b 4096 -e 16M -f 4 -n "$N" -w 10 "$@" > "$TMP/$name.raw" &
  "$RAW" --rank 1 --size 2 --store "$TMP/store.$name" -b 4096 -e 16M -f 4 -n "$N" -w 10 "$@" > /dev/null
  wait
}
tp() {  # tp OUT-NAME PRIORITY MAXBYTES ITERS
  TPKIT_GLOO_IO_PRIORITY=$2 node dist/bench/entry.js collectives --op all_reduce --nproc 2 -b 4096 -e "$3" -f 4 \
    -n "$4" -w 3 --no-model --json "$TMP/$1.json" > /dev/null
}
for i in $(seq 1 "$K"); do
  raw "rawnormal.$i"; raw "rawidle.$i" --device-nice idle
  tp "normal.$i" normal 16M "$N"; tp "idle.$i" idle 16M "$N"
done
for h in 1 2; do (while :; do :; done) & HOGS+=($!); done
for p in normal idle 10 19; do tp "load.$p" "$p" 1M 20; done
kill "${HOGS[@]}"; HOGS=()

node - "$TMP" "$K" <<'JS'
const fs = require('fs');
const [dir, k] = process.argv.slice(2);
const med = (v) => { v = [...v].sort((a, b) => a - b); const m = v.length >> 1; return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2; };
const runs = (name) => Array.from({ length: Number(k) }, (_, i) => `${dir}/${name}.${i + 1}`);
const rawRows = (f) => fs.readFileSync(`${f}.raw`, 'utf8').split('\n').filter((l) => l.includes('"row"')).map((l) => JSON.parse(l));
const tpRows = (f) => JSON.parse(fs.readFileSync(`${f}.json`, 'utf8')).rows.map((r) => ({ size: r.size, timeUs: r.inPlace.timeUs, p50Us: r.inPlace.p50Us }));
const meta = JSON.parse(fs.readFileSync(`${dir}/normal.1.json`, 'utf8')).meta;
const series = { 'raw, I/O normal': runs('rawnormal').map(rawRows), 'raw, I/O idle': runs('rawidle').map(rawRows),
  'tpkit normal': runs('normal').map(tpRows), 'tpkit idle': runs('idle').map(tpRows) };
const out = [`# 2-rank all-reduce, ${k} alternating runs of ${meta.iters} iterations; per size the median over runs of mean / p50 (µs)`,
  `# ${meta.date} ${meta.host} ${meta.cpu}, load at start ${meta.loadavg.join(' ')}`,
  '#     size' + Object.keys(series).map((s) => s.padStart(22)).join('')];
series['tpkit normal'][0].forEach((row, i) => {
  out.push(String(row.size).padStart(10) + Object.values(series).map((rs) => {
    const m = (key) => med(rs.map((r) => r[i][key])).toFixed(0);
    return `${m('timeUs')} / ${m('p50Us')}`.padStart(22);
  }).join(''));
});
out.push('', '# under load: two busy-looping processes on the same cores; tpkit, 20 iterations, mean / p50 (µs)',
  '#     size' + ['normal', 'idle', 'nice 10', 'nice 19'].map((s) => s.padStart(22)).join(''));
const load = ['normal', 'idle', '10', '19'].map((p) => tpRows(`${dir}/load.${p}`));
load[0].forEach((row, i) => out.push(String(row.size).padStart(10) + load.map((r) => `${r[i].timeUs.toFixed(0)} / ${r[i].p50Us.toFixed(0)}`.padStart(22)).join('')));
console.log(out.join('\n'));
JS
