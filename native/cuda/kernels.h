// Small CUDA kernels of the cuda backend (compiled by nvcc for sm_80 / sm_90, see TpkitCuda.cmake). Every
// launcher enqueues on `stream`, returns the launch status (cudaGetLastError) and never synchronises.
// Element types are the native dtype codes (0 float32, 1 float16, 2 bfloat16); float16/bfloat16 compute in
// float32 and round to nearest even on store. Sizes are element counts.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace tpkit {
namespace kernels {

// dst[i] = (dstType) src[i]
cudaError_t Cast(const void* src, int srcType, void* dst, int dstType, size_t n, cudaStream_t stream);
// y[r, c] += bias[c] for y [rows, cols] (in place)
cudaError_t BiasAdd(void* y, const void* bias, size_t rows, size_t cols, int type, cudaStream_t stream);
// out[r, j] = silu(x[r, j]) * x[r, d + j], silu(v) = v / (1 + e^-v), x [rows, 2d], out [rows, d]
cudaError_t SiluAndMul(const void* x, void* out, size_t rows, size_t d, int type, cudaStream_t stream);
// out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w, float32 accumulation
cudaError_t RmsNorm(const void* x, const void* w, void* out, size_t rows, size_t cols, float eps, int type,
                    cudaStream_t stream);
// out = a + b
cudaError_t Add(const void* a, const void* b, void* out, size_t n, int type, cudaStream_t stream);
// out[i, :] = table[ids[i], :] for 0 <= ids[i] < vocab, else zeros (ids is device memory)
cudaError_t Embedding(const void* table, const int32_t* ids, void* out, size_t count, size_t dim, int64_t vocab,
                      int type, cudaStream_t stream);
// Rotate-half RoPE (transformers' rotate_half): x, out [rows, numHeads·headDim] (distinct buffers);
// positions [rows] and invFreq [headDim/2] are float32 device memory. angle = positions[t]·invFreq[i] (float32),
// c = cos(angle)·scaling, s = sin(angle)·scaling; out[i] = x[i]·c − x[i+half]·s, out[i+half] = x[i+half]·c + x[i]·s.
cudaError_t Rotary(const void* x, const float* positions, const float* invFreq, void* out, size_t rows, size_t numHeads,
                   size_t headDim, float scaling, int type, cudaStream_t stream);
// The largest headDim Attention accepts (its q row and accumulator live in shared memory).
constexpr size_t kMaxAttentionHeadDim = 4096;
// Causal grouped-query attention: q, out [T, numHeads·headDim]; k, v [≥ kvLength, numKvHeads·headDim]. Query t
// sits at position kvLength − T + t and attends to keys 0..that position; head h reads kv head
// h / (numHeads / numKvHeads). One block per (query, head), keys in tiles with an online (running-max) softmax,
// float32 accumulation. Needs numHeads % numKvHeads == 0, T ≤ kvLength, headDim ≤ kMaxAttentionHeadDim and
// T·numHeads < 2^31.
cudaError_t Attention(const void* q, const void* k, const void* v, void* out, size_t T, size_t numHeads, size_t numKvHeads,
                      size_t headDim, size_t kvLength, float scale, int type, cudaStream_t stream);
// out[r, :] = exp(x[r, :] − max) / Σ exp(x[r, :] − max), float32 math, one block per row
cudaError_t Softmax(const void* x, void* out, size_t rows, size_t n, int type, cudaStream_t stream);
// out[r] = index of the largest value of row r of x [rows, n] (first on ties; NaN beats every number, the first
// NaN wins); 1 ≤ n < 2^31
cudaError_t Argmax(const void* x, int32_t* out, size_t rows, size_t n, int type, cudaStream_t stream);
// Copies `height` rows of `width` bytes from src (row pitch srcPitch) to dst (row pitch dstPitch): the
// fallback of cudaMemcpy2DAsync for pitches it does not accept.
cudaError_t CopyRows(const void* src, size_t srcPitch, void* dst, size_t dstPitch, size_t width, size_t height,
                     cudaStream_t stream);

}  // namespace kernels
}  // namespace tpkit
