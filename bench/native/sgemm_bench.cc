// Raw OpenBLAS sgemm, the peer of `tpkit bench gemm`: the same shapes, layout (row-major, B optionally
// transposed as in linear's x·Wᵀ), inputs, warm-up and timing rule, with no Node or addon in between.
//
//   tpkit_bench_sgemm [--threads T] [-n 10] [-w 2] MxNxK[t] ...
//
// A trailing `t` means op(B) = Bᵀ with B stored [N, K]. Time per GEMM = elapsed of n back-to-back calls / n
// (C is preallocated once; tpkit's matmul allocates its output on every call, which is part of its cost).
// Output (stdout): one JSON object per line — {"kind":"meta",…} then {"kind":"row",…} per shape, with
// TFLOP/s = 2·M·N·K / time and #wrong over 16 sampled elements checked exactly against the integer inputs.
#include <cblas.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"

extern "C" {
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
char* openblas_get_config(void);
}

using tpkit_bench::Args;
using tpkit_bench::NowUs;

namespace {

// Integer matrices whose products and sums stay exact in float32 (|a|,|b| ≤ 3, K·9 < 2^24).
// MUST match gemmValueA/B in bench/gemm.ts.
inline float ValueA(int64_t i, int64_t k) { return static_cast<float>(((i * 3 + k * 5) % 7) - 3); }
inline float ValueB(int64_t k, int64_t j) { return static_cast<float>(((k * 2 + j * 3) % 7) - 3); }

struct Shape {
  int64_t m, n, k;
  bool transB;
};

Shape ParseShape(const std::string& s) {
  Shape sh{};
  char t = 0;
  long long m = 0, n = 0, k = 0;
  const int got = std::sscanf(s.c_str(), "%lldx%lldx%lld%c", &m, &n, &k, &t);
  if (got < 3 || m <= 0 || n <= 0 || k <= 0 || (got == 4 && t != 't')) throw std::invalid_argument("bad shape " + s);
  sh.m = m;
  sh.n = n;
  sh.k = k;
  sh.transB = got == 4;
  return sh;
}

float* Alloc(size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, 64, n * sizeof(float)) != 0) throw std::bad_alloc();
  return static_cast<float*>(p);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args args(argc, argv, {});
    if (args.Has("threads")) openblas_set_num_threads(static_cast<int>(args.Int("threads", 1)));
    const int64_t iters = args.Int("n", 10);
    const int64_t warmup = args.Int("w", 2);
    std::printf("{\"kind\":\"meta\",\"threads\":%d,\"config\":\"%s\",\"iters\":%lld,\"warmup\":%lld}\n",
                openblas_get_num_threads(), openblas_get_config(), static_cast<long long>(iters),
                static_cast<long long>(warmup));
    std::fflush(stdout);
    for (const std::string& text : args.positional) {
      const Shape s = ParseShape(text);
      float* A = Alloc(static_cast<size_t>(s.m * s.k));
      float* B = Alloc(static_cast<size_t>(s.k * s.n));
      float* C = Alloc(static_cast<size_t>(s.m * s.n));
      for (int64_t i = 0; i < s.m; i++)
        for (int64_t k = 0; k < s.k; k++) A[i * s.k + k] = ValueA(i, k);
      for (int64_t k = 0; k < s.k; k++)
        for (int64_t j = 0; j < s.n; j++) B[s.transB ? j * s.k + k : k * s.n + j] = ValueB(k, j);
      auto run = [&]() {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, s.transB ? CblasTrans : CblasNoTrans, static_cast<blasint>(s.m),
                    static_cast<blasint>(s.n), static_cast<blasint>(s.k), 1.0f, A, static_cast<blasint>(s.k), B,
                    static_cast<blasint>(s.transB ? s.k : s.n), 0.0f, C, static_cast<blasint>(s.n));
      };
      for (int64_t i = 0; i < warmup; i++) run();
      const double t0 = NowUs();
      for (int64_t i = 0; i < iters; i++) run();
      const double us = (NowUs() - t0) / static_cast<double>(iters);
      int wrong = 0;
      for (int q = 0; q < 16; q++) {
        const int64_t i = (q * 7919) % s.m;
        const int64_t j = (q * 104729) % s.n;
        double expect = 0;
        for (int64_t k = 0; k < s.k; k++) expect += static_cast<double>(ValueA(i, k)) * ValueB(k, j);
        if (static_cast<double>(C[i * s.n + j]) != expect) wrong++;
      }
      const double tflops = 2.0 * static_cast<double>(s.m) * s.n * s.k / us / 1e6;
      std::printf("{\"kind\":\"row\",\"m\":%lld,\"n\":%lld,\"k\":%lld,\"transB\":%s,\"timeUs\":%.3f,\"tflops\":%.6f,"
                  "\"wrong\":%d}\n",
                  static_cast<long long>(s.m), static_cast<long long>(s.n), static_cast<long long>(s.k),
                  s.transB ? "true" : "false", us, tflops, wrong);
      std::fflush(stdout);
      std::free(A);
      std::free(B);
      std::free(C);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tpkit_bench_sgemm: %s\n", e.what());
    return 1;
  }
}
