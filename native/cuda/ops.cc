#include "ops.h"

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../core/async_work.h"
#include "cuda_error.h"
#include "device_buffer.h"
#include "device_context.h"
#include "event_poller.h"
#include "gemm.h"
#include "kernels.h"
#include "pinned_pool.h"

namespace tpkit {

namespace {

constexpr int64_t kMaxDim = int64_t{1} << 40;

DeviceBuffer* Buf(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length()) throw Napi::TypeError::New(info.Env(), std::string("Expected DeviceBuffer for ") + name);
  return DeviceBuffer::Live(info[i], name);
}

void SameDevice(Napi::Env env, const DeviceBuffer* a, const DeviceBuffer* b, const char* what) {
  if (a->device() != b->device()) {
    throw Napi::RangeError::New(env, std::string(what) + ": buffers are on different devices (cuda:" +
                                         std::to_string(a->device()) + " and cuda:" + std::to_string(b->device()) + ")");
  }
}

void SameDType(Napi::Env env, const DeviceBuffer* a, const DeviceBuffer* b, const char* what) {
  if (a->dtype() != b->dtype()) {
    throw Napi::TypeError::New(env, std::string(what) + ": buffers have different dtypes (" + DTypeName(a->dtype()) +
                                        " and " + DTypeName(b->dtype()) + ")");
  }
}

void SameKind(Napi::Env env, const DeviceBuffer* a, const DeviceBuffer* b, const char* what) {
  SameDevice(env, a, b, what);
  SameDType(env, a, b, what);
}

uint64_t Mul(Napi::Env env, uint64_t a, uint64_t b) {
  uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) throw Napi::RangeError::New(env, "element count overflows 64 bits");
  return r;
}

void MinNumel(Napi::Env env, const DeviceBuffer* b, uint64_t need, const char* name) {
  if (b->numel() < need) {
    throw Napi::RangeError::New(env, "Expected at least " + std::to_string(need) + " elements for " + name +
                                         " but received " + std::to_string(b->numel()));
  }
}

size_t Dim(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<size_t>(IntArg(info, i, name, 0, kMaxDim));
}

// Hands a staging block back to the pool, reusable once everything enqueued so far on the stream completed.
// Without an event the block is leaked rather than risk reuse under an in-flight copy.
void RecordAndRelease(DeviceContext& dev, PinnedBlock block) {
  if (block.data == nullptr) return;
  cudaEvent_t ev = nullptr;
  if (cudaEventCreateWithFlags(&ev, cudaEventDisableTiming) != cudaSuccess || cudaEventRecord(ev, dev.stream) != cudaSuccess) {
    cudaGetLastError();
    if (ev != nullptr) cudaEventDestroy(ev);
    return;
  }
  PinnedPool::Instance().Release(block, ev);
}

// Runs `body(pinned)` on a pinned staging block of `bytes` and hands the block back with RecordAndRelease afterwards,
// also when `body` throws: the one acquire / try / record-and-release of the host-to-device staging paths.
template <typename Body>
void WithPinnedBlock(DeviceContext& dev, size_t bytes, Body body) {
  PinnedBlock block = PinnedPool::Instance().Acquire(bytes);
  try {
    body(block.data);
  } catch (...) {
    RecordAndRelease(dev, block);
    throw;
  }
  RecordAndRelease(dev, block);
}

// Host data to a kernel: `fill(pinned)` writes `bytes` into a pinned block, which is copied to a fresh device block;
// `kernel(device)` enqueues the work on it; the device block is freed in stream order and the pinned block handed
// back (WithPinnedBlock). Throws a CudaError naming `what` for the first failing step.
template <typename Fill, typename Kernel>
void StagedKernel(DeviceContext& dev, size_t bytes, Fill fill, Kernel kernel, const std::string& what) {
  WithPinnedBlock(dev, bytes, [&](void* pinned) {
    fill(pinned);
    void* d = dev.Alloc(bytes);
    cudaError_t e = cudaMemcpyAsync(d, pinned, bytes, cudaMemcpyHostToDevice, dev.stream);
    if (e == cudaSuccess) e = kernel(d);
    dev.Free(d);
    CudaCheck(e, what);
  });
}

