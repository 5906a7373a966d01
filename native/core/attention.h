// Host kernels of a Llama-family decoder beyond the elementwise ones (float32 compute, libuv pool):
// rotary position embedding, causal grouped-query attention over a KV cache, softmax and argmax.
// Conventions are Hugging Face transformers' (modeling_llama.py: rotate_half, repeat_kv); lib/ops.ts documents
// them and validates every argument first; these functions keep cheap guards so that nothing out of bounds can
// be read or written when the TypeScript checks are bypassed.
#pragma once
#include <napi.h>

namespace tpkit {
// rotary(x, positions, invFreq, out, rows, numHeads, headDim, scaling): rotate-half RoPE. x and out
// [rows, numHeads·headDim]; positions [rows] (float32 values of the integer positions); invFreq [headDim/2].
// angle = positions[t]·invFreq[i] (float32), c = cos(angle)·scaling, s = sin(angle)·scaling;
// out[i] = x[i]·c − x[i+half]·s, out[i+half] = x[i+half]·c + x[i]·s per head. Async.
Napi::Value Rotary(const Napi::CallbackInfo& info);
// attention(q, k, v, out, T, numHeads, numKvHeads, headDim, kvLength, scale): causal SDPA. q and out
// [T, numHeads·headDim]; k and v [≥ kvLength, numKvHeads·headDim]; query t sits at position kvLength − T + t
// and attends to keys 0..that position; query head h reads kv head h / (numHeads / numKvHeads). Async.
Napi::Value Attention(const Napi::CallbackInfo& info);
// softmax(x, out, rows, n): out[r, :] = exp(x[r, :] − max) / Σ exp(x[r, :] − max). Async.
Napi::Value Softmax(const Napi::CallbackInfo& info);
// argmax(x, out: Int32Array, rows, n): index of the largest value of each row (the first on ties; a NaN counts
// as larger than every number, so the first NaN wins, like torch.argmax). n ≥ 1. Async.
Napi::Value Argmax(const Napi::CallbackInfo& info);
}  // namespace tpkit
