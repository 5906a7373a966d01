#include "nccl_comm.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../core/async_work.h"
#include "cuda_error.h"
#include "device_buffer.h"
#include "device_context.h"

namespace tpkit {

namespace {

using Clock = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;
using us = std::chrono::microseconds;
constexpr us kMinBackoff{20};
constexpr us kMaxBackoff{1000};
constexpr int64_t kMaxTimeoutMs = int64_t{1} << 40;

const napi_type_tag kNcclCommTag = {0x7470'6b69'744e'6363ULL, 0x6c43'6f6d'6d30'3031ULL};

ncclDataType_t NcclType(int dtype) {
  switch (dtype) {
    case kFloat16: return ncclFloat16;
    case kBFloat16: return ncclBfloat16;
    default: return ncclFloat32;
  }
}

// REDOP_CODE of lib/distributed/comm.ts: sum 0, prod 1, max 2, min 3, avg 4.
ncclRedOp_t NcclRedOp(int64_t redop) {
  switch (redop) {
    case 1: return ncclProd;
    case 2: return ncclMax;
    case 3: return ncclMin;
    case 4: return ncclAvg;
    default: return ncclSum;
  }
}

// ncclTimeout (= 8) is missing from older headers (NCCL 2.27 ends the enum at ncclInProgress = 7), so it is
// compared by value: the build must work with the NCCL wheels PyTorch installs, not only the newest.
constexpr int kNcclTimeoutValue = 8;
bool IsNcclTimeout(ncclResult_t r) { return static_cast<int>(r) == kNcclTimeoutValue; }

// NCCL_<NAME>, except that NCCL's own timeout is reported as TIMEOUT like ours.
std::string NcclErrorCode(ncclResult_t r) { return IsNcclTimeout(r) ? "TIMEOUT" : NcclResultCode(r); }

}  // namespace

struct NcclJob {
  std::string op;
  bool needsComm = true;  // false only for connect
  bool onStream = true;   // enqueued on the stream (completion = event) vs. complete when run() returns
  std::function<void(NcclState&, NcclJob&)> run;
  ms timeout{0};
  Clock::time_point deadline;
  cudaEvent_t event = nullptr;
  Napi::Promise::Deferred deferred;
  std::vector<Napi::ObjectReference> refs;
  std::vector<DeviceBuffer*> pins;
  std::string code;
  std::string message;
  explicit NcclJob(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

void SettleNcclJob(Napi::Env env, Napi::Function, NcclState* state, NcclJob* job);
using NcclTsfn = Napi::TypedThreadSafeFunction<NcclState, NcclJob, SettleNcclJob>;

struct NcclState {
  int rank = 0;
  int size = 1;
  int device = 0;
  ms timeout{300000};
  DeviceContext* dev = nullptr;

  // Comm thread only (Adopt writes comm before publishing `connected`).
  ncclComm_t comm = nullptr;
  float* scratch = nullptr;
  std::deque<NcclJob*> inflight;

  std::atomic<bool> connected{false};
  std::atomic<bool> broken{false};

  std::mutex mu;
  std::condition_variable cv;
  std::deque<NcclJob*> queue;  // guarded by mu
  bool closing = false;        // guarded by mu: finish the queue, then destroy the communicator
  bool stopping = false;       // guarded by mu: environment teardown, abort at once

  std::thread thread;
  NcclTsfn tsfn;
  int64_t pending = 0;           // main thread only
  bool connectRequested = false;  // main thread only

  std::string Who() const {
    return "rank " + std::to_string(rank) + " of " + std::to_string(size) + " (cuda:" + std::to_string(device) + ")";
  }

  bool Stopping() {
    std::lock_guard<std::mutex> lock(mu);
    return stopping;
  }

  static std::string LastError(ncclComm_t c) {
    const char* last = ncclGetLastError(c);
    if (last == nullptr || last[0] == '\0') return " (run with NCCL_DEBUG=WARN for details)";
    return "; last NCCL error: " + std::string(last);
  }

  // Polls the communicator's state until it leaves ncclInProgress and returns that state. When `deadline`
  // passes first (or the environment is being torn down) it sets `expired` and returns ncclInProgress (a flag
  // of ours rather than ncclTimeout, which older NCCL headers lack, see kNcclTimeoutValue).
  ncclResult_t WaitReady(ncclComm_t c, Clock::time_point deadline, bool& expired) {
    expired = false;
    us backoff = kMinBackoff;
    for (;;) {
      ncclResult_t st = ncclSuccess;
      const ncclResult_t r = ncclCommGetAsyncError(c, &st);
      if (r != ncclSuccess) return r;
      if (st != ncclInProgress) return st;
      if (Clock::now() >= deadline || Stopping()) {
        expired = true;
        return ncclInProgress;
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, kMaxBackoff);
    }
  }

  void Abort() {
    if (comm != nullptr) {
      ncclCommAbort(comm);
      comm = nullptr;
    }
    broken = true;
  }

  // Settles a call's result: waits out ncclInProgress, and on failure aborts the communicator and throws
  // TIMEOUT / NCCL_<NAME> naming the rank and the op.
  void Check(ncclResult_t r, const NcclJob& job) {
    bool expired = false;
    if (r == ncclInProgress) r = WaitReady(comm, job.deadline, expired);
    if (r == ncclSuccess) return;
    const std::string last = comm != nullptr ? LastError(comm) : "";
    Abort();
    if (expired) {
      throw CodedError{"TIMEOUT", job.op + " on " + Who() + " could not be enqueued within " +
                                      std::to_string(job.timeout.count()) + " ms; the communicator was aborted"};
    }
    throw CodedError{NcclErrorCode(r), job.op + " on " + Who() + " failed: " + ncclGetErrorString(r) + last};
  }

  void Adopt(ncclComm_t c) {
    std::lock_guard<std::mutex> lock(mu);
    comm = c;
    connected.store(true, std::memory_order_release);
  }

  void Complete(NcclJob* job) {
    if (job->event != nullptr) {
      cudaEventDestroy(job->event);
      job->event = nullptr;
    }
    // Unbounded queue: never blocks. Once the environment is closing the job is leaked on purpose.
    tsfn.BlockingCall(job);
  }

  // Rejects every op in flight with `code`. The head op gets `firstMessage` when it is the one that failed;
  // the others (or all of them, when firstMessage is empty) say that the communicator was aborted under them.
  // Their events may still complete afterwards (an aborted NCCL kernel exits early), so they must never be
  // reported as successful once the communicator was aborted.
  void FailInflight(const std::string& code, const std::string& firstMessage) {
    bool first = !firstMessage.empty();
    while (!inflight.empty()) {
      NcclJob* job = inflight.front();
      inflight.pop_front();
      job->code = code;
      job->message = first ? firstMessage
                           : job->op + " on " + Who() + " was aborted after an operation of the communicator failed (" +
                                 code + "); its result is undefined";
      first = false;
      Complete(job);
    }
  }

  void RunJob(NcclJob* job) {
    try {
      if (job->needsComm) {
        if (broken) {
          throw CodedError{"GROUP_BROKEN", job->op + " on " + Who() + ": the communicator was aborted by an earlier failure"};
        }
        if (!connected.load(std::memory_order_acquire) || comm == nullptr) {
          throw CodedError{"NOT_INITIALIZED", job->op + " on " + Who() + ": the communicator is not connected"};
        }
      }
      job->deadline = Clock::now() + job->timeout;
      job->run(*this, *job);
      if (job->onStream) {
        cudaError_t e = cudaEventCreateWithFlags(&job->event, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventRecord(job->event, dev->stream);
        if (e != cudaSuccess) {
          cudaGetLastError();
          Abort();
          throw CodedError{CudaErrorCode(e), job->op + " on " + Who() + ": recording its completion event failed: " + CudaErrorText(e)};
        }
        inflight.push_back(job);
        return;
      }
    } catch (const CodedError& e) {
      job->code = e.code;
      job->message = e.message;
    } catch (const std::exception& e) {
      job->code = "NATIVE_ERROR";
      job->message = job->op + " on " + Who() + ": " + e.what();
    }
    // A failure that aborted the communicator (Check, a failed split, an event that could not be recorded)
    // also ends the ops enqueued before it: their kernels are stopped by the abort, so their events complete
    // without the data having arrived. Settle them first, in issue order, as failed.
    if (broken && !inflight.empty()) FailInflight(job->code, "");
    Complete(job);
  }

  // Completes finished ops in order (events of one stream complete in order); fails them all on an async
  // error, a device error or the head op's timeout. The async error is read BEFORE the events: when a peer
  // dies or the network fails, NCCL stops the kernels, whose events then complete although the data never
  // arrived — such an op must reject, not resolve with garbage.
  void PollInflight() {
    if (inflight.empty()) return;
    if (comm == nullptr) {  // aborted without failing them (defensive: every Abort path fails them)
      FailInflight("GROUP_BROKEN", "");
      return;
    }
    ncclResult_t st = ncclSuccess;
    if (ncclCommGetAsyncError(comm, &st) != ncclSuccess) st = ncclInternalError;
    if (st != ncclSuccess && st != ncclInProgress) {
      const NcclJob* head = inflight.front();
      const std::string detail = std::string(ncclGetErrorString(st)) + LastError(comm);
      const std::string msg = head->op + " on " + Who() + " failed: " + detail;
      Abort();
      FailInflight(NcclErrorCode(st), msg);
      return;
    }
    while (!inflight.empty()) {
      NcclJob* job = inflight.front();
      const cudaError_t q = cudaEventQuery(job->event);
      if (q == cudaSuccess) {
        inflight.pop_front();
        Complete(job);
        continue;
      }
      if (q != cudaErrorNotReady) {
        cudaGetLastError();
        Abort();
        FailInflight(CudaErrorCode(q), job->op + " on " + Who() + " failed on the device: " + CudaErrorText(q));
        return;
      }
      if (Clock::now() >= job->deadline) {
        Abort();
        FailInflight("TIMEOUT", job->op + " on " + Who() + " did not complete within " + std::to_string(job->timeout.count()) +
                                    " ms (a peer may have died or not joined); the communicator was aborted");
        return;
      }
      return;
    }
  }

  void Teardown(bool stop) {
    if (!inflight.empty()) {
      Abort();
      FailInflight("GROUP_DESTROYED", "the communicator of " + Who() + " was torn down with operations in flight");
    }
    if (comm != nullptr) {
      if (broken || stop) {
        ncclCommAbort(comm);
      } else {
        // Graceful: flush (ncclCommFinalize, non-blocking → poll), then free; abort when that fails or hangs.
        ncclResult_t r = ncclCommFinalize(comm);
        bool expired = false;
        if (r == ncclInProgress || r == ncclSuccess) r = WaitReady(comm, Clock::now() + timeout, expired);
        if (r == ncclSuccess) {
          ncclCommDestroy(comm);
        } else {
          ncclCommAbort(comm);
        }
      }
      comm = nullptr;
    }
    if (scratch != nullptr) {
      dev->Free(scratch);  // stream-ordered: no device-wide synchronisation (cudaFree) on this thread
      scratch = nullptr;
    }
  }

  void Loop() {
    if (cudaSetDevice(device) != cudaSuccess) cudaGetLastError();
    us backoff = kMinBackoff;
    bool stop = false;
    for (;;) {
      NcclJob* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mu);
        if (inflight.empty()) {
          cv.wait(lock, [&] { return stopping || closing || !queue.empty(); });
        } else {
          cv.wait_for(lock, backoff, [&] { return stopping || !queue.empty(); });
        }
        if (stopping) {
          stop = true;
          break;
        }
        if (!queue.empty()) {
          job = queue.front();
          queue.pop_front();
        } else if (closing && inflight.empty()) {
          break;
        }
      }
      if (job != nullptr) RunJob(job);
      const size_t before = inflight.size();
      PollInflight();
      if (job != nullptr || inflight.size() < before) {
        backoff = kMinBackoff;
      } else {
        backoff = std::min(backoff * 2, kMaxBackoff);
      }
    }
    Teardown(stop);
    tsfn.Release();
  }
};

void SettleNcclJob(Napi::Env env, Napi::Function, NcclState* state, NcclJob* job) {
  if (env == nullptr) return;  // environment teardown: leak rather than touch JS
  for (DeviceBuffer* b : job->pins) b->Unpin(env);
  if (job->code.empty()) {
    job->deferred.Resolve(env.Undefined());
  } else {
    job->deferred.Reject(MakeTpkitError(env, job->code, job->message, "nccl").Value());
  }
  if (--state->pending == 0) state->tsfn.Unref(env);
  delete job;
}

namespace {

// Queues `job` (main thread). Rejects at once with GROUP_DESTROYED after close().
Napi::Value Enqueue(Napi::Env env, const std::shared_ptr<NcclState>& s, NcclJob* job) {
  Napi::Promise p = job->deferred.Promise();
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->closing || s->stopping) {
      job->deferred.Reject(
          MakeTpkitError(env, "GROUP_DESTROYED", job->op + " on " + s->Who() + ": the communicator was closed", "nccl").Value());
      delete job;
      return p;
    }
    for (DeviceBuffer* b : job->pins) b->Pin();
    if (s->pending++ == 0) s->tsfn.Ref(env);
    s->queue.push_back(job);
  }
  s->cv.notify_one();
  return p;
}

ms TimeoutArg(const Napi::CallbackInfo& info, size_t i, const NcclState& s) {
  if (i < info.Length() && !info[i].IsUndefined()) return ms(IntArg(info, i, "timeoutMs", 1, kMaxTimeoutMs));
  return s.timeout;
}

// A live DeviceBuffer on the communicator's device.
DeviceBuffer* CommBuffer(const Napi::CallbackInfo& info, size_t i, const char* name, const NcclState& s) {
  if (i >= info.Length()) throw Napi::TypeError::New(info.Env(), std::string("Expected DeviceBuffer for ") + name);
  DeviceBuffer* b = DeviceBuffer::Live(info[i], name);
  if (b->device() != s.device) {
    throw Napi::RangeError::New(info.Env(), std::string(name) + " is on cuda:" + std::to_string(b->device()) +
                                                " but the communicator of " + s.Who() + " uses cuda:" + std::to_string(s.device));
  }
  return b;
}

NcclJob* NewJob(Napi::Env env, const char* op, ms timeout, std::initializer_list<std::pair<Napi::Value, DeviceBuffer*>> bufs) {
  auto* job = new NcclJob(env);
  job->op = op;
  job->timeout = timeout;
  for (const auto& b : bufs) {
    job->refs.push_back(Napi::Persistent(b.first.As<Napi::Object>()));
    job->pins.push_back(b.second);
  }
  return job;
}

}  // namespace

