#include "gloo_comm.h"

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/alltoall.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/context.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "async_work.h"
#include "collective_desc.h"
#include "comm_job.h"
#include "js_store.h"

namespace tpkit {

namespace {

using ms = std::chrono::milliseconds;
constexpr int64_t kMaxCount = int64_t{1} << 40;
// Tag of the barrier that ends a rendezvous; collectives use tags 2·seq and 2·seq + 1 for seq < 2^31 - 1.
constexpr uint32_t kConnectBarrierTag = 0xFFFFFFFFu;

constexpr size_t kDescWords = sizeof(Descriptor) / sizeof(int64_t);
// Collectives whose data (per rank: all-reduce, all-gather, broadcast, all-to-all and reduce-scatter inputs) is
// at most this many elements travel inside the descriptor exchange (16 KiB: one token's activation of a
// 4096-wide model). Measured in bench/README.md ("Small collectives in one round").
// The room shrinks with the group size so that the whole exchange stays at most 256 KiB per operation (64
// ranks: 1024 elements each); every rank of a group computes the same room.
constexpr size_t kInlineFloats = 4096;
constexpr size_t kInlineTotalFloats = 65536;
size_t InlineFloatsFor(int size) {
  return std::min(kInlineFloats, (kInlineTotalFloats / static_cast<size_t>(std::max(size, 1))) & ~size_t{1});
}

gloo::AllreduceOptions::Func ReduceFn(int64_t redop) {
  using F = void (*)(void*, const void*, const void*, size_t);
  switch (redop) {
    case 1: return static_cast<F>(&gloo::product<float>);
    case 2: return static_cast<F>(&gloo::max<float>);
    case 3: return static_cast<F>(&gloo::min<float>);
    default: return static_cast<F>(&gloo::sum<float>);
  }
}

void ReduceInto(int64_t redop, float* acc, const float* in, size_t n) {
  switch (redop) {
    case 1: for (size_t i = 0; i < n; i++) acc[i] *= in[i]; break;
    case 2: for (size_t i = 0; i < n; i++) acc[i] = std::max(acc[i], in[i]); break;
    case 3: for (size_t i = 0; i < n; i++) acc[i] = std::min(acc[i], in[i]); break;
    default: for (size_t i = 0; i < n; i++) acc[i] += in[i]; break;
  }
}

// Maps Gloo's exceptions to tpkit codes. Gloo reports both a timeout and a closed connection as IoException.
CodedError Classify(const std::string& what, const std::string& context) {
  std::string lower = what;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower.find("timed out") != std::string::npos || lower.find("timeout") != std::string::npos) {
    return {"TIMEOUT", context + " timed out: " + what};
  }
  if (lower.find("closed") != std::string::npos || lower.find("reset") != std::string::npos ||
      lower.find("broken pipe") != std::string::npos || lower.find("eof") != std::string::npos ||
      lower.find("connection") != std::string::npos) {
    return {"PEER_LOST", context + " lost a peer: " + what};
  }
  return {"GLOO_IO", context + " failed: " + what};
}

constexpr int kIoIdle = 20;

// Creates Gloo's TCP device, whose constructor starts the device's I/O (epoll) thread, from a short-lived helper
// thread running at `priority`: the I/O thread inherits the helper's nice value / policy (sched(7), clone(2)).
// Why: Gloo's I/O thread polls a level-triggered epoll and only try-locks a pair, so while an operation's own
// thread holds the pair (writing a segment) it spins; on a machine with few cores that spinning takes the core
// the writer and the peer need, and operations stall for up to a scheduler tick (bench/README.md, measured:
// 1 MiB all-reduce on 2 ranks / 2 cores, raw Gloo mean 743–1450 µs at nice 0, 350–469 µs with SCHED_IDLE).
// Lowering a thread's priority needs no privilege; a failure just leaves the default priority.
std::shared_ptr<gloo::transport::Device> CreateTcpDevice(const gloo::transport::tcp::attr& attr, int priority) {
  if (priority < 0) return gloo::transport::tcp::CreateDevice(attr);
  std::shared_ptr<gloo::transport::Device> device;
  std::exception_ptr error;
  std::thread([&] {
#if defined(__linux__)
    if (priority == kIoIdle) {
      sched_param param{};
      (void)sched_setscheduler(0, SCHED_IDLE, &param);
    } else {
      (void)setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), priority);
    }
#endif
    try {
      device = gloo::transport::tcp::CreateDevice(attr);
    } catch (...) {
      error = std::current_exception();
    }
  }).join();
  if (error) std::rethrow_exception(error);
  return device;
}

// A gloo::Context built from pairs connected here (Rendezvous) rather than by Gloo's connectFullMesh.
class MeshContext : public gloo::Context {
 public:
  using gloo::Context::Context;
  void Adopt(std::shared_ptr<gloo::transport::Device> device, std::shared_ptr<gloo::transport::Context> pairs) {
    device_ = std::move(device);
    transportContext_ = std::move(pairs);
  }
};

// What bounds one communicator's rendezvous: a deadline (`timeoutMs` after connect() started) by which every wait
// in it ends — the store lookups of the peers' addresses, each pair's TCP connect, the barrier after them.
//
// Gloo's own rendezvous::Context::connectFullMesh cannot be bounded: its TCP pair waits 5 × the timeout for a
// connection (waitUntil in gloo/transport/tcp/pair.h), so a peer that published its address and then froze or
// died held the others 15 s at a 3 s timeout (test/rendezvous_deadline.test.ts). So Connect builds the full mesh
// itself, as Gloo does (same store keys and address layout, Debian's 0.0~git20220518), and keeps the pairs in reach
// of a watchdog thread: at the deadline, or on close(), Abort closes every pair and ends the store call in flight.
// In that Gloo a pair closed while connect() waits on it wakes it, and connect() returns as if connected (state
// CLOSED counts as at least CONNECTED); on a pair closed before connect() the listening side returns at once and
// the connecting side throws (epoll_ctl on the closed descriptor). So Connect checks for an abort after every
// connect(). The barrier after the connects, whose waits a local close does not wake, ends by its own timeout:
// the time left. (tcp::Pair::signalExceptionExternal would wake both, but Debian's headers for it do not compile:
// they include gloo/common/memory.h, which the package lacks.)
class Rendezvous {
 public:
  Rendezvous(std::chrono::steady_clock::time_point deadline, JsStore& store) : deadline_(deadline), store_(&store) {}

  // Starts the watchdog that aborts at the deadline with TIMEOUT and `prefix` + the phase then (see Phase).
  void Start(const std::shared_ptr<Rendezvous>& self, std::string prefix) {
    watchdog_ = std::thread([self, prefix]() {
      std::unique_lock<std::mutex> lock(self->mu_);
      if (self->cv_.wait_until(lock, self->deadline_, [&] { return !self->active_; })) return;
      self->AbortLocked("TIMEOUT", prefix + self->phase_);
    });
  }

