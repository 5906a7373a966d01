#include "gemm.h"

#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "../core/async_work.h"
#include "cuda_error.h"
#include "kernels.h"

namespace tpkit {

namespace {

cudaDataType_t CudaType(int dtype) {
  switch (dtype) {
    case kFloat16: return CUDA_R_16F;
    case kBFloat16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

// Largest power of two (≤ 256) dividing the address: what cuBLASLt may assume about the pointer.
uint32_t Alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al >>= 1;
  return al;
}

struct DescDeleter {
  void operator()(cublasLtMatmulDescOpaque_t* d) const { cublasLtMatmulDescDestroy(d); }
};
struct LayoutDeleter {
  void operator()(cublasLtMatrixLayoutOpaque_t* l) const { cublasLtMatrixLayoutDestroy(l); }
};
struct PrefDeleter {
  void operator()(cublasLtMatmulPreferenceOpaque_t* p) const { cublasLtMatmulPreferenceDestroy(p); }
};
using DescPtr = std::unique_ptr<cublasLtMatmulDescOpaque_t, DescDeleter>;
using LayoutPtr = std::unique_ptr<cublasLtMatrixLayoutOpaque_t, LayoutDeleter>;
using PrefPtr = std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, PrefDeleter>;

LayoutPtr Layout(cudaDataType_t t, uint64_t rows, uint64_t cols, int64_t ld) {
  cublasLtMatrixLayout_t l = nullptr;
  CublasCheck(cublasLtMatrixLayoutCreate(&l, t, rows, cols, ld), "cublasLtMatrixLayoutCreate");
  return LayoutPtr(l);
}

// Heuristic results per problem, so that a layer called with the same shapes skips the heuristic query.
using AlgoKey = std::tuple<int, int, int, int, int, uint64_t, uint64_t, uint64_t, bool, uint32_t, uint32_t, uint32_t, uint32_t>;
struct AlgoEntry {
  bool found = false;
  cublasLtMatmulAlgo_t algo;
};
std::mutex g_algoMu;
std::map<AlgoKey, AlgoEntry> g_algos;
constexpr size_t kMaxCachedAlgos = 4096;

// Enqueues the cuBLASLt matmul; returns false (nothing enqueued) when cuBLASLt has no algorithm for it.
bool LtMatmul(DeviceContext& dev, cudaDataType_t t, cublasComputeType_t ct, cublasOperation_t opX,
              cublasOperation_t opY, uint64_t m, uint64_t n, uint64_t k, const void* X, int64_t ldx, const void* Y,
              int64_t ldy, void* D, int64_t ldd, const void* bias) {
  cublasLtMatmulDesc_t rawDesc = nullptr;
  CublasCheck(cublasLtMatmulDescCreate(&rawDesc, ct, CUDA_R_32F), "cublasLtMatmulDescCreate");
  DescPtr desc(rawDesc);
  const int32_t tx = opX;
  const int32_t ty = opY;
  CublasCheck(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSA, &tx, sizeof(tx)), "setting TRANSA");
  CublasCheck(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_TRANSB, &ty, sizeof(ty)), "setting TRANSB");
  if (bias != nullptr) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    CublasCheck(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)),
                "setting the bias epilogue");
    CublasCheck(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)),
                "setting the bias pointer");
    const int32_t biasType = t;  // the bias has the output's dtype
    CublasCheck(cublasLtMatmulDescSetAttribute(desc.get(), CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &biasType, sizeof(biasType)),
                "setting the bias data type");
  }
  LayoutPtr lx = Layout(t, opX == CUBLAS_OP_N ? m : k, opX == CUBLAS_OP_N ? k : m, ldx);
  LayoutPtr ly = Layout(t, opY == CUBLAS_OP_N ? k : n, opY == CUBLAS_OP_N ? n : k, ldy);
  LayoutPtr ld = Layout(t, m, n, ldd);

  const uint32_t ax = Alignment(X), ay = Alignment(Y), ad = Alignment(D), ab = Alignment(bias);
  const AlgoKey key{dev.index, static_cast<int>(t), static_cast<int>(ct), tx, ty, m, n, k, bias != nullptr, ax, ay, ad, ab};
  AlgoEntry entry;
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(g_algoMu);
    auto it = g_algos.find(key);
    if (it != g_algos.end()) {
      entry = it->second;
      cached = true;
    }
  }
  if (!cached) {
    cublasLtMatmulPreference_t rawPref = nullptr;
    CublasCheck(cublasLtMatmulPreferenceCreate(&rawPref), "cublasLtMatmulPreferenceCreate");
    PrefPtr pref(rawPref);
    const uint64_t ws = dev.workspaceBytes;
    CublasCheck(cublasLtMatmulPreferenceSetAttribute(pref.get(), CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
                "setting the workspace size");
    const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, ax},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, ay},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, ad},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, ad}};
    for (const auto& a : aligns) {
      CublasCheck(cublasLtMatmulPreferenceSetAttribute(pref.get(), a.first, &a.second, sizeof(a.second)),
                  "setting an alignment preference");
    }
    cublasLtMatmulHeuristicResult_t result = {};
    int returned = 0;
    const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(dev.lt, desc.get(), lx.get(), ly.get(), ld.get(), ld.get(),
                                                            pref.get(), 1, &result, &returned);
    entry.found = s == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (entry.found) entry.algo = result.algo;
    std::lock_guard<std::mutex> lock(g_algoMu);
    if (g_algos.size() >= kMaxCachedAlgos) g_algos.clear();
    g_algos[key] = entry;
  }
  if (!entry.found) return false;
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const cublasStatus_t s = cublasLtMatmul(dev.lt, desc.get(), &alpha, X, lx.get(), Y, ly.get(), &beta, D, ld.get(), D,
                                          ld.get(), &entry.algo, dev.workspace, dev.workspaceBytes, dev.stream);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) {
    // A heuristic answer is no guarantee (cublasLt.h: "doesn't fully guarantee algo will run"): forget it and
    // let the caller take the cublasGemmEx path, as for a shape without any algorithm.
    std::lock_guard<std::mutex> lock(g_algoMu);
    g_algos[key] = AlgoEntry{};
    return false;
  }
  CublasCheck(s, "cublasLtMatmul on " + dev.Name());
  return true;
}

}  // namespace