// Copies `height` rows of `width` bytes between pitched device regions (narrow / cat).
void Copy2D(DeviceContext& dev, void* dst, size_t dpitch, const void* src, size_t spitch, size_t width, size_t height) {
  if (width == 0 || height == 0) return;
  if (height == 1 || (dpitch == width && spitch == width)) {
    CudaCheck(cudaMemcpyAsync(dst, src, width * height, cudaMemcpyDeviceToDevice, dev.stream),
              "cudaMemcpyAsync on " + dev.Name());
    return;
  }
  cudaError_t e = cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDeviceToDevice, dev.stream);
  if (e == cudaErrorInvalidPitchValue || e == cudaErrorInvalidValue) {
    cudaGetLastError();  // pitches beyond what cudaMemcpy2D accepts: the strided-copy kernel
    e = kernels::CopyRows(src, spitch, dst, dpitch, width, height, dev.stream);
  }
  CudaCheck(e, "strided copy on " + dev.Name());
}

DeviceContext& Current(int device) {
  DeviceContext& dev = Device(device);
  dev.MakeCurrent();
  return dev;
}

}  // namespace

Napi::Value CudaZero(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* buf = Buf(info, 0, "buffer");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    if (buf->bytes() == 0) return env.Undefined();
    DeviceContext& dev = Current(buf->device());
    CudaCheck(cudaMemsetAsync(buf->data(), 0, buf->bytes(), dev.stream), "cudaMemsetAsync on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaUpload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* dst = Buf(info, 0, "dst");
  if (info.Length() < 2 || !info[1].IsTypedArray()) throw Napi::TypeError::New(env, "Expected Float32Array or Uint16Array for src");
  Napi::TypedArray ta = info[1].As<Napi::TypedArray>();
  const bool f32 = ta.TypedArrayType() == napi_float32_array;
  const bool u16 = ta.TypedArrayType() == napi_uint16_array;
  if (!f32 && !u16) throw Napi::TypeError::New(env, "Expected Float32Array or Uint16Array for src");
  const size_t n = ta.ElementLength();
  if (n != dst->numel()) {
    throw Napi::RangeError::New(env, "Expected " + std::to_string(dst->numel()) + " elements for src but received " +
                                         std::to_string(n));
  }
  if (u16 && dst->dtype() == kFloat32) {
    throw Napi::TypeError::New(env, "raw 16-bit patterns (Uint16Array) need a float16 or bfloat16 buffer, not float32");
  }
  return Guard(env, "cuda", [&]() -> Napi::Value {
    if (n == 0) return env.Undefined();
    const size_t bytes = n * (f32 ? 4 : 2);
    const uint8_t* host = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    DeviceContext& dev = Current(dst->device());
    auto fill = [&](void* pinned) { std::memcpy(pinned, host, bytes); };
    if (u16 || dst->dtype() == kFloat32) {
      WithPinnedBlock(dev, bytes, [&](void* pinned) {
        fill(pinned);
        CudaCheck(cudaMemcpyAsync(dst->data(), pinned, bytes, cudaMemcpyHostToDevice, dev.stream),
                  "host-to-device copy of " + std::to_string(bytes) + " bytes to " + dev.Name());
      });
    } else {
      StagedKernel(dev, bytes, fill,
                   [&](void* tmp) { return kernels::Cast(tmp, kFloat32, dst->data(), dst->dtype(), n, dev.stream); },
                   "host-to-device copy with conversion to " + std::string(DTypeName(dst->dtype())) + " on " + dev.Name());
    }
    return env.Undefined();
  });
}

Napi::Value CudaDownload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* src = Buf(info, 0, "src");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    const size_t n = src->numel();
    if (n == 0) {
      deferred.Resolve(Napi::Float32Array::New(env, 0));
      return deferred.Promise();
    }
    const size_t bytes = n * sizeof(float);
    const int device = src->device();
    DeviceContext& dev = Current(device);
    PinnedBlock block = PinnedPool::Instance().Acquire(bytes);
    cudaEvent_t ev = nullptr;
    try {
      if (src->dtype() == kFloat32) {
        CudaCheck(cudaMemcpyAsync(block.data, src->data(), bytes, cudaMemcpyDeviceToHost, dev.stream),
                  "device-to-host copy of " + std::to_string(bytes) + " bytes from " + dev.Name());
      } else {
        void* tmp = dev.Alloc(bytes);
        cudaError_t e = kernels::Cast(src->data(), src->dtype(), tmp, kFloat32, n, dev.stream);
        if (e == cudaSuccess) e = cudaMemcpyAsync(block.data, tmp, bytes, cudaMemcpyDeviceToHost, dev.stream);
        dev.Free(tmp);
        CudaCheck(e, "device-to-host copy with conversion from " + std::string(DTypeName(src->dtype())) + " on " + dev.Name());
      }
      CudaCheck(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate on " + dev.Name());
      CudaCheck(cudaEventRecord(ev, dev.stream), "cudaEventRecord on " + dev.Name());
    } catch (...) {
      if (ev != nullptr) cudaEventDestroy(ev);
      // A copy into the block may be in flight: it goes back to the pool behind an event recorded after it
      // (and is leaked only if that event cannot be recorded either).
      RecordAndRelease(dev, block);
      throw;
    }
    EventPoller::For(env).Watch(env, device, ev, [deferred, block, n, device](Napi::Env env, cudaError_t status) {
      if (status == cudaSuccess) {
        // The result array can fail to allocate (a multi-GiB readback): reject then, or the Promise would
        // never settle (the poller swallows exceptions) and the staging block would leak.
        Napi::Value result;
        try {
          Napi::Float32Array out = Napi::Float32Array::New(env, n);
          std::memcpy(out.Data(), block.data, n * sizeof(float));
          result = out;
        } catch (const Napi::Error& e) {
          PinnedPool::Instance().Release(block, nullptr);
          deferred.Reject(e.Value());
          return;
        }
        PinnedPool::Instance().Release(block, nullptr);
        deferred.Resolve(result);
      } else {
        deferred.Reject(MakeTpkitError(env, CudaErrorCode(status),
                                       "reading back " + std::to_string(n) + " elements from cuda:" + std::to_string(device) +
                                           " failed: " + CudaErrorText(status),
                                       "cuda")
                            .Value());
      }
    });
    return deferred.Promise();
  });
}