  // What the rendezvous waits for now, as the end of a sentence ("connecting to rank 1").
  void Phase(std::string phase) {
    std::lock_guard<std::mutex> lock(mu_);
    phase_ = std::move(phase);
  }
  std::string Phase() {
    std::lock_guard<std::mutex> lock(mu_);
    return phase_;
  }

  // The pairs an abort fails (all created, none connected yet).
  void Watch(std::vector<gloo::transport::Pair*> pairs) {
    std::lock_guard<std::mutex> lock(mu_);
    pairs_ = std::move(pairs);
    if (!code_.empty()) FailPairs();
  }

  // Fails the rendezvous from any thread, once: Connect then rejects with `code` / `message`.
  void Abort(const std::string& code, const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    AbortLocked(code, message);
  }

  // The abort's code and message (empty code: not aborted).
  CodedError Outcome() {
    std::lock_guard<std::mutex> lock(mu_);
    return {code_, message_};
  }

  // Ends the watch before the pairs and the store go away: no abort touches them after this returns.
  void Finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      active_ = false;
      pairs_.clear();
      store_ = nullptr;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
  }

  std::chrono::milliseconds Left() const {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now());
    return std::max(left, std::chrono::milliseconds(1));
  }

 private:
  void AbortLocked(const std::string& code, const std::string& message) {
    if (!active_ || !code_.empty()) return;
    code_ = code;
    message_ = message;
    FailPairs();
    if (store_ != nullptr) store_->Abort(message);
  }

  void FailPairs() {
    for (auto* p : pairs_) {
      try {
        p->close();
      } catch (...) {
      }
    }
  }

  const std::chrono::steady_clock::time_point deadline_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool active_ = true;                              // guarded by mu_
  JsStore* store_;                                  // guarded by mu_
  std::vector<gloo::transport::Pair*> pairs_;  // guarded by mu_
  std::string code_, message_, phase_;              // guarded by mu_
  std::thread watchdog_;
};

std::string RankList(const std::vector<int>& ranks) {
  std::string s = ranks.size() == 1 ? "rank " : "ranks [";
  for (size_t i = 0; i < ranks.size(); i++) s += (i ? ", " : "") + std::to_string(ranks[i]);
  return ranks.size() == 1 ? s : s + "]";
}

}  // namespace

struct GlooState;

struct Job {
  std::function<void()> run;  // runs on the communicator thread, or on a point-to-point thread of its own
  Napi::Promise::Deferred deferred;
  GlooState* state = nullptr;  // whose pending count the settlement decrements (alive until the tsfn finalizes)
  std::vector<Napi::ObjectReference> refs;
  std::string code;
  std::string message;
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

void SettleJob(Napi::Env env, Napi::Function, std::nullptr_t*, Job* job);
using CompletionTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, Job, SettleJob>;

struct GlooState {
  int rank = 0;
  int size = 1;
  std::string hostname;
  ms timeout{300000};
  bool check = true;
  int ioPriority = -1;  // of Gloo's I/O thread: -1 inherit, 1..19 nice value, kIoIdle SCHED_IDLE
  std::shared_ptr<gloo::Context> ctx;
  std::shared_ptr<gloo::transport::Device> device;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job*> queue;
  std::atomic<bool> stopping{false};
  std::atomic<bool> broken{false};
  std::atomic<bool> connected{false};
  std::atomic<bool> abortRequested{false};  // abort(): hard-close every connection (see CloseConnections)
  bool running = false;                      // guarded by mu: a job is executing on the thread
  bool loopDone = false;                     // guarded by mu: the thread has left its loop
  bool connectionsClosed = false;            // guarded by mu
  std::shared_ptr<Rendezvous> rendezvous;    // guarded by mu: the connect in progress, which close() aborts
  std::thread thread;
  CompletionTsfn tsfn;
  bool tsfnAlive = true;  // guarded by mu: false once Node finalized the function (env teardown at exit)
  int64_t pending = 0;    // main thread only
  std::set<gloo::transport::UnboundBuffer*> p2pBuffers;  // guarded by mu: buffers point-to-point threads wait on
  std::vector<int64_t> exchangeIn, exchangeOut;  // Agree's blocks (communicator thread only)
  size_t inlineFloats = 0;                       // room for data in Agree's block (InlineFloatsFor(size))

  // Calls into the completion function unless Node already tore it down (then the job is dropped: the
  // process is exiting and nothing awaits it).
  void Complete(Job* job) {
    std::lock_guard<std::mutex> lock(mu);
    if (tsfnAlive) tsfn.BlockingCall(job);
  }

  void Loop() {
    for (;;) {
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (queue.empty()) break;
        job = queue.front();
        queue.pop_front();
        if (stopping) {
          job->code = "GROUP_DESTROYED";
          job->message = "the process group was destroyed before this operation ran";
        }
        running = job->code.empty();
      }
      if (job->code.empty()) Execute(job);
      {
        std::lock_guard<std::mutex> lock(mu);
        running = false;
      }
      Complete(job);
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      loopDone = true;
    }
    if (abortRequested) CloseConnections();
    std::lock_guard<std::mutex> lock(mu);
    if (tsfnAlive) tsfn.Release();
  }

  // Runs a job and records its failure: every exception a job can raise (Gloo's EnforceNotMet does not derive
  // from gloo::Exception) becomes a code; nothing escapes the thread (an escaping exception aborts the process).
  void Execute(Job* job) {
    try {
      job->run();
    } catch (const CodedError& e) {
      job->code = e.code;
      job->message = e.message;
    } catch (const gloo::IoException& e) {
      CodedError c = Classify(e.what(), "rank " + std::to_string(rank));
      job->code = c.code;
      job->message = c.message;
      broken = true;  // after an IoException the Gloo context is unusable
    } catch (const gloo::EnforceNotMet& e) {
      job->code = "GLOO_ENFORCE";
      job->message = e.what();
      broken = true;
    } catch (const gloo::Exception& e) {
      job->code = "GLOO_ERROR";
      job->message = e.what();
      broken = true;
    } catch (const std::exception& e) {
      CodedError c = Classify(e.what(), "rank " + std::to_string(rank));
      job->code = c.code == "GLOO_IO" ? "GLOO_ERROR" : c.code;
      job->message = c.message;
      broken = true;
    } catch (...) {
      job->code = "NATIVE_ERROR";
      job->message = "unknown native error on rank " + std::to_string(rank);
      broken = true;
    }
  }

