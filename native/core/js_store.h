// gloo::rendezvous::Store adapter that forwards set/get/wait to the JavaScript TCPStore client through a
// thread-safe function, so Gloo's rendezvous runs on the communicator thread while rank 0's main thread
// keeps serving the store (a blocking connect on the main thread deadlocks; see NATIVE-NOTES.md).
#pragma once
#include <gloo/rendezvous/store.h>
#include <napi.h>

#include <chrono>
#include <string>
#include <vector>

namespace tpkit {

class JsStore : public gloo::rendezvous::Store {
 public:
  // `fn` is called on the main thread as fn(op: 'set'|'get', key: string, value?: Buffer) and must return a
  // Promise (of a Buffer for 'get').
  JsStore(Napi::ThreadSafeFunction fn, std::chrono::milliseconds timeout);
  ~JsStore() override;

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  std::vector<char> Call(const char* op, const std::string& key, const std::vector<char>* value,
                         std::chrono::milliseconds timeout);
  Napi::ThreadSafeFunction fn_;
  std::chrono::milliseconds timeout_;
};

}  // namespace tpkit
