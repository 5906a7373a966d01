#include "async_work.h"

#include <limits>

namespace tpkit {

namespace {
Napi::FunctionReference* ErrorClass(Napi::Env env) { return env.GetInstanceData<Napi::FunctionReference>(); }
}  // namespace

Napi::Error MakeTpkitError(Napi::Env env, const std::string& code, const std::string& message,
                           const std::string& backend) {
  Napi::FunctionReference* cls = ErrorClass(env);
  if (cls != nullptr && !cls->IsEmpty()) {
    Napi::Object opts = Napi::Object::New(env);
    opts.Set("backend", backend);
    Napi::Value err = cls->New({Napi::String::New(env, code), Napi::String::New(env, message), opts});
    return Napi::Error(env, err);
  }
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", code);
  return e;
}

size_t ElementCount(const Napi::Value& v) {
  if (!v.IsTypedArray()) return 0;
  return v.As<Napi::TypedArray>().ElementLength();
}

namespace {
template <typename T>
T* TypedData(const Napi::Value& v, napi_typedarray_type type, size_t minElements, const char* name,
             const char* typeName) {
  Napi::Env env = v.Env();
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != type) {
    throw Napi::TypeError::New(env, std::string("Expected ") + typeName + " for " + name);
  }
  auto arr = v.As<Napi::TypedArrayOf<T>>();
  if (arr.ElementLength() < minElements) {
    throw Napi::RangeError::New(env, std::string("Expected at least ") + std::to_string(minElements) +
                                         " elements for " + name + " but received " +
                                         std::to_string(arr.ElementLength()));
  }
  return arr.Data();
}
}  // namespace

float* F32Data(const Napi::Value& v, size_t minElements, const char* name) {
  return TypedData<float>(v, napi_float32_array, minElements, name, "Float32Array");
}
uint16_t* U16Data(const Napi::Value& v, size_t minElements, const char* name) {
  return TypedData<uint16_t>(v, napi_uint16_array, minElements, name, "Uint16Array");
}

int64_t IntArg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  Napi::Env env = info.Env();
  if (i >= info.Length() || !info[i].IsNumber()) {
    throw Napi::TypeError::New(env, std::string("Expected integer for ") + name);
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || d != static_cast<double>(static_cast<int64_t>(d))) {
    throw Napi::RangeError::New(env, std::string("Expected integer in [") + std::to_string(lo) + ", " +
                                         std::to_string(hi) + "] for " + name);
  }
  return static_cast<int64_t>(d);
}

bool BoolArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsBoolean()) {
    throw Napi::TypeError::New(info.Env(), std::string("Expected boolean for ") + name);
  }
  return info[i].As<Napi::Boolean>().Value();
}

double NumberArg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string("Expected number for ") + name);
  }
  return info[i].As<Napi::Number>().DoubleValue();
}

}  // namespace tpkit