Napi::Function NcclComm::Init(Napi::Env env) {
  return DefineClass(env, "NcclComm",
                     {InstanceMethod("connect", &NcclComm::Connect),
                      InstanceMethod("allReduce", &NcclComm::AllReduce),
                      InstanceMethod("allGather", &NcclComm::AllGather),
                      InstanceMethod("reduceScatter", &NcclComm::ReduceScatter),
                      InstanceMethod("broadcast", &NcclComm::Broadcast),
                      InstanceMethod("allToAll", &NcclComm::AllToAll),
                      InstanceMethod("allToAllV", &NcclComm::AllToAllV),
                      InstanceMethod("barrier", &NcclComm::Barrier),
                      InstanceMethod("send", &NcclComm::Send),
                      InstanceMethod("recv", &NcclComm::Recv),
                      InstanceMethod("split", &NcclComm::Split),
                      InstanceMethod("close", &NcclComm::Close),
                      InstanceMethod("isBroken", &NcclComm::IsBroken)});
}

NcclComm::NcclComm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NcclComm>(info) {
  Napi::Env env = info.Env();
  auto s = std::make_shared<NcclState>();
  s->size = static_cast<int>(IntArg(info, 1, "size", 1, 1 << 20));
  s->rank = static_cast<int>(IntArg(info, 0, "rank", 0, s->size - 1));
  const int64_t device = IntArg(info, 2, "device", 0, 1 << 16);
  s->timeout = ms(IntArg(info, 3, "timeoutMs", 1, kMaxTimeoutMs));
  const DeviceCountResult& dc = DeviceCount();
  if (dc.count > 0 && device >= dc.count) {
    throw Napi::RangeError::New(env, "Expected device index in [0, " + std::to_string(dc.count) +
                                         ") for device but received " + std::to_string(device));
  }
  s->device = static_cast<int>(device);
  s->dev = Guard(env, "nccl", [&] { return &Device(s->device); });

  s->tsfn = NcclTsfn::New(env, "tpkit.nccl.complete", 0, 1, s.get());
  s->tsfn.Unref(env);
  NcclState* raw = s.get();
  auto keep = s;  // the thread keeps the state alive until it has drained its queue
  s->thread = std::thread([raw, keep] { raw->Loop(); });
  // Registered after the thread-safe function, so it runs first (LIFO): abort and join the thread before the
  // environment goes away. Holding `s` also keeps the state alive for completions settled after the thread ended.
  env.AddCleanupHook([s] {
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->stopping = true;
    }
    s->cv.notify_all();
    if (s->thread.joinable()) s->thread.join();
  });
  info.This().As<Napi::Object>().TypeTag(&kNcclCommTag);
  state_ = std::move(s);
}

