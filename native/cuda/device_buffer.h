// DeviceBuffer: the device memory of one cuda tensor's storage, exposed to JavaScript.
//
//   new DeviceBuffer(device, dtype, numel)   stream-ordered allocation from the device's pool (uninitialised)
//   buf.free()                               idempotent; stream-ordered free (cudaFreeAsync)
//   buf.device / dtype / numel / bytes / freed
//
// The bytes are reported to V8 with AdjustExternalMemory, so that GC pressure reflects device memory; the GC
// finalizer frees a buffer that was never freed (a safety net, not the normal path). A buffer used by a
// communicator thread is pinned for that time: free() then only marks it, and the memory goes back to the
// pool when the last pin is dropped. The raw pointer never leaves C++.
#pragma once
#include <napi.h>

#include <cstddef>

namespace tpkit {

class DeviceBuffer : public Napi::ObjectWrap<DeviceBuffer> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit DeviceBuffer(const Napi::CallbackInfo& info);
  ~DeviceBuffer() override;

  // The DeviceBuffer behind `v`; throws TypeError when `v` is not one, TpkitError DISPOSED when freed.
  static DeviceBuffer* Live(const Napi::Value& v, const char* name);

  void* data() const { return ptr_; }
  int device() const { return device_; }
  int dtype() const { return dtype_; }
  size_t numel() const { return numel_; }
  size_t bytes() const { return bytes_; }

  // Main thread only: keeps the memory allocated until Unpin, even across free().
  void Pin() { pins_++; }
  void Unpin(Napi::Env env);

 private:
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value GetDevice(const Napi::CallbackInfo& info);
  Napi::Value GetDType(const Napi::CallbackInfo& info);
  Napi::Value GetNumel(const Napi::CallbackInfo& info);
  Napi::Value GetBytes(const Napi::CallbackInfo& info);
  Napi::Value GetFreed(const Napi::CallbackInfo& info);
  void Release(Napi::Env env);

  int device_ = 0;
  int dtype_ = 0;
  size_t numel_ = 0;
  size_t bytes_ = 0;
  void* ptr_ = nullptr;
  bool freed_ = false;
  bool accounted_ = false;
  int pins_ = 0;
};

}  // namespace tpkit
