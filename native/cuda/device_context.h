// Per-device state of the process: one stream (every op of the device is enqueued on it, NCCL included), one
// stream-ordered memory pool, and one cuBLAS + cuBLASLt handle sharing one workspace. Created lazily on the
// first use of a device, on the main thread; kept until the process exits.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace tpkit {

// Native dtype codes (DTYPE_CODE in lib/backend/types.ts).
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
inline size_t ItemSize(int dtype) { return dtype == kFloat32 ? 4 : 2; }
const char* DTypeName(int dtype);

struct DeviceContext {
  int index = 0;
  cudaStream_t stream = nullptr;
  cudaMemPool_t pool = nullptr;
  bool ownPool = false;

  // cuBLAS: created on first GEMM (cublasCreate fails without a usable GPU).
  cublasHandle_t blas = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  size_t workspaceBytes = 0;

  // Makes this device current on the calling thread.
  void MakeCurrent() const;
  // Creates the cuBLAS handles and workspace if needed; throws CodedError.
  void EnsureBlas();
  // Stream-ordered allocation from the device pool (nullptr for 0 bytes); throws CodedError.
  void* Alloc(size_t bytes);
  // Stream-ordered free; never throws (errors are sticky and show up on the next op).
  void Free(void* ptr) const;
  // Returns the pool's idle blocks to the driver (cudaMemPoolTrimTo, no synchronisation): the retry after an
  // out-of-memory, for pool allocations that fragmentation defeated and for plain cudaMalloc (cuBLAS workspace).
  void ReleaseCached() const;
  // "cuda:0"
  std::string Name() const { return "cuda:" + std::to_string(index); }
};

// Result of cudaGetDeviceCount, queried once. Without a GPU the runtime answers cudaErrorInsufficientDriver
// (35, no driver) or cudaErrorNoDevice (100, driver but no GPU): both mean 0 devices.
struct DeviceCountResult {
  int count = 0;
  cudaError_t error = cudaSuccess;
};
const DeviceCountResult& DeviceCount();

// The context of device `index`; throws CodedError NO_CUDA_DEVICE when no GPU is visible and
// DEVICE_OUT_OF_RANGE when index >= count (JS turns the latter into a RangeError first).
DeviceContext& Device(int index);

}  // namespace tpkit