Napi::Value CudaNarrow(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* src = Buf(info, 0, "src");
  DeviceBuffer* dst = Buf(info, 1, "dst");
  SameKind(env, src, dst, "narrow");
  const size_t outer = Dim(info, 2, "outer");
  const size_t size = Dim(info, 3, "size");
  const size_t inner = Dim(info, 4, "inner");
  const size_t start = Dim(info, 5, "start");
  const size_t length = Dim(info, 6, "length");
  if (start + length > size) {
    throw Napi::RangeError::New(env, "Expected start + length of at most " + std::to_string(size) + " but received " +
                                         std::to_string(start + length));
  }
  MinNumel(env, src, Mul(env, Mul(env, outer, size), inner), "src");
  MinNumel(env, dst, Mul(env, Mul(env, outer, length), inner), "dst");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    const size_t es = ItemSize(src->dtype());
    const size_t width = length * inner * es;
    if (width == 0 || outer == 0) return env.Undefined();
    DeviceContext& dev = Current(src->device());
    const char* from = static_cast<const char*>(src->data()) + start * inner * es;
    Copy2D(dev, dst->data(), width, from, size * inner * es, width, outer);
    return env.Undefined();
  });
}

// cat(parts, dst, outer, blocks): part p is [outer, blocks[p]] (elements); dst is [outer, Σ blocks].
Napi::Value CudaCat(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsArray()) throw Napi::TypeError::New(env, "Expected array of DeviceBuffers for parts");
  Napi::Array arr = info[0].As<Napi::Array>();
  const uint32_t count = arr.Length();
  if (count == 0 || count > (1u << 20)) throw Napi::RangeError::New(env, "Expected between 1 and 2^20 parts");
  DeviceBuffer* dst = Buf(info, 1, "dst");
  const size_t outer = Dim(info, 2, "outer");
  if (info.Length() < 4 || !info[3].IsArray() || info[3].As<Napi::Array>().Length() != count) {
    throw Napi::TypeError::New(env, "Expected array of one block size per part for blocks");
  }
  Napi::Array blockArr = info[3].As<Napi::Array>();
  std::vector<DeviceBuffer*> parts(count);
  std::vector<size_t> blocks(count);
  uint64_t total = 0;
  for (uint32_t p = 0; p < count; p++) {
    const std::string name = "parts[" + std::to_string(p) + "]";
    Napi::Value b = blockArr.Get(p);
    if (!b.IsNumber() || b.As<Napi::Number>().DoubleValue() < 0 ||
        b.As<Napi::Number>().DoubleValue() > 9007199254740991.0) {
      throw Napi::RangeError::New(env, "Expected non-negative integer for blocks[" + std::to_string(p) + "]");
    }
    blocks[p] = static_cast<size_t>(b.As<Napi::Number>().Int64Value());
    parts[p] = DeviceBuffer::Live(arr.Get(p), name.c_str());
    SameKind(env, parts[p], dst, "cat");
    MinNumel(env, parts[p], Mul(env, outer, blocks[p]), name.c_str());
    total += blocks[p];
  }
  MinNumel(env, dst, Mul(env, outer, total), "dst");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    const size_t es = ItemSize(dst->dtype());
    if (outer == 0 || total == 0) return env.Undefined();
    DeviceContext& dev = Current(dst->device());
    size_t offset = 0;
    for (uint32_t p = 0; p < count; p++) {
      const size_t width = blocks[p] * es;
      if (width > 0) {
        Copy2D(dev, static_cast<char*>(dst->data()) + offset, total * es, parts[p]->data(), width, width, outer);
      }
      offset += width;
    }
    return env.Undefined();
  });
}

