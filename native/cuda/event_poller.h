// Observes CUDA events without blocking the event loop: one thread per JS environment polls
// cudaEventQuery (20 µs, backing off to 1 ms while nothing completes) and runs each completion on the main
// thread through a thread-safe function. While a wait is pending the function is ref'd, so Node does not
// exit before a readback settles. The thread is joined by an environment cleanup hook.
#pragma once
#include <cuda_runtime_api.h>
#include <napi.h>

#include <functional>

namespace tpkit {

class EventPoller {
 public:
  // Runs on the main thread once the event completed (status cudaSuccess) or failed (the sticky error).
  using Done = std::function<void(Napi::Env env, cudaError_t status)>;

  // The poller of `env`, created on first use (main thread only).
  static EventPoller& For(Napi::Env env);

  // Watches `event` (recorded on device `device`'s stream); takes ownership of it. Main thread only.
  void Watch(Napi::Env env, int device, cudaEvent_t event, Done done);

  struct State;

 private:
  explicit EventPoller(State* s) : state_(s) {}
  State* state_;
};

}  // namespace tpkit
