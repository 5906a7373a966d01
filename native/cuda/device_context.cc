#include "device_context.h"

#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "../core/async_work.h"
#include "cuda_error.h"

namespace tpkit {

namespace {
// cuBLAS workspace: 32 MiB is NVIDIA's recommendation for Hopper (cuBLAS docs, "cublasSetWorkspace").
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

std::mutex g_mu;
std::vector<std::unique_ptr<DeviceContext>> g_devices;
}  // namespace

const char* DTypeName(int dtype) {
  switch (dtype) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    default: return "unknown";
  }
}

const DeviceCountResult& DeviceCount() {
  static const DeviceCountResult result = [] {
    DeviceCountResult r;
    int n = 0;
    r.error = cudaGetDeviceCount(&n);
    r.count = r.error == cudaSuccess ? n : 0;
    if (r.error != cudaSuccess) cudaGetLastError();
    return r;
  }();
  return result;
}

void DeviceContext::MakeCurrent() const { CudaCheck(cudaSetDevice(index), "cudaSetDevice(" + std::to_string(index) + ")"); }

void DeviceContext::ReleaseCached() const {
  // Never synchronises: only blocks whose frees the host has seen complete (the event poller and stream queries
  // observe them) can go back. Errors are irrelevant here (the retry reports its own).
  if (cudaMemPoolTrimTo(pool, 0) != cudaSuccess) cudaGetLastError();
}

void DeviceContext::EnsureBlas() {
  if (blas != nullptr && lt != nullptr) return;
  MakeCurrent();
  if (workspace == nullptr) {
    cudaError_t e = cudaMalloc(&workspace, kWorkspaceBytes);
    if (e == cudaErrorMemoryAllocation) {
      // The tensors' pool keeps freed blocks (release threshold at max), which plain cudaMalloc cannot use.
      cudaGetLastError();
      workspace = nullptr;
      ReleaseCached();
      e = cudaMalloc(&workspace, kWorkspaceBytes);
    }
    if (e != cudaSuccess) workspace = nullptr;
    CudaCheck(e, "cudaMalloc of the cuBLAS workspace on " + Name());
    workspaceBytes = kWorkspaceBytes;
  }
  if (blas == nullptr) {
    cublasHandle_t h = nullptr;
    CublasCheck(cublasCreate(&h), "cublasCreate on " + Name());
    cublasStatus_t s = cublasSetStream(h, stream);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetWorkspace(h, workspace, workspaceBytes);
    if (s != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(h);
      CublasCheck(s, "configuring the cuBLAS handle of " + Name());
    }
    blas = h;
  }
  if (lt == nullptr) CublasCheck(cublasLtCreate(&lt), "cublasLtCreate on " + Name());
}

void* DeviceContext::Alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  MakeCurrent();
  void* p = nullptr;
  cudaError_t e = cudaMallocFromPoolAsync(&p, bytes, pool, stream);
  if (e == cudaErrorMemoryAllocation) {
    // Freed blocks the pool keeps but cannot reuse for this size (fragmentation) go back to the driver first;
    // one more try before reporting out of memory.
    cudaGetLastError();
    ReleaseCached();
    p = nullptr;
    e = cudaMallocFromPoolAsync(&p, bytes, pool, stream);
  }
  CudaCheck(e, "cudaMallocFromPoolAsync of " + std::to_string(bytes) + " bytes on " + Name());
  return p;
}

void DeviceContext::Free(void* ptr) const {
  if (ptr == nullptr) return;
  if (cudaSetDevice(index) != cudaSuccess || cudaFreeAsync(ptr, stream) != cudaSuccess) cudaGetLastError();
}

DeviceContext& Device(int index) {
  const DeviceCountResult& dc = DeviceCount();
  if (dc.count == 0) {
    throw CodedError{"NO_CUDA_DEVICE", "no CUDA device is visible (cudaGetDeviceCount: " +
                                           (dc.error == cudaSuccess ? std::string("0 devices") : CudaErrorText(dc.error)) + ")"};
  }
  if (index < 0 || index >= dc.count) {
    throw CodedError{"DEVICE_OUT_OF_RANGE", "device cuda:" + std::to_string(index) + " does not exist (" +
                                                std::to_string(dc.count) + " visible)"};
  }
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_devices.size() < static_cast<size_t>(dc.count)) g_devices.resize(static_cast<size_t>(dc.count));
  auto& slot = g_devices[static_cast<size_t>(index)];
  if (slot) return *slot;

  auto ctx = std::make_unique<DeviceContext>();
  ctx->index = index;
  ctx->MakeCurrent();
  CudaCheck(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking), "cudaStreamCreate on " + ctx->Name());
  // Until the context is published, a failure below releases what was created (the next call starts over).
  struct Undo {
    DeviceContext* c;
    ~Undo() {
      if (c == nullptr) return;
      if (c->ownPool && c->pool != nullptr) cudaMemPoolDestroy(c->pool);
      if (c->stream != nullptr) cudaStreamDestroy(c->stream);
      cudaGetLastError();
    }
  } undo{ctx.get()};

  // A pool of our own, so that its "used" counter only counts tensors (memoryInfo); the default pool is the
  // fallback on devices without pool creation.
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = index;
  if (cudaMemPoolCreate(&ctx->pool, &props) == cudaSuccess) {
    ctx->ownPool = true;
  } else {
    cudaGetLastError();
    CudaCheck(cudaDeviceGetDefaultMemPool(&ctx->pool, index), "cudaDeviceGetDefaultMemPool on " + ctx->Name());
  }
  // Keep freed blocks in the pool instead of returning them to the driver at every synchronisation, so that
  // steady-state allocation is a pool hit (the CUDA programming guide's advice for cudaMallocAsync).
  uint64_t threshold = std::numeric_limits<uint64_t>::max();
  CudaCheck(cudaMemPoolSetAttribute(ctx->pool, cudaMemPoolAttrReleaseThreshold, &threshold),
            "setting the release threshold of the memory pool of " + ctx->Name());
  undo.c = nullptr;
  slot = std::move(ctx);
  return *slot;
}

}  // namespace tpkit