void Gemm(DeviceContext& dev, int dtype, const void* A, const void* B, void* C, const void* bias, int64_t M, int64_t N,
          int64_t K, bool transA, bool transB, bool tf32) {
  if (M == 0 || N == 0) return;
  dev.MakeCurrent();
  const size_t item = ItemSize(dtype);
  if (K == 0) {  // empty inner dimension: C = 0 (+ bias)
    CudaCheck(cudaMemsetAsync(C, 0, static_cast<size_t>(M) * static_cast<size_t>(N) * item, dev.stream),
              "cudaMemsetAsync on " + dev.Name());
    if (bias != nullptr) {
      CudaCheck(kernels::BiasAdd(C, bias, static_cast<size_t>(M), static_cast<size_t>(N), dtype, dev.stream),
                "bias-add kernel on " + dev.Name());
    }
    return;
  }
  dev.EnsureBlas();

  const cudaDataType_t t = CudaType(dtype);
  const cublasComputeType_t ct = (dtype == kFloat32 && tf32) ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  // Column-major view: D[m = N, n = M] = op(X)[N, K] · op(Y)[K, M] with X = B, Y = A.
  const cublasOperation_t opX = transB ? CUBLAS_OP_T : CUBLAS_OP_N;  // B stored [K,N] (ld N) or [N,K] (ld K)
  const cublasOperation_t opY = transA ? CUBLAS_OP_T : CUBLAS_OP_N;  // A stored [M,K] (ld K) or [K,M] (ld M)
  const int64_t ldx = transB ? K : N;
  const int64_t ldy = transA ? M : K;
  const int64_t ldd = N;

  if (LtMatmul(dev, t, ct, opX, opY, static_cast<uint64_t>(N), static_cast<uint64_t>(M), static_cast<uint64_t>(K), B, ldx,
               A, ldy, C, ldd, bias)) {
    return;
  }
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX) {
    throw CodedError{"UNSUPPORTED", "GEMM of [" + std::to_string(M) + ", " + std::to_string(K) + "] x [" +
                                        std::to_string(K) + ", " + std::to_string(N) +
                                        "] exceeds cuBLAS's 32-bit dimensions and cuBLASLt has no algorithm for it"};
  }
  // With a bias, C starts as the bias broadcast over the rows and the GEMM accumulates onto it (beta = 1):
  // the sum is formed in float32 and rounded to the dtype once, exactly as the cuBLASLt BIAS epilogue does. (A
  // bias-add after the GEMM would round a float16/bfloat16 result twice.)
  const float alpha = 1.0f;
  const float beta = bias != nullptr ? 1.0f : 0.0f;
  if (bias != nullptr) {
    CudaCheck(cudaMemsetAsync(C, 0, static_cast<size_t>(M) * static_cast<size_t>(N) * item, dev.stream),
              "cudaMemsetAsync on " + dev.Name());
    CudaCheck(kernels::BiasAdd(C, bias, static_cast<size_t>(M), static_cast<size_t>(N), dtype, dev.stream),
              "bias-add kernel on " + dev.Name());
  }
  CublasCheck(cublasGemmEx(dev.blas, opX, opY, static_cast<int>(N), static_cast<int>(M), static_cast<int>(K), &alpha, B, t,
                           static_cast<int>(ldx), A, t, static_cast<int>(ldy), &beta, C, t, static_cast<int>(ldd), ct,
                           CUBLAS_GEMM_DEFAULT),
              "cublasGemmEx on " + dev.Name());
}

}  // namespace tpkit
