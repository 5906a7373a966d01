// Registers the core addon's exports. Nothing else lives here.
#include <napi.h>

#include "async_work.h"
#include "attention.h"
#include "blas.h"
#include "gloo_comm.h"
#include "kernels.h"
#include "shm_comm.h"

namespace tpkit {

// setErrorClass(TpkitError): the constructor native code uses to build coded errors.
Napi::Value SetErrorClass(const Napi::CallbackInfo& info) {
  if (!info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "Expected function for errorClass");
  auto* ref = info.Env().GetInstanceData<Napi::FunctionReference>();
  if (ref == nullptr) {
    ref = new Napi::FunctionReference();
    info.Env().SetInstanceData(ref);
  }
  *ref = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, SetErrorClass));
  exports.Set("sgemm", Napi::Function::New(env, Sgemm));
  exports.Set("linear", Napi::Function::New(env, Linear));
  exports.Set("setBlasThreads", Napi::Function::New(env, SetBlasThreads));
  exports.Set("getBlasThreads", Napi::Function::New(env, GetBlasThreads));
  exports.Set("blasConfig", Napi::Function::New(env, BlasConfig));
  exports.Set("cast", Napi::Function::New(env, Cast));
  exports.Set("allocHostPages", Napi::Function::New(env, AllocHostPages));
  exports.Set("biasAdd", Napi::Function::New(env, BiasAdd));
  exports.Set("siluAndMul", Napi::Function::New(env, SiluAndMul));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm));
  exports.Set("add", Napi::Function::New(env, Add));
  exports.Set("rotary", Napi::Function::New(env, Rotary));
  exports.Set("attention", Napi::Function::New(env, Attention));
  exports.Set("softmax", Napi::Function::New(env, Softmax));
  exports.Set("argmax", Napi::Function::New(env, Argmax));
  exports.Set("GlooComm", GlooComm::Init(env));
  exports.Set("ShmComm", ShmComm::Init(env));
  return exports;
}

}  // namespace tpkit

static Napi::Object InitCore(Napi::Env env, Napi::Object exports) { return tpkit::Init(env, exports); }
NODE_API_MODULE(tpkit_core, InitCore)
