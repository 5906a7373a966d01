// A shared-memory communicator for the ranks of one process group that share a host (lib/distributed/shm.ts
// decides that from facts the ranks exchange through the store).
//
// One segment per group: a 0600 file in /dev/shm created by the group's rank 0 (O_EXCL, a random name), its
// space reserved with posix_fallocate (a full /dev/shm is an error at setup naming the path and the size, never
// a SIGBUS later), mapped by every rank and unlinked as soon as every rank has mapped it. Layout: a header (the
// ranks' pids, an abort word, a futex word), one control line per rank (a round counter and the descriptor of
// the op), and two data slots per rank (double buffering: a rank writes slot `round % 2`).
//
// Every collective is a sequence of rounds: a rank writes its slot, publishes its round number, waits until
// every rank has published it, then reads the slots it needs. A rank may write slot parity p again at round
// k + 2 once every rank has published round k + 1, which it only does after reading round k: no trailing
// barrier. Waiting spins for a few µs, then sleeps on the futex word (which every publish bumps) for at most
// 100 ms at a time and checks that the ranks it waits for are alive (pidfd, else kill(pid, 0)): a SIGKILLed
// peer is PEER_LOST naming it within ~100 ms; an op that outlasts its timeout is TIMEOUT naming the ranks that
// did not arrive. Reductions run in rank order, so every rank gets the same bits.
//
// Ops run in issue order on one thread per communicator (off the event loop) and settle Promises through a
// thread-safe function, like GlooComm.
#pragma once
#include <napi.h>

#include <memory>

namespace tpkit {

struct ShmState;

class ShmComm : public Napi::ObjectWrap<ShmComm> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit ShmComm(const Napi::CallbackInfo& info);
  ~ShmComm() override;

 private:
  Napi::Value Create(const Napi::CallbackInfo& info);
  Napi::Value Open(const Napi::CallbackInfo& info);
  Napi::Value Unlink(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value AllReduce(const Napi::CallbackInfo& info);
  Napi::Value AllGather(const Napi::CallbackInfo& info);
  Napi::Value ReduceScatter(const Napi::CallbackInfo& info);
  Napi::Value Broadcast(const Napi::CallbackInfo& info);
  Napi::Value AllToAll(const Napi::CallbackInfo& info);
  Napi::Value AllToAllV(const Napi::CallbackInfo& info);
  Napi::Value Barrier(const Napi::CallbackInfo& info);
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value Recv(const Napi::CallbackInfo& info);
  Napi::Value P2P(const Napi::CallbackInfo& info);
  Napi::Value Poll(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Abort(const Napi::CallbackInfo& info);

  std::shared_ptr<ShmState> state_;
};

}  // namespace tpkit
