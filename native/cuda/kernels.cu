// Elementwise / row kernels of the cuda backend. Grid-stride loops with 64-bit indices, so any element count
// up to 2^40 works with a bounded grid. Formulas match native/core/kernels.cc (the cpu backend).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels.h"

namespace tpkit {
namespace kernels {

namespace {

constexpr unsigned kThreads = 256;
constexpr size_t kMaxBlocks = size_t{1} << 20;

unsigned Blocks(size_t n, unsigned threads = kThreads) {
  const size_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::max<size_t>(1, std::min(b, kMaxBlocks)));
}

#define TPKIT_GRID_STRIDE(i, n)                                                                     \
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);             \
       i += static_cast<size_t>(gridDim.x) * blockDim.x)

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Calls f(T{}) with T the element type of `type`.
template <typename F>
cudaError_t Dispatch(int type, F&& f) {
  switch (type) {
    case 0: return f(float{});
    case 1: return f(__half{});
    case 2: return f(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

template <typename S, typename D>
__global__ void CastKernel(const S* src, D* dst, size_t n) {
  TPKIT_GRID_STRIDE(i, n) { dst[i] = FromFloat<D>(ToFloat(src[i])); }
}

template <typename T>
__global__ void BiasAddKernel(T* y, const T* bias, size_t rows, size_t cols) {
  TPKIT_GRID_STRIDE(i, rows * cols) { y[i] = FromFloat<T>(ToFloat(y[i]) + ToFloat(bias[i % cols])); }
}

template <typename T>
__global__ void SiluAndMulKernel(const T* x, T* out, size_t rows, size_t d) {
  TPKIT_GRID_STRIDE(i, rows * d) {
    const size_t r = i / d;
    const size_t j = i - r * d;
    const float g = ToFloat(x[r * 2 * d + j]);
    const float u = ToFloat(x[r * 2 * d + d + j]);
    out[i] = FromFloat<T>(g / (1.0f + expf(-g)) * u);
  }
}

// One block per row (grid-stride over rows); sum of squares reduced in float32 through warp shuffles.
template <typename T>
__global__ void RmsNormKernel(const T* x, const T* w, T* out, size_t rows, size_t cols, float eps) {
  __shared__ float warpSums[32];
  __shared__ float total;
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  const unsigned warps = (blockDim.x + 31u) / 32u;
  for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    T* o = out + r * cols;
    float sum = 0.0f;
    for (size_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float v = ToFloat(xr[c]);
      sum += v * v;
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_down_sync(0xffffffffu, sum, off);
    if (lane == 0) warpSums[warp] = sum;
    __syncthreads();
    if (warp == 0) {
      float s = lane < warps ? warpSums[lane] : 0.0f;
      for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) total = s;
    }
    __syncthreads();
    const float inv = 1.0f / sqrtf(total / static_cast<float>(cols) + eps);
    for (size_t c = threadIdx.x; c < cols; c += blockDim.x) {
      o[c] = FromFloat<T>(ToFloat(xr[c]) * inv * ToFloat(w[c]));
    }
    __syncthreads();  // `total` and `warpSums` are reused by the next row
  }
}

template <typename T>
__global__ void AddKernel(const T* a, const T* b, T* out, size_t n) {
  TPKIT_GRID_STRIDE(i, n) { out[i] = FromFloat<T>(ToFloat(a[i]) + ToFloat(b[i])); }
}

// Raw copy of rows (U is the storage word: uint32_t for float32, uint16_t for 16-bit types).
template <typename U>
__global__ void EmbeddingKernel(const U* table, const int32_t* ids, U* out, size_t count, size_t dim, int64_t vocab) {
  TPKIT_GRID_STRIDE(i, count * dim) {
    const size_t row = i / dim;
    const size_t col = i - row * dim;
    const int32_t id = ids[row];
    out[i] = (id >= 0 && static_cast<int64_t>(id) < vocab) ? table[static_cast<size_t>(id) * dim + col] : U(0);
  }
}

template <typename U>
__global__ void CopyRowsKernel(const char* src, size_t srcPitch, char* dst, size_t dstPitch, size_t widthUnits,
                               size_t height) {
  TPKIT_GRID_STRIDE(i, widthUnits * height) {
    const size_t r = i / widthUnits;
    const size_t c = i - r * widthUnits;
    reinterpret_cast<U*>(dst + r * dstPitch)[c] = reinterpret_cast<const U*>(src + r * srcPitch)[c];
  }
}

template <typename U>
cudaError_t LaunchCopyRows(const void* src, size_t srcPitch, void* dst, size_t dstPitch, size_t width, size_t height,
                           cudaStream_t stream) {
  const size_t units = width / sizeof(U);
  CopyRowsKernel<U><<<Blocks(units * height), kThreads, 0, stream>>>(static_cast<const char*>(src), srcPitch,
                                                                      static_cast<char*>(dst), dstPitch, units, height);
  return cudaGetLastError();
}

// --- reductions over a block (blockDim.x a multiple of 32, at most 1024); every thread gets the result ---------

__device__ __forceinline__ float WarpSum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// `red` holds 32 floats of shared memory; the trailing barrier lets the next call reuse it.
template <bool kMax>
__device__ float BlockReduce(float v, float* red) {
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  const unsigned warps = blockDim.x >> 5;
  v = kMax ? WarpMax(v) : WarpSum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float r = lane < warps ? red[lane] : (kMax ? -INFINITY : 0.0f);
  r = kMax ? WarpMax(r) : WarpSum(r);
  __syncthreads();
  return r;
}

template <typename T>
__global__ void RotaryKernel(const T* x, const float* positions, const float* invFreq, T* out, size_t rows,
                             size_t numHeads, size_t headDim, float scaling) {
  const size_t half = headDim / 2;
  TPKIT_GRID_STRIDE(i, rows * numHeads * half) {
    const size_t j = i % half;
    const size_t rowHead = i / half;  // t · numHeads + h
    const size_t t = rowHead / numHeads;
    const float angle = __fmul_rn(positions[t], invFreq[j]);  // one float32 product, as transformers
    float s;
    float c;
    sincosf(angle, &s, &c);  // full-range argument reduction (not the __sincosf intrinsic)
    c = __fmul_rn(c, scaling);
    s = __fmul_rn(s, scaling);
    const size_t base = rowHead * headDim;
    const float a = ToFloat(x[base + j]);
    const float b = ToFloat(x[base + j + half]);
    out[base + j] = FromFloat<T>(a * c - b * s);
    out[base + j + half] = FromFloat<T>(b * c + a * s);
  }
}

constexpr unsigned kAttentionThreads = 128;
constexpr unsigned kAttentionTile = 128;  // keys scored per step of the online softmax

// Block (t, h) = blockIdx.x = t · numHeads + h. Dynamic shared memory: q row [headDim], accumulator [headDim],
// probabilities of the current tile [kAttentionTile]. Each step scores a tile of keys (one warp per key, lanes
// across headDim), folds it into the running max m and sum l (rescaling the accumulator by e^(m_old − m_new),
// as FlashAttention's online softmax), then adds Σ p_j v_j with threads across headDim.
template <typename T>
__global__ void AttentionKernel(const T* q, const T* k, const T* v, T* out, size_t T_, size_t numHeads, size_t group,
                                size_t headDim, size_t kvLength, float scale) {
  extern __shared__ float smem[];
  float* qs = smem;
  float* acc = qs + headDim;
  float* p = acc + headDim;
  __shared__ float red[32];
  const size_t t = blockIdx.x / numHeads;
  const size_t h = blockIdx.x - t * numHeads;
  const size_t qStride = numHeads * headDim;
  const size_t kvStride = (numHeads / group) * headDim;
  const size_t kvOff = (h / group) * headDim;
  const size_t last = kvLength - T_ + t;  // keys 0..last are visible to this query
  const T* qr = q + t * qStride + h * headDim;
  for (size_t d = threadIdx.x; d < headDim; d += blockDim.x) {
    qs[d] = ToFloat(qr[d]);
    acc[d] = 0.0f;
  }
  __syncthreads();
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  const unsigned warps = blockDim.x >> 5;
  float m = -INFINITY;
  float l = 0.0f;
  for (size_t j0 = 0; j0 <= last; j0 += kAttentionTile) {
    const unsigned n = static_cast<unsigned>(min(static_cast<size_t>(kAttentionTile), last + 1 - j0));
    for (unsigned jj = warp; jj < n; jj += warps) {
      const T* kr = k + (j0 + jj) * kvStride + kvOff;
      float dot = 0.0f;
      for (size_t d = lane; d < headDim; d += 32) dot += qs[d] * ToFloat(kr[d]);
      dot = WarpSum(dot);
      if (lane == 0) p[jj] = dot * scale;
    }
    __syncthreads();
    float tileMax = -INFINITY;
    for (unsigned jj = threadIdx.x; jj < n; jj += blockDim.x) tileMax = fmaxf(tileMax, p[jj]);
    const float mNew = fmaxf(m, BlockReduce<true>(tileMax, red));
    const float alpha = expf(m - mNew);  // 0 on the first tile (m = −∞)
    float tileSum = 0.0f;
    for (unsigned jj = threadIdx.x; jj < n; jj += blockDim.x) {
      const float e = expf(p[jj] - mNew);
      p[jj] = e;
      tileSum += e;
    }
    l = l * alpha + BlockReduce<false>(tileSum, red);  // its barriers also publish p
    m = mNew;
    for (size_t d = threadIdx.x; d < headDim; d += blockDim.x) {
      const T* vc = v + j0 * kvStride + kvOff + d;
      float a = acc[d] * alpha;
      for (unsigned jj = 0; jj < n; jj++) a += p[jj] * ToFloat(vc[jj * kvStride]);
      acc[d] = a;
    }
    __syncthreads();  // p is rewritten by the next tile
  }
  const float inv = 1.0f / l;
  T* o = out + t * qStride + h * headDim;
  for (size_t d = threadIdx.x; d < headDim; d += blockDim.x) o[d] = FromFloat<T>(acc[d] * inv);
}

// One block per row (grid-stride over rows): max, Σ exp(x − max), then the normalised values.
template <typename T>
__global__ void SoftmaxKernel(const T* x, T* out, size_t rows, size_t n) {
  __shared__ float red[32];
  for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    T* o = out + r * n;
    float m = -INFINITY;
    for (size_t c = threadIdx.x; c < n; c += blockDim.x) m = fmaxf(m, ToFloat(xr[c]));
    m = BlockReduce<true>(m, red);
    float s = 0.0f;
    for (size_t c = threadIdx.x; c < n; c += blockDim.x) s += expf(ToFloat(xr[c]) - m);
    s = BlockReduce<false>(s, red);
    const float inv = 1.0f / s;
    for (size_t c = threadIdx.x; c < n; c += blockDim.x) o[c] = FromFloat<T>(expf(ToFloat(xr[c]) - m) * inv);
  }
}

// Whether value a at index ia beats b at ib: NaN beats every number, a larger value a smaller one, and on ties
// (NaN and NaN included) the lower index wins. A strict total order, so the shuffle reduction is exact.
__device__ __forceinline__ bool Beats(float a, int ia, float b, int ib) {
  const bool an = isnan(a);
  const bool bn = isnan(b);
  if (an || bn) return an && (!bn || ia < ib);
  return a > b || (a == b && ia < ib);
}

__device__ __forceinline__ void WarpArgmax(float& v, int& i) {
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (Beats(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

template <typename T>
__global__ void ArgmaxKernel(const T* x, int32_t* out, size_t rows, size_t n) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const unsigned lane = threadIdx.x & 31u;
  const unsigned warp = threadIdx.x >> 5;
  const unsigned warps = blockDim.x >> 5;
  for (size_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    float bv = -INFINITY;
    int bi = INT_MAX;  // loses to every element, −∞ included
    for (size_t c = threadIdx.x; c < n; c += blockDim.x) {
      const float val = ToFloat(xr[c]);
      if (Beats(val, static_cast<int>(c), bv, bi)) {
        bv = val;
        bi = static_cast<int>(c);
      }
    }
    WarpArgmax(bv, bi);
    if (lane == 0) {
      sv[warp] = bv;
      si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
      bv = lane < warps ? sv[lane] : -INFINITY;
      bi = lane < warps ? si[lane] : INT_MAX;
      WarpArgmax(bv, bi);
      if (lane == 0) out[r] = bi;
    }
    __syncthreads();  // sv / si are reused by the next row
  }
}

unsigned RowThreads(size_t n) { return n >= 8192 ? 1024u : (n >= 1024 ? 512u : 256u); }

}  // namespace

cudaError_t Cast(const void* src, int srcType, void* dst, int dstType, size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return Dispatch(srcType, [&](auto s) {
    using S = decltype(s);
    return Dispatch(dstType, [&](auto d) {
      using D = decltype(d);
      CastKernel<S, D><<<Blocks(n), kThreads, 0, stream>>>(static_cast<const S*>(src), static_cast<D*>(dst), n);
      return cudaGetLastError();
    });
  });
}

cudaError_t BiasAdd(void* y, const void* bias, size_t rows, size_t cols, int type, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  return Dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    BiasAddKernel<T><<<Blocks(rows * cols), kThreads, 0, stream>>>(static_cast<T*>(y), static_cast<const T*>(bias), rows,
                                                                    cols);
    return cudaGetLastError();
  });
}

