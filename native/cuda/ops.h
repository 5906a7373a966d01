// Kernels and transfers of the cuda backend, as JS functions over DeviceBuffers. Every function checks its
// arguments (types, dtypes, devices, element counts: nothing can read or write out of bounds), enqueues on the
// device's stream and returns without synchronising; only download() and synchronize() return Promises, which
// settle when a CUDA event completes (EventPoller). Sizes are element counts.
#pragma once
#include <napi.h>

namespace tpkit {

// zero(buf): cudaMemsetAsync to 0.
Napi::Value CudaZero(const Napi::CallbackInfo& info);
// upload(dst, src: Float32Array | Uint16Array): float32 values converted to dst's dtype, or raw 16-bit
// patterns copied into a float16/bfloat16 buffer. src.length must equal dst.numel. The host data is copied into
// pinned staging memory before the call returns, so src may be reused at once.
Napi::Value CudaUpload(const Napi::CallbackInfo& info);
// download(src): Promise<Float32Array> of the elements converted to float32.
Napi::Value CudaDownload(const Napi::CallbackInfo& info);
// narrow(src, dst, outer, size, inner, start, length): dst[o, l, i] = src[o, start + l, i].
Napi::Value CudaNarrow(const Napi::CallbackInfo& info);
// cat(parts: DeviceBuffer[], dst, outer, block): dst[o, p, b] = parts[p][o, b].
Napi::Value CudaCat(const Napi::CallbackInfo& info);
// cast(src, dst): dst = src converted to dst's dtype (equal numel; a copy when the dtypes match).
Napi::Value CudaCast(const Napi::CallbackInfo& info);
// gemm(a, b, c, bias | null, M, N, K, transA, transB, tf32): c[M,N] = op(a)·op(b) (+ bias[N]).
Napi::Value CudaGemm(const Napi::CallbackInfo& info);
// biasAdd(y, bias, rows, cols): y[r, c] += bias[c].
Napi::Value CudaBiasAdd(const Napi::CallbackInfo& info);
// siluAndMul(x, out, rows, d)
Napi::Value CudaSiluAndMul(const Napi::CallbackInfo& info);
// rmsNorm(x, weight, out, rows, cols, eps)
Napi::Value CudaRmsNorm(const Napi::CallbackInfo& info);
// add(a, b, out)
Napi::Value CudaAdd(const Napi::CallbackInfo& info);
// embedding(table, ids: Int32Array, out, dim): rows of table [vocab, dim]; ids outside [0, vocab) give zeros.
Napi::Value CudaEmbedding(const Napi::CallbackInfo& info);
// rotary(x, positions: Float32Array, invFreq: Float32Array, out, rows, numHeads, headDim, scaling): rotate-half
// RoPE; positions and invFreq are staged to the device before the call returns.
Napi::Value CudaRotary(const Napi::CallbackInfo& info);
// attention(q, k, v, out, T, numHeads, numKvHeads, headDim, kvLength, scale): causal grouped-query attention.
Napi::Value CudaAttention(const Napi::CallbackInfo& info);
// softmax(x, out, rows, n)
Napi::Value CudaSoftmax(const Napi::CallbackInfo& info);
// argmax(x, out, rows, n): int32 indices written into out, a float32 buffer of at least rows elements.
Napi::Value CudaArgmax(const Napi::CallbackInfo& info);
// copyRows(dst, dstOffset, src, count): dst[dstOffset + i] = src[i] for i < count (elements, same dtype).
Napi::Value CudaCopyRows(const Napi::CallbackInfo& info);

}  // namespace tpkit