NcclComm::~NcclComm() {
  // GC without close(): let queued ops run, then destroy the communicator.
  if (state_) {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->closing = true;
    }
    state_->cv.notify_all();
  }
}

// connect(uniqueId: Uint8Array(128)) → Promise<void>: ncclCommInitRankConfig (non-blocking), polled until
// ready or the communicator's timeout.
Napi::Value NcclComm::Connect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      info[0].As<Napi::Uint8Array>().ElementLength() != NCCL_UNIQUE_ID_BYTES) {
    throw Napi::TypeError::New(env, "Expected Uint8Array of " + std::to_string(NCCL_UNIQUE_ID_BYTES) + " bytes for uniqueId");
  }
  auto s = state_;
  if (s->connected || s->connectRequested) throw Napi::Error::New(env, "communicator is already connected");
  s->connectRequested = true;
  ncclUniqueId id;
  std::memcpy(&id, info[0].As<Napi::Uint8Array>().Data(), sizeof(id));
  auto* job = NewJob(env, "init", s->timeout, {});
  job->needsComm = false;
  job->onStream = false;
  job->run = [id](NcclState& st, NcclJob& j) mutable {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t c = nullptr;
    ncclResult_t r = ncclCommInitRankConfig(&c, st.size, id, st.rank, &cfg);
    bool expired = false;
    if ((r == ncclSuccess || r == ncclInProgress) && c != nullptr) r = st.WaitReady(c, j.deadline, expired);
    if (r != ncclSuccess) {
      const std::string last = c != nullptr ? NcclState::LastError(c) : "";
      if (c != nullptr) ncclCommAbort(c);
      if (expired || IsNcclTimeout(r)) {
        throw CodedError{"TIMEOUT", "NCCL init of " + st.Who() + " did not complete within " +
                                        std::to_string(j.timeout.count()) + " ms (did every rank join?)"};
      }
      throw CodedError{NcclErrorCode(r), "NCCL init of " + st.Who() + " failed: " + ncclGetErrorString(r) + last};
    }
    st.Adopt(c);
  };
  return Enqueue(env, s, job);
}

