// GEMM on cuBLASLt (cuBLAS cublasGemmEx as the fallback) for row-major tensors.
//
// C[M,N] = op(A)·op(B) (+ bias[N] broadcast over rows), A/B/C/bias of one dtype (float32, float16 or
// bfloat16), float32 accumulation (CUBLAS_COMPUTE_32F; CUBLAS_COMPUTE_32F_FAST_TF32 for float32 when `tf32`).
// cuBLAS is column-major, so the row-major product is computed as its transpose: Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. a
// column-major GEMM with m = N, n = M and the operands swapped (the usual trick, see cuBLAS docs §2.1.1).
// The bias is fused through the cuBLASLt epilogue CUBLASLT_EPILOGUE_BIAS (a vector of length m = N, one value
// per output feature); when cuBLASLt has no algorithm for a shape (or its algorithm turns out unsupported),
// cublasGemmEx runs instead, accumulating onto C pre-filled with the broadcast bias (beta = 1) so that the
// result is rounded once, as with the epilogue. Enqueued on the device's stream; never synchronises.
#pragma once
#include <cstdint>

#include "device_context.h"

namespace tpkit {

// Throws CodedError (CUBLAS_STATUS_…, CUDA_ERROR_…) when an enqueue fails; dims must fit cuBLAS (int32 for
// the fallback path: larger dims throw UNSUPPORTED).
void Gemm(DeviceContext& dev, int dtype, const void* A, const void* B, void* C, const void* bias, int64_t M, int64_t N,
          int64_t K, bool transA, bool transB, bool tf32);

}  // namespace tpkit
