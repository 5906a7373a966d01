#include "blas.h"

#include <cblas.h>

#include <algorithm>
#include <cstring>

#include "async_work.h"

extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
char* openblas_get_config(void);
}

namespace tpkit {

namespace {
constexpr int64_t kMaxDim = int64_t{1} << 31;
}

Napi::Value Sgemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool transA = BoolArg(info, 0, "transA");
  const bool transB = BoolArg(info, 1, "transB");
  const int64_t M = IntArg(info, 2, "M", 0, kMaxDim);
  const int64_t N = IntArg(info, 3, "N", 0, kMaxDim);
  const int64_t K = IntArg(info, 4, "K", 0, kMaxDim);
  float* A = F32Data(info[5], static_cast<size_t>(M * K), "a");
  float* B = F32Data(info[6], static_cast<size_t>(K * N), "b");
  float* C = F32Data(info[7], static_cast<size_t>(M * N), "c");
  const float beta = static_cast<float>(NumberArg(info, 8, "beta"));
  return LambdaWorker::Run(
      env,
      [=]() {
        if (M == 0 || N == 0) return;
        if (K == 0) {
          if (beta == 0.0f) std::fill(C, C + M * N, 0.0f);
          return;
        }
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    static_cast<blasint>(M), static_cast<blasint>(N), static_cast<blasint>(K), 1.0f, A,
                    static_cast<blasint>(transA ? M : K), B, static_cast<blasint>(transB ? K : N), beta, C,
                    static_cast<blasint>(N));
      },
      {info[5], info[6], info[7]}, "cpu");
}

Napi::Value Linear(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = IntArg(info, 4, "rows", 0, kMaxDim);
  const int64_t in = IntArg(info, 5, "inFeatures", 0, kMaxDim);
  const int64_t out = IntArg(info, 6, "outFeatures", 0, kMaxDim);
  float* x = F32Data(info[0], static_cast<size_t>(rows * in), "x");
  float* w = F32Data(info[1], static_cast<size_t>(out * in), "weight");
  float* bias = info[2].IsNull() || info[2].IsUndefined() ? nullptr : F32Data(info[2], static_cast<size_t>(out), "bias");
  float* y = F32Data(info[3], static_cast<size_t>(rows * out), "y");
  return LambdaWorker::Run(
      env,
      [=]() {
        if (rows == 0 || out == 0) return;
        // The bias is folded into the GEMM: y is pre-filled with it and beta = 1.
        if (bias != nullptr) {
          for (int64_t r = 0; r < rows; r++) std::memcpy(y + r * out, bias, sizeof(float) * out);
        }
        if (in == 0) {
          if (bias == nullptr) std::fill(y, y + rows * out, 0.0f);
          return;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(rows), static_cast<blasint>(out),
                    static_cast<blasint>(in), 1.0f, x, static_cast<blasint>(in), w, static_cast<blasint>(in),
                    bias != nullptr ? 1.0f : 0.0f, y, static_cast<blasint>(out));
      },
      {info[0], info[1], info[2], info[3]}, "cpu");
}

Napi::Value SetBlasThreads(const Napi::CallbackInfo& info) {
  openblas_set_num_threads(static_cast<int>(IntArg(info, 0, "threads", 1, 1024)));
  return info.Env().Undefined();
}

Napi::Value GetBlasThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), openblas_get_num_threads());
}

Napi::Value BlasConfig(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), std::string(openblas_get_config()));
}

}  // namespace tpkit
