#include "attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "async_work.h"

namespace tpkit {

namespace {
constexpr int64_t kMaxElems = int64_t{1} << 40;

// a·b, or a RangeError when the element count leaves [0, 2^40].
size_t Mul(Napi::Env env, int64_t a, int64_t b) {
  int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r) || r > kMaxElems) throw Napi::RangeError::New(env, "element count exceeds 2^40");
  return static_cast<size_t>(r);
}

int32_t* I32Data(const Napi::Value& v, size_t minElements, const char* name) {
  Napi::Env env = v.Env();
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw Napi::TypeError::New(env, std::string("Expected Int32Array for ") + name);
  }
  auto arr = v.As<Napi::Int32Array>();
  if (arr.ElementLength() < minElements) {
    throw Napi::RangeError::New(env, std::string("Expected at least ") + std::to_string(minElements) + " elements for " +
                                         name + " but received " + std::to_string(arr.ElementLength()));
  }
  return arr.Data();
}

// Σ a[d]·b[d] in float32 with eight independent partial sums (vectorisable, and more accurate than one chain).
inline float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int l = 0; l < 8; l++) acc[l] += a[d + l] * b[d + l];
  }
  float tail = 0.0f;
  for (; d < n; d++) tail += a[d] * b[d];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail;
}
}  // namespace

Napi::Value Rotary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = IntArg(info, 4, "rows", 0, kMaxElems);
  const int64_t numHeads = IntArg(info, 5, "numHeads", 1, kMaxElems);
  const int64_t headDim = IntArg(info, 6, "headDim", 2, kMaxElems);
  if (headDim % 2 != 0) throw Napi::RangeError::New(env, "Expected even headDim");
  const float scaling = static_cast<float>(NumberArg(info, 7, "scaling"));
  const size_t n = Mul(env, Mul(env, rows, numHeads), headDim);
  const int64_t half = headDim / 2;
  float* x = F32Data(info[0], n, "x");
  float* pos = F32Data(info[1], static_cast<size_t>(rows), "positions");
  float* invFreq = F32Data(info[2], static_cast<size_t>(half), "invFreq");
  float* out = F32Data(info[3], n, "out");
  return LambdaWorker::Run(
      env,
      [=]() {
        std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
        for (int64_t t = 0; t < rows; t++) {
          for (int64_t i = 0; i < half; i++) {
            const float angle = pos[t] * invFreq[i];  // one float32 product, as transformers' float32 matmul
            c[i] = std::cos(angle) * scaling;
            s[i] = std::sin(angle) * scaling;
          }
          for (int64_t h = 0; h < numHeads; h++) {
            const float* xh = x + (t * numHeads + h) * headDim;
            float* oh = out + (t * numHeads + h) * headDim;
            for (int64_t i = 0; i < half; i++) {
              const float a = xh[i];
              const float b = xh[i + half];
              oh[i] = a * c[i] - b * s[i];
              oh[i + half] = b * c[i] + a * s[i];
            }
          }
        }
      },
      {info[0], info[1], info[2], info[3]}, "cpu");
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t T = IntArg(info, 4, "T", 0, kMaxElems);
  const int64_t numHeads = IntArg(info, 5, "numHeads", 1, kMaxElems);
  const int64_t numKvHeads = IntArg(info, 6, "numKvHeads", 1, kMaxElems);
  const int64_t headDim = IntArg(info, 7, "headDim", 1, kMaxElems);
  const int64_t kvLength = IntArg(info, 8, "kvLength", 0, kMaxElems);
  const float scale = static_cast<float>(NumberArg(info, 9, "scale"));
  if (numHeads % numKvHeads != 0) throw Napi::RangeError::New(env, "Expected numHeads to be a multiple of numKvHeads");
  if (T > kvLength) throw Napi::RangeError::New(env, "Expected T of at most kvLength");
  const size_t qn = Mul(env, Mul(env, T, numHeads), headDim);
  const size_t kvn = Mul(env, Mul(env, kvLength, numKvHeads), headDim);
  float* q = F32Data(info[0], qn, "q");
  float* k = F32Data(info[1], kvn, "k");
  float* v = F32Data(info[2], kvn, "v");
  float* out = F32Data(info[3], qn, "out");
  return LambdaWorker::Run(
      env,
      [=]() {
        const int64_t group = numHeads / numKvHeads;  // transformers' repeat_kv: head h reads kv head h / group
        const int64_t qStride = numHeads * headDim;
        const int64_t kvStride = numKvHeads * headDim;
        std::vector<float> scores(static_cast<size_t>(kvLength > 0 ? kvLength : 1));
        std::vector<float> acc(static_cast<size_t>(headDim));
        for (int64_t t = 0; t < T; t++) {
          const int64_t last = kvLength - T + t;  // the query's absolute position: keys 0..last are visible
          for (int64_t h = 0; h < numHeads; h++) {
            const float* qh = q + t * qStride + h * headDim;
            const int64_t kvOff = (h / group) * headDim;
            float mx = -std::numeric_limits<float>::infinity();
            for (int64_t j = 0; j <= last; j++) {
              const float sc = Dot(qh, k + j * kvStride + kvOff, headDim) * scale;
              scores[j] = sc;
              if (sc > mx) mx = sc;
            }
            double sum = 0.0;
            for (int64_t j = 0; j <= last; j++) {
              const float e = std::exp(scores[j] - mx);  // max-subtracted: no overflow for large scores
              scores[j] = e;
              sum += e;
            }
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int64_t j = 0; j <= last; j++) {
              const float w = scores[j];
              const float* vj = v + j * kvStride + kvOff;
              for (int64_t d = 0; d < headDim; d++) acc[d] += w * vj[d];
            }
            const float inv = static_cast<float>(1.0 / sum);
            float* oh = out + t * qStride + h * headDim;
            for (int64_t d = 0; d < headDim; d++) oh[d] = acc[d] * inv;
          }
        }
      },
      {info[0], info[1], info[2], info[3]}, "cpu");
}

