#include "runtime.h"

#include <cublasLt.h>
#include <cublas_api.h>
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

#include "../core/async_work.h"
#include "cuda_error.h"
#include "device_context.h"
#include "event_poller.h"

namespace tpkit {

namespace {

// 13000 -> "13.0"
std::string CudaVersionString(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

int DeviceArg(const Napi::CallbackInfo& info) {
  const int64_t device = IntArg(info, 0, "device", 0, 1 << 16);
  const DeviceCountResult& dc = DeviceCount();
  if (dc.count > 0 && device >= dc.count) {
    throw Napi::RangeError::New(info.Env(), "Expected device index in [0, " + std::to_string(dc.count) +
                                                ") for device but received " + std::to_string(device));
  }
  return static_cast<int>(device);
}

}  // namespace

Napi::Value CudaRuntimeStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  const DeviceCountResult& dc = DeviceCount();
  out.Set("deviceCount", dc.count);
  if (dc.error != cudaSuccess) {
    out.Set("deviceError", "cudaGetDeviceCount failed with " + CudaErrorText(dc.error));
  } else if (dc.count == 0) {
    out.Set("deviceError", "cudaGetDeviceCount reported 0 devices");
  } else {
    out.Set("deviceError", env.Null());
  }

  int v = 0;
  out.Set("cudaRuntime", cudaRuntimeGetVersion(&v) == cudaSuccess ? Napi::Value(Napi::String::New(env, CudaVersionString(v)))
                                                                   : env.Null());
  v = 0;
  if (cudaDriverGetVersion(&v) == cudaSuccess && v > 0) {
    out.Set("cudaDriver", CudaVersionString(v));
  } else {
    out.Set("cudaDriver", env.Null());
  }
  cudaGetLastError();

  int major = 0, minor = 0, patch = 0;
  if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS) {
    out.Set("cublas", std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch));
  } else {
    out.Set("cublas", env.Null());
  }
  const size_t lt = cublasLtGetVersion();  // major * 10000 + minor * 100 + patch
  out.Set("cublasLt", std::to_string(lt / 10000) + "." + std::to_string((lt / 100) % 100) + "." + std::to_string(lt % 100));

  int nv = 0;
  if (ncclGetVersion(&nv) == ncclSuccess) {
    // NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z since 2.9
    out.Set("nccl", std::to_string(nv / 10000) + "." + std::to_string((nv / 100) % 100) + "." + std::to_string(nv % 100));
  } else {
    out.Set("nccl", env.Null());
  }
  return out;
}

Napi::Value CudaMemoryInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int device = DeviceArg(info);
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Device(device);
    dev.MakeCurrent();
    size_t freeBytes = 0, totalBytes = 0;
    CudaCheck(cudaMemGetInfo(&freeBytes, &totalBytes), "cudaMemGetInfo on " + dev.Name());
    uint64_t used = 0, reserved = 0;
    CudaCheck(cudaMemPoolGetAttribute(dev.pool, cudaMemPoolAttrUsedMemCurrent, &used), "reading the pool's used bytes");
    CudaCheck(cudaMemPoolGetAttribute(dev.pool, cudaMemPoolAttrReservedMemCurrent, &reserved), "reading the pool's reserved bytes");
    Napi::Object out = Napi::Object::New(env);
    out.Set("free", static_cast<double>(freeBytes));
    out.Set("total", static_cast<double>(totalBytes));
    out.Set("poolUsed", static_cast<double>(used));
    out.Set("poolReserved", static_cast<double>(reserved));
    return out;
  });
}

Napi::Value CudaSynchronize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int device = DeviceArg(info);
  return Guard(env, "cuda", [&]() -> Napi::Value {
    DeviceContext& dev = Device(device);
    dev.MakeCurrent();
    cudaEvent_t ev = nullptr;
    CudaCheck(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate on " + dev.Name());
    const cudaError_t e = cudaEventRecord(ev, dev.stream);
    if (e != cudaSuccess) {
      cudaEventDestroy(ev);
      CudaCheck(e, "cudaEventRecord on " + dev.Name());
    }
    Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
    EventPoller::For(env).Watch(env, device, ev, [deferred, device](Napi::Env env, cudaError_t status) {
      if (status == cudaSuccess) {
        deferred.Resolve(env.Undefined());
      } else {
        deferred.Reject(MakeTpkitError(env, CudaErrorCode(status),
                                       "the stream of cuda:" + std::to_string(device) + " failed: " + CudaErrorText(status),
                                       "cuda")
                            .Value());
      }
    });
    return deferred.Promise();
  });
}

}  // namespace tpkit
