// gloo::rendezvous::Store adapter that forwards set/get/wait to the JavaScript TCPStore client through a
// thread-safe function, so Gloo's rendezvous runs on the communicator thread while rank 0's main thread
// keeps serving the store (a blocking connect on the main thread deadlocks; see NATIVE-NOTES.md).
#pragma once
#include <gloo/rendezvous/store.h>
#include <napi.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace tpkit {

struct StoreRequest;

// Every call ends by `deadline`: a 'get' asks JavaScript to wait at most the time left, and Abort() (from any
// thread) ends the call in flight and every later one at once.
class JsStore : public gloo::rendezvous::Store {
 public:
  // `fn` is called on the main thread as fn(op: 'set'|'get', key: string, value: Buffer | undefined,
  // timeoutMs: number) and must return a Promise (of a Buffer for 'get').
  JsStore(Napi::ThreadSafeFunction fn, std::chrono::steady_clock::time_point deadline);
  ~JsStore() override;

  // Makes the call in flight, and every later one, throw std::runtime_error(message).
  void Abort(const std::string& message);

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<char> Call(const char* op, const std::string& key, const std::vector<char>* value);
  Napi::ThreadSafeFunction fn_;
  std::chrono::steady_clock::time_point deadline_;
  std::mutex mu_;
  std::shared_ptr<StoreRequest> current_;  // guarded by mu_: the call in flight
  std::string aborted_;                    // guarded by mu_: non-empty once Abort() was called
};

}  // namespace tpkit