// allReduce(buf, redop, timeoutMs?) — in place
Napi::Value NcclComm::AllReduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  DeviceBuffer* b = CommBuffer(info, 0, "buffer", *s);
  const ncclRedOp_t op = NcclRedOp(IntArg(info, 1, "redop", 0, 4));
  auto* job = NewJob(env, "allReduce", TimeoutArg(info, 2, *s), {{info[0], b}});
  void* p = b->data();
  const size_t n = b->numel();
  const ncclDataType_t t = NcclType(b->dtype());
  job->run = [p, n, t, op](NcclState& st, NcclJob& j) { st.Check(ncclAllReduce(p, p, n, t, op, st.comm, st.dev->stream), j); };
  return Enqueue(env, s, job);
}

// allGather(input, output, timeoutMs?) — output holds size × input.numel elements, rank-major
Napi::Value NcclComm::AllGather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  DeviceBuffer* in = CommBuffer(info, 0, "input", *s);
  DeviceBuffer* out = CommBuffer(info, 1, "output", *s);
  if (in->dtype() != out->dtype()) throw Napi::TypeError::New(env, "allGather: input and output dtypes differ");
  if (out->numel() < in->numel() * static_cast<size_t>(s->size)) {
    throw Napi::RangeError::New(env, "Expected at least " + std::to_string(in->numel() * s->size) +
                                         " elements for output but received " + std::to_string(out->numel()));
  }
  auto* job = NewJob(env, "allGather", TimeoutArg(info, 2, *s), {{info[0], in}, {info[1], out}});
  const void* pi = in->data();
  void* po = out->data();
  const size_t n = in->numel();
  const ncclDataType_t t = NcclType(in->dtype());
  job->run = [pi, po, n, t](NcclState& st, NcclJob& j) { st.Check(ncclAllGather(pi, po, n, t, st.comm, st.dev->stream), j); };
  return Enqueue(env, s, job);
}

