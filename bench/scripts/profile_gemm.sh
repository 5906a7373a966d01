#!/usr/bin/env bash
# perf counters per GEMM for tpkit's matmul and raw OpenBLAS sgemm on square sizes: CPU time, context
# switches, page faults, sched_yield (OpenBLAS's idle threads yield while they wait for work) and futex.
# Differential — (run with N_HI iterations − run with N_LO) / (N_HI − N_LO) — so start-up and input
# generation cancel out.
#
#   bench/scripts/profile_gemm.sh [SIZES="512 1024"] [N_LO=20] [N_HI=200]
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZES=${1:-512 1024}; N_LO=${2:-20}; N_HI=${3:-200}
SGEMM=${TPKIT_BENCH_NATIVE_DIR:-build/bench-native}/tpkit_bench_sgemm
EV=task-clock,context-switches,page-faults,syscalls:sys_enter_sched_yield,syscalls:sys_enter_futex
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
echo "# per GEMM, differential ($N_HI - $N_LO iterations); load $(cut -d' ' -f1-3 /proc/loadavg)"
for S in $SIZES; do
  for n in "$N_LO" "$N_HI"; do
    perf stat -x, -e "$EV" -o "$TMP/tpkit.$n" node dist/bench/entry.js gemm --min-size "$S" --max-size "$S" --models none -n "$n" -w 2 > "$TMP/tpkit.$n.out"
    perf stat -x, -e "$EV" -o "$TMP/raw.$n" "$SGEMM" -n "$n" -w 2 "${S}x${S}x${S}" > "$TMP/raw.$n.out"
  done
  for k in tpkit raw; do
    t_lo=$(grep -oE '"timeUs":[0-9.]+' "$TMP/$k.$N_LO.out" | cut -d: -f2 || true)
    t_lo=${t_lo:-$(awk '/square/ {print $7}' "$TMP/$k.$N_LO.out")}
    t_hi=$(grep -oE '"timeUs":[0-9.]+' "$TMP/$k.$N_HI.out" | cut -d: -f2 || true)
    t_hi=${t_hi:-$(awk '/square/ {print $7}' "$TMP/$k.$N_HI.out")}
    paste -d, "$TMP/$k.$N_LO" "$TMP/$k.$N_HI" | grep -E '^[0-9.]+,' | awk -F, -v k="$k" -v s="$S" -v d=$((N_HI - N_LO)) -v tl="$t_lo" -v th="$t_hi" '
      { v = ($(NF/2+1) - $1) / d; if ($3 == "task-clock") v *= 1000; out = out sprintf("  %s %.1f", $3, v) }
      END { printf "%5s %-6s time-us(lo/hi) %s/%s %s\n", s, k, tl, th, out }'
  done
done