  // Hard-closes every pair once: peers blocked on this rank fail at once (their pairs see the connection close)
  // instead of waiting for their timeout. Not while a job of this rank runs: a pair closed locally does not wake
  // a local waiter (Gloo only signals waiters when the PEER closes), so that job would then wait for its timeout.
  void CloseConnections() {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (connectionsClosed || !connected) return;
      connectionsClosed = true;
    }
    try {
      ctx->closeConnections();
    } catch (...) {
    }
  }

  // Whether `n` elements per rank travel inside Agree's block (the same answer on every rank that agrees on n).
  bool Inline(int64_t n) const { return size > 1 && n > 0 && static_cast<size_t>(n) <= inlineFloats; }

  void RequireConnected() const {
    if (!connected) throw CodedError{"NOT_INITIALIZED", "communicator is not connected"};
    if (broken) throw CodedError{"GROUP_BROKEN", "communicator is broken by an earlier failure"};
  }

  // Exchanges descriptors with every rank; throws COLLECTIVE_MISMATCH naming each rank's view on mismatch.
  //
  // `payload` (at most inlineFloats floats; null for none) rides along: then the return value points at rank 0's
  // copy of it in the gathered blocks and `*stride` is the distance in floats between ranks' copies. Small
  // all-reduces use this to finish in this one round instead of a descriptor round plus a ring (2(n-1) more
  // steps). With the check on every operation's block has the same size (descriptor + inlineFloats), whatever
  // its element count, so ranks that disagree still exchange cleanly and report the mismatch. With the check
  // off only (op, element count) and the payload travel (AgreeUnchecked).
  const float* Agree(const Descriptor& mine, ms opTimeout, const float* payload = nullptr, size_t count = 0,
                     size_t* stride = nullptr) {
    if (size == 1 || (!check && mine.op == kBarrier)) return nullptr;
    if (!check) return AgreeUnchecked(mine, opTimeout, payload, count, stride);
    const size_t descWords = kDescWords;
    const size_t payloadWords = inlineFloats / 2;
    const size_t blockWords = descWords + payloadWords;
    if (exchangeIn.size() < blockWords) exchangeIn.resize(blockWords);
    if (exchangeOut.size() < blockWords * size) exchangeOut.resize(blockWords * size);
    if (check) std::memcpy(exchangeIn.data(), &mine, sizeof(Descriptor));
    if (payload != nullptr) std::memcpy(exchangeIn.data() + descWords, payload, count * sizeof(float));
    gloo::AllgatherOptions opts(ctx);
    opts.setInput(exchangeIn.data(), blockWords);
    opts.setOutput(exchangeOut.data(), blockWords * size);
    opts.setTag(static_cast<uint32_t>(mine.seq * 2));
    opts.setTimeout(opTimeout);
    gloo::allgather(opts);
    if (check) {
      bool same = true;
      for (int r = 0; r < size; r++) {
        if (std::memcmp(exchangeOut.data() + blockWords * r, &mine, sizeof(Descriptor)) != 0) same = false;
      }
      if (!same) {
        throw DescriptorMismatch(mine.seq, rank, size, [&](int r) {
          Descriptor d;
          std::memcpy(&d, exchangeOut.data() + blockWords * r, sizeof(Descriptor));
          return d;
        });
      }
    }
    if (payload == nullptr) return nullptr;
    if (stride != nullptr) *stride = blockWords * 2;
    return reinterpret_cast<const float*>(exchangeOut.data() + descWords);
  }

  // Agree with TPKIT_CHECK=off: the ranks are trusted to agree, but nothing reachable from JavaScript may abort
  // the process, and Gloo aborts it when ranks disagree on a size: its I/O thread (which no code of ours wraps)
  // throws gloo::EnforceNotMet (`op.preamble.length <= op.nbytes`) when a peer sends more bytes than the posted
  // buffer holds, and std::terminate follows. So every op still exchanges a two-word header (op, element count),
  // together with the payload when it travels inline, on unbound buffers whose receives are posted with room for
  // the largest block any rank may send (header + inlineFloats): a longer count on a peer can never overrun them.
  // A disagreement rejects with COLLECTIVE_MISMATCH on every rank (each sees every rank's header) before data
  // moves; the group stays usable. Costs one small round per op that goes to the ring afterwards.
  const float* AgreeUnchecked(const Descriptor& mine, ms opTimeout, const float* payload, size_t count,
                              size_t* stride) {
    constexpr size_t kHeaderWords = 2;
    const size_t capWords = kHeaderWords + inlineFloats / 2;
    const size_t sendWords = kHeaderWords + (payload != nullptr ? (count + 1) / 2 : 0);
    if (exchangeIn.size() < capWords) exchangeIn.resize(capWords);
    if (exchangeOut.size() < capWords * size) exchangeOut.resize(capWords * size);
    exchangeIn[0] = mine.op;
    exchangeIn[1] = mine.count;
    if (payload != nullptr) std::memcpy(exchangeIn.data() + kHeaderWords, payload, count * sizeof(float));
    std::memcpy(exchangeOut.data() + capWords * rank, exchangeIn.data(), sendWords * sizeof(int64_t));
    const size_t capBytes = capWords * sizeof(int64_t);
    const uint64_t slot = (uint64_t{0xC3} << 56) | static_cast<uint64_t>(mine.seq);
    auto in = ctx->createUnboundBuffer(exchangeIn.data(), sendWords * sizeof(int64_t));
    auto out = ctx->createUnboundBuffer(exchangeOut.data(), capBytes * size);
    for (int q = 0; q < size; q++) {
      if (q == rank) continue;
      out->recv(q, slot, capBytes * q, capBytes);
      in->send(q, slot);
    }
    for (int q = 0; q < size - 1; q++) {
      if (!out->waitRecv(opTimeout)) throw CodedError{"GLOO_ABORTED", std::string(OpName(mine.op)) + " was aborted"};
    }
    for (int q = 0; q < size - 1; q++) {
      if (!in->waitSend(opTimeout)) throw CodedError{"GLOO_ABORTED", std::string(OpName(mine.op)) + " was aborted"};
    }
    bool same = true;
    for (int q = 0; q < size; q++) {
      if (exchangeOut[capWords * q] != mine.op || exchangeOut[capWords * q + 1] != mine.count) same = false;
    }
    if (!same) {
      throw OpCountMismatch(mine.seq, rank, size, [&](int q) {
        return std::make_pair(exchangeOut[capWords * q], exchangeOut[capWords * q + 1]);
      });
    }
    if (payload == nullptr) return nullptr;
    if (stride != nullptr) *stride = capWords * 2;
    return reinterpret_cast<const float*>(exchangeOut.data() + kHeaderWords);
  }
};

// Settles a job's Promise on the main thread and drops the pending count it held (no JavaScript callback).
void SettleJob(Napi::Env env, Napi::Function, std::nullptr_t*, Job* job) { SettleCodedJob(env, job, "gloo"); }

