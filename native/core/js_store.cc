#include "js_store.h"

#include <algorithm>
#include <atomic>
#include <future>
#include <memory>
#include <stdexcept>

namespace tpkit {

struct StoreRequest {
  std::string op;
  std::string key;
  std::vector<char> value;
  int64_t timeoutMs = 1;
  std::promise<std::vector<char>> result;
  std::atomic<bool> settled{false};

  void Resolve(std::vector<char> v) {
    if (!settled.exchange(true)) result.set_value(std::move(v));
  }
  void Reject(const std::string& message) {
    if (!settled.exchange(true)) result.set_exception(std::make_exception_ptr(std::runtime_error(message)));
  }
};

namespace {

void CallOnMainThread(Napi::Env env, Napi::Function fn, std::shared_ptr<StoreRequest>* boxed) {
  std::shared_ptr<StoreRequest> req = *boxed;
  delete boxed;
  if (env == nullptr || fn.IsEmpty()) {
    req->Reject("store is closed");
    return;
  }
  try {
    if (req->settled) return;  // aborted before it reached JavaScript
    std::vector<napi_value> args = {Napi::String::New(env, req->op), Napi::String::New(env, req->key)};
    args.push_back(req->op == "set" ? Napi::Buffer<char>::Copy(env, req->value.data(), req->value.size()).As<Napi::Value>()
                                    : env.Undefined());
    args.push_back(Napi::Number::New(env, static_cast<double>(req->timeoutMs)));
    Napi::Value ret = fn.Call(args);
    if (!ret.IsObject() || !ret.As<Napi::Object>().Get("then").IsFunction()) {
      req->Reject("store function did not return a Promise");
      return;
    }
    Napi::Object promise = ret.As<Napi::Object>();
    Napi::Function onOk = Napi::Function::New(env, [req](const Napi::CallbackInfo& info) {
      std::vector<char> out;
      if (info.Length() > 0 && info[0].IsTypedArray()) {
        auto arr = info[0].As<Napi::Uint8Array>();
        out.assign(reinterpret_cast<char*>(arr.Data()), reinterpret_cast<char*>(arr.Data()) + arr.ByteLength());
      }
      req->Resolve(std::move(out));
    });
    Napi::Function onErr = Napi::Function::New(env, [req](const Napi::CallbackInfo& info) {
      std::string msg = "store operation failed";
      if (info.Length() > 0 && info[0].IsObject()) {
        Napi::Value m = info[0].As<Napi::Object>().Get("message");
        if (m.IsString()) msg = m.As<Napi::String>().Utf8Value();
      }
      req->Reject(msg);
    });
    promise.Get("then").As<Napi::Function>().Call(promise, {onOk, onErr});
  } catch (const Napi::Error& e) {
    req->Reject(e.Message());
  }
}
}  // namespace

JsStore::JsStore(Napi::ThreadSafeFunction fn, std::chrono::steady_clock::time_point deadline)
    : fn_(fn), deadline_(deadline) {}

JsStore::~JsStore() = default;

void JsStore::Abort(const std::string& message) {
  std::shared_ptr<StoreRequest> req;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_.empty()) aborted_ = message.empty() ? "store call aborted" : message;
    req = current_;
  }
  if (req) req->Reject(aborted_);
}

std::vector<char> JsStore::Call(const char* op, const std::string& key, const std::vector<char>* value) {
  using std::chrono::milliseconds;
  const auto left = std::chrono::duration_cast<milliseconds>(deadline_ - std::chrono::steady_clock::now());
  auto req = std::make_shared<StoreRequest>();
  req->op = op;
  req->key = key;
  req->timeoutMs = std::max<int64_t>(1, left.count());
  if (value != nullptr) req->value = *value;
  std::future<std::vector<char>> fut = req->result.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!aborted_.empty()) throw std::runtime_error(aborted_);
    current_ = req;
  }
  struct Clear {
    JsStore& s;
    ~Clear() {
      std::lock_guard<std::mutex> lock(s.mu_);
      s.current_.reset();
    }
  } clear{*this};
  auto* boxed = new std::shared_ptr<StoreRequest>(req);
  napi_status st = fn_.BlockingCall(boxed, CallOnMainThread);
  if (st != napi_ok) {
    delete boxed;
    throw std::runtime_error("store is closed (rendezvous for key \"" + key + "\")");
  }
  // The JS side enforces the time left; the extra second only guards against a lost callback.
  if (fut.wait_for(milliseconds(req->timeoutMs) + std::chrono::seconds(1)) != std::future_status::ready) {
    req->Reject("timeout");
    throw std::runtime_error("store " + std::string(op) + " of key \"" + key + "\" timed out after " +
                             std::to_string(req->timeoutMs) + " ms");
  }
  return fut.get();
}

void JsStore::set(const std::string& key, const std::vector<char>& data) { Call("set", key, &data); }

std::vector<char> JsStore::get(const std::string& key) { return Call("get", key, nullptr); }

void JsStore::wait(const std::vector<std::string>& keys) {
  for (const auto& k : keys) Call("get", k, nullptr);
}

void JsStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) { wait(keys); }

}  // namespace tpkit
