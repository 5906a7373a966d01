#!/usr/bin/env bash
# Reproduces the figures of bench/README.md on this machine (CPU, Gloo) and refreshes bench/results/.
# Modest sizes for a shared 2-core machine; about 25 minutes, most of it the GEMM sweep with its peers.
# Set TPKIT_BENCH_PYTHON to an interpreter with torch to fill the PyTorch columns (the default python3 has
# none here, and they are skipped with the reason).
#
#   npm run build:ts && bench/scripts/measure.sh [results-dir=bench/results]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/results}
mkdir -p "$OUT"
B="node dist/bench/entry.js"
SWEEP="-b 8 -e 64M -f 2 -n 10 -w 3"
SWEEP20="-b 8 -e 64M -f 2 -n 20 -w 5"

uptime
# 1. all-reduce at 2 and 4 ranks, with the raw Gloo and PyTorch peers, interleaved runs (medians)
$B collectives --op all_reduce $SWEEP20 --nproc 2 --peers all --repeat 5 --json "$OUT/all_reduce_gloo_n2.json" --plot "$OUT/all_reduce_gloo_n2.svg"
$B collectives --op all_reduce $SWEEP --nproc 4 --peers all --repeat 3 --json "$OUT/all_reduce_gloo_n4.json" --plot "$OUT/all_reduce_gloo_n4.svg"
# 2. the cost of tpkit's collective consistency check: the same sweep with TPKIT_CHECK=off
TPKIT_CHECK=off $B collectives --op all_reduce $SWEEP20 --nproc 2 --peers native --repeat 5 --json "$OUT/all_reduce_gloo_n2_checkoff.json"
$B plot "$OUT/all_reduce_gloo_n2.json" "$OUT/all_reduce_gloo_n4.json" "$OUT/all_reduce_gloo_n2_checkoff.json" --out "$OUT/all_reduce_busbw.svg"
# 3. the other collectives at 2 ranks
for op in all_gather reduce_scatter broadcast alltoall sendrecv; do
  $B collectives --op $op $SWEEP --nproc 2 --json "$OUT/${op}_gloo_n2.json"
done
$B plot "$OUT"/{all_reduce,all_gather,reduce_scatter,broadcast,alltoall,sendrecv}_gloo_n2.json --out "$OUT/collectives_n2.svg"
# 4. GEMM: squares 256–4096 and Llama-3 layer GEMMs at 1, 16, 512 tokens (≤ 400 GFLOP each), raw OpenBLAS and torch
$B gemm --min-size 256 --max-size 4096 --models llama3-8b,llama3-70b --tokens 1,16,512 --max-gflop 400 -n 5 -w 2 --peers all --repeat 3 --json "$OUT/gemm.json"
# 5. the Column→Row MLP block of Llama-3-8B at TP 1, 2, 4
$B layers --tp 1,2,4 --model llama3-8b --tokens 1,16,512 -n 5 -w 2 --json "$OUT/layers_llama3_8b.json"
# 6. where a 4 KiB all-reduce spends its time (perf; uprobes on Gloo when root)
PROBES=$([ "$(id -u)" = 0 ] && echo 1 || echo 0) bench/scripts/profile_small_allreduce.sh 4K 2 200 2000 | tee "$OUT/profile_4k_n2.txt"
PROBES=$([ "$(id -u)" = 0 ] && echo 1 || echo 0) bench/scripts/profile_small_allreduce.sh 1M 2 30 300 | tee "$OUT/profile_1m_n2.txt"
# 7. the consistency check's cost at small sizes (alternating on/off runs) and the GEMM timing split
bench/scripts/check_cost.sh 5 2 64K 100 "$OUT"
node dist/bench/scripts/gemm_split.js 512,1024,2048,4096 3 | tee "$OUT/gemm_split.txt"
bench/scripts/profile_gemm.sh "512 1024" 20 200 | tee "$OUT/profile_gemm.txt"
uptime