Napi::Function GlooComm::Init(Napi::Env env) {
  return DefineClass(env, "GlooComm",
                     {InstanceMethod("connect", &GlooComm::Connect),
                      InstanceMethod("allReduce", &GlooComm::AllReduce),
                      InstanceMethod("allGather", &GlooComm::AllGather),
                      InstanceMethod("reduceScatter", &GlooComm::ReduceScatter),
                      InstanceMethod("broadcast", &GlooComm::Broadcast),
                      InstanceMethod("allToAll", &GlooComm::AllToAll),
                      InstanceMethod("allToAllV", &GlooComm::AllToAllV),
                      InstanceMethod("barrier", &GlooComm::Barrier),
                      InstanceMethod("send", &GlooComm::Send),
                      InstanceMethod("recv", &GlooComm::Recv),
                      InstanceMethod("close", &GlooComm::Close),
                      InstanceMethod("abort", &GlooComm::Abort)});
}

// new GlooComm(rank, size, hostname, timeoutMs, check, ioPriority)
GlooComm::GlooComm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GlooComm>(info) {
  Napi::Env env = info.Env();
  auto s = std::make_shared<GlooState>();
  s->size = static_cast<int>(IntArg(info, 1, "size", 1, 1 << 20));
  s->inlineFloats = InlineFloatsFor(s->size);
  s->rank = static_cast<int>(IntArg(info, 0, "rank", 0, s->size - 1));
  if (!info[2].IsString()) throw Napi::TypeError::New(env, "Expected string for hostname");
  s->hostname = info[2].As<Napi::String>().Utf8Value();
  s->timeout = ms(IntArg(info, 3, "timeoutMs", 1, int64_t{1} << 40));
  s->check = BoolArg(info, 4, "check");
  s->ioPriority = static_cast<int>(IntArg(info, 5, "ioPriority", -1, kIoIdle));
  s->tsfn = CompletionTsfn::New(env, "tpkit.gloo.complete", 0, 1, nullptr,
                                [](Napi::Env, std::shared_ptr<GlooState>* st, std::nullptr_t*) {
                                  {
                                    std::lock_guard<std::mutex> lock((*st)->mu);
                                    (*st)->tsfnAlive = false;
                                  }
                                  delete st;
                                },
                                new std::shared_ptr<GlooState>(s));
  s->tsfn.Unref(env);
  GlooState* raw = s.get();
  auto keep = s;  // the thread keeps the state alive until it has drained its queue
  s->thread = std::thread([raw, keep]() { raw->Loop(); });
  s->thread.detach();
  state_ = std::move(s);
}

GlooComm::~GlooComm() {
  if (state_) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stopping = true;
    state_->cv.notify_all();
  }
}

namespace {
Napi::Value Enqueue(Napi::Env env, const std::shared_ptr<GlooState>& s, std::function<void()> run,
                    std::initializer_list<Napi::Value> keep) {
  auto* job = new Job(env);
  job->run = std::move(run);
  for (const auto& v : keep) {
    if (v.IsObject()) job->refs.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise p = job->deferred.Promise();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->stopping) {
      job->deferred.Reject(MakeTpkitError(env, "GROUP_DESTROYED", "the process group was destroyed", "gloo").Value());
      delete job;
      return p;
    }
    EnterPending(*s, env);
    job->state = s.get();
    s->queue.push_back(job);
  }
  s->cv.notify_one();
  return p;
}

// Runs `run` on a thread of its own — neither the libuv pool nor the collectives' thread — and settles its Promise
// through the completion function. For point-to-point ops, which wait for their peer for as long as it takes: on
// the pool, 4 waiting receives (libuv's default pool size) held every thread, so 8 posted receives on two ranks
// deadlocked until the timeout and a matmul in the same process waited too; on the ordered collectives' thread a
// send-first exchange on two ranks would deadlock. A thread per op costs tens of µs, small next to a peer's wait.
Napi::Value Spawn(Napi::Env env, const std::shared_ptr<GlooState>& s, std::function<void()> run,
                  std::initializer_list<Napi::Value> keep) {
  auto* job = new Job(env);
  job->run = std::move(run);
  for (const auto& v : keep) {
    if (v.IsObject()) job->refs.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise p = job->deferred.Promise();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    // The thread holds the completion function (Acquire) until it has settled, so the loop's Release cannot
    // finalize it under the thread.
    if (s->stopping || !s->tsfnAlive || s->tsfn.Acquire() != napi_ok) {
      job->deferred.Reject(MakeTpkitError(env, "GROUP_DESTROYED", "the process group was destroyed", "gloo").Value());
      delete job;
      return p;
    }
    EnterPending(*s, env);
    job->state = s.get();
  }
  std::thread([s, job]() {
    s->Execute(job);
    s->Complete(job);
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->tsfnAlive) s->tsfn.Release();
  }).detach();
  return p;
}

// Registers a buffer a point-to-point thread is about to wait on, so that close() can abort the wait; false (and
// nothing registered) once the group is stopping.
class P2PWait {
 public:
  P2PWait(GlooState& s, gloo::transport::UnboundBuffer* b) : s_(s), b_(b) {
    std::lock_guard<std::mutex> lock(s_.mu);
    if (s_.stopping) throw CodedError{"GROUP_DESTROYED", "the process group was destroyed"};
    s_.p2pBuffers.insert(b_);
  }
  ~P2PWait() {
    std::lock_guard<std::mutex> lock(s_.mu);
    s_.p2pBuffers.erase(b_);
  }
  P2PWait(const P2PWait&) = delete;
  P2PWait& operator=(const P2PWait&) = delete;

 private:
  GlooState& s_;
  gloo::transport::UnboundBuffer* b_;
};


ms OpTimeout(const Napi::CallbackInfo& info, size_t i, const GlooState& s) {
  if (i < info.Length() && info[i].IsNumber()) return ms(IntArg(info, i, "timeoutMs", 1, int64_t{1} << 40));
  return s.timeout;
}
}  // namespace