// reduceScatter(input, output, redop, timeoutMs?) — input holds size rank-major chunks of output.numel
Napi::Value NcclComm::ReduceScatter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  DeviceBuffer* in = CommBuffer(info, 0, "input", *s);
  DeviceBuffer* out = CommBuffer(info, 1, "output", *s);
  const ncclRedOp_t op = NcclRedOp(IntArg(info, 2, "redop", 0, 4));
  if (in->dtype() != out->dtype()) throw Napi::TypeError::New(env, "reduceScatter: input and output dtypes differ");
  if (in->numel() < out->numel() * static_cast<size_t>(s->size)) {
    throw Napi::RangeError::New(env, "Expected at least " + std::to_string(out->numel() * s->size) +
                                         " elements for input but received " + std::to_string(in->numel()));
  }
  auto* job = NewJob(env, "reduceScatter", TimeoutArg(info, 3, *s), {{info[0], in}, {info[1], out}});
  const void* pi = in->data();
  void* po = out->data();
  const size_t n = out->numel();
  const ncclDataType_t t = NcclType(in->dtype());
  job->run = [pi, po, n, t, op](NcclState& st, NcclJob& j) {
    st.Check(ncclReduceScatter(pi, po, n, t, op, st.comm, st.dev->stream), j);
  };
  return Enqueue(env, s, job);
}

// broadcast(buf, root, timeoutMs?) — in place; root is a rank of this communicator
Napi::Value NcclComm::Broadcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  DeviceBuffer* b = CommBuffer(info, 0, "buffer", *s);
  const int root = static_cast<int>(IntArg(info, 1, "root", 0, s->size - 1));
  auto* job = NewJob(env, "broadcast", TimeoutArg(info, 2, *s), {{info[0], b}});
  void* p = b->data();
  const size_t n = b->numel();
  const ncclDataType_t t = NcclType(b->dtype());
  job->run = [p, n, t, root](NcclState& st, NcclJob& j) {
    st.Check(ncclBroadcast(p, p, n, t, root, st.comm, st.dev->stream), j);
  };
  return Enqueue(env, s, job);
}

