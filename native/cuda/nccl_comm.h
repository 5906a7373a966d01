// An NCCL communicator (one process group, one GPU per rank) exposed to JavaScript.
//
// The communicator is non-blocking (ncclConfig_t.blocking = 0). Every NCCL call runs, in issue order, on ONE
// dedicated thread per communicator: NCCL requires the same collective order on every rank, and a
// non-blocking call may answer ncclInProgress, after which ncclCommGetAsyncError must be polled before the
// next call. Collectives are enqueued on the device's stream (the same stream as every other op of the
// device); the thread then records an event and polls it together with ncclCommGetAsyncError, and settles
// the op's Promise on the main thread (thread-safe function) when the event completes. An async error or the
// op's timeout aborts the communicator (ncclCommAbort) and rejects with NCCL_<NAME> / TIMEOUT naming the
// rank and the op; every later op then rejects with GROUP_BROKEN.
//
// Buffers handed to an op are pinned (and referenced) until it settles, so free() cannot return their
// memory to the pool under a running collective. Stream order: work enqueued before the call is ordered
// before the collective; work that reads its result must be enqueued after its Promise settles.
#pragma once
#include <napi.h>

#include <memory>

namespace tpkit {

struct NcclState;

class NcclComm : public Napi::ObjectWrap<NcclComm> {
 public:
  static Napi::Function Init(Napi::Env env);
  // new NcclComm(rank, size, device, timeoutMs)
  explicit NcclComm(const Napi::CallbackInfo& info);
  ~NcclComm() override;

 private:
  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value AllReduce(const Napi::CallbackInfo& info);
  Napi::Value AllGather(const Napi::CallbackInfo& info);
  Napi::Value ReduceScatter(const Napi::CallbackInfo& info);
  Napi::Value Broadcast(const Napi::CallbackInfo& info);
  Napi::Value AllToAll(const Napi::CallbackInfo& info);
  Napi::Value AllToAllV(const Napi::CallbackInfo& info);
  Napi::Value Barrier(const Napi::CallbackInfo& info);
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value Recv(const Napi::CallbackInfo& info);
  Napi::Value Split(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value IsBroken(const Napi::CallbackInfo& info);
  Napi::Value PointToPoint(const Napi::CallbackInfo& info, bool isSend);

  std::shared_ptr<NcclState> state_;
};

// ncclUniqueId(out: Uint8Array of ≥ 128 bytes) → Promise<void>; runs ncclGetUniqueId (which probes the
// network interfaces: tens of ms) on the libuv pool.
Napi::Value NcclUniqueId(const Napi::CallbackInfo& info);

}  // namespace tpkit
