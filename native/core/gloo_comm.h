// A Gloo communicator (one process group) exposed to JavaScript.
//
// Collectives run in issue order on ONE dedicated thread per communicator (Gloo requires every rank to start
// collectives in the same order); each settles a Promise on the main thread through a thread-safe function.
// Point-to-point send/recv run each on a thread of its own (never the libuv pool: a wait on a peer holds no
// thread JavaScript needs) on their own slots, so sends and receives issued in any order cannot deadlock behind
// each other, and close() aborts their waits. Before data moves, the ranks can exchange a small descriptor
// (sequence number, op, dtype, element count, root, reduction, dim, shape) and reject a mismatch on every rank.
#pragma once
#include <napi.h>

#include <memory>

namespace tpkit {

struct GlooState;

class GlooComm : public Napi::ObjectWrap<GlooComm> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit GlooComm(const Napi::CallbackInfo& info);
  ~GlooComm() override;

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
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);

  std::shared_ptr<GlooState> state_;
};

}  // namespace tpkit
