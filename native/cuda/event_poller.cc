#include "event_poller.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace tpkit {

namespace {
using us = std::chrono::microseconds;
constexpr us kMinBackoff{20};
constexpr us kMaxBackoff{1000};

struct Item {
  int device = 0;
  cudaEvent_t event = nullptr;
  EventPoller::Done done;
  cudaError_t status = cudaSuccess;
};
}  // namespace

void SettleEventItem(Napi::Env env, Napi::Function, EventPoller::State* state, Item* item);
using PollerTsfn = Napi::TypedThreadSafeFunction<EventPoller::State, Item, SettleEventItem>;

struct EventPoller::State {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Item*> incoming;
  bool stopping = false;
  std::thread thread;
  PollerTsfn tsfn;
  int64_t pending = 0;  // main thread only

  void Loop() {
    std::vector<Item*> watching;
    us backoff = kMinBackoff;
    int current = -1;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu);
        if (watching.empty()) {
          cv.wait(lock, [&] { return stopping || !incoming.empty(); });
        } else {
          cv.wait_for(lock, backoff, [&] { return stopping || !incoming.empty(); });
        }
        if (stopping) break;
        if (!incoming.empty()) backoff = kMinBackoff;
        while (!incoming.empty()) {
          watching.push_back(incoming.front());
          incoming.pop_front();
        }
      }
      bool progressed = false;
      for (size_t i = 0; i < watching.size();) {
        Item* it = watching[i];
        if (it->device != current) {
          if (cudaSetDevice(it->device) != cudaSuccess) cudaGetLastError();
          current = it->device;
        }
        const cudaError_t q = cudaEventQuery(it->event);
        if (q == cudaErrorNotReady) {
          i++;
          continue;
        }
        if (q != cudaSuccess) cudaGetLastError();
        it->status = q;
        cudaEventDestroy(it->event);
        it->event = nullptr;
        watching.erase(watching.begin() + static_cast<std::ptrdiff_t>(i));
        progressed = true;
        // Unbounded queue: never blocks. After the environment started closing the item is leaked on purpose
        // (its JS references must not be released off the main thread).
        tsfn.BlockingCall(it);
      }
      backoff = progressed ? kMinBackoff : std::min(backoff * 2, kMaxBackoff);
    }
    tsfn.Release();
  }
};

void SettleEventItem(Napi::Env env, Napi::Function, EventPoller::State* state, Item* item) {
  if (env == nullptr) return;  // environment teardown: leak the item rather than touch JS
  try {
    item->done(env, item->status);
  } catch (...) {
    // A completion must never take the process down; the promise simply stays as settled as it got.
  }
  if (--state->pending == 0) state->tsfn.Unref(env);
  delete item;
}

namespace {
std::mutex g_mu;
std::unordered_map<napi_env, EventPoller*> g_pollers;
}  // namespace

EventPoller& EventPoller::For(Napi::Env env) {
  std::lock_guard<std::mutex> lock(g_mu);
  auto it = g_pollers.find(env);
  if (it != g_pollers.end()) return *it->second;
  auto* state = new State();
  state->tsfn = PollerTsfn::New(env, "tpkit.cuda.events", 0, 1, state);
  state->tsfn.Unref(env);
  state->thread = std::thread([state] { state->Loop(); });
  auto* poller = new EventPoller(state);
  g_pollers[env] = poller;
  napi_env raw = env;
  // Registered after the thread-safe function, so it runs before the function's own cleanup (LIFO).
  env.AddCleanupHook([raw, poller, state] {
    {
      std::lock_guard<std::mutex> l(state->mu);
      state->stopping = true;
    }
    state->cv.notify_all();
    if (state->thread.joinable()) state->thread.join();
    {
      std::lock_guard<std::mutex> l(g_mu);
      g_pollers.erase(raw);
    }
    // Items still queued are leaked on purpose (see SettleEventItem); the state stays reachable by the
    // thread-safe function until its own cleanup, so it is not deleted here.
    delete poller;
  });
  return *poller;
}

void EventPoller::Watch(Napi::Env env, int device, cudaEvent_t event, Done done) {
  auto* item = new Item();
  item->device = device;
  item->event = event;
  item->done = std::move(done);
  if (state_->pending++ == 0) state_->tsfn.Ref(env);
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->incoming.push_back(item);
  }
  state_->cv.notify_one();
}

}  // namespace tpkit
