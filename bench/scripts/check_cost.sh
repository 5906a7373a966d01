#!/usr/bin/env bash
# The cost of tpkit's collective consistency check (TPKIT_CHECK): the small-message all-reduce sweep run
# alternately with the check on (default) and off, K times each, so both see the same machine load; prints
# per size the median over runs of the mean and of the per-op median (p50) time, and the difference.
#
#   bench/scripts/check_cost.sh [K=5] [RANKS=2] [MAXBYTES=64K] [ITERS=100] [results-dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
K=${1:-5}; RANKS=${2:-2}; MAX=${3:-64K}; N=${4:-100}; OUT=${5:-}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
for i in $(seq 1 "$K"); do
  for c in on off; do
    TPKIT_CHECK=$c node dist/bench/entry.js collectives --op all_reduce --nproc "$RANKS" -b 8 -e "$MAX" -f 8 -n "$N" -w 10 --no-model --json "$TMP/$c.$i.json" >/dev/null
  done
done
node - "$TMP" "$K" "${OUT}" <<'JS'
const fs = require('fs');
const [dir, k, out] = process.argv.slice(2);
const load = (c) => Array.from({ length: Number(k) }, (_, i) => JSON.parse(fs.readFileSync(`${dir}/${c}.${i + 1}.json`, 'utf8')));
const on = load('on'), off = load('off');
const med = (v) => { v = [...v].sort((a, b) => a - b); const m = v.length >> 1; return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2; };
const lines = [`# all-reduce on ${on[0].meta.worldSize} ranks, TPKIT_CHECK on vs off, ${k} alternating runs each, ${on[0].meta.iters} iterations; medians over runs (µs)`,
  `# ${on[0].meta.date} ${on[0].meta.host} ${on[0].meta.cpu}, load at start ${on[0].meta.loadavg.join(' ')}`,
  '#    size   on mean  off mean   on p50  off p50  p50 on-off'];
on[0].rows.forEach((row, i) => {
  const m = (runs, key) => med(runs.map((r) => r.rows[i].inPlace[key]));
  const [a, b, c, d] = [m(on, 'timeUs'), m(off, 'timeUs'), m(on, 'p50Us'), m(off, 'p50Us')];
  lines.push(`${String(row.size).padStart(9)} ${a.toFixed(1).padStart(9)} ${b.toFixed(1).padStart(9)} ${c.toFixed(1).padStart(8)} ${d.toFixed(1).padStart(8)} ${(c - d).toFixed(1).padStart(11)}`);
});
console.log(lines.join('\n'));
if (out) fs.writeFileSync(`${out}/check_cost.txt`, `${lines.join('\n')}\n`);
JS
