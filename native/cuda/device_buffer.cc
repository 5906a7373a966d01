#include "device_buffer.h"

#include <cstdint>
#include <string>

#include "../core/async_work.h"
#include "cuda_error.h"
#include "device_context.h"

namespace tpkit {

namespace {
// Distinguishes DeviceBuffer objects from any other wrapped object (napi_type_tag_object), so that a foreign
// object passed from JS is rejected instead of being reinterpreted.
const napi_type_tag kDeviceBufferTag = {0x7470'6b69'7443'7564ULL, 0x6142'7566'6665'7231ULL};
constexpr int64_t kMaxNumel = int64_t{1} << 40;
}  // namespace

Napi::Function DeviceBuffer::Init(Napi::Env env) {
  return DefineClass(env, "DeviceBuffer",
                     {InstanceMethod("free", &DeviceBuffer::Free),
                      InstanceAccessor("device", &DeviceBuffer::GetDevice, nullptr),
                      InstanceAccessor("dtype", &DeviceBuffer::GetDType, nullptr),
                      InstanceAccessor("numel", &DeviceBuffer::GetNumel, nullptr),
                      InstanceAccessor("bytes", &DeviceBuffer::GetBytes, nullptr),
                      InstanceAccessor("freed", &DeviceBuffer::GetFreed, nullptr)});
}

// new DeviceBuffer(device, dtype, numel)
DeviceBuffer::DeviceBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceBuffer>(info) {
  Napi::Env env = info.Env();
  const int64_t device = IntArg(info, 0, "device", 0, 1 << 16);
  dtype_ = static_cast<int>(IntArg(info, 1, "dtype", 0, 2));
  numel_ = static_cast<size_t>(IntArg(info, 2, "numel", 0, kMaxNumel));
  bytes_ = numel_ * ItemSize(dtype_);
  const DeviceCountResult& dc = DeviceCount();
  if (dc.count > 0 && device >= dc.count) {
    throw Napi::RangeError::New(env, "Expected device index in [0, " + std::to_string(dc.count) +
                                         ") for device but received " + std::to_string(device));
  }
  device_ = static_cast<int>(device);
  Guard(env, "cuda", [&] {
    DeviceContext& dev = Device(device_);
    ptr_ = dev.Alloc(bytes_);
  });
  info.This().As<Napi::Object>().TypeTag(&kDeviceBufferTag);
  if (bytes_ > 0) {
    Napi::MemoryManagement::AdjustExternalMemory(env, static_cast<int64_t>(bytes_));
    accounted_ = true;
  }
}

DeviceBuffer::~DeviceBuffer() {
  // GC finalizer (or environment teardown): the safety net for buffers that were never freed.
  if (ptr_ != nullptr) {
    try {
      Device(device_).Free(ptr_);
    } catch (...) {
    }
    ptr_ = nullptr;
  }
  if (accounted_) {
    Napi::MemoryManagement::AdjustExternalMemory(Env(), -static_cast<int64_t>(bytes_));
    accounted_ = false;
  }
}

DeviceBuffer* DeviceBuffer::Live(const Napi::Value& v, const char* name) {
  Napi::Env env = v.Env();
  if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kDeviceBufferTag)) {
    throw Napi::TypeError::New(env, std::string("Expected DeviceBuffer for ") + name);
  }
  DeviceBuffer* b = DeviceBuffer::Unwrap(v.As<Napi::Object>());
  if (b == nullptr) throw Napi::TypeError::New(env, std::string("Expected DeviceBuffer for ") + name);
  if (b->freed_) {
    throw MakeTpkitError(env, "DISPOSED", std::string("device buffer ") + name + " was used after free()", "cuda");
  }
  return b;
}

void DeviceBuffer::Release(Napi::Env env) {
  if (ptr_ != nullptr) {
    try {
      Device(device_).Free(ptr_);
    } catch (...) {
    }
    ptr_ = nullptr;
  }
  if (accounted_) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -static_cast<int64_t>(bytes_));
    accounted_ = false;
  }
}

void DeviceBuffer::Unpin(Napi::Env env) {
  if (pins_ > 0 && --pins_ == 0 && freed_) Release(env);
}

Napi::Value DeviceBuffer::Free(const Napi::CallbackInfo& info) {
  if (!freed_) {
    freed_ = true;
    if (pins_ == 0) Release(info.Env());
  }
  return info.Env().Undefined();
}

Napi::Value DeviceBuffer::GetDevice(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), device_); }
Napi::Value DeviceBuffer::GetDType(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), dtype_); }
Napi::Value DeviceBuffer::GetNumel(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(numel_));
}
Napi::Value DeviceBuffer::GetBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(bytes_));
}
Napi::Value DeviceBuffer::GetFreed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), freed_); }

}  // namespace tpkit