// connect(storeFn) → Promise<void>. Ends within the communicator's timeout (see Rendezvous): TIMEOUT naming what
// it waited for, PEER_LOST when a peer's connection broke, GROUP_DESTROYED when close() came first.
Napi::Value GlooComm::Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) throw Napi::TypeError::New(env, "Expected function for storeFn");
  auto s = state_;
  if (s->connected) throw Napi::Error::New(env, "communicator is already connected");
  // Released whenever the last holder lets go: after the rendezvous, or with a job that never ran.
  auto storeTsfn = std::shared_ptr<Napi::ThreadSafeFunction>(
      new Napi::ThreadSafeFunction(
          Napi::ThreadSafeFunction::New(env, info[0].As<Napi::Function>(), "tpkit.gloo.store", 0, 1)),
      [](Napi::ThreadSafeFunction* f) {
        f->Release();
        delete f;
      });
  return Enqueue(
      env, s,
      [s, storeTsfn]() {
        const auto deadline = std::chrono::steady_clock::now() + s->timeout;
        const int me = s->rank;
        const int n = s->size;
        const std::string who = "rendezvous of rank " + std::to_string(me) + " of " + std::to_string(n);
        const std::string after = " timed out after " + std::to_string(s->timeout.count()) + " ms";
        JsStore store(*storeTsfn, deadline);
        auto rv = std::make_shared<Rendezvous>(deadline, store);
        {
          std::lock_guard<std::mutex> lock(s->mu);
          s->rendezvous = rv;
          if (s->stopping) rv->Abort("GROUP_DESTROYED", "the process group was destroyed before rank " + std::to_string(me) + " connected");
        }
        rv->Start(rv, who + after + " ");
        std::exception_ptr error;
        try {
          std::shared_ptr<gloo::transport::Context> pairs;
          // Declared after `pairs` (destroyed before it): no abort reaches the pairs or the store once it ran.
          struct End {
            GlooState& s;
            Rendezvous& rv;
            ~End() {
              rv.Finish();
              std::lock_guard<std::mutex> lock(s.mu);
              s.rendezvous.reset();
            }
          } end{*s, *rv};
          rv->Phase("creating its connections");
          gloo::transport::tcp::attr attr;
          attr.hostname = s->hostname;
          s->device = CreateTcpDevice(attr, s->ioPriority);
          pairs = s->device->createContext(me, n);
          pairs->setTimeout(s->timeout);
          // As Gloo's connectFullMesh: key "<rank>" holds the addresses of this rank's pairs to every other rank,
          // in rank order.
          std::vector<char> mine;
          std::vector<gloo::transport::Pair*> watched;
          for (int i = 0; i < n; i++) {
            if (i == me) continue;
            auto& pair = pairs->createPair(i);
            auto bytes = pair->address().bytes();
            mine.insert(mine.end(), bytes.begin(), bytes.end());
            watched.push_back(pair.get());
          }
          rv->Watch(std::move(watched));
          rv->Phase("publishing its address");
          store.set(std::to_string(me), mine);
          for (int i = 0; i < n; i++) {
            if (i == me) continue;
            rv->Phase("waiting for rank " + std::to_string(i) + " to publish its address");
            std::vector<char> theirs = store.get(std::to_string(i));
            const size_t each = theirs.size() / static_cast<size_t>(n - 1);
            if (each == 0 || theirs.size() % static_cast<size_t>(n - 1) != 0) {
              throw CodedError{"GLOO_RENDEZVOUS", who + " failed: rank " + std::to_string(i) +
                                                      " published an address list of " +
                                                      std::to_string(theirs.size()) + " bytes for " +
                                                      std::to_string(n - 1) + " peers"};
            }
            const auto at = theirs.begin() + static_cast<std::ptrdiff_t>((me > i ? me - 1 : me) * each);
            std::vector<int> notYet;
            for (int j = i; j < n; j++) {
              if (j != me) notYet.push_back(j);
            }
            rv->Phase("connecting to rank " + std::to_string(i) + " (not connected to " + RankList(notYet) + ")");
            pairs->getPair(i)->connect(std::vector<char>(at, at + static_cast<std::ptrdiff_t>(each)));
            if (!rv->Outcome().code.empty()) throw CodedError{};  // aborted: the pair was closed, not connected
          }
          // A rank's pairs may all be connected while a peer is still finishing its side; a fast rank that then
          // ends (exits, or destroys the group) closes connections the slow one is still setting up, and the slow
          // one's rendezvous fails with "Connection closed by peer" (seen with several groups connecting at
          // once). Like torch's new_group, no rank leaves the rendezvous before every rank has connected. The
          // marker "connected/<rank>" lets a timeout name the ranks that did not get that far.
          rv->Phase("waiting for every rank to finish connecting (this rank is connected to all)");
          store.set("connected/" + std::to_string(me), std::vector<char>{'1'});
          auto ctx = std::make_shared<MeshContext>(me, n);
          ctx->setTimeout(s->timeout);
          ctx->Adopt(s->device, pairs);
          gloo::BarrierOptions barrier(ctx);
          barrier.setTag(kConnectBarrierTag);
          barrier.setTimeout(rv->Left());
          gloo::barrier(barrier);
          s->ctx = ctx;
          s->connected = true;
        } catch (...) {
          error = std::current_exception();
        }
        if (!error) return;
        CodedError aborted = rv->Outcome();
        if (!aborted.code.empty()) throw aborted;  // the deadline or close(): whatever Gloo threw then follows from it
        const std::string phase = rv->Phase();
        try {
          std::rethrow_exception(error);
        } catch (const CodedError&) {
          throw;
        } catch (const std::exception& e) {
          const std::string what = e.what();
          CodedError c = Classify(what, who);
          if (c.code == "TIMEOUT") throw CodedError{"TIMEOUT", who + after + " " + phase + ": " + what};
          if (c.code == "PEER_LOST") throw CodedError{"PEER_LOST", who + " lost a peer " + phase + ": " + what};
          throw CodedError{"GLOO_RENDEZVOUS", who + " failed " + phase + ": " + what};
        }
      },
      {});
}

// allReduce(buf: Float32Array, count, redop, seq, dtype, timeoutMs?)
Napi::Value GlooComm::AllReduce(const Napi::CallbackInfo& info) {
  const int64_t count = IntArg(info, 1, "count", 0, kMaxCount);
  float* buf = F32Data(info[0], static_cast<size_t>(count), "buffer");
  const int64_t redop = IntArg(info, 2, "redop", 0, 4);
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  auto s = state_;
  const ms t = OpTimeout(info, 5, *s);
  return Enqueue(info.Env(), s, [=]() {
    s->RequireConnected();
    const bool small = s->Inline(count);
    size_t stride = 0;
    const float* gathered = s->Agree({seq, kAllReduce, dtype, count, -1, redop, -1}, t, small ? buf : nullptr,
                                     static_cast<size_t>(count), &stride);
    if (count == 0) return;
    if (gathered != nullptr) {
      // Every rank reduces the gathered copies in rank order, so all ranks get the same bits.
      std::memcpy(buf, gathered, static_cast<size_t>(count) * sizeof(float));
      for (int r = 1; r < s->size; r++) {
        ReduceInto(redop == 4 ? 0 : redop, buf, gathered + stride * r, static_cast<size_t>(count));
      }
      if (redop == 4) {
        const float inv = 1.0f / static_cast<float>(s->size);
        for (int64_t i = 0; i < count; i++) buf[i] *= inv;
      }
      return;
    }
    gloo::AllreduceOptions opts(s->ctx);
    opts.setOutput(buf, static_cast<size_t>(count));
    opts.setReduceFunction(ReduceFn(redop));
    opts.setTag(static_cast<uint32_t>(seq * 2 + 1));
    opts.setTimeout(t);
    gloo::allreduce(opts);
    if (redop == 4) {
      const float inv = 1.0f / static_cast<float>(s->size);
      for (int64_t i = 0; i < count; i++) buf[i] *= inv;
    }
  }, {info[0]});
}