cudaError_t SiluAndMul(const void* x, void* out, size_t rows, size_t d, int type, cudaStream_t stream) {
  if (rows == 0 || d == 0) return cudaSuccess;
  return Dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    SiluAndMulKernel<T><<<Blocks(rows * d), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(out), rows, d);
    return cudaGetLastError();
  });
}

cudaError_t RmsNorm(const void* x, const void* w, void* out, size_t rows, size_t cols, float eps, int type,
                    cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  const unsigned threads = cols >= 4096 ? 1024u : (cols >= 1024 ? 512u : 256u);
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>(rows, kMaxBlocks));
  return Dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    RmsNormKernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(w),
                                                     static_cast<T*>(out), rows, cols, eps);
    return cudaGetLastError();
  });
}

cudaError_t Add(const void* a, const void* b, void* out, size_t n, int type, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return Dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    AddKernel<T><<<Blocks(n), kThreads, 0, stream>>>(static_cast<const T*>(a), static_cast<const T*>(b),
                                                     static_cast<T*>(out), n);
    return cudaGetLastError();
  });
}

cudaError_t Embedding(const void* table, const int32_t* ids, void* out, size_t count, size_t dim, int64_t vocab,
                      int type, cudaStream_t stream) {
  if (count == 0 || dim == 0) return cudaSuccess;
  if (type == 0) {
    EmbeddingKernel<uint32_t><<<Blocks(count * dim), kThreads, 0, stream>>>(static_cast<const uint32_t*>(table), ids,
                                                                             static_cast<uint32_t*>(out), count, dim, vocab);
  } else {
    EmbeddingKernel<uint16_t><<<Blocks(count * dim), kThreads, 0, stream>>>(static_cast<const uint16_t*>(table), ids,
                                                                             static_cast<uint16_t*>(out), count, dim, vocab);
  }
  return cudaGetLastError();
}

