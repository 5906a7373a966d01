#!/usr/bin/env python3
"""PyTorch + transformers peer of `tpkit bench model`: the same model directory, prompt and token counts,
run with transformers' AutoModelForCausalLM in float32 on the CPU, reporting the same figures.

    hf_model_peer.py --model-dir DIR --prompt-ids 1,2,3 --new-tokens 8 [--runs 3] [--threads T]

Timing (as bench/model_bench.ts): each run is a greedy generation with a KV cache, timed as tpkit's generate
times itself: the prefill is one forward of the whole prompt (its logits give the first new token), then one
forward per further token; prefill tokens/s = prompt tokens / prefill time, decode ms/token = decode time /
(new tokens - 1). The figures are medians over the runs; the tokens are the last run's.

Output (stdout): one JSON object per line, {"kind": "meta", ...} then {"kind": "row", ...}. Exit status 3
with a message on stderr when torch or transformers is not importable.
"""
import argparse
import json
import os
import statistics
import sys
import time


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    if args.new_tokens < 1 or args.runs < 1:
        sys.stderr.write("hf_model_peer.py: --new-tokens and --runs must be positive\n")
        return 2
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except Exception as e:  # ImportError, or a broken installation
        sys.stderr.write(f"hf_model_peer.py: torch and transformers are required: {e}\n")
        return 3

    torch.set_num_threads(args.threads)
    emit({"kind": "meta", "torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads})
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32)
    model.eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    ids = torch.tensor([[int(x) for x in args.prompt_ids.split(",")]], dtype=torch.long)

    prefill_ms, decode_ms, tokens = [], [], []
    with torch.inference_mode():
        for _ in range(args.runs):
            t = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            nxt = int(out.logits[0, -1].argmax())
            past = out.past_key_values
            t1 = time.perf_counter()
            tokens = [nxt]
            for _ in range(args.new_tokens - 1):
                out = model(input_ids=torch.tensor([[nxt]], dtype=torch.long), past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = int(out.logits[0, -1].argmax())
                tokens.append(nxt)
            t2 = time.perf_counter()
            prefill_ms.append((t1 - t) * 1e3)
            decode_ms.append((t2 - t1) * 1e3 / max(1, args.new_tokens - 1))

    pm = statistics.median(prefill_ms)
    emit({
        "kind": "row",
        "loadMs": load_ms,
        "prefillMs": pm,
        "prefillTokensPerSecond": ids.shape[1] * 1e3 / pm if pm > 0 else 0.0,
        "decodeMsPerToken": statistics.median(decode_ms) if args.new_tokens > 1 else 0.0,
        "tokens": tokens,
        "threads": args.threads,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