// allGather(input: Float32Array, output: Float32Array, count, seq, dtype, dim, timeoutMs?, shape?) — output is rank-major
Napi::Value GlooComm::AllGather(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t count = IntArg(info, 2, "count", 0, kMaxCount);
  float* in = F32Data(info[0], static_cast<size_t>(count), "input");
  float* out = F32Data(info[1], static_cast<size_t>(count * s->size), "output");
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  const int64_t dim = IntArg(info, 5, "dim", -1, 64);
  const ms t = OpTimeout(info, 6, *s);
  Descriptor desc{seq, kAllGather, dtype, count, -1, -1, dim};
  ShapeArg(info, 7, desc);
  return Enqueue(info.Env(), s, [=]() {
    s->RequireConnected();
    size_t stride = 0;
    const bool small = s->Inline(count);
    const float* gathered = s->Agree(desc, t, small ? in : nullptr,
                                     static_cast<size_t>(count), &stride);
    if (count == 0) return;
    if (gathered != nullptr) {  // the exchange carried every rank's input
      for (int r = 0; r < s->size; r++) {
        std::memcpy(out + count * r, gathered + stride * r, sizeof(float) * static_cast<size_t>(count));
      }
      return;
    }
    gloo::AllgatherOptions opts(s->ctx);
    opts.setInput(in, static_cast<size_t>(count));
    opts.setOutput(out, static_cast<size_t>(count * s->size));
    opts.setTag(static_cast<uint32_t>(seq * 2 + 1));
    opts.setTimeout(t);
    gloo::allgather(opts);
  }, {info[0], info[1]});
}

// reduceScatter(work: Float32Array (size·chunk, overwritten), output: Float32Array (chunk), chunk, redop, seq,
// dtype, dim, timeoutMs?, shape?) — ring reduce-scatter from Gloo's unbound-buffer primitives: Debian's Gloo
// (0.0~git20220518) has no new-style reduce_scatter, and its old-style ReduceScatterHalvingDoubling, used on the
// same context as new-style ops, stalls the ops after it (a 4 MiB broadcast went from < 1 ms to seconds). Rank r
// ends with chunk r of the reduction.
Napi::Value GlooComm::ReduceScatter(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t chunk = IntArg(info, 2, "chunk", 0, kMaxCount);
  float* work = F32Data(info[0], static_cast<size_t>(chunk * s->size), "input");
  float* out = F32Data(info[1], static_cast<size_t>(chunk), "output");
  const int64_t redop = IntArg(info, 3, "redop", 0, 4);
  const int64_t seq = IntArg(info, 4, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 5, "dtype", 0, 2);
  const int64_t dim = IntArg(info, 6, "dim", -1, 64);
  const ms t = OpTimeout(info, 7, *s);
  Descriptor desc{seq, kReduceScatter, dtype, chunk * s->size, -1, redop, dim};
  ShapeArg(info, 8, desc);
  return Enqueue(info.Env(), s, [=]() {
    s->RequireConnected();
    const int n = s->size;
    const int r = s->rank;
    const size_t bytes = sizeof(float) * static_cast<size_t>(chunk);
    const size_t total = static_cast<size_t>(chunk) * static_cast<size_t>(n);
    const bool small = s->Inline(chunk * n);
    size_t stride = 0;
    const float* gathered = s->Agree(desc, t,
                                     small ? work : nullptr, total, &stride);
    if (gathered != nullptr) {
      // The exchange carried every rank's whole input: reduce chunk r of each, in rank order.
      std::memcpy(work + chunk * r, gathered + chunk * r, bytes);
      for (int q = 1; q < n; q++) {
        ReduceInto(redop == 4 ? 0 : redop, work + chunk * r, gathered + stride * q + chunk * r,
                   static_cast<size_t>(chunk));
      }
    } else if (n > 1 && chunk > 0) {
      std::vector<float> tmp(static_cast<size_t>(chunk));
      auto sendBuf = s->ctx->createUnboundBuffer(work, bytes * n);
      auto recvBuf = s->ctx->createUnboundBuffer(tmp.data(), bytes);
      const int right = (r + 1) % n;
      const int left = (r - 1 + n) % n;
      const uint64_t base = (uint64_t{0xA5} << 56) | (static_cast<uint64_t>(seq) << 16);
      for (int step = 0; step < n - 1; step++) {
        const int sendChunk = ((r - step - 1) % n + n) % n;
        const int recvChunk = ((r - step - 2) % n + n) % n;
        recvBuf->recv(left, base + step, 0, bytes);
        sendBuf->send(right, base + step, bytes * sendChunk, bytes);
        if (!recvBuf->waitRecv(t)) throw CodedError{"GLOO_ABORTED", "reduceScatter receive was aborted"};
        if (!sendBuf->waitSend(t)) throw CodedError{"GLOO_ABORTED", "reduceScatter send was aborted"};
        ReduceInto(redop == 4 ? 0 : redop, work + chunk * recvChunk, tmp.data(), static_cast<size_t>(chunk));
      }
    }
    std::memcpy(out, work + chunk * r, bytes);
    if (redop == 4) {
      const float inv = 1.0f / static_cast<float>(n);
      for (int64_t i = 0; i < chunk; i++) out[i] *= inv;
    }
  }, {info[0], info[1]});
}

// broadcast(buf, count, root, seq, dtype, timeoutMs?)
Napi::Value GlooComm::Broadcast(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t count = IntArg(info, 1, "count", 0, kMaxCount);
  float* buf = F32Data(info[0], static_cast<size_t>(count), "buffer");
  const int64_t root = IntArg(info, 2, "root", 0, s->size - 1);
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  const ms t = OpTimeout(info, 5, *s);
  return Enqueue(info.Env(), s, [=]() {
    s->RequireConnected();
    size_t stride = 0;
    const bool small = s->Inline(count);
    const float* gathered = s->Agree({seq, kBroadcast, dtype, count, root, -1, -1}, t, small ? buf : nullptr,
                                     static_cast<size_t>(count), &stride);
    if (count == 0) return;
    if (gathered != nullptr) {  // the exchange carried the root's elements
      if (s->rank != root) {
        std::memcpy(buf, gathered + stride * root, sizeof(float) * static_cast<size_t>(count));
      }
      return;
    }
    gloo::BroadcastOptions opts(s->ctx);
    opts.setOutput(buf, static_cast<size_t>(count));
    opts.setRoot(static_cast<int>(root));
    opts.setTag(static_cast<uint32_t>(seq * 2 + 1));
    opts.setTimeout(t);
    gloo::broadcast(opts);
  }, {info[0]});
}

