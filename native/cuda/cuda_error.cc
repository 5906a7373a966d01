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

static_assert(ncclSuccess == 0 && ncclUnhandledCudaError == 1 && ncclSystemError == 2 && ncclInternalError == 3 &&
                  ncclInvalidArgument == 4 && ncclInvalidUsage == 5 && ncclRemoteError == 6 && ncclInProgress == 7,
              "NcclResultCode maps ncclResult_t by value");

std::string NcclResultCode(ncclResult_t r) {
  // By value: ncclTimeout (8) is not declared by NCCL headers before it was added (2.27 stops at 7), and the
  // addon must build against those too.
  switch (static_cast<int>(r)) {
    case 0: return "NCCL_SUCCESS";
    case 1: return "NCCL_UNHANDLED_CUDA_ERROR";
    case 2: return "NCCL_SYSTEM_ERROR";
    case 3: return "NCCL_INTERNAL_ERROR";
    case 4: return "NCCL_INVALID_ARGUMENT";
    case 5: return "NCCL_INVALID_USAGE";
    case 6: return "NCCL_REMOTE_ERROR";
    case 7: return "NCCL_IN_PROGRESS";
    case 8: return "NCCL_TIMEOUT";
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