Napi::Value CudaCast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* src = Buf(info, 0, "src");
  DeviceBuffer* dst = Buf(info, 1, "dst");
  SameDevice(env, src, dst, "cast");
  if (src->numel() != dst->numel()) {
    throw Napi::RangeError::New(env, "cast: element counts differ (" + std::to_string(src->numel()) + " and " +
                                         std::to_string(dst->numel()) + ")");
  }
  return Guard(env, "cuda", [&]() -> Napi::Value {
    if (src->numel() == 0) return env.Undefined();
    DeviceContext& dev = Current(src->device());
    if (src->dtype() == dst->dtype()) {
      CudaCheck(cudaMemcpyAsync(dst->data(), src->data(), src->bytes(), cudaMemcpyDeviceToDevice, dev.stream),
                "cudaMemcpyAsync on " + dev.Name());
    } else {
      CudaCheck(kernels::Cast(src->data(), src->dtype(), dst->data(), dst->dtype(), src->numel(), dev.stream),
                "cast kernel on " + dev.Name());
    }
    return env.Undefined();
  });
}

Napi::Value CudaGemm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* a = Buf(info, 0, "a");
  DeviceBuffer* b = Buf(info, 1, "b");
  DeviceBuffer* c = Buf(info, 2, "c");
  DeviceBuffer* bias = nullptr;
  if (info.Length() > 3 && !info[3].IsNull() && !info[3].IsUndefined()) bias = DeviceBuffer::Live(info[3], "bias");
  const int64_t M = IntArg(info, 4, "M", 0, kMaxDim);
  const int64_t N = IntArg(info, 5, "N", 0, kMaxDim);
  const int64_t K = IntArg(info, 6, "K", 0, kMaxDim);
  const bool transA = BoolArg(info, 7, "transA");
  const bool transB = BoolArg(info, 8, "transB");
  const bool tf32 = BoolArg(info, 9, "tf32");
  SameKind(env, a, b, "gemm");
  SameKind(env, a, c, "gemm");
  if (bias != nullptr) SameKind(env, a, bias, "gemm");
  MinNumel(env, a, Mul(env, M, K), "a");
  MinNumel(env, b, Mul(env, K, N), "b");
  MinNumel(env, c, Mul(env, M, N), "c");
  if (bias != nullptr) MinNumel(env, bias, static_cast<uint64_t>(N), "bias");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(a->device());
    Gemm(dev, a->dtype(), a->data(), b->data(), c->data(), bias != nullptr ? bias->data() : nullptr, M, N, K, transA, transB,
         tf32);
    return env.Undefined();
  });
}