// allToAll(input, output, count (total per rank, divisible by size), seq, dtype, timeoutMs?, shape?)
Napi::Value GlooComm::AllToAll(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t count = IntArg(info, 2, "count", 0, kMaxCount);
  if (count % s->size != 0) throw Napi::RangeError::New(info.Env(), "allToAll count must be divisible by the group size");
  float* in = F32Data(info[0], static_cast<size_t>(count), "input");
  float* out = F32Data(info[1], static_cast<size_t>(count), "output");
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  const ms t = OpTimeout(info, 5, *s);
  Descriptor desc{seq, kAllToAll, dtype, count, -1, -1, 0};
  ShapeArg(info, 6, desc);
  return Enqueue(info.Env(), s, [=]() {
    s->RequireConnected();
    size_t stride = 0;
    const bool small = s->Inline(count);
    const float* gathered = s->Agree(desc, t, small ? in : nullptr,
                                     static_cast<size_t>(count), &stride);
    if (count == 0) return;
    if (gathered != nullptr) {  // the exchange carried every rank's whole input: keep chunk `rank` of each
      const int64_t chunk = count / s->size;
      for (int q = 0; q < s->size; q++) {
        std::memcpy(out + chunk * q, gathered + stride * q + chunk * s->rank, sizeof(float) * static_cast<size_t>(chunk));
      }
      return;
    }
    if (s->size == 1) {
      std::memcpy(out, in, sizeof(float) * static_cast<size_t>(count));
      return;
    }
    gloo::AlltoallOptions opts(s->ctx);
    opts.setInput(in, static_cast<size_t>(count));
    opts.setOutput(out, static_cast<size_t>(count));
    opts.setTag(static_cast<uint32_t>(seq * 2 + 1));
    opts.setTimeout(t);
    gloo::alltoall(opts);
  }, {info[0], info[1]});
}


// allToAllV(input, output, rowElems, inputSplits: number[], outputSplits: number[], seq, dtype, timeoutMs?) —
// torch's all_to_all_single with split sizes: rows [Σ in[<j], Σ in[≤j]) of input go to rank j; the rows from rank i
// land at rows [Σ out[<i], Σ out[≤i]) of output (a row is rowElems floats). With the check on, the descriptor
// exchange also carries every rank's split sizes, and every rank verifies the whole matrix (rank i's out[j] must
// equal rank j's in[i]), so a disagreement rejects with COLLECTIVE_MISMATCH on every rank before data moves
// (with the check off as well: the unchecked exchange carries the split sizes too).
// Data moves with Gloo's alltoallv (zero-length chunks included).
Napi::Value GlooComm::AllToAllV(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int n = s->size;
  const AllToAllVArgs a = ReadAllToAllV(info, n, kMaxCount);
  const int64_t rowElems = a.rowElems, inRows = a.inRows, outRows = a.outRows, seq = a.seq, dtype = a.dtype;
  const std::vector<int64_t>& inSplits = a.inSplits;
  const std::vector<int64_t>& outSplits = a.outSplits;
  float* in = a.in;
  float* out = a.out;
  const ms t = OpTimeout(info, 7, *s);
  return Enqueue(info.Env(), s, [=]() {
    s->RequireConnected();
    const Descriptor desc{seq, kAllToAllV, dtype, rowElems, -1, -1, 0};
    if (n == 1) {
      std::memcpy(out, in, sizeof(float) * static_cast<size_t>(inRows * rowElems));
      return;
    }
    {
      // Every rank's [in splits, out splits], as int64 words: inline in the descriptor exchange when they fit,
      // else in an all-gather of their own right after it. Checked with TPKIT_CHECK=off too (the unchecked
      // exchange still carries them): a split disagreement would otherwise corrupt or abort inside Gloo.
      std::vector<int64_t> mine(inSplits);
      mine.insert(mine.end(), outSplits.begin(), outSplits.end());
      const size_t floats = mine.size() * 2;
      std::vector<int64_t> all(mine.size() * static_cast<size_t>(n));
      if (floats <= s->inlineFloats) {
        size_t stride = 0;
        const float* gathered = s->Agree(desc, t, reinterpret_cast<const float*>(mine.data()), floats, &stride);
        for (int r = 0; r < n; r++) {
          std::memcpy(all.data() + mine.size() * r, gathered + stride * r, floats * sizeof(float));
        }
      } else {
        s->Agree(desc, t);
        gloo::AllgatherOptions opts(s->ctx);
        opts.setInput(mine.data(), mine.size());
        opts.setOutput(all.data(), all.size());
        opts.setTag(static_cast<uint32_t>(seq * 2 + 1));
        opts.setTimeout(t);
        gloo::allgather(opts);
      }
      const std::string bad = SplitMismatch(all, n);
      if (!bad.empty()) {
        throw CodedError{"COLLECTIVE_MISMATCH", "allToAllV split sizes disagree at sequence number " +
                                                    std::to_string(seq) + " (seen by rank " + std::to_string(s->rank) +
                                                    "): " + bad};
      }
    }
    std::vector<int64_t> inElems(inSplits), outElems(outSplits);
    for (int r = 0; r < n; r++) {
      inElems[static_cast<size_t>(r)] *= rowElems;
      outElems[static_cast<size_t>(r)] *= rowElems;
    }
    float dummyIn = 0, dummyOut = 0;  // an empty side still needs a valid pointer for its unbound buffer
    gloo::AlltoallvOptions opts(s->ctx);
    opts.setInput<float>(inRows * rowElems > 0 ? in : &dummyIn, inElems);
    opts.setOutput<float>(outRows * rowElems > 0 ? out : &dummyOut, outElems);
    opts.setTag(static_cast<uint32_t>(seq * 2 + 1));
    opts.setTimeout(t);
    gloo::alltoallv(opts);
  }, {info[0], info[1]});
}

// barrier(seq, timeoutMs?)
Napi::Value GlooComm::Barrier(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t seq = IntArg(info, 0, "seq", 0, int64_t{1} << 31);
  const ms t = OpTimeout(info, 1, *s);
  return Enqueue(info.Env(), s, [=]() {
    s->RequireConnected();
    s->Agree({seq, kBarrier, 0, 0, -1, -1, -1}, t);
    // With the check on, the exchange was itself a barrier: no rank finishes an all-gather before every rank
    // has contributed its block.
    if (s->check) return;
    gloo::BarrierOptions opts(s->ctx);
    opts.setTag(static_cast<uint32_t>(seq * 2 + 1));
    opts.setTimeout(t);
    gloo::barrier(opts);
  }, {});
}