// allToAll(input, output, timeoutMs?) — chunk j of input goes to rank j; output chunk i comes from rank i
Napi::Value NcclComm::AllToAll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  DeviceBuffer* in = CommBuffer(info, 0, "input", *s);
  DeviceBuffer* out = CommBuffer(info, 1, "output", *s);
  if (in->dtype() != out->dtype()) throw Napi::TypeError::New(env, "allToAll: input and output dtypes differ");
  if (in->numel() % static_cast<size_t>(s->size) != 0) {
    throw Napi::RangeError::New(env, "allToAll: " + std::to_string(in->numel()) + " elements are not divisible by the group size " +
                                         std::to_string(s->size));
  }
  if (out->numel() < in->numel()) {
    throw Napi::RangeError::New(env, "Expected at least " + std::to_string(in->numel()) + " elements for output but received " +
                                         std::to_string(out->numel()));
  }
  auto* job = NewJob(env, "allToAll", TimeoutArg(info, 2, *s), {{info[0], in}, {info[1], out}});
  const void* pi = in->data();
  void* po = out->data();
  const size_t chunk = in->numel() / static_cast<size_t>(s->size);
  const ncclDataType_t t = NcclType(in->dtype());
  const size_t chunkBytes = chunk * ItemSize(in->dtype());
  job->run = [pi, po, chunk, chunkBytes, t](NcclState& st, NcclJob& j) {
#if defined(TPKIT_NCCL_HAS_ALLTOALL)
    (void)chunkBytes;
    st.Check(ncclAlltoAll(pi, po, chunk, t, st.comm, st.dev->stream), j);
#else
    // NCCL without ncclAlltoAll (it is recent; 2.27 lacks it, see TpkitCuda.cmake): one send and one receive
    // per peer, self included, fused in one group so that they progress together.
    const ncclResult_t started = ncclGroupStart();
    if (started != ncclSuccess) st.Check(started, j);
    ncclResult_t queued = ncclSuccess;
    for (int p = 0; p < st.size && queued == ncclSuccess; p++) {
      const size_t off = static_cast<size_t>(p) * chunkBytes;
      queued = ncclSend(static_cast<const char*>(pi) + off, chunk, t, p, st.comm, st.dev->stream);
      if (queued == ncclSuccess) queued = ncclRecv(static_cast<char*>(po) + off, chunk, t, p, st.comm, st.dev->stream);
    }
    st.Check(ncclGroupEnd(), j);  // always closes the group, even after a failed send/recv
    st.Check(queued, j);
#endif
  };
  return Enqueue(env, s, job);
}

namespace {
// splits[i] of a JS array of `n` non-negative integers (row counts).
std::vector<size_t> RowSplits(const Napi::CallbackInfo& info, size_t i, const char* name, int n) {
  Napi::Env env = info.Env();
  if (i >= info.Length() || !info[i].IsArray()) throw Napi::TypeError::New(env, std::string("Expected array for ") + name);
  auto a = info[i].As<Napi::Array>();
  if (a.Length() != static_cast<uint32_t>(n)) {
    throw Napi::RangeError::New(env, std::string("Expected ") + std::to_string(n) + " entries for " + name);
  }
  std::vector<size_t> out(static_cast<size_t>(n));
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value v = a.Get(k);
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(d >= 0.0) || d != static_cast<double>(static_cast<int64_t>(d)) || d > 9.0e15) {
      throw Napi::RangeError::New(env, std::string("Expected non-negative integers for ") + name);
    }
    out[k] = static_cast<size_t>(d);
  }
  return out;
}
}  // namespace

