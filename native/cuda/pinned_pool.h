// Page-locked (pinned) host staging buffers for host<->device copies, so that cudaMemcpyAsync is truly
// asynchronous. cudaMallocHost / cudaFreeHost are slow and cudaFreeHost synchronises, so released blocks are
// kept (by power-of-two size class) and reused once the event of their last copy has completed.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace tpkit {

struct PinnedBlock {
  void* data = nullptr;
  size_t capacity = 0;
};

class PinnedPool {
 public:
  static PinnedPool& Instance();
  // A block of at least `bytes` bytes (nullptr data for 0); throws CodedError when cudaMallocHost fails.
  PinnedBlock Acquire(size_t bytes);
  // Returns the block to the pool; it is reused only after `ready` (may be nullptr) has completed. The pool
  // takes ownership of `ready`.
  void Release(PinnedBlock block, cudaEvent_t ready);

 private:
  PinnedPool() = default;
};

}  // namespace tpkit
