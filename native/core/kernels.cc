#include "kernels.h"

#include <sys/mman.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <string>

#include "async_work.h"

namespace tpkit {

namespace {
constexpr int64_t kMaxElems = int64_t{1} << 40;

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace

uint16_t FloatToBf16(float f) {
  uint32_t u = Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float Bf16ToFloat(uint16_t h) { return FromBits(static_cast<uint32_t>(h) << 16); }

uint16_t FloatToHalf(float f) {
  // IEEE 754 binary16, round to nearest even, with subnormals, overflow to infinity.
  uint32_t u = Bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t absu = u & 0x7fffffffu;
  if (absu > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to ≥ 65520 → inf
  if (absu < 0x38800000u) {                                              // below 2^-14: subnormal or zero
    if (absu < 0x33000000u) return static_cast<uint16_t>(sign);          // below half the smallest subnormal
    uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
    int shift = 113 - static_cast<int>(absu >> 23) + 13;
    uint32_t rounded = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (rounded & 1u))) rounded++;
    return static_cast<uint16_t>(sign | rounded);
  }
  uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u);  // round mantissa to 10 bits
  r -= 0x38000000u;                                  // rebias exponent 127 → 15
  return static_cast<uint16_t>(sign | (r >> 13));
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return FromBits(sign);
    float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return FromBits(sign | 0x7f800000u | (mant << 13));
  return FromBits(sign | ((exp + 112) << 23) | (mant << 13));
}

Napi::Value Cast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t kind = IntArg(info, 2, "kind", 0, 3);
  if (kind == 0 || kind == 2) {
    size_t n = ElementCount(info[0]);
    float* src = F32Data(info[0], 0, "src");
    uint16_t* dst = U16Data(info[1], n, "dst");
    if (kind == 0) {
      for (size_t i = 0; i < n; i++) dst[i] = FloatToBf16(src[i]);
    } else {
      for (size_t i = 0; i < n; i++) dst[i] = FloatToHalf(src[i]);
    }
  } else {
    size_t n = ElementCount(info[0]);
    uint16_t* src = U16Data(info[0], 0, "src");
    float* dst = F32Data(info[1], n, "dst");
    if (kind == 1) {
      for (size_t i = 0; i < n; i++) dst[i] = Bf16ToFloat(src[i]);
    } else {
      for (size_t i = 0; i < n; i++) dst[i] = HalfToFloat(src[i]);
    }
  }
  return env.Undefined();
}

Napi::Value AllocHostPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int64_t bytes = IntArg(info, 0, "bytes", 1, kMaxElems * 4);
  const size_t n = static_cast<size_t>(bytes);
  void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw Napi::RangeError::New(env, "could not map " + std::to_string(n) + " bytes of host memory: " + std::strerror(errno));
  }
  // Best effort: with transparent huge pages in `madvise` mode (Debian's default) a 2 MiB page faults once where
  // 512 small pages would fault one by one; first touches of fresh memory dominate loading a model.
  madvise(p, n, MADV_HUGEPAGE);
  Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
  auto* size = new size_t(n);
  return Napi::ArrayBuffer::New(
      env, p, n,
      [](Napi::Env e, void* data, size_t* len) {
        munmap(data, *len);
        Napi::MemoryManagement::AdjustExternalMemory(e, -static_cast<int64_t>(*len));
        delete len;
      },
      size);
}

Napi::Value BiasAdd(const Napi::CallbackInfo& info) {
  const int64_t rows = IntArg(info, 2, "rows", 0, kMaxElems);
  const int64_t cols = IntArg(info, 3, "cols", 0, kMaxElems);
  float* y = F32Data(info[0], static_cast<size_t>(rows * cols), "y");
  float* b = F32Data(info[1], static_cast<size_t>(cols), "bias");
  return LambdaWorker::Run(
      info.Env(),
      [=]() {
        for (int64_t r = 0; r < rows; r++) {
          float* row = y + r * cols;
          for (int64_t c = 0; c < cols; c++) row[c] += b[c];
        }
      },
      {info[0], info[1]}, "cpu");
}

Napi::Value SiluAndMul(const Napi::CallbackInfo& info) {
  const int64_t rows = IntArg(info, 2, "rows", 0, kMaxElems);
  const int64_t d = IntArg(info, 3, "d", 0, kMaxElems);
  float* x = F32Data(info[0], static_cast<size_t>(rows * 2 * d), "x");
  float* out = F32Data(info[1], static_cast<size_t>(rows * d), "out");
  return LambdaWorker::Run(
      info.Env(),
      [=]() {
        for (int64_t r = 0; r < rows; r++) {
          const float* gate = x + r * 2 * d;
          const float* up = gate + d;
          float* o = out + r * d;
          for (int64_t j = 0; j < d; j++) {
            const float g = gate[j];
            o[j] = g / (1.0f + std::exp(-g)) * up[j];
          }
        }
      },
      {info[0], info[1]}, "cpu");
}

Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  const int64_t rows = IntArg(info, 3, "rows", 0, kMaxElems);
  const int64_t cols = IntArg(info, 4, "cols", 0, kMaxElems);
  const float eps = static_cast<float>(NumberArg(info, 5, "eps"));
  float* x = F32Data(info[0], static_cast<size_t>(rows * cols), "x");
  float* w = F32Data(info[1], static_cast<size_t>(cols), "weight");
  float* out = F32Data(info[2], static_cast<size_t>(rows * cols), "out");
  return LambdaWorker::Run(
      info.Env(),
      [=]() {
        for (int64_t r = 0; r < rows; r++) {
          const float* xr = x + r * cols;
          float* o = out + r * cols;
          double ss = 0.0;
          for (int64_t c = 0; c < cols; c++) ss += static_cast<double>(xr[c]) * xr[c];
          const float inv = 1.0f / std::sqrt(static_cast<float>(ss / static_cast<double>(cols > 0 ? cols : 1)) + eps);
          for (int64_t c = 0; c < cols; c++) o[c] = xr[c] * inv * w[c];
        }
      },
      {info[0], info[1], info[2]}, "cpu");
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  const int64_t n = IntArg(info, 3, "n", 0, kMaxElems);
  float* a = F32Data(info[0], static_cast<size_t>(n), "a");
  float* b = F32Data(info[1], static_cast<size_t>(n), "b");
  float* out = F32Data(info[2], static_cast<size_t>(n), "out");
  return LambdaWorker::Run(
      info.Env(),
      [=]() {
        for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
      },
      {info[0], info[1], info[2]}, "cpu");
}

}  // namespace tpkit
