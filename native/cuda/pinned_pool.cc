#include "pinned_pool.h"

#include <map>
#include <mutex>
#include <vector>

#include "cuda_error.h"

namespace tpkit {

namespace {
constexpr size_t kMinBlock = size_t{64} << 10;
constexpr size_t kPow2Limit = size_t{64} << 20;
constexpr size_t kLargeStep = size_t{16} << 20;
constexpr size_t kMaxCached = size_t{1} << 30;  // cached bytes beyond this are freed when idle

struct Entry {
  PinnedBlock block;
  cudaEvent_t ready;
};

std::mutex g_mu;
std::map<size_t, std::vector<Entry>> g_free;
size_t g_cached = 0;

// Size classes: powers of two up to 64 MiB, then multiples of 16 MiB.
size_t SizeClass(size_t bytes) {
  if (bytes <= kMinBlock) return kMinBlock;
  if (bytes <= kPow2Limit) {
    size_t c = kMinBlock;
    while (c < bytes) c <<= 1;
    return c;
  }
  return (bytes + kLargeStep - 1) / kLargeStep * kLargeStep;
}

// True once the event (if any) has completed; an errored event also counts (the context is unusable then).
bool Ready(cudaEvent_t e) {
  if (e == nullptr) return true;
  cudaError_t q = cudaEventQuery(e);
  if (q == cudaErrorNotReady) return false;
  if (q != cudaSuccess) cudaGetLastError();
  return true;
}
}  // namespace

PinnedPool& PinnedPool::Instance() {
  static PinnedPool* pool = new PinnedPool();  // never destroyed: blocks live until the process exits
  return *pool;
}

PinnedBlock PinnedPool::Acquire(size_t bytes) {
  if (bytes == 0) return {};
  const size_t cls = SizeClass(bytes);
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_free.find(cls);
    if (it != g_free.end()) {
      auto& list = it->second;
      for (size_t i = 0; i < list.size(); i++) {
        if (!Ready(list[i].ready)) continue;
        Entry e = list[i];
        list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
        g_cached -= e.block.capacity;
        if (e.ready != nullptr) cudaEventDestroy(e.ready);
        return e.block;
      }
    }
  }
  PinnedBlock b;
  cudaError_t err = cudaMallocHost(&b.data, cls);
  if (err != cudaSuccess) {
    cudaGetLastError();
    // Give idle cached blocks back and try once more before failing.
    std::vector<Entry> idle;
    {
      std::lock_guard<std::mutex> lock(g_mu);
      for (auto& kv : g_free) {
        auto& list = kv.second;
        for (size_t i = 0; i < list.size();) {
          if (Ready(list[i].ready)) {
            idle.push_back(list[i]);
            g_cached -= list[i].block.capacity;
            list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
          } else {
            i++;
          }
        }
      }
    }
    for (auto& e : idle) {
      if (e.ready != nullptr) cudaEventDestroy(e.ready);
      cudaFreeHost(e.block.data);
    }
    CudaCheck(cudaMallocHost(&b.data, cls), "cudaMallocHost of " + std::to_string(cls) + " bytes of pinned staging memory");
  }
  b.capacity = cls;
  return b;
}

void PinnedPool::Release(PinnedBlock block, cudaEvent_t ready) {
  if (block.data == nullptr) {
    if (ready != nullptr) cudaEventDestroy(ready);
    return;
  }
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_cached + block.capacity > kMaxCached && Ready(ready)) {
    if (ready != nullptr) cudaEventDestroy(ready);
    cudaFreeHost(block.data);
    return;
  }
  g_cached += block.capacity;
  g_free[block.capacity].push_back({block, ready});
}

}  // namespace tpkit