Napi::Value Softmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = IntArg(info, 2, "rows", 0, kMaxElems);
  const int64_t n = IntArg(info, 3, "n", 0, kMaxElems);
  const size_t total = Mul(env, rows, n);
  float* x = F32Data(info[0], total, "x");
  float* out = F32Data(info[1], total, "out");
  return LambdaWorker::Run(
      env,
      [=]() {
        for (int64_t r = 0; r < rows; r++) {
          const float* xr = x + r * n;
          float* o = out + r * n;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < n; j++) mx = xr[j] > mx ? xr[j] : mx;
          double sum = 0.0;
          for (int64_t j = 0; j < n; j++) {
            o[j] = std::exp(xr[j] - mx);
            sum += o[j];
          }
          const float inv = static_cast<float>(1.0 / sum);
          for (int64_t j = 0; j < n; j++) o[j] *= inv;
        }
      },
      {info[0], info[1]}, "cpu");
}

Napi::Value Argmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t rows = IntArg(info, 2, "rows", 0, kMaxElems);
  const int64_t n = IntArg(info, 3, "n", 1, std::numeric_limits<int32_t>::max());
  float* x = F32Data(info[0], Mul(env, rows, n), "x");
  int32_t* out = I32Data(info[1], static_cast<size_t>(rows), "out");
  return LambdaWorker::Run(
      env,
      [=]() {
        for (int64_t r = 0; r < rows; r++) {
          const float* xr = x + r * n;
          int64_t best = 0;
          float bv = xr[0];
          if (!std::isnan(bv)) {
            for (int64_t j = 1; j < n; j++) {
              const float v = xr[j];
              if (std::isnan(v)) {
                best = j;
                break;
              }
              if (v > bv) {
                bv = v;
                best = j;
              }
            }
          }
          out[r] = static_cast<int32_t>(best);
        }
      },
      {info[0], info[1]}, "cpu");
}

}  // namespace tpkit
