// Registers the CUDA addon's exports (tpkit_cuda.node). Nothing else lives here.
#include <napi.h>

#include "device_buffer.h"
#include "nccl_comm.h"
#include "ops.h"
#include "runtime.h"

namespace tpkit {

// setErrorClass(TpkitError): the constructor native code uses to build coded errors (see async_work.cc).
Napi::Value CudaSetErrorClass(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsFunction()) throw Napi::TypeError::New(info.Env(), "Expected function for errorClass");
  auto* ref = info.Env().GetInstanceData<Napi::FunctionReference>();
  if (ref == nullptr) {
    ref = new Napi::FunctionReference();
    info.Env().SetInstanceData(ref);
  }
  *ref = Napi::Persistent(info[0].As<Napi::Function>());
  return info.Env().Undefined();
}

Napi::Object InitCuda(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, CudaSetErrorClass));
  exports.Set("status", Napi::Function::New(env, CudaRuntimeStatus));
  exports.Set("memoryInfo", Napi::Function::New(env, CudaMemoryInfo));
  exports.Set("synchronize", Napi::Function::New(env, CudaSynchronize));
  exports.Set("DeviceBuffer", DeviceBuffer::Init(env));
  exports.Set("zero", Napi::Function::New(env, CudaZero));
  exports.Set("upload", Napi::Function::New(env, CudaUpload));
  exports.Set("download", Napi::Function::New(env, CudaDownload));
  exports.Set("narrow", Napi::Function::New(env, CudaNarrow));
  exports.Set("cat", Napi::Function::New(env, CudaCat));
  exports.Set("cast", Napi::Function::New(env, CudaCast));
  exports.Set("gemm", Napi::Function::New(env, CudaGemm));
  exports.Set("biasAdd", Napi::Function::New(env, CudaBiasAdd));
  exports.Set("siluAndMul", Napi::Function::New(env, CudaSiluAndMul));
  exports.Set("rmsNorm", Napi::Function::New(env, CudaRmsNorm));
  exports.Set("add", Napi::Function::New(env, CudaAdd));
  exports.Set("embedding", Napi::Function::New(env, CudaEmbedding));
  exports.Set("rotary", Napi::Function::New(env, CudaRotary));
  exports.Set("attention", Napi::Function::New(env, CudaAttention));
  exports.Set("softmax", Napi::Function::New(env, CudaSoftmax));
  exports.Set("argmax", Napi::Function::New(env, CudaArgmax));
  exports.Set("copyRows", Napi::Function::New(env, CudaCopyRows));
  exports.Set("ncclUniqueId", Napi::Function::New(env, NcclUniqueId));
  exports.Set("NcclComm", NcclComm::Init(env));
  return exports;
}

}  // namespace tpkit

static Napi::Object InitCudaAddon(Napi::Env env, Napi::Object exports) { return tpkit::InitCuda(env, exports); }
NODE_API_MODULE(tpkit_cuda, InitCudaAddon)