// allToAllV(input, output, rowElems, inputSplits, outputSplits, timeoutMs?) — rows [Σ_{<j} in_j, +in_j) of input
// go to rank j; output rows [Σ_{<i} out_i, +out_i) come from rank i (torch's all_to_all_single with split sizes).
// One send and one receive per peer with a non-empty share, fused in one NCCL group. The split sizes of every
// rank were checked against each other before (nccl.ts), so the pairs always match.
Napi::Value NcclComm::AllToAllV(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  DeviceBuffer* in = CommBuffer(info, 0, "input", *s);
  DeviceBuffer* out = CommBuffer(info, 1, "output", *s);
  if (in->dtype() != out->dtype()) throw Napi::TypeError::New(env, "allToAllV: input and output dtypes differ");
  const size_t rowElems = static_cast<size_t>(IntArg(info, 2, "rowElems", 0, int64_t{1} << 40));
  const std::vector<size_t> inSplits = RowSplits(info, 3, "inputSplits", s->size);
  const std::vector<size_t> outSplits = RowSplits(info, 4, "outputSplits", s->size);
  size_t inRows = 0, outRows = 0;
  for (size_t v : inSplits) inRows += v;
  for (size_t v : outSplits) outRows += v;
  if (in->numel() < inRows * rowElems || out->numel() < outRows * rowElems) {
    throw Napi::RangeError::New(env, "allToAllV: the split sizes exceed the input or output buffer");
  }
  auto* job = NewJob(env, "allToAllV", TimeoutArg(info, 5, *s), {{info[0], in}, {info[1], out}});
  const char* pi = static_cast<const char*>(in->data());
  char* po = static_cast<char*>(out->data());
  const ncclDataType_t t = NcclType(in->dtype());
  const size_t rowBytes = rowElems * ItemSize(in->dtype());
  job->run = [pi, po, t, rowElems, rowBytes, inSplits, outSplits](NcclState& st, NcclJob& j) {
    const ncclResult_t started = ncclGroupStart();
    if (started != ncclSuccess) st.Check(started, j);
    ncclResult_t queued = ncclSuccess;
    size_t inOff = 0, outOff = 0;
    for (int p = 0; p < st.size && queued == ncclSuccess; p++) {
      const size_t ni = inSplits[static_cast<size_t>(p)], no = outSplits[static_cast<size_t>(p)];
      if (ni > 0) queued = ncclSend(pi + inOff * rowBytes, ni * rowElems, t, p, st.comm, st.dev->stream);
      if (queued == ncclSuccess && no > 0) queued = ncclRecv(po + outOff * rowBytes, no * rowElems, t, p, st.comm, st.dev->stream);
      inOff += ni;
      outOff += no;
    }
    st.Check(ncclGroupEnd(), j);  // always closes the group, even after a failed send/recv
    st.Check(queued, j);
  };
  return Enqueue(env, s, job);
}

// barrier(timeoutMs?) — a one-element all-reduce; settles when it completed on the stream
Napi::Value NcclComm::Barrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  auto* job = NewJob(env, "barrier", TimeoutArg(info, 0, *s), {});
  job->run = [](NcclState& st, NcclJob& j) {
    // One float of the device's pool, allocated on first use (stream-ordered, so its later free needs no
    // device-wide synchronisation); its value does not matter.
    if (st.scratch == nullptr) st.scratch = static_cast<float*>(st.dev->Alloc(sizeof(float)));
    st.Check(ncclAllReduce(st.scratch, st.scratch, 1, ncclFloat32, ncclSum, st.comm, st.dev->stream), j);
  };
  return Enqueue(env, s, job);
}

Napi::Value NcclComm::PointToPoint(const Napi::CallbackInfo& info, bool isSend) {
  Napi::Env env = info.Env();
  auto s = state_;
  DeviceBuffer* b = CommBuffer(info, 0, "buffer", *s);
  const int peer = static_cast<int>(IntArg(info, 1, isSend ? "dst" : "src", 0, s->size - 1));
  if (peer == s->rank) throw Napi::RangeError::New(env, "a rank cannot send to or receive from itself");
  auto* job = NewJob(env, isSend ? "send" : "recv", TimeoutArg(info, 2, *s), {{info[0], b}});
  void* p = b->data();
  const size_t n = b->numel();
  const ncclDataType_t t = NcclType(b->dtype());
  if (isSend) {
    job->run = [p, n, t, peer](NcclState& st, NcclJob& j) { st.Check(ncclSend(p, n, t, peer, st.comm, st.dev->stream), j); };
  } else {
    job->run = [p, n, t, peer](NcclState& st, NcclJob& j) { st.Check(ncclRecv(p, n, t, peer, st.comm, st.dev->stream), j); };
  }
  return Enqueue(env, s, job);
}

// send(buf, dst, timeoutMs?) / recv(buf, src, timeoutMs?)
Napi::Value NcclComm::Send(const Napi::CallbackInfo& info) { return PointToPoint(info, true); }
Napi::Value NcclComm::Recv(const Napi::CallbackInfo& info) { return PointToPoint(info, false); }

