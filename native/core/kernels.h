// Host elementwise kernels the layers need (float32 compute) and dtype conversions.
#pragma once
#include <napi.h>

#include <cstdint>

namespace tpkit {
// Scalar conversions (round to nearest even; NaN stays NaN). Shared with tests of the CUDA kernels.
uint16_t FloatToBf16(float f);
float Bf16ToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);

// cast(src, dst, kind): kind 0 f32→bf16, 1 bf16→f32, 2 f32→f16, 3 f16→f32. Synchronous (memory-bound).
Napi::Value Cast(const Napi::CallbackInfo& info);
// allocHostPages(bytes): a zeroed ArrayBuffer of fresh anonymous pages, transparent huge pages requested.
Napi::Value AllocHostPages(const Napi::CallbackInfo& info);
// biasAdd(y, bias, rows, cols) in place; async.
Napi::Value BiasAdd(const Napi::CallbackInfo& info);
// siluAndMul(x, out, rows, d): out[r, j] = silu(x[r, j]) * x[r, d + j]; async.
Napi::Value SiluAndMul(const Napi::CallbackInfo& info);
// rmsNorm(x, weight, out, rows, cols, eps): out = x / sqrt(mean(x²) + eps) * weight; async.
Napi::Value RmsNorm(const Napi::CallbackInfo& info);
// add(a, b, out, n): out = a + b; async.
Napi::Value Add(const Napi::CallbackInfo& info);
}  // namespace tpkit
