#!/usr/bin/env bash
# Where does a small all-reduce spend its time? Per-operation timing and perf counters for
#   raw      raw Gloo (bench/native tpkit_bench_gloo)
#   raw+x    raw Gloo + the 56-byte descriptor all-gather that tpkit's consistency check adds (--check-exchange)
#   off      tpkit, TPKIT_CHECK=off
#   on       tpkit, consistency check on (the default)
# Counts are differential — (run with N_HI iterations − run with N_LO) / (N_HI − N_LO) / ranks — so process
# start-up, rendezvous and teardown cancel out. Columns: time per op of each run (µs), CPU time per op and
# rank (µs), context switches, futex and epoll_wait calls, and with PROBES=1 uprobes on Gloo's TCP pair:
# handleEvents (each epoll wake-up of Gloo's device thread), handleReadWrite (the wake-ups that got the
# pair's lock and did I/O) and read.
#
#   [PROBES=1] bench/scripts/profile_small_allreduce.sh [SIZE=4K] [RANKS=2] [N_LO=200] [N_HI=2000]
#
# Needs perf (linux-perf; root for PROBES=1, which adds uprobes to libgloo and removes them on exit) and the
# raw peers (cmake -S bench/native -B build/bench-native && cmake --build build/bench-native).
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=${1:-4K}; RANKS=${2:-2}; N_LO=${3:-200}; N_HI=${4:-2000}
GLOO=${TPKIT_BENCH_NATIVE_DIR:-build/bench-native}/tpkit_bench_gloo
EVENTS=task-clock,context-switches,syscalls:sys_enter_futex,syscalls:sys_enter_epoll_wait
TMP=$(mktemp -d)
cleanup() {
  rm -rf "$TMP"
  if [ "${PROBES:-0}" = 1 ]; then perf probe -q -d 'probe_libgloo:tpkit_*' 2>/dev/null || true; fi
}
trap cleanup EXIT
if [ "${PROBES:-0}" = 1 ]; then
  LIB=$(readlink -f "$(ldd "$GLOO" | awk '/libgloo/ {print $3}')")
  for f in handleEvents handleReadWrite read; do
    addr=$(nm -D "$LIB" | awk -v f="$f" '$2 == "T" && $3 ~ ("^_ZN4gloo9transport3tcp4Pair[0-9]+" f "E") {print $1}')
    perf probe -q -x "$LIB" -a "tpkit_${f}=0x${addr}"
    EVENTS="$EVENTS,probe_libgloo:tpkit_${f}"
  done
fi

raw() { # $1 iterations, $2 extra flag
  local store="$TMP/store.$1.${2:-plain}.$RANDOM"
  for r in $(seq 1 $((RANKS - 1))); do "$GLOO" --rank "$r" --size "$RANKS" --store "$store" -b "$SIZE" -e "$SIZE" -n "$1" -w 20 ${2:-} >/dev/null & done
  "$GLOO" --rank 0 --size "$RANKS" --store "$store" -b "$SIZE" -e "$SIZE" -n "$1" -w 20 ${2:-}
  wait
}
tpkit() { # $1 iterations, $2 TPKIT_CHECK
  TPKIT_CHECK=$2 node dist/bench/entry.js collectives --nproc "$RANKS" -b "$SIZE" -e "$SIZE" -n "$1" -w 20 --no-model
}
export -f raw tpkit
export GLOO SIZE RANKS TMP
measure() { # $1 label, $2 iterations, then the command (a function above and its arguments)
  local label=$1 n=$2; shift 2
  perf stat -x, -e "$EVENTS" -o "$TMP/$label.$n.perf" -- bash -c "$*" > "$TMP/$label.$n.out"
}
for label in raw raw+x off on; do
  for n in "$N_LO" "$N_HI"; do
    case $label in
      raw) measure "$label" "$n" raw "$n" ;;
      raw+x) measure "$label" "$n" raw "$n" --check-exchange ;;
      off) measure "$label" "$n" tpkit "$n" off ;;
      on) measure "$label" "$n" tpkit "$n" on ;;
    esac
  done
done
node - "$TMP" "$N_LO" "$N_HI" "$RANKS" "$SIZE" <<'JS'
const fs = require('fs');
const [dir, lo, hi, ranks, size] = process.argv.slice(2);
const read = (f) => Object.fromEntries(fs.readFileSync(f, 'utf8').split('\n').filter((l) => /^[\d.]+,/.test(l))
  .map((l) => { const c = l.split(','); return [c[2], Number(c[0])]; }));
const time = (f) => { // µs per op: raw prints a JSON row, tpkit its table (in-place time column)
  const t = fs.readFileSync(f, 'utf8');
  const j = /"timeUs":([\d.]+)/.exec(t); if (j) return Number(j[1]);
  const row = t.split('\n').find((l) => /^\s+\d+\s+\d+\s+float/.test(l)); return Number(row.trim().split(/\s+/)[9]);
};
const names = { 'task-clock': 'cpu-us', 'context-switches': 'ctx-sw', 'syscalls:sys_enter_futex': 'futex', 'syscalls:sys_enter_epoll_wait': 'epoll_wait',
  'probe_libgloo:tpkit_handleEvents': 'gloo-wakeups', 'probe_libgloo:tpkit_handleReadWrite': 'gloo-io', 'probe_libgloo:tpkit_read': 'gloo-read' };
const keys = Object.keys(read(`${dir}/raw.${lo}.perf`)).filter((k) => names[k]);
console.log(`# ${size} all-reduce on ${ranks} ranks; per op and rank, differential (${hi} - ${lo} iterations); load ${require('os').loadavg().map((v) => v.toFixed(2)).join(' ')}`);
console.log(['#case', `us(n=${lo})`, `us(n=${hi})`, ...keys.map((k) => names[k])].map((s) => s.padStart(13)).join(''));
for (const l of ['raw', 'raw+x', 'off', 'on']) {
  const a = read(`${dir}/${l}.${lo}.perf`), b = read(`${dir}/${l}.${hi}.perf`);
  const per = keys.map((k) => ((b[k] - a[k]) / (hi - lo) / ranks) * (k === 'task-clock' ? 1e3 : 1)); // task-clock is in ms
  console.log([l, time(`${dir}/${l}.${lo}.out`).toFixed(1), time(`${dir}/${l}.${hi}.out`).toFixed(1), ...per.map((v) => v.toFixed(1))].map((s) => String(s).padStart(13)).join(''));
}
JS
