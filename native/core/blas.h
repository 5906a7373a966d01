// OpenBLAS GEMM for host float32 tensors, run on the libuv pool.
#pragma once
#include <napi.h>

namespace tpkit {
// sgemm(transA, transB, M, N, K, A, B, C, beta): C[M,N] = op(A)·op(B) + beta·C, row-major.
Napi::Value Sgemm(const Napi::CallbackInfo& info);
// linear(x, w, bias|null, y, rows, in, out): y[rows,out] = x[rows,in]·wᵀ + bias (w is [out,in]).
Napi::Value Linear(const Napi::CallbackInfo& info);
// setBlasThreads(n) / getBlasThreads() / blasConfig()
Napi::Value SetBlasThreads(const Napi::CallbackInfo& info);
Napi::Value GetBlasThreads(const Napi::CallbackInfo& info);
Napi::Value BlasConfig(const Napi::CallbackInfo& info);
}  // namespace tpkit