Napi::Value CudaBiasAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* y = Buf(info, 0, "y");
  DeviceBuffer* bias = Buf(info, 1, "bias");
  SameKind(env, y, bias, "biasAdd");
  const size_t rows = Dim(info, 2, "rows");
  const size_t cols = Dim(info, 3, "cols");
  MinNumel(env, y, Mul(env, rows, cols), "y");
  MinNumel(env, bias, cols, "bias");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(y->device());
    CudaCheck(kernels::BiasAdd(y->data(), bias->data(), rows, cols, y->dtype(), dev.stream), "bias-add kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaSiluAndMul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* x = Buf(info, 0, "x");
  DeviceBuffer* out = Buf(info, 1, "out");
  SameKind(env, x, out, "siluAndMul");
  const size_t rows = Dim(info, 2, "rows");
  const size_t d = Dim(info, 3, "d");
  MinNumel(env, x, Mul(env, Mul(env, rows, d), 2), "x");
  MinNumel(env, out, Mul(env, rows, d), "out");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(x->device());
    CudaCheck(kernels::SiluAndMul(x->data(), out->data(), rows, d, x->dtype(), dev.stream), "siluAndMul kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaRmsNorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* x = Buf(info, 0, "x");
  DeviceBuffer* w = Buf(info, 1, "weight");
  DeviceBuffer* out = Buf(info, 2, "out");
  SameKind(env, x, w, "rmsNorm");
  SameKind(env, x, out, "rmsNorm");
  const size_t rows = Dim(info, 3, "rows");
  const size_t cols = Dim(info, 4, "cols");
  const double eps = NumberArg(info, 5, "eps");
  if (!(eps >= 0.0) || eps > 1e30) throw Napi::RangeError::New(env, "Expected finite non-negative number for eps");
  MinNumel(env, x, Mul(env, rows, cols), "x");
  MinNumel(env, out, Mul(env, rows, cols), "out");
  MinNumel(env, w, cols, "weight");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(x->device());
    CudaCheck(kernels::RmsNorm(x->data(), w->data(), out->data(), rows, cols, static_cast<float>(eps), x->dtype(), dev.stream),
              "rmsNorm kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaAdd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* a = Buf(info, 0, "a");
  DeviceBuffer* b = Buf(info, 1, "b");
  DeviceBuffer* out = Buf(info, 2, "out");
  SameKind(env, a, b, "add");
  SameKind(env, a, out, "add");
  const size_t n = a->numel();
  MinNumel(env, b, n, "b");
  MinNumel(env, out, n, "out");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(a->device());
    CudaCheck(kernels::Add(a->data(), b->data(), out->data(), n, a->dtype(), dev.stream), "add kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaEmbedding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* table = Buf(info, 0, "table");
  if (info.Length() < 2 || !info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    throw Napi::TypeError::New(env, "Expected Int32Array for ids");
  }
  Napi::Int32Array ids = info[1].As<Napi::Int32Array>();
  DeviceBuffer* out = Buf(info, 2, "out");
  SameKind(env, table, out, "embedding");
  const size_t dim = static_cast<size_t>(IntArg(info, 3, "dim", 1, kMaxDim));
  const size_t count = ids.ElementLength();
  MinNumel(env, out, Mul(env, count, dim), "out");
  const int64_t vocab = static_cast<int64_t>(table->numel() / dim);
  return Guard(env, "cuda", [&]() -> Napi::Value {
    if (count == 0) return env.Undefined();
    DeviceContext& dev = Current(table->device());
    const size_t bytes = count * sizeof(int32_t);
    StagedKernel(
        dev, bytes, [&](void* pinned) { std::memcpy(pinned, ids.Data(), bytes); },
        [&](void* dIds) {
          return kernels::Embedding(table->data(), static_cast<const int32_t*>(dIds), out->data(), count, dim, vocab,
                                    table->dtype(), dev.stream);
        },
        "embedding gather on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaRotary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* x = Buf(info, 0, "x");
  DeviceBuffer* out = Buf(info, 3, "out");
  SameKind(env, x, out, "rotary");
  const size_t rows = Dim(info, 4, "rows");
  const size_t numHeads = static_cast<size_t>(IntArg(info, 5, "numHeads", 1, kMaxDim));
  const size_t headDim = static_cast<size_t>(IntArg(info, 6, "headDim", 2, kMaxDim));
  if (headDim % 2 != 0) throw Napi::RangeError::New(env, "Expected even headDim");
  const double scaling = NumberArg(info, 7, "scaling");
  if (!std::isfinite(scaling)) throw Napi::RangeError::New(env, "Expected finite number for scaling");
  const size_t half = headDim / 2;
  const float* positions = F32Data(info[1], rows, "positions");
  const float* invFreq = F32Data(info[2], half, "invFreq");
  const uint64_t n = Mul(env, Mul(env, rows, numHeads), headDim);
  MinNumel(env, x, n, "x");
  MinNumel(env, out, n, "out");
  if (x == out) throw Napi::RangeError::New(env, "rotary: x and out must be different buffers");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    if (n == 0) return env.Undefined();
    DeviceContext& dev = Current(x->device());
    // positions then invFreq, staged through one pinned block and one device block
    const size_t bytes = (rows + half) * sizeof(float);
    StagedKernel(
        dev, bytes,
        [&](void* pinned) {
          std::memcpy(pinned, positions, rows * sizeof(float));
          std::memcpy(static_cast<char*>(pinned) + rows * sizeof(float), invFreq, half * sizeof(float));
        },
        [&](void* table) {
          const float* dPos = static_cast<const float*>(table);
          return kernels::Rotary(x->data(), dPos, dPos + rows, out->data(), rows, numHeads, headDim,
                                 static_cast<float>(scaling), x->dtype(), dev.stream);
        },
        "rotary kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* q = Buf(info, 0, "q");
  DeviceBuffer* k = Buf(info, 1, "k");
  DeviceBuffer* v = Buf(info, 2, "v");
  DeviceBuffer* out = Buf(info, 3, "out");
  SameKind(env, q, k, "attention");
  SameKind(env, q, v, "attention");
  SameKind(env, q, out, "attention");
  const size_t T = Dim(info, 4, "T");
  const size_t numHeads = static_cast<size_t>(IntArg(info, 5, "numHeads", 1, kMaxDim));
  const size_t numKvHeads = static_cast<size_t>(IntArg(info, 6, "numKvHeads", 1, kMaxDim));
  const size_t headDim = static_cast<size_t>(IntArg(info, 7, "headDim", 1, kMaxDim));
  const size_t kvLength = Dim(info, 8, "kvLength");
  const double scale = NumberArg(info, 9, "scale");
  if (!std::isfinite(scale)) throw Napi::RangeError::New(env, "Expected finite number for scale");
  if (numHeads % numKvHeads != 0) throw Napi::RangeError::New(env, "Expected numHeads to be a multiple of numKvHeads");
  if (T > kvLength) throw Napi::RangeError::New(env, "Expected T of at most kvLength");
  if (headDim > kernels::kMaxAttentionHeadDim) {
    throw Napi::RangeError::New(env, "attention on cuda supports headDim up to " + std::to_string(kernels::kMaxAttentionHeadDim) +
                                         " but received " + std::to_string(headDim));
  }
  if (Mul(env, T, numHeads) > static_cast<uint64_t>(INT32_MAX)) {
    throw Napi::RangeError::New(env, "attention on cuda supports T × numHeads below 2^31");
  }
  const uint64_t qn = Mul(env, Mul(env, T, numHeads), headDim);
  const uint64_t kvn = Mul(env, Mul(env, kvLength, numKvHeads), headDim);
  MinNumel(env, q, qn, "q");
  MinNumel(env, out, qn, "out");
  MinNumel(env, k, kvn, "k");
  MinNumel(env, v, kvn, "v");
  if (out == q || out == k || out == v) throw Napi::RangeError::New(env, "attention: out must be a buffer of its own");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(q->device());
    CudaCheck(kernels::Attention(q->data(), k->data(), v->data(), out->data(), T, numHeads, numKvHeads, headDim, kvLength,
                                 static_cast<float>(scale), q->dtype(), dev.stream),
              "attention kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaSoftmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* x = Buf(info, 0, "x");
  DeviceBuffer* out = Buf(info, 1, "out");
  SameKind(env, x, out, "softmax");
  const size_t rows = Dim(info, 2, "rows");
  const size_t n = Dim(info, 3, "n");
  MinNumel(env, x, Mul(env, rows, n), "x");
  MinNumel(env, out, Mul(env, rows, n), "out");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(x->device());
    CudaCheck(kernels::Softmax(x->data(), out->data(), rows, n, x->dtype(), dev.stream), "softmax kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaArgmax(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* x = Buf(info, 0, "x");
  DeviceBuffer* out = Buf(info, 1, "out");
  SameDevice(env, x, out, "argmax");
  if (out->dtype() != kFloat32) throw Napi::TypeError::New(env, "argmax: out must be a float32 buffer (it holds int32 indices)");
  const size_t rows = Dim(info, 2, "rows");
  const size_t n = static_cast<size_t>(IntArg(info, 3, "n", 1, INT32_MAX));
  MinNumel(env, x, Mul(env, rows, n), "x");
  MinNumel(env, out, rows, "out");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Current(x->device());
    CudaCheck(kernels::Argmax(x->data(), static_cast<int32_t*>(out->data()), rows, n, x->dtype(), dev.stream),
              "argmax kernel on " + dev.Name());
    return env.Undefined();
  });
}

Napi::Value CudaCopyRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DeviceBuffer* dst = Buf(info, 0, "dst");
  const size_t offset = Dim(info, 1, "dstOffset");
  DeviceBuffer* src = Buf(info, 2, "src");
  const size_t count = Dim(info, 3, "count");
  SameKind(env, dst, src, "copyRows");
  MinNumel(env, src, count, "src");
  MinNumel(env, dst, offset + count, "dst");
  return Guard(env, "cuda", [&]() -> Napi::Value {
    if (count == 0) return env.Undefined();
    DeviceContext& dev = Current(dst->device());
    const size_t es = ItemSize(dst->dtype());
    CudaCheck(cudaMemcpyAsync(static_cast<char*>(dst->data()) + offset * es, src->data(), count * es, cudaMemcpyDeviceToDevice,
                              dev.stream),
              "copyRows (device-to-device cudaMemcpyAsync) on " + dev.Name());
    return env.Undefined();
  });
}

}  // namespace tpkit
