// Elementwise / row kernels of the cuda backend. Grid-stride loops with 64-bit indices, so any element count
// up to 2^40 works with a bounded grid. Formulas match native/core/kernels.cc (the cpu backend).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
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
