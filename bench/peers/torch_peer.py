#!/usr/bin/env python3
"""PyTorch peer of tpkit's benchmarks: the same sizes, inputs, warm-up and timing rule, run with
torch.matmul and torch.distributed (gloo backend), so the report can show tpkit and PyTorch side by side.

    torch_peer.py allreduce --world-size N [-b 8] [-e 64M] [-f 2] [-n 20] [-w 5] [--threads T]
    torch_peer.py matmul [-n 10] [-w 2] [--threads T] MxNxK[t] ...

Output (stdout): one JSON object per line, {"kind": "meta", ...} then {"kind": "row", ...}; the same fields
as the raw C++ peers (bench/native/). Exit status 3 with a message when torch is not importable.

Timing (nccl-tests, as the TypeScript harness): warm-up, barrier, n blocking ops back to back, time per op =
elapsed / n averaged over ranks; then a check on fresh inputs (#wrong, summed over ranks).
"""
import argparse
import json
import os
import sys
import tempfile
import time


def parse_size(text):
    text = text.strip().upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if mult > 1 else text) * mult


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def input_values(torch, rank, count):
    # Must match inputValue() in bench/data.ts and InputValue() in bench/native/bench_common.h.
    i = torch.arange(count, dtype=torch.int64)
    return (((i * 7 + rank * 13) % 33) - 16).to(torch.float32)


def allreduce_rank(args, rank):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method="file://" + args.store, rank=rank, world_size=args.world_size)
    n = args.world_size
    if rank == 0:
        emit({"kind": "meta", "torch": torch.__version__, "worldSize": n, "iters": args.iters, "warmup": args.warmup})
    size = parse_size(args.minbytes)
    top = parse_size(args.maxbytes)
    while size <= top:
        count = size // 4
        if count > 0:
            t = input_values(torch, rank, count)
            for _ in range(args.warmup):
                dist.all_reduce(t)
            dist.barrier()
            each = []
            last = time.perf_counter_ns()
            for _ in range(args.iters):
                dist.all_reduce(t)
                now = time.perf_counter_ns()
                each.append((now - last) / 1e3)
                last = now
            us = sum(each) / len(each)
            each.sort()
            mid = len(each) // 2
            p50 = each[mid] if len(each) % 2 else (each[mid - 1] + each[mid]) / 2
            t = input_values(torch, rank, count)
            dist.all_reduce(t)
            expect = sum(input_values(torch, r, count) for r in range(n))
            wrong = int((t != expect).sum().item())
            stats = torch.tensor([us, float(wrong), p50], dtype=torch.float64)
            dist.all_reduce(stats)
            if rank == 0:
                avg = stats[0].item() / n
                algbw = count * 4 / 1e3 / avg
                emit({"kind": "row", "size": count * 4, "count": count, "timeUs": avg, "p50Us": stats[2].item() / n, "algbw": algbw,
                      "busbw": algbw * 2 * (n - 1) / n, "wrong": int(stats[1].item())})
        if args.stepfactor <= 1:
            break
        size *= args.stepfactor
    dist.destroy_process_group()


def allreduce(args):
    if args.rank is not None:
        allreduce_rank(args, args.rank)
        return 0
    import subprocess

    fd, store = tempfile.mkstemp(prefix="tpkit-torch-store-")
    os.close(fd)
    os.unlink(store)
    try:
        base = [sys.executable, os.path.abspath(__file__)] + sys.argv[1:] + ["--store", store]
        procs = [subprocess.Popen(base + ["--rank", str(r)], stdout=None if r == 0 else subprocess.DEVNULL)
                 for r in range(args.world_size)]
        codes = [p.wait() for p in procs]
    finally:
        if os.path.exists(store):
            os.unlink(store)
    bad = [c for c in codes if c != 0]
    return bad[0] if bad else 0


def matmul(args):
    import torch

    torch.set_num_threads(args.threads)
    emit({"kind": "meta", "torch": torch.__version__, "threads": torch.get_num_threads(), "iters": args.iters,
          "warmup": args.warmup})
    for text in args.shapes:
        trans_b = text.endswith("t")
        m, n, k = (int(x) for x in text.rstrip("t").split("x"))
        # Must match ValueA / ValueB in bench/native/sgemm_bench.cc and bench/gemm.ts. Built in float32:
        # every intermediate is an integer below 2^24, so it is exact (and int64 temporaries would need 2x memory).
        f32 = torch.float32
        a = torch.remainder(torch.arange(m, dtype=f32).unsqueeze(1) * 3 + torch.arange(k, dtype=f32).unsqueeze(0) * 5, 7) - 3
        if trans_b:  # stored [N, K], used transposed as in linear's x·Wᵀ
            b = torch.remainder(torch.arange(k, dtype=f32).unsqueeze(0) * 2 + torch.arange(n, dtype=f32).unsqueeze(1) * 3, 7) - 3
        else:  # [K, N]
            b = torch.remainder(torch.arange(k, dtype=f32).unsqueeze(1) * 2 + torch.arange(n, dtype=f32).unsqueeze(0) * 3, 7) - 3
        run = (lambda: torch.matmul(a, b.t())) if trans_b else (lambda: torch.matmul(a, b))
        for _ in range(args.warmup):
            c = run()
        t0 = time.perf_counter_ns()
        for _ in range(args.iters):
            c = run()
        us = (time.perf_counter_ns() - t0) / 1e3 / args.iters
        wrong = 0
        bb = b.t() if trans_b else b
        for q in range(16):
            r, col = (q * 7919) % m, (q * 104729) % n
            expect = float((a[r].double() * bb[:, col].double()).sum().item())
            if float(c[r, col].item()) != expect:
                wrong += 1
        emit({"kind": "row", "m": m, "n": n, "k": k, "transB": trans_b, "timeUs": us,
              "tflops": 2.0 * m * n * k / us / 1e6, "wrong": wrong})
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ar = sub.add_parser("allreduce")
    ar.add_argument("--world-size", type=int, default=2)
    ar.add_argument("-b", "--minbytes", default="8")
    ar.add_argument("-e", "--maxbytes", default="64M")
    ar.add_argument("-f", "--stepfactor", type=int, default=2)
    ar.add_argument("-n", "--iters", type=int, default=20)
    ar.add_argument("-w", "--warmup", type=int, default=5)
    ar.add_argument("--threads", type=int, default=1)
    ar.add_argument("--rank", type=int)
    ar.add_argument("--store")
    mm = sub.add_parser("matmul")
    mm.add_argument("-n", "--iters", type=int, default=10)
    mm.add_argument("-w", "--warmup", type=int, default=2)
    mm.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    mm.add_argument("shapes", nargs="+")
    args = p.parse_args()
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001
        sys.stderr.write("torch is not importable: %s: %s\n" % (type(e).__name__, e))
        return 3
    return allreduce(args) if args.cmd == "allreduce" else matmul(args)


if __name__ == "__main__":
    sys.exit(main())