// split(color, key, child: NcclComm | null, timeoutMs?) → Promise<void>. Every rank of this communicator
// calls it (ncclCommSplit is collective). Members pass color ≥ 0, their new rank as key and an unconnected
// child NcclComm(newRank, newSize, device, timeoutMs) that receives the new communicator; the others pass
// NCCL_SPLIT_NOCOLOR (-1) and null.
Napi::Value NcclComm::Split(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  const int color = static_cast<int>(IntArg(info, 0, "color", NCCL_SPLIT_NOCOLOR, INT_MAX));
  const int key = static_cast<int>(IntArg(info, 1, "key", 0, INT_MAX));
  std::shared_ptr<NcclState> child;
  if (info.Length() > 2 && !info[2].IsNull() && !info[2].IsUndefined()) {
    if (!info[2].IsObject() || !info[2].As<Napi::Object>().CheckTypeTag(&kNcclCommTag)) {
      throw Napi::TypeError::New(env, "Expected NcclComm or null for child");
    }
    child = NcclComm::Unwrap(info[2].As<Napi::Object>())->state_;
    if (child->connected || child->connectRequested) throw Napi::Error::New(env, "the child communicator is already connected");
    if (child->device != s->device) throw Napi::RangeError::New(env, "the child communicator must use the parent's device");
  }
  if ((color == NCCL_SPLIT_NOCOLOR) != (child == nullptr)) {
    throw Napi::TypeError::New(env, "split: a member passes a color >= 0 and a child communicator; a non-member passes -1 and null");
  }
  const ms timeout = TimeoutArg(info, 3, *s);
  if (child) child->connectRequested = true;
  auto* job = NewJob(env, "split", timeout, {});
  if (child) job->refs.push_back(Napi::Persistent(info[2].As<Napi::Object>()));
  job->onStream = false;
  job->run = [color, key, child](NcclState& st, NcclJob& j) {
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclComm_t nc = nullptr;
    // With a non-blocking parent, NCCL writes the child into `nc` from its own thread when the split
    // completes (the parent's state is ncclInProgress until then), so `nc` is read only after that.
    ncclResult_t r = ncclCommSplit(st.comm, color, key, &nc, &cfg);
    bool expired = false;
    if (r == ncclSuccess || r == ncclInProgress) {
      r = st.WaitReady(st.comm, j.deadline, expired);
      if (r == ncclSuccess && nc != nullptr) r = st.WaitReady(nc, j.deadline, expired);
    }
    if (r != ncclSuccess) {
      const std::string last = NcclState::LastError(st.comm);
      // Abort the parent first: that ends NCCL's split job (it runs under the parent), so `nc` is read after its
      // last write.
      st.Abort();
      if (nc != nullptr) ncclCommAbort(nc);
      if (expired || IsNcclTimeout(r)) {
        throw CodedError{"TIMEOUT", "split on " + st.Who() + " did not complete within " + std::to_string(j.timeout.count()) +
                                        " ms (did every rank of the parent call it?); the communicator was aborted"};
      }
      throw CodedError{NcclErrorCode(r), "split on " + st.Who() + " failed: " + ncclGetErrorString(r) + last};
    }
    if (!child) {
      if (nc != nullptr) ncclCommDestroy(nc);
      return;
    }
    if (nc == nullptr) throw CodedError{"NCCL_INTERNAL_ERROR", "split on " + st.Who() + " returned no communicator for a member"};
    int count = 0;
    int newRank = -1;
    if (ncclCommCount(nc, &count) != ncclSuccess || ncclCommUserRank(nc, &newRank) != ncclSuccess || count != child->size ||
        newRank != child->rank) {
      ncclCommAbort(nc);
      throw CodedError{"COLLECTIVE_MISMATCH", "split on " + st.Who() + " produced rank " + std::to_string(newRank) + " of " +
                                                  std::to_string(count) + " but rank " + std::to_string(child->rank) + " of " +
                                                  std::to_string(child->size) + " was expected"};
    }
    child->Adopt(nc);
  };
  return Enqueue(env, s, job);
}

// close(): idempotent. Ops not yet started reject with GROUP_DESTROYED; ops in flight finish; then the
// communicator is finalized and destroyed (aborted when broken) on its thread.
Napi::Value NcclComm::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  std::deque<NcclJob*> drained;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->closing) return env.Undefined();
    s->closing = true;
    drained.swap(s->queue);
  }
  s->cv.notify_all();
  for (NcclJob* job : drained) {
    for (DeviceBuffer* b : job->pins) b->Unpin(env);
    job->deferred.Reject(MakeTpkitError(env, "GROUP_DESTROYED",
                                        job->op + " on " + s->Who() + ": the communicator was closed before it ran", "nccl")
                             .Value());
    if (--s->pending == 0) s->tsfn.Unref(env);
    delete job;
  }
  return env.Undefined();
}

Napi::Value NcclComm::IsBroken(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), state_->broken.load()); }

Napi::Value NcclUniqueId(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      info[0].As<Napi::Uint8Array>().ElementLength() < NCCL_UNIQUE_ID_BYTES) {
    throw Napi::TypeError::New(env, "Expected Uint8Array of at least " + std::to_string(NCCL_UNIQUE_ID_BYTES) + " bytes for out");
  }
  uint8_t* out = info[0].As<Napi::Uint8Array>().Data();
  return LambdaWorker::Run(
      env,
      [out]() {
        ncclUniqueId id;
        const ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) throw CodedError{NcclResultCode(r), std::string("ncclGetUniqueId failed: ") + ncclGetErrorString(r)};
        std::memcpy(out, &id, sizeof(id));
      },
      {info[0]}, "nccl");
}

}  // namespace tpkit
