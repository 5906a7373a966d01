// A Napi::AsyncWorker that runs a lambda on the libuv pool and settles a Promise.
// The typed arrays a job touches are kept alive by persistent references until it settles.
#pragma once
#include <napi.h>

#include <functional>
#include <string>
#include <vector>

namespace tpkit {

// Thrown from a worker lambda to reject with a TpkitError carrying `code`.
struct CodedError {
  std::string code;
  std::string message;
};

// Creates `new TpkitError(code, message, {backend})` through the constructor JS registered with
// setErrorClass(); falls back to an Error with a `code` property before that.
Napi::Error MakeTpkitError(Napi::Env env, const std::string& code, const std::string& message,
                           const std::string& backend);

class LambdaWorker : public Napi::AsyncWorker {
 public:
  using Work = std::function<void()>;
  LambdaWorker(Napi::Env env, Work work, std::vector<Napi::Value> keepAlive, std::string backend)
      : Napi::AsyncWorker(env, "tpkit.work"),
        deferred_(Napi::Promise::Deferred::New(env)),
        work_(std::move(work)),
        backend_(std::move(backend)) {
    for (auto& v : keepAlive) {
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    }
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

  // Queues `work` and returns its Promise.
  static Napi::Promise Run(Napi::Env env, Work work, std::vector<Napi::Value> keepAlive,
                           const std::string& backend) {
    auto* w = new LambdaWorker(env, std::move(work), std::move(keepAlive), backend);
    auto p = w->Promise();
    w->Queue();
    return p;
  }

 protected:
  void Execute() override {
    try {
      work_();
    } catch (const CodedError& e) {
      code_ = e.code;
      SetError(e.message);
    } catch (const std::exception& e) {
      code_ = "NATIVE_ERROR";
      SetError(e.what());
    } catch (...) {
      code_ = "NATIVE_ERROR";
      SetError("unknown native error");
    }
  }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(MakeTpkitError(Env(), code_, e.Message(), backend_).Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Work work_;
  std::string backend_;
  std::string code_;
  std::vector<Napi::ObjectReference> refs_;
};

// Argument guards: cheap checks so that nothing reachable from JS can crash the process, even when the
// TypeScript validation is bypassed. They throw a JS TypeError/RangeError.
float* F32Data(const Napi::Value& v, size_t minElements, const char* name);
uint16_t* U16Data(const Napi::Value& v, size_t minElements, const char* name);
size_t ElementCount(const Napi::Value& v);
int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi);
bool BoolArg(const Napi::CallbackInfo& info, size_t i, const char* name);
double NumberArg(const Napi::CallbackInfo& info, size_t i, const char* name);

}  // namespace tpkit