cudaError_t Rotary(const void* x, const float* positions, const float* invFreq, void* out, size_t rows, size_t numHeads,
                   size_t headDim, float scaling, int type, cudaStream_t stream) {
  if (headDim % 2 != 0) return cudaErrorInvalidValue;
  const size_t n = rows * numHeads * (headDim / 2);
  if (n == 0) return cudaSuccess;
  return Dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    RotaryKernel<T><<<Blocks(n), kThreads, 0, stream>>>(static_cast<const T*>(x), positions, invFreq, static_cast<T*>(out),
                                                         rows, numHeads, headDim, scaling);
    return cudaGetLastError();
  });
}

cudaError_t Attention(const void* q, const void* k, const void* v, void* out, size_t T, size_t numHeads, size_t numKvHeads,
                      size_t headDim, size_t kvLength, float scale, int type, cudaStream_t stream) {
  if (numHeads == 0 || numKvHeads == 0 || numHeads % numKvHeads != 0 || T > kvLength || headDim == 0 ||
      headDim > kMaxAttentionHeadDim || T * numHeads > static_cast<size_t>(INT_MAX)) {
    return cudaErrorInvalidValue;
  }
  if (T == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(T * numHeads);
  const size_t smem = (2 * headDim + kAttentionTile) * sizeof(float);
  return Dispatch(type, [&](auto tag) {
    using E = decltype(tag);
    AttentionKernel<E><<<blocks, kAttentionThreads, smem, stream>>>(static_cast<const E*>(q), static_cast<const E*>(k),
                                                                    static_cast<const E*>(v), static_cast<E*>(out), T,
                                                                    numHeads, numHeads / numKvHeads, headDim, kvLength, scale);
    return cudaGetLastError();
  });
}

cudaError_t Softmax(const void* x, void* out, size_t rows, size_t n, int type, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>(rows, kMaxBlocks));
  return Dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    SoftmaxKernel<T><<<blocks, RowThreads(n), 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(out), rows, n);
    return cudaGetLastError();
  });
}