namespace {
// Point-to-point slots: a per-(src, dst) counter agreed by both sides, disjoint from collective slots.
uint64_t P2PSlot(int src, int dst, int64_t p2pSeq, int size, int part) {
  return (uint64_t{0xB7} << 56) | ((static_cast<uint64_t>(p2pSeq) * size * size + src * size + dst) << 1) | part;
}

Napi::Value RunP2P(const Napi::CallbackInfo& info, const std::shared_ptr<GlooState>& s, bool isSend) {
  const int64_t count = IntArg(info, 1, "count", 0, kMaxCount);
  float* buf = F32Data(info[0], static_cast<size_t>(count), "buffer");
  const int64_t peer = IntArg(info, 2, isSend ? "dst" : "src", 0, s->size - 1);
  if (peer == s->rank) throw Napi::RangeError::New(info.Env(), "a rank cannot send to or receive from itself");
  const int64_t p2pSeq = IntArg(info, 3, "p2pSeq", 0, int64_t{1} << 31);
  const ms t = OpTimeout(info, 4, *s);
  const int me = s->rank;
  const char* opName = isSend ? "send" : "recv";
  return Spawn(
      info.Env(), s,
      [=]() {
        const std::string aborted = std::string(opName) + " on rank " + std::to_string(me) + " was aborted by destroy()";
        auto waitSend = [&](gloo::transport::UnboundBuffer* b) {
          P2PWait reg(*s, b);
          if (!b->waitSend(t)) throw CodedError{"GROUP_DESTROYED", aborted};
        };
        auto waitRecv = [&](gloo::transport::UnboundBuffer* b) {
          P2PWait reg(*s, b);
          if (!b->waitRecv(t)) throw CodedError{"GROUP_DESTROYED", aborted};
        };
        try {
          if (s->stopping) throw CodedError{"GROUP_DESTROYED", "the process group was destroyed"};
          s->RequireConnected();
          const int src = isSend ? me : static_cast<int>(peer);
          const int dst = isSend ? static_cast<int>(peer) : me;
          // A header carrying the element count travels first on its own slot, so a size mismatch is
          // reported instead of corrupting memory or aborting in Gloo's I/O thread.
          int64_t header = count;
          auto hbuf = s->ctx->createUnboundBuffer(&header, sizeof(header));
          const uint64_t hslot = P2PSlot(src, dst, p2pSeq, s->size, 0);
          const uint64_t dslot = P2PSlot(src, dst, p2pSeq, s->size, 1);
          if (isSend) {
            hbuf->send(static_cast<int>(peer), hslot);
            std::unique_ptr<gloo::transport::UnboundBuffer> dbuf;
            if (count > 0) {  // posted at once: the receiver takes it once it has checked the header
              dbuf = s->ctx->createUnboundBuffer(buf, sizeof(float) * static_cast<size_t>(count));
              dbuf->send(static_cast<int>(peer), dslot);
            }
            waitSend(hbuf.get());
            if (dbuf) waitSend(dbuf.get());
          } else {
            hbuf->recv(static_cast<int>(peer), hslot);
            waitRecv(hbuf.get());
            const int64_t theirs = header;
            if (theirs < 0 || theirs > kMaxCount) throw CodedError{"GLOO_PROTOCOL", "invalid send header"};
            if (theirs != count) {
              if (theirs > 0) {  // drain the payload so the pair stays usable
                std::vector<float> sink(static_cast<size_t>(theirs));
                auto dbuf = s->ctx->createUnboundBuffer(sink.data(), sizeof(float) * sink.size());
                dbuf->recv(static_cast<int>(peer), dslot);
                waitRecv(dbuf.get());
              }
              throw CodedError{"COLLECTIVE_MISMATCH", "recv on rank " + std::to_string(me) + " expected " +
                                                          std::to_string(count) + " elements from rank " +
                                                          std::to_string(peer) + ", which sent " +
                                                          std::to_string(theirs)};
            }
            if (count > 0) {
              auto dbuf = s->ctx->createUnboundBuffer(buf, sizeof(float) * static_cast<size_t>(count));
              dbuf->recv(static_cast<int>(peer), dslot);
              waitRecv(dbuf.get());
            }
          }
        } catch (const gloo::IoException& e) {
          s->broken = true;
          throw Classify(e.what(), std::string(opName) + " on rank " + std::to_string(me));
        }
      },
      {info[0]});
}
}  // namespace

// send(buf, count, dst, p2pSeq, timeoutMs?) / recv(buf, count, src, p2pSeq, timeoutMs?)
Napi::Value GlooComm::Send(const Napi::CallbackInfo& info) { return RunP2P(info, state_, true); }
Napi::Value GlooComm::Recv(const Napi::CallbackInfo& info) { return RunP2P(info, state_, false); }

// close(): queued operations reject with GROUP_DESTROYED, and so do point-to-point ops waiting for a peer. A
// collective still running keeps its thread until it ends, but no longer holds the event loop open: the process
// may exit without waiting for its timeout.
Napi::Value GlooComm::Close(const Napi::CallbackInfo& info) {
  GlooState& s = *state_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    // Unref before `stopping` is set: until then the thread cannot release the function (see LeavePending in comm_job.h).
    if (!s.stopping && s.pending > 0) s.tsfn.Unref(info.Env());
    s.stopping = true;
    // A rendezvous in progress ends at once (it then rejects with GROUP_DESTROYED).
    if (s.rendezvous) {
      s.rendezvous->Abort("GROUP_DESTROYED", "the process group was destroyed while rank " + std::to_string(s.rank) +
                                                 " was connecting");
    }
    // Point-to-point waits end at once (their threads then reject with GROUP_DESTROYED and end).
    for (auto* b : s.p2pBuffers) {
      b->abortWaitRecv();
      b->abortWaitSend();
    }
  }
  s.cv.notify_all();
  return info.Env().Undefined();
}

// abort(): close() for a broken group, plus a hard close of every connection — at once when no operation of this
// rank runs, else when it ends — so that peers still blocked on this rank fail at once and abort in turn. Not for
// a healthy group: a hard close can discard data a peer has not read yet.
Napi::Value GlooComm::Abort(const Napi::CallbackInfo& info) {
  GlooState& s = *state_;
  s.abortRequested = true;
  Close(info);
  bool idle;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    idle = s.loopDone || (!s.running && s.queue.empty());
  }
  if (idle) s.CloseConnections();
  return info.Env().Undefined();
}

}  // namespace tpkit
