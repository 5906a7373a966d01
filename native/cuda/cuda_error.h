// Error codes of the CUDA addon: every CUDA runtime, cuBLAS and NCCL failure becomes a tpkit::CodedError
// (C++ side) and then a TpkitError (JS side) with a code of the form
//   CUDA_ERROR_<NAME>         cudaErrorMemoryAllocation   -> CUDA_ERROR_MEMORY_ALLOCATION
//   CUBLAS_STATUS_<NAME>      CUBLAS_STATUS_NOT_SUPPORTED (cuBLAS's own name)
//   NCCL_<NAME>               ncclUnhandledCudaError      -> NCCL_UNHANDLED_CUDA_ERROR
// Entry points wrap their body in Guard() so that no C++ exception other than Napi::Error reaches
// node-addon-api (which would terminate the process).
#pragma once
#include <cublas_api.h>
#include <cuda_runtime_api.h>
#include <napi.h>
#include <nccl.h>

#include <new>
#include <string>

#include "../core/async_work.h"

namespace tpkit {

// "CUDA_ERROR_MEMORY_ALLOCATION" for cudaErrorMemoryAllocation.
std::string CudaErrorCode(cudaError_t e);
// "cudaErrorMemoryAllocation (2): out of memory"
std::string CudaErrorText(cudaError_t e);
// "CUBLAS_STATUS_NOT_INITIALIZED"
std::string CublasStatusCode(cublasStatus_t s);
// "NCCL_UNHANDLED_CUDA_ERROR"
std::string NcclResultCode(ncclResult_t r);

// Throw a CodedError unless the call succeeded. `what` names the call and its context ("cudaMallocAsync of
// 4096 bytes on cuda:0").
void CudaCheck(cudaError_t e, const std::string& what);
void CublasCheck(cublasStatus_t s, const std::string& what);

// Runs `f` and converts CodedError / std::exception into a JS TpkitError (Napi::Error), so that
// node-addon-api never sees a foreign exception.
template <typename F>
auto Guard(Napi::Env env, const char* backend, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const CodedError& e) {
    throw MakeTpkitError(env, e.code, e.message, backend);
  } catch (const std::bad_alloc&) {
    throw MakeTpkitError(env, "OUT_OF_MEMORY", "a host allocation failed", backend);
  } catch (const std::exception& e) {
    throw MakeTpkitError(env, "NATIVE_ERROR", e.what(), backend);
  }
}

}  // namespace tpkit