cudaError_t Argmax(const void* x, int32_t* out, size_t rows, size_t n, int type, cudaStream_t stream) {
  if (n == 0 || n > static_cast<size_t>(INT_MAX)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>(rows, kMaxBlocks));
  return Dispatch(type, [&](auto tag) {
    using T = decltype(tag);
    ArgmaxKernel<T><<<blocks, RowThreads(n), 0, stream>>>(static_cast<const T*>(x), out, rows, n);
    return cudaGetLastError();
  });
}

cudaError_t CopyRows(const void* src, size_t srcPitch, void* dst, size_t dstPitch, size_t width, size_t height,
                     cudaStream_t stream) {
  if (width == 0 || height == 0) return cudaSuccess;
  const uintptr_t all = reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst) | srcPitch | dstPitch | width;
  if (all % 16 == 0) return LaunchCopyRows<uint4>(src, srcPitch, dst, dstPitch, width, height, stream);
  if (all % 8 == 0) return LaunchCopyRows<uint2>(src, srcPitch, dst, dstPitch, width, height, stream);
  if (all % 4 == 0) return LaunchCopyRows<uint32_t>(src, srcPitch, dst, dstPitch, width, height, stream);
  if (all % 2 == 0) return LaunchCopyRows<uint16_t>(src, srcPitch, dst, dstPitch, width, height, stream);
  return LaunchCopyRows<uint8_t>(src, srcPitch, dst, dstPitch, width, height, stream);
}

}  // namespace kernels
}  // namespace tpkit
