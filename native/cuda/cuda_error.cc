#include "cuda_error.h"

#include <cctype>

namespace tpkit {

namespace {
// "InsufficientDriver" -> "INSUFFICIENT_DRIVER", "ECCUncorrectable" -> "ECC_UNCORRECTABLE".
std::string UpperSnake(const std::string& camel) {
  std::string out;
  for (size_t i = 0; i < camel.size(); i++) {
    const unsigned char c = static_cast<unsigned char>(camel[i]);
    if (std::isupper(c) && i > 0) {
      const unsigned char prev = static_cast<unsigned char>(camel[i - 1]);
      const bool nextLower = i + 1 < camel.size() && std::islower(static_cast<unsigned char>(camel[i + 1]));
      if (std::islower(prev) || std::isdigit(prev) || (std::isupper(prev) && nextLower)) out.push_back('_');
    }
    out.push_back(static_cast<char>(std::toupper(c)));
  }
  return out;
}
}  // namespace

std::string CudaErrorCode(cudaError_t e) {
  const char* name = cudaGetErrorName(e);
  std::string n = name != nullptr ? name : "";
  const std::string prefix = "cudaError";
  if (n.rfind(prefix, 0) == 0 && n.size() > prefix.size()) return "CUDA_ERROR_" + UpperSnake(n.substr(prefix.size()));
  return "CUDA_ERROR_" + std::to_string(static_cast<int>(e));
}

std::string CudaErrorText(cudaError_t e) {
  const char* name = cudaGetErrorName(e);
  const char* text = cudaGetErrorString(e);
  return std::string(name != nullptr ? name : "cudaError") + " (" + std::to_string(static_cast<int>(e)) +
         "): " + (text != nullptr ? text : "unknown error");
}

std::string CublasStatusCode(cublasStatus_t s) {
  const char* name = cublasGetStatusName(s);
  if (name != nullptr && std::string(name).rfind("CUBLAS_STATUS_", 0) == 0) return name;
  return "CUBLAS_STATUS_" + std::to_string(static_cast<int>(s));
}

std::string NcclResultCode(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "NCCL_SUCCESS";
    case ncclUnhandledCudaError: return "NCCL_UNHANDLED_CUDA_ERROR";
    case ncclSystemError: return "NCCL_SYSTEM_ERROR";
    case ncclInternalError: return "NCCL_INTERNAL_ERROR";
    case ncclInvalidArgument: return "NCCL_INVALID_ARGUMENT";
    case ncclInvalidUsage: return "NCCL_INVALID_USAGE";
    case ncclRemoteError: return "NCCL_REMOTE_ERROR";
    case ncclInProgress: return "NCCL_IN_PROGRESS";
    case ncclTimeout: return "NCCL_TIMEOUT";
    default: return "NCCL_ERROR_" + std::to_string(static_cast<int>(r));
  }
}

void CudaCheck(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that it is not reported again by the next call
  throw CodedError{CudaErrorCode(e), what + " failed: " + CudaErrorText(e)};
}

void CublasCheck(cublasStatus_t s, const std::string& what) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw CodedError{CublasStatusCode(s), what + " failed: " + CublasStatusCode(s)};
}

}  // namespace tpkit
