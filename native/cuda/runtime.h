// Facts about the CUDA runtime and devices, for cudaStatus() / backends() and tests.
#pragma once
#include <napi.h>

namespace tpkit {

// status() → { deviceCount, deviceError: string | null, cudaRuntime, cudaDriver, cublas, cublasLt, nccl }
// Never throws: without a GPU deviceCount is 0 and deviceError holds cudaGetDeviceCount's error.
Napi::Value CudaRuntimeStatus(const Napi::CallbackInfo& info);
// memoryInfo(device) → { free, total, poolUsed, poolReserved } in bytes: cudaMemGetInfo, and the
// used / reserved counters of the tensors' memory pool. Does not synchronise (call synchronize() first for
// numbers that include every enqueued free).
Napi::Value CudaMemoryInfo(const Napi::CallbackInfo& info);
// synchronize(device) → Promise<void> that settles when everything enqueued so far on the device's stream
// completed (an event, observed off the main thread).
Napi::Value CudaSynchronize(const Napi::CallbackInfo& info);

}  // namespace tpkit
