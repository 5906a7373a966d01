#include "shm_comm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TPKIT_PAUSE() _mm_pause()
#else
#define TPKIT_PAUSE() std::this_thread::yield()
#endif

#include "async_work.h"
#include "collective_desc.h"
#include "comm_job.h"

namespace tpkit {

namespace {

using ms = std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
constexpr int64_t kMaxCount = int64_t{1} << 40;
constexpr uint64_t kMagic = 0x31304d4853504b54ull;  // "TKPSHM01"
constexpr int kMaxRanks = 256;
// How long a waiter spins before it sleeps on the futex, and the longest sleep between liveness checks.
constexpr auto kSpin = std::chrono::microseconds(8);
// Between the rounds of one op the communicator's thread spins longer (yielding the CPU every 64 pauses), since
// the peers are mid-op too and a futex sleep and wake-up per round would add to every round (raising this from
// 8 µs lowered the 1–4 MiB all-reduce p50 by 10–20 % here, two runs each way).
constexpr auto kRoundSpin = std::chrono::microseconds(50);
constexpr auto kLivenessPeriod = ms(100);
// All-reduces of at most this many bytes finish in one round (every rank reduces every slot); larger ones
// reduce-scatter then all-gather through the slots, two rounds per slot-sized chunk.
constexpr size_t kOneRoundBytes = 64 * 1024;
// A one-round op issued while the communicator's thread is idle runs on the calling thread: it publishes its
// round, spins at most this long for the peers, and completes there if they all arrived (no thread hand-off,
// which alone costs ≈ 50 µs here); otherwise the communicator's thread waits for the rest.
constexpr auto kInlineSpin = std::chrono::microseconds(40);
// When the peers are not there within kInlineSpin, JavaScript keeps polling the op (poll(), between turns of the
// event loop, yielding the CPU each time) for at most this long before the communicator's thread takes the wait
// over: a thread hand-off and its two wake-ups cost ≈ 100–250 µs here, and a rank that pays them arrives late at
// the next op, so that its peers pay them in turn (measured: 250 µs per 16 KiB all-reduce without polling).
constexpr auto kPollBudget = std::chrono::microseconds(1000);

// Segment layout. The header and every control line sit on cache lines of their own.
struct alignas(64) Header {
  uint64_t magic;
  uint64_t size;
  uint64_t slotBytes;
  std::atomic<uint32_t> futex;    // bumped by every publish; sleepers wait on it
  std::atomic<uint32_t> waiters;  // sleepers right now (a publish wakes only when > 0)
  std::atomic<int32_t> aborted;   // 1 + the rank that aborted the group, 0 while healthy
  std::atomic<uint32_t> p2pFutex;    // bumped by every point-to-point progress; the p2p threads sleep on it
  std::atomic<uint32_t> p2pWaiters;  // p2p threads asleep right now
  int32_t pid[kMaxRanks];
};
struct alignas(64) Control {
  std::atomic<uint64_t> round;  // the last round this rank published
  Descriptor desc[2];           // the descriptor of the op whose first round has this parity
};
static_assert(sizeof(Control) <= 320, "control line");

size_t Align(size_t n, size_t a) { return (n + a - 1) / a * a; }
size_t ControlOffset() { return Align(sizeof(Header), 4096); }
size_t DataOffset(int size) { return Align(ControlOffset() + sizeof(Control) * static_cast<size_t>(size), 4096); }
// Per rank and parity: 1 MiB, less for large groups (the segment stays ≤ 16 MiB from 8 ranks up), ≥ 64 KiB.
size_t SlotBytesFor(int size) {
  const size_t target = (size_t{16} << 20) / (2 * static_cast<size_t>(size));
  return std::max<size_t>(64 * 1024, std::min<size_t>(size_t{1} << 20, target & ~size_t{4095}));
}
// Point-to-point: one byte ring per ordered pair (src → dst), for groups of at most kMaxP2PRanks (larger groups
// send and receive over Gloo TCP). Each ring: a control block (bytes ever written, bytes ever read), then
// ChanBytesFor(size) bytes: 256 KiB for up to 8 ranks, never below 64 KiB (16 ranks: 15 MiB in all).
constexpr int kMaxP2PRanks = 16;
struct alignas(64) ChanCtl {
  std::atomic<uint64_t> written;
  char pad[56];
  std::atomic<uint64_t> read;
  char pad2[56];
};
size_t ChanBytesFor(int size) {
  if (size < 2 || size > kMaxP2PRanks) return 0;
  const size_t pairs = static_cast<size_t>(size) * static_cast<size_t>(size - 1);
  return std::max<size_t>(64 * 1024, std::min<size_t>(256 * 1024, ((size_t{16} << 20) / pairs) & ~size_t{4095}));
}
size_t ChanStride(int size) { return sizeof(ChanCtl) + ChanBytesFor(size); }
size_t P2POffset(int size) { return DataOffset(size) + 2 * static_cast<size_t>(size) * SlotBytesFor(size); }
size_t SegmentBytesFor(int size) {
  const size_t chans = ChanBytesFor(size) > 0 ? static_cast<size_t>(size) * static_cast<size_t>(size - 1) : 0;
  return P2POffset(size) + chans * ChanStride(size);
}

long Futex(std::atomic<uint32_t>* addr, int op, uint32_t val, const struct timespec* ts) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), op, val, ts, nullptr, 0);
}

int PidfdOpen(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  errno = ENOSYS;
  return -1;
#endif
}

void ReduceInto(int64_t redop, float* acc, const float* in, size_t n) {
  switch (redop) {
    case 1: for (size_t i = 0; i < n; i++) acc[i] *= in[i]; break;
    case 2: for (size_t i = 0; i < n; i++) acc[i] = std::max(acc[i], in[i]); break;
    case 3: for (size_t i = 0; i < n; i++) acc[i] = std::min(acc[i], in[i]); break;
    default: for (size_t i = 0; i < n; i++) acc[i] += in[i]; break;
  }
}

std::string ErrnoText(int e) { return std::string(strerror(e)); }

}  // namespace

struct ShmState;

struct ShmJob {
  std::function<void()> run;
  Napi::Promise::Deferred deferred;
  ShmState* state = nullptr;
  std::vector<Napi::ObjectReference> refs;
  std::string code;
  std::string message;
  bool collective = true;  // false: a send or recv (runs on the p2p thread)
  explicit ShmJob(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

// A send or recv in progress on the p2p thread. A message on a ring is a 16-byte header (the p2p sequence number
// and the element count) followed by the floats; `done` counts the message's bytes moved so far.
struct P2POp {
  bool isSend = false;
  int peer = 0;
  float* buf = nullptr;
  size_t count = 0;
  int64_t seq = 0;
  Clock::time_point deadline;
  size_t done = 0;
  int64_t header[2] = {0, 0};  // send: what to write; recv: what was read
  ShmJob* job = nullptr;
};

void SettleShmJob(Napi::Env env, Napi::Function, std::nullptr_t*, ShmJob* job);
using ShmTsfn = Napi::TypedThreadSafeFunction<std::nullptr_t, ShmJob, SettleShmJob>;

struct ShmState {
  int rank = 0;
  int size = 1;
  ms timeout{300000};
  size_t slotBytes = 0;
  size_t bytes = 0;
  uint8_t* base = nullptr;
  Header* header = nullptr;
  std::vector<int> pidfds;  // -1 where pidfd_open failed (then kill(pid, 0))
  std::vector<pid_t> pids;
  uint64_t round = 0;  // the last round this rank published (communicator thread only)
  bool started = false;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<ShmJob*> queue;
  std::atomic<bool> stopping{false};
  std::atomic<bool> broken{false};
  std::atomic<bool> localAbort{false};
  std::thread thread;
  ShmTsfn tsfn;
  bool tsfnAlive = true;
  int64_t pending = 0;      // main thread only: unsettled ops of both kinds
  int64_t collectives = 0;  // main thread only: unsettled collectives (0: the communicator's thread is idle)
  size_t chanBytes = 0;     // 0: send/recv go over Gloo TCP
  std::vector<P2POp*> p2pIncoming;  // under mu: posted, not yet taken by the p2p thread
  // A one-round op this (main) thread published and polls (see OneRound and Poll); null when none.
  struct Inline {
    ShmJob* job;
    uint64_t rnd;
    std::function<void()> finish;  // checks the descriptors and reads the result (may throw CodedError)
    std::function<void()> rest;    // the communicator thread's remainder: wait for every rank, then finish
    Clock::time_point handOffAt;
  };
  std::unique_ptr<Inline> inl;
  std::condition_variable p2pCv;

  ~ShmState() {
    if (base != nullptr) munmap(base, bytes);
    for (int fd : pidfds) {
      if (fd >= 0) close(fd);
    }
  }

  Control* ControlOf(int r) const { return reinterpret_cast<Control*>(base + ControlOffset()) + r; }
  ChanCtl* Chan(int src, int dst) const {
    const size_t i = static_cast<size_t>(src) * static_cast<size_t>(size - 1) + static_cast<size_t>(dst < src ? dst : dst - 1);
    return reinterpret_cast<ChanCtl*>(base + P2POffset(size) + i * ChanStride(size));
  }
  uint8_t* Ring(ChanCtl* c) const { return reinterpret_cast<uint8_t*>(c) + sizeof(ChanCtl); }

  void WakeP2P() {
    header->p2pFutex.fetch_add(1, std::memory_order_seq_cst);
    if (header->p2pWaiters.load(std::memory_order_seq_cst) > 0) Futex(&header->p2pFutex, FUTEX_WAKE, INT_MAX, nullptr);
  }

  // Moves what it can of `op`'s message through its ring, without waiting. True once the message is done. A recv
  // whose header names another element count drains the payload, then fails with COLLECTIVE_MISMATCH (the ring
  // stays usable, as on Gloo TCP).
  bool Advance(P2POp& op, bool& moved) {
    const size_t total = sizeof(op.header) + op.count * sizeof(float);
    ChanCtl* c = op.isSend ? Chan(rank, op.peer) : Chan(op.peer, rank);
    uint8_t* ring = Ring(c);
    const uint64_t w = c->written.load(op.isSend ? std::memory_order_relaxed : std::memory_order_acquire);
    const uint64_t r = c->read.load(op.isSend ? std::memory_order_acquire : std::memory_order_relaxed);
    const uint64_t pos = op.isSend ? w : r;
    size_t n = op.isSend ? chanBytes - static_cast<size_t>(w - r) : static_cast<size_t>(w - r);
    // A recv reads the header first, then (when the counts agree) exactly the payload it expects.
    const size_t want = op.isSend ? total - op.done
                                  : op.done < sizeof(op.header) ? sizeof(op.header) - op.done
                                                                : sizeof(op.header) + PayloadBytes(op) - op.done;
    n = std::min(n, want);
    if (n == 0) return op.done == (op.isSend ? total : sizeof(op.header) + PayloadBytes(op)) && HeaderRead(op);
    size_t k = 0;
    while (k < n) {
      // The piece of the message at byte op.done + k: header or payload.
      const size_t at = op.done + k;
      uint8_t* mem = at < sizeof(op.header) ? reinterpret_cast<uint8_t*>(op.header) + at
                                            : reinterpret_cast<uint8_t*>(op.buf) + (at - sizeof(op.header));
      size_t len = std::min(n - k, at < sizeof(op.header) ? sizeof(op.header) - at : n - k);
      const size_t off = static_cast<size_t>((pos + k) % chanBytes);
      len = std::min(len, chanBytes - off);
      const bool sink = !op.isSend && at >= sizeof(op.header) && op.header[1] != static_cast<int64_t>(op.count);
      if (op.isSend) std::memcpy(ring + off, mem, len);
      else if (!sink) std::memcpy(mem, ring + off, len);
      k += len;
    }
    op.done += n;
    if (op.isSend) c->written.store(w + n, std::memory_order_release);
    else c->read.store(r + n, std::memory_order_release);
    moved = true;
    WakeP2P();
    if (!op.isSend && op.done == sizeof(op.header)) {
      if (op.header[0] != op.seq || op.header[1] < 0 || op.header[1] > kMaxCount) {
        throw CodedError{"GLOO_PROTOCOL", "recv on rank " + std::to_string(rank) + ": the shared-memory stream from rank " +
                                              std::to_string(op.peer) + " is out of step (message " +
                                              std::to_string(op.header[0]) + ", expected " + std::to_string(op.seq) + ")"};
      }
    }
    if (op.isSend) return op.done == total;
    if (op.done < sizeof(op.header) || op.done < sizeof(op.header) + PayloadBytes(op)) return false;
    return HeaderRead(op);
  }
  // The payload bytes a recv consumes: the sender's (drained when it differs from the recv's own count).
  static size_t PayloadBytes(const P2POp& op) {
    return op.done < sizeof(op.header) ? op.count * sizeof(float) : static_cast<size_t>(op.header[1]) * sizeof(float);
  }
  bool HeaderRead(const P2POp& op) const {
    if (op.isSend || op.header[1] == static_cast<int64_t>(op.count)) return true;
    throw CodedError{"COLLECTIVE_MISMATCH", "recv on rank " + std::to_string(rank) + " expected " + std::to_string(op.count) +
                                                " elements from rank " + std::to_string(op.peer) + ", which sent " +
                                                std::to_string(op.header[1])};
  }

  // The p2p thread: moves every posted send and recv forward, each pair's messages in p2p sequence order;
  // spins briefly when nothing moved, then sleeps on the segment's p2p futex (at most kLivenessPeriod, then
  // liveness, abort and deadline checks).
  void P2PLoop() {
    std::vector<std::vector<P2POp*>> sends(static_cast<size_t>(size)), recvs(static_cast<size_t>(size));
    std::vector<int64_t> nextSend(static_cast<size_t>(size), 0), nextRecv(static_cast<size_t>(size), 0);
    size_t active = 0;
    auto finish = [&](P2POp* op, const std::string& code, const std::string& message) {
      op->job->code = code;
      op->job->message = message;
      if (!code.empty() && code != "COLLECTIVE_MISMATCH") broken = true;
      Complete(op->job);
      delete op;
      active--;
    };
    auto nextCheck = Clock::now() + kLivenessPeriod;
    for (;;) {
      bool stop = false;
      {
        std::unique_lock<std::mutex> lock(mu);
        if (active == 0) p2pCv.wait(lock, [&] { return stopping || !p2pIncoming.empty(); });
        stop = stopping;
        for (P2POp* op : p2pIncoming) {
          (op->isSend ? sends : recvs)[static_cast<size_t>(op->peer)].push_back(op);
          active++;
        }
        p2pIncoming.clear();
      }
      if (stop || localAbort) {
        for (auto* list : {&sends, &recvs}) {
          for (auto& q : *list) {
            for (P2POp* op : q) finish(op, "GROUP_DESTROYED", std::string(op->isSend ? "send" : "recv") + " on rank " +
                                                                  std::to_string(rank) + " was aborted by destroy()");
            q.clear();
          }
        }
        if (stop) break;
        continue;
      }
      bool moved = false;
      for (auto* list : {&sends, &recvs}) {
        const bool isSend = list == &sends;
        for (int q = 0; q < size; q++) {
          auto& ops = (*list)[static_cast<size_t>(q)];
          int64_t& next = (isSend ? nextSend : nextRecv)[static_cast<size_t>(q)];
          for (;;) {
            auto it = std::find_if(ops.begin(), ops.end(), [&](P2POp* o) { return o->seq == next; });
            if (it == ops.end()) break;
            P2POp* op = *it;
            bool done = false;
            std::string code, message;
            try {
              done = Advance(*op, moved);
            } catch (const CodedError& e) {
              done = true;
              code = e.code;
              message = e.message;
            }
            if (!done) break;
            ops.erase(it);
            next++;
            finish(op, code, message);
          }
        }
      }
      if (moved || active == 0) continue;
      // Nothing moved: spin a little, then sleep until a peer (or this process) makes progress.
      const uint32_t seen = header->p2pFutex.load(std::memory_order_seq_cst);
      const auto spinUntil = Clock::now() + kSpin;
      bool changed = false;
      for (int i = 0; !changed; i++) {
        TPKIT_PAUSE();
        changed = header->p2pFutex.load(std::memory_order_seq_cst) != seen;
        if ((i & 63) == 63 && Clock::now() >= spinUntil) break;
      }
      auto now = Clock::now();
      Clock::time_point until = nextCheck;
      for (auto* list : {&sends, &recvs}) {
        for (auto& ops : *list) {
          for (P2POp* op : ops) until = std::min(until, op->deadline);
        }
      }
      if (!changed && until > now) {
        header->p2pWaiters.fetch_add(1, std::memory_order_seq_cst);
        if (header->p2pFutex.load(std::memory_order_seq_cst) == seen) {
          const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(until - now).count();
          struct timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
          Futex(&header->p2pFutex, FUTEX_WAIT, seen, &ts);
        }
        header->p2pWaiters.fetch_sub(1, std::memory_order_seq_cst);
      }
      now = Clock::now();
      const bool checkPeers = now >= nextCheck;
      if (checkPeers) nextCheck = now + kLivenessPeriod;
      const int32_t a = header->aborted.load(std::memory_order_acquire);
      for (auto* list : {&sends, &recvs}) {
        for (auto& ops : *list) {
          for (auto it = ops.begin(); it != ops.end();) {
            P2POp* op = *it;
            const std::string what = std::string(op->isSend ? "send" : "recv") + " on rank " + std::to_string(rank);
            std::string code, message;
            if (a != 0 && a - 1 != rank) {
              code = "PEER_LOST";
              message = what + ": rank " + std::to_string(a - 1) + " (in group) aborted the shared-memory group";
            } else if (checkPeers && !Alive(op->peer)) {
              code = "PEER_LOST";
              message = what + " lost rank " + std::to_string(op->peer) + " (in group) in shared memory: process " +
                        std::to_string(pids[static_cast<size_t>(op->peer)]) + " has exited";
            } else if (now >= op->deadline) {
              code = "TIMEOUT";
              message = what + " timed out in shared memory waiting for rank " + std::to_string(op->peer);
            }
            if (code.empty()) {
              ++it;
              continue;
            }
            it = ops.erase(it);
            finish(op, code, message);
          }
        }
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    if (tsfnAlive) tsfn.Release();
  }
  float* Slot(int r, uint64_t rnd) const {
    return reinterpret_cast<float*>(base + DataOffset(size) + (static_cast<size_t>(r) * 2 + (rnd & 1)) * slotBytes);
  }
  size_t SlotFloats() const { return slotBytes / sizeof(float); }

  void Complete(ShmJob* job) {
    std::lock_guard<std::mutex> lock(mu);
    if (tsfnAlive) tsfn.BlockingCall(job);
  }

  void Loop() {
    for (;;) {
      ShmJob* job = nullptr;
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
      }
      if (job->code.empty()) Execute(job);
      Complete(job);
    }
    std::lock_guard<std::mutex> lock(mu);
    if (tsfnAlive) tsfn.Release();
  }

  void Execute(ShmJob* job) {
    try {
      if (!started) throw CodedError{"NOT_INITIALIZED", "shared-memory communicator is not started"};
      if (broken) throw CodedError{"GROUP_BROKEN", "communicator is broken by an earlier failure"};
      job->run();
    } catch (const CodedError& e) {
      job->code = e.code;
      job->message = e.message;
      if (e.code != "COLLECTIVE_MISMATCH") broken = true;
    } catch (const std::exception& e) {
      job->code = "NATIVE_ERROR";
      job->message = e.what();
      broken = true;
    } catch (...) {
      job->code = "NATIVE_ERROR";
      job->message = "unknown native error on rank " + std::to_string(rank);
      broken = true;
    }
  }

  bool Alive(int q) const {
    const int fd = pidfds[static_cast<size_t>(q)];
    if (fd >= 0) {
      pollfd p{fd, POLLIN, 0};
      return poll(&p, 1, 0) == 0;  // readable once the process has terminated
    }
    return !(kill(pids[static_cast<size_t>(q)], 0) == -1 && errno == ESRCH);
  }

  // Publishes round `rnd` of this rank and wakes the sleepers.
  void Publish(uint64_t rnd) {
    ControlOf(rank)->round.store(rnd, std::memory_order_seq_cst);
    header->futex.fetch_add(1, std::memory_order_seq_cst);
    if (header->waiters.load(std::memory_order_seq_cst) > 0) Futex(&header->futex, FUTEX_WAKE, INT_MAX, nullptr);
  }

  bool AllAt(uint64_t rnd) const {
    for (int q = 0; q < size; q++) {
      if (ControlOf(q)->round.load(std::memory_order_acquire) < rnd) return false;
    }
    return true;
  }

  std::string Missing(uint64_t rnd) const {
    std::ostringstream s;
    bool first = true;
    for (int q = 0; q < size; q++) {
      if (ControlOf(q)->round.load(std::memory_order_acquire) < rnd) {
        s << (first ? "" : ", ") << q;
        first = false;
      }
    }
    return s.str();
  }

  // Waits until every rank has published round `rnd`: a short spin, then futex sleeps of at most
  // kLivenessPeriod, each followed by checks of the abort word, of the peers' liveness and of the deadline.
  void WaitAll(uint64_t rnd, const char* what, Clock::time_point deadline) {
    const auto spinUntil = Clock::now() + kRoundSpin;
    for (int i = 0;; i++) {
      if (AllAt(rnd)) return;
      TPKIT_PAUSE();
      if ((i & 63) == 63) {
        if (Clock::now() >= spinUntil) break;
        sched_yield();  // a peer waiting for this core gets it
      }
    }
    auto nextCheck = Clock::now() + kLivenessPeriod;
    for (;;) {
      header->waiters.fetch_add(1, std::memory_order_seq_cst);
      const uint32_t seen = header->futex.load(std::memory_order_seq_cst);
      if (AllAt(rnd)) {
        header->waiters.fetch_sub(1, std::memory_order_seq_cst);
        return;
      }
      const auto now = Clock::now();
      const auto until = std::min(deadline, nextCheck);
      if (until > now) {
        const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(until - now).count();
        struct timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
        Futex(&header->futex, FUTEX_WAIT, seen, &ts);
      }
      header->waiters.fetch_sub(1, std::memory_order_seq_cst);
      if (AllAt(rnd)) return;
      CheckHealthy(rnd, what);
      const auto after = Clock::now();
      if (after >= nextCheck) {
        for (int q = 0; q < size; q++) {
          if (q != rank && ControlOf(q)->round.load(std::memory_order_acquire) < rnd && !Alive(q)) {
            throw CodedError{"PEER_LOST", std::string(what) + " on rank " + std::to_string(rank) +
                                              " lost rank " + std::to_string(q) + " (in group) in shared memory: " +
                                              "process " + std::to_string(pids[static_cast<size_t>(q)]) +
                                              " has exited"};
          }
        }
        nextCheck = after + kLivenessPeriod;
      }
      if (after >= deadline) {
        throw CodedError{"TIMEOUT", std::string(what) + " on rank " + std::to_string(rank) +
                                        " timed out in shared memory; ranks (in group) that did not arrive: [" +
                                        Missing(rnd) + "]"};
      }
    }
  }

  void CheckHealthy(uint64_t rnd, const char* what) const {
    const int32_t a = header->aborted.load(std::memory_order_acquire);
    if (a != 0 && a - 1 != rank) {
      throw CodedError{"PEER_LOST", std::string(what) + " on rank " + std::to_string(rank) + ": rank " +
                                        std::to_string(a - 1) + " (in group) aborted the shared-memory group"};
    }
    if (localAbort) throw CodedError{"GROUP_DESTROYED", std::string(what) + " was aborted on rank " + std::to_string(rank)};
  }

  // One round: `fill` writes this rank's slot (of parity round % 2), then publish and wait for every rank.
  // The first round of an op also carries its descriptor, checked on every rank (COLLECTIVE_MISMATCH names every
  // rank's view; every rank ran exactly this one round, so the group stays usable).
  template <typename Fill>
  void Round(const Descriptor* desc, Fill fill, Clock::time_point deadline) {
    const uint64_t rnd = Begin(desc, fill);
    WaitAll(rnd, OpName(desc != nullptr ? desc->op : current), deadline);
    if (desc != nullptr) CheckDescriptors(*desc, rnd);
  }

  // The first half of a round: write the descriptor and this rank's slot, publish. Returns the round.
  template <typename Fill>
  uint64_t Begin(const Descriptor* desc, Fill fill) {
    const uint64_t rnd = ++round;
    if (desc != nullptr) ControlOf(rank)->desc[rnd & 1] = *desc;
    fill(Slot(rank, rnd));
    Publish(rnd);
    return rnd;
  }

  // Whether every rank publishes round `rnd` within `spin` (no sleeping).
  bool SpinAll(uint64_t rnd, std::chrono::microseconds spin) const {
    const auto until = Clock::now() + spin;
    for (int i = 0;; i++) {
      if (AllAt(rnd)) return true;
      TPKIT_PAUSE();
      if ((i & 63) == 63 && Clock::now() >= until) return AllAt(rnd);
    }
  }

  // Once every rank has published round `rnd`: every rank's descriptor of it must equal `desc`.
  void CheckDescriptors(const Descriptor& descRef, uint64_t rnd) const {
    const Descriptor* desc = &descRef;
    bool same = true;
    for (int q = 0; q < size; q++) {
      const Descriptor& d = ControlOf(q)->desc[rnd & 1];
      if (check ? std::memcmp(&d, desc, sizeof(Descriptor)) != 0 : (d.op != desc->op || d.count != desc->count)) same = false;
    }
    if (same) return;
    if (!check) {
      throw OpCountMismatch(desc->seq, rank, size, [&](int q) {
        const Descriptor& d = ControlOf(q)->desc[rnd & 1];
        return std::make_pair(d.op, d.count);
      });
    }
    throw DescriptorMismatch(desc->seq, rank, size, [&](int q) {
      Descriptor d;
      std::memcpy(&d, &ControlOf(q)->desc[rnd & 1], sizeof(Descriptor));
      return d;
    });
  }
  int64_t current = 0;  // the op running (for messages)
  bool check = true;    // false with TPKIT_CHECK=off: only (op, element count) are compared
};

namespace {

void HandOff(Napi::Env env, const std::shared_ptr<ShmState>& s);

Napi::Value Enqueue(Napi::Env env, const std::shared_ptr<ShmState>& s, std::function<void()> run,
                    std::initializer_list<Napi::Value> keep) {
  if (s->inl) HandOff(env, s);  // the polled op's rounds come first
  auto* job = new ShmJob(env);
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
    s->collectives++;
    job->state = s.get();
    s->queue.push_back(job);
  }
  s->cv.notify_one();
  return p;
}

// A one-round op: `fill` writes this rank's slot, `after(round)` reads the result out of the slots. When the
// communicator's thread is idle (nothing of this group queued or running) the calling thread publishes the round
// and spins at most kInlineSpin for the peers: if they all arrived, the op completes here and its Promise is
// already settled. Otherwise the communicator's thread waits for the rest (sleeping, with liveness checks), or,
// when ops are queued, runs the whole op after them, in issue order.
Napi::Value OneRound(Napi::Env env, const std::shared_ptr<ShmState>& s, const Descriptor& desc, ms t,
                     std::function<void(float*)> fill, std::function<void(uint64_t)> after,
                     std::initializer_list<Napi::Value> keep) {
  const auto deadline = Clock::now() + t;
  // `collectives` is this thread's count of unsettled collectives: 0 means the communicator's thread is idle (a
  // job settles only after it has run), so this thread may use the round counter and the slots.
  const bool idle = s->collectives == 0 && s->started && !s->broken && !s->stopping && !s->localAbort;
  if (!idle) {
    return Enqueue(env, s, [=]() {
      s->current = desc.op;
      s->Round(&desc, fill, deadline);
      after(s->round);
    }, keep);
  }
  s->current = desc.op;
  const uint64_t rnd = s->Begin(&desc, fill);
  if (!s->SpinAll(rnd, kInlineSpin)) {
    // Not everyone is there yet: JavaScript polls it (ShmComm::Poll), then hands it to the communicator's thread.
    auto* job = new ShmJob(env);
    for (const auto& v : keep) {
      if (v.IsObject()) job->refs.push_back(Napi::Persistent(v.As<Napi::Object>()));
    }
    job->state = s.get();
    EnterPending(*s, env);
    s->collectives++;
    auto finish = [=]() {
      s->CheckDescriptors(desc, rnd);
      after(rnd);
    };
    auto rest = [=]() {
      s->WaitAll(rnd, OpName(desc.op), deadline);
      finish();
    };
    s->inl.reset(new ShmState::Inline{job, rnd, finish, rest, Clock::now() + kPollBudget});
    return job->deferred.Promise();
  }
  auto deferred = Napi::Promise::Deferred::New(env);
  try {
    s->CheckDescriptors(desc, rnd);
    after(rnd);
    deferred.Resolve(env.Undefined());
  } catch (const CodedError& e) {
    if (e.code != "COLLECTIVE_MISMATCH") s->broken = true;
    deferred.Reject(MakeTpkitError(env, e.code, e.message, "gloo").Value());
  }
  return deferred.Promise();
}

// Gives the polled op to the communicator's thread, first in its queue (nothing else of this group can be queued
// while it is polled: collectives are issued one at a time, and Enqueue hands off first). After close() the
// thread may be gone: the op then rejects here.
void HandOff(Napi::Env env, const std::shared_ptr<ShmState>& s) {
  std::unique_ptr<ShmState::Inline> in = std::move(s->inl);
  ShmJob* job = in->job;
  job->run = in->rest;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (!s->stopping) {
      s->queue.push_front(job);
      job = nullptr;
    }
  }
  if (job == nullptr) {
    s->cv.notify_one();
    return;
  }
  job->code = "GROUP_DESTROYED";
  job->message = "the process group was destroyed before this operation ended";
  SettleShmJob(env, Napi::Function(), nullptr, job);
}

ms OpTimeout(const Napi::CallbackInfo& info, size_t i, const ShmState& s) {
  if (i < info.Length() && info[i].IsNumber()) return ms(IntArg(info, i, "timeoutMs", 1, int64_t{1} << 40));
  return s.timeout;
}

std::string PathArg(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw Napi::TypeError::New(info.Env(), "Expected string for path");
  return info[0].As<Napi::String>().Utf8Value();
}


Napi::Error SetupError(Napi::Env env, const std::string& message) {
  return MakeTpkitError(env, "SHM_UNAVAILABLE", message, "gloo");
}

// The rank-order reduction of `n` floats at float offset `off` of every rank's slot of round `rnd` into `out`.
void ReduceSlots(const ShmState& s, uint64_t rnd, int64_t redop, size_t off, size_t n, float* out) {
  std::memcpy(out, s.Slot(0, rnd) + off, n * sizeof(float));
  for (int q = 1; q < s.size; q++) ReduceInto(redop == 4 ? 0 : redop, out, s.Slot(q, rnd) + off, n);
  if (redop == 4) {
    const float inv = 1.0f / static_cast<float>(s.size);
    for (size_t i = 0; i < n; i++) out[i] *= inv;
  }
}

}  // namespace

void SettleShmJob(Napi::Env env, Napi::Function, std::nullptr_t*, ShmJob* job) {
  if (env != nullptr && job->collective && job->state != nullptr) job->state->collectives--;
  SettleCodedJob(env, job, "gloo");
}

Napi::Function ShmComm::Init(Napi::Env env) {
  return DefineClass(env, "ShmComm",
                     {InstanceMethod("create", &ShmComm::Create),
                      InstanceMethod("open", &ShmComm::Open),
                      InstanceMethod("unlink", &ShmComm::Unlink),
                      InstanceMethod("start", &ShmComm::Start),
                      InstanceMethod("allReduce", &ShmComm::AllReduce),
                      InstanceMethod("allGather", &ShmComm::AllGather),
                      InstanceMethod("reduceScatter", &ShmComm::ReduceScatter),
                      InstanceMethod("broadcast", &ShmComm::Broadcast),
                      InstanceMethod("allToAll", &ShmComm::AllToAll),
                      InstanceMethod("allToAllV", &ShmComm::AllToAllV),
                      InstanceMethod("barrier", &ShmComm::Barrier),
                      InstanceMethod("send", &ShmComm::Send),
                      InstanceMethod("recv", &ShmComm::Recv),
                      InstanceMethod("p2p", &ShmComm::P2P),
                      InstanceMethod("poll", &ShmComm::Poll),
                      InstanceMethod("close", &ShmComm::Close),
                      InstanceMethod("abort", &ShmComm::Abort)});
}

// new ShmComm(rank, size, timeoutMs, check)
ShmComm::ShmComm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ShmComm>(info) {
  Napi::Env env = info.Env();
  auto s = std::make_shared<ShmState>();
  s->size = static_cast<int>(IntArg(info, 1, "size", 1, kMaxRanks));
  s->rank = static_cast<int>(IntArg(info, 0, "rank", 0, s->size - 1));
  s->timeout = ms(IntArg(info, 2, "timeoutMs", 1, int64_t{1} << 40));
  s->check = BoolArg(info, 3, "check");
  s->slotBytes = SlotBytesFor(s->size);
  s->bytes = SegmentBytesFor(s->size);
  // Two threads settle through it: the collectives' and the point-to-point one; each releases it as it ends.
  s->tsfn = ShmTsfn::New(env, "tpkit.shm.complete", 0, 2, nullptr,
                         [](Napi::Env, std::shared_ptr<ShmState>* st, std::nullptr_t*) {
                           {
                             std::lock_guard<std::mutex> lock((*st)->mu);
                             (*st)->tsfnAlive = false;
                           }
                           delete st;
                         },
                         new std::shared_ptr<ShmState>(s));
  s->tsfn.Unref(env);
  ShmState* raw = s.get();
  auto keep = s;
  s->thread = std::thread([raw, keep]() { raw->Loop(); });
  s->thread.detach();
  std::thread([raw, keep]() { raw->P2PLoop(); }).detach();
  state_ = std::move(s);
}

ShmComm::~ShmComm() {
  if (state_) {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stopping = true;
    state_->cv.notify_all();
  }
}

// create(path) → bytes: rank 0 creates the segment (O_EXCL, 0600), reserves its space and maps it.
// Throws TpkitError SHM_UNAVAILABLE naming the path and the size (ENOSPC: /dev/shm is too small).
Napi::Value ShmComm::Create(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ShmState& s = *state_;
  if (s.base != nullptr) throw Napi::Error::New(env, "segment already mapped");
  const std::string path = PathArg(info);
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) throw SetupError(env, "cannot create shared-memory segment " + path + ": " + ErrnoText(errno));
  auto fail = [&](const std::string& what, int err) {
    close(fd);
    unlink(path.c_str());
    std::string msg = what + " " + path + " (" + std::to_string(s.bytes) + " bytes): " + ErrnoText(err);
    struct statvfs v{};
    const std::string dir = path.substr(0, path.find_last_of('/') + 1);
    if (statvfs(dir.c_str(), &v) == 0) {
      msg += "; " + dir + " has " + std::to_string(static_cast<uint64_t>(v.f_bavail) * v.f_frsize) + " bytes free";
    }
    throw SetupError(env, msg);
  };
  if (fchmod(fd, 0600) != 0) fail("cannot set the mode of", errno);
  const int r = posix_fallocate(fd, 0, static_cast<off_t>(s.bytes));
  if (r != 0) fail("cannot reserve the space of shared-memory segment", r);
  void* p = mmap(nullptr, s.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) fail("cannot map shared-memory segment", errno);
  close(fd);
  s.base = static_cast<uint8_t*>(p);
  s.header = reinterpret_cast<Header*>(s.base);
  // The file is zero-filled: every round counter starts at 0 and no rank has aborted.
  s.header->size = static_cast<uint64_t>(s.size);
  s.header->slotBytes = s.slotBytes;
  s.header->pid[s.rank] = static_cast<int32_t>(getpid());
  std::atomic_thread_fence(std::memory_order_release);
  s.header->magic = kMagic;
  return Napi::Number::New(env, static_cast<double>(s.bytes));
}

// open(path): a rank other than 0 maps rank 0's segment after checking it is this user's, private, and sized
// for this group; it then records its pid there.
Napi::Value ShmComm::Open(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ShmState& s = *state_;
  if (s.base != nullptr) throw Napi::Error::New(env, "segment already mapped");
  const std::string path = PathArg(info);
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) throw SetupError(env, "cannot open shared-memory segment " + path + ": " + ErrnoText(errno));
  struct stat st{};
  if (fstat(fd, &st) != 0 || st.st_uid != getuid() || (st.st_mode & 077) != 0 ||
      static_cast<size_t>(st.st_size) != s.bytes) {
    close(fd);
    throw SetupError(env, "shared-memory segment " + path + " is not this group's (owner, mode or size differ)");
  }
  void* p = mmap(nullptr, s.bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const int err = errno;
  close(fd);
  if (p == MAP_FAILED) throw SetupError(env, "cannot map shared-memory segment " + path + ": " + ErrnoText(err));
  s.base = static_cast<uint8_t*>(p);
  s.header = reinterpret_cast<Header*>(s.base);
  std::atomic_thread_fence(std::memory_order_acquire);
  if (s.header->magic != kMagic || s.header->size != static_cast<uint64_t>(s.size) ||
      s.header->slotBytes != s.slotBytes) {
    throw SetupError(env, "shared-memory segment " + path + " has an unexpected header");
  }
  s.header->pid[s.rank] = static_cast<int32_t>(getpid());
  return Napi::Number::New(env, static_cast<double>(s.bytes));
}

// unlink(path): removes the segment's name (ENOENT is fine: another rank was first).
Napi::Value ShmComm::Unlink(const Napi::CallbackInfo& info) {
  const std::string path = PathArg(info);
  return Napi::Boolean::New(info.Env(), unlink(path.c_str()) == 0);
}

// start(): every rank has mapped the segment (agreed through the store): read the peers' pids and open pidfds.
Napi::Value ShmComm::Start(const Napi::CallbackInfo& info) {
  ShmState& s = *state_;
  if (s.base == nullptr) throw Napi::Error::New(info.Env(), "segment not mapped");
  s.pids.assign(static_cast<size_t>(s.size), 0);
  s.pidfds.assign(static_cast<size_t>(s.size), -1);
  for (int q = 0; q < s.size; q++) {
    s.pids[static_cast<size_t>(q)] = s.header->pid[q];
    if (q != s.rank && s.pids[static_cast<size_t>(q)] > 0) s.pidfds[static_cast<size_t>(q)] = PidfdOpen(s.pids[static_cast<size_t>(q)]);
  }
  // Ordered before the first op through the queue's mutex.
  std::lock_guard<std::mutex> lock(s.mu);
  s.chanBytes = ChanBytesFor(s.size);
  s.started = true;
  return info.Env().Undefined();
}

// allReduce(buf, count, redop, seq, dtype, timeoutMs?)
Napi::Value ShmComm::AllReduce(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t count = IntArg(info, 1, "count", 0, kMaxCount);
  float* buf = F32Data(info[0], static_cast<size_t>(count), "buffer");
  const int64_t redop = IntArg(info, 2, "redop", 0, 4);
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  const ms t = OpTimeout(info, 5, *s);
  const Descriptor desc(seq, kAllReduce, dtype, count, -1, redop, -1);
  const size_t n = static_cast<size_t>(count);
  if (n * sizeof(float) <= kOneRoundBytes) {
    // One round: every rank copies in, then reduces every slot in rank order.
    return OneRound(info.Env(), s, desc, t, [=](float* mine) { std::memcpy(mine, buf, n * sizeof(float)); },
                    [=](uint64_t rnd) {
                      if (n > 0) ReduceSlots(*s, rnd, redop, 0, n, buf);
                    }, {info[0]});
  }
  return Enqueue(info.Env(), s, [=]() {
    const auto deadline = Clock::now() + t;
    s->current = kAllReduce;
    const size_t slot = s->SlotFloats();
    // Per slot-sized chunk: reduce-scatter (rank r reduces part r of every slot), then all-gather the parts.
    const size_t ranks = static_cast<size_t>(s->size);
    const Descriptor* first = &desc;
    for (size_t off = 0; off < n; off += slot) {
      const size_t len = std::min(slot, n - off);
      const size_t part = (len + ranks - 1) / ranks;
      const size_t mineOff = std::min(len, part * static_cast<size_t>(s->rank));
      const size_t mineLen = std::min(len, mineOff + part) - mineOff;
      s->Round(first, [&](float* mine) { std::memcpy(mine, buf + off, len * sizeof(float)); }, deadline);
      first = nullptr;
      const uint64_t rs = s->round;
      s->Round(nullptr, [&](float* mine) {
        if (mineLen > 0) ReduceSlots(*s, rs, redop, mineOff, mineLen, mine);
      }, deadline);
      for (int q = 0; q < s->size; q++) {
        const size_t qOff = std::min(len, part * static_cast<size_t>(q));
        const size_t qLen = std::min(len, qOff + part) - qOff;
        if (qLen > 0) std::memcpy(buf + off + qOff, s->Slot(q, s->round), qLen * sizeof(float));
      }
    }
  }, {info[0]});
}

// allGather(input, output, count, seq, dtype, dim, timeoutMs?, shape?) — output rank-major
Napi::Value ShmComm::AllGather(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t count = IntArg(info, 2, "count", 0, kMaxCount);
  float* in = F32Data(info[0], static_cast<size_t>(count), "input");
  float* out = F32Data(info[1], static_cast<size_t>(count * s->size), "output");
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  const int64_t dim = IntArg(info, 5, "dim", -1, 64);
  const ms t = OpTimeout(info, 6, *s);
  Descriptor desc(seq, kAllGather, dtype, count, -1, -1, dim);
  ShapeArg(info, 7, desc);
  const size_t n = static_cast<size_t>(count);
  const size_t slot = s->SlotFloats();
  if (n <= slot) {
    return OneRound(info.Env(), s, desc, t, [=](float* mine) { std::memcpy(mine, in, n * sizeof(float)); },
                    [=](uint64_t rnd) {
                      for (int q = 0; q < s->size && n > 0; q++) {
                        std::memcpy(out + n * static_cast<size_t>(q), s->Slot(q, rnd), n * sizeof(float));
                      }
                    }, {info[0], info[1]});
  }
  return Enqueue(info.Env(), s, [=]() {
    const auto deadline = Clock::now() + t;
    s->current = kAllGather;
    const Descriptor* first = &desc;
    size_t off = 0;
    do {
      const size_t len = std::min(slot, n - off);
      s->Round(first, [&](float* mine) { std::memcpy(mine, in + off, len * sizeof(float)); }, deadline);
      first = nullptr;
      for (int q = 0; q < s->size; q++) {
        if (len > 0) std::memcpy(out + n * static_cast<size_t>(q) + off, s->Slot(q, s->round), len * sizeof(float));
      }
      off += len;
    } while (off < n);
  }, {info[0], info[1]});
}

// reduceScatter(work (size·chunk), output (chunk), chunk, redop, seq, dtype, dim, timeoutMs?, shape?) — rank r gets
// chunk r of the rank-order reduction. Per round every rank writes piece `off` of each of its chunks.
Napi::Value ShmComm::ReduceScatter(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t chunk = IntArg(info, 2, "chunk", 0, kMaxCount);
  float* work = F32Data(info[0], static_cast<size_t>(chunk * s->size), "input");
  float* out = F32Data(info[1], static_cast<size_t>(chunk), "output");
  const int64_t redop = IntArg(info, 3, "redop", 0, 4);
  const int64_t seq = IntArg(info, 4, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 5, "dtype", 0, 2);
  const int64_t dim = IntArg(info, 6, "dim", -1, 64);
  const ms t = OpTimeout(info, 7, *s);
  Descriptor desc(seq, kReduceScatter, dtype, chunk * s->size, -1, redop, dim);
  ShapeArg(info, 8, desc);
  const size_t c1 = static_cast<size_t>(chunk);
  const size_t ranks1 = static_cast<size_t>(s->size);
  if (c1 <= s->SlotFloats() / ranks1) {
    // One round (every chunk fits a slot piece): every rank writes its chunks, then reduces its own across the
    // slots in rank order.
    return OneRound(info.Env(), s, desc, t, [=](float* mine) {
      for (size_t q = 0; q < ranks1; q++) std::memcpy(mine + q * c1, work + q * c1, c1 * sizeof(float));
    }, [=](uint64_t rnd) {
      if (c1 > 0) ReduceSlots(*s, rnd, redop, static_cast<size_t>(s->rank) * c1, c1, out);
    }, {info[0], info[1]});
  }
  return Enqueue(info.Env(), s, [=]() {
    const auto deadline = Clock::now() + t;
    s->current = kReduceScatter;
    const size_t c = static_cast<size_t>(chunk);
    const size_t ranks = static_cast<size_t>(s->size);
    const size_t piece = s->SlotFloats() / ranks;
    const Descriptor* first = &desc;
    size_t off = 0;
    do {
      const size_t len = std::min(piece, c - off);
      s->Round(first, [&](float* mine) {
        for (size_t q = 0; q < ranks; q++) std::memcpy(mine + q * len, work + q * c + off, len * sizeof(float));
      }, deadline);
      first = nullptr;
      if (len > 0) ReduceSlots(*s, s->round, redop, static_cast<size_t>(s->rank) * len, len, out + off);
      off += len;
    } while (off < c);
  }, {info[0], info[1]});
}

// broadcast(buf, count, root, seq, dtype, timeoutMs?)
Napi::Value ShmComm::Broadcast(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t count = IntArg(info, 1, "count", 0, kMaxCount);
  float* buf = F32Data(info[0], static_cast<size_t>(count), "buffer");
  const int64_t root = IntArg(info, 2, "root", 0, s->size - 1);
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  const ms t = OpTimeout(info, 5, *s);
  const Descriptor desc(seq, kBroadcast, dtype, count, root, -1, -1);
  const size_t n = static_cast<size_t>(count);
  const size_t slot = s->SlotFloats();
  const bool isRoot = s->rank == root;
  if (n <= slot) {
    return OneRound(info.Env(), s, desc, t, [=](float* mine) {
      if (isRoot) std::memcpy(mine, buf, n * sizeof(float));
    }, [=](uint64_t rnd) {
      if (!isRoot && n > 0) std::memcpy(buf, s->Slot(static_cast<int>(root), rnd), n * sizeof(float));
    }, {info[0]});
  }
  return Enqueue(info.Env(), s, [=]() {
    const auto deadline = Clock::now() + t;
    s->current = kBroadcast;
    const Descriptor* first = &desc;
    size_t off = 0;
    do {
      const size_t len = std::min(slot, n - off);
      s->Round(first, [&](float* mine) {
        if (isRoot) std::memcpy(mine, buf + off, len * sizeof(float));
      }, deadline);
      first = nullptr;
      if (!isRoot && len > 0) std::memcpy(buf + off, s->Slot(static_cast<int>(root), s->round), len * sizeof(float));
      off += len;
    } while (off < n);
  }, {info[0]});
}

// allToAll(input, output, count (per rank, divisible by size), seq, dtype, timeoutMs?, shape?)
Napi::Value ShmComm::AllToAll(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t count = IntArg(info, 2, "count", 0, kMaxCount);
  if (count % s->size != 0) throw Napi::RangeError::New(info.Env(), "all_to_all count must be divisible by the group size");
  float* in = F32Data(info[0], static_cast<size_t>(count), "input");
  float* out = F32Data(info[1], static_cast<size_t>(count), "output");
  const int64_t seq = IntArg(info, 3, "seq", 0, int64_t{1} << 31);
  const int64_t dtype = IntArg(info, 4, "dtype", 0, 2);
  const ms t = OpTimeout(info, 5, *s);
  Descriptor desc(seq, kAllToAll, dtype, count, -1, -1, 0);
  ShapeArg(info, 6, desc);
  const size_t ranks1 = static_cast<size_t>(s->size);
  const size_t c1 = static_cast<size_t>(count) / ranks1;
  if (c1 <= s->SlotFloats() / ranks1) {
    // One round (every block fits a slot piece): block q of this rank's slot is its block for rank q; rank r reads
    // block r of every slot.
    return OneRound(info.Env(), s, desc, t, [=](float* mine) { std::memcpy(mine, in, c1 * ranks1 * sizeof(float)); },
                    [=](uint64_t rnd) {
                      for (size_t q = 0; q < ranks1 && c1 > 0; q++) {
                        std::memcpy(out + q * c1, s->Slot(static_cast<int>(q), rnd) + static_cast<size_t>(s->rank) * c1,
                                    c1 * sizeof(float));
                      }
                    }, {info[0], info[1]});
  }
  return Enqueue(info.Env(), s, [=]() {
    const auto deadline = Clock::now() + t;
    s->current = kAllToAll;
    const size_t ranks = static_cast<size_t>(s->size);
    const size_t c = static_cast<size_t>(count) / ranks;
    const size_t piece = s->SlotFloats() / ranks;
    const Descriptor* first = &desc;
    size_t off = 0;
    do {
      const size_t len = std::min(piece, c - off);
      s->Round(first, [&](float* mine) {
        for (size_t q = 0; q < ranks; q++) std::memcpy(mine + q * len, in + q * c + off, len * sizeof(float));
      }, deadline);
      first = nullptr;
      for (size_t q = 0; q < ranks && len > 0; q++) {
        std::memcpy(out + q * c + off, s->Slot(static_cast<int>(q), s->round) + static_cast<size_t>(s->rank) * len,
                    len * sizeof(float));
      }
      off += len;
    } while (off < c);
  }, {info[0], info[1]});
}

// allToAllV(input, output, rowElems, inputSplits: number[], outputSplits: number[], seq, dtype, timeoutMs?) — as
// GlooComm's: rows [Σ in[<j], Σ in[≤j]) of input go to rank j; the rows from rank i land at rows [Σ out[<i],
// Σ out[≤i]) of output. The first round carries every rank's split sizes (checked on every rank, with the check
// off too, so a disagreement is COLLECTIVE_MISMATCH everywhere before data moves and the group stays usable);
// then each round moves one slot-piece of every pair's rows, as many rounds as the largest pair needs.
Napi::Value ShmComm::AllToAllV(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int n = s->size;
  const AllToAllVArgs a = ReadAllToAllV(info, n, kMaxCount);
  const int64_t rowElems = a.rowElems, seq = a.seq, dtype = a.dtype;
  const std::vector<int64_t>& inSplits = a.inSplits;
  const std::vector<int64_t>& outSplits = a.outSplits;
  float* in = a.in;
  float* out = a.out;
  const ms t = OpTimeout(info, 7, *s);
  const Descriptor desc(seq, kAllToAllV, dtype, rowElems, -1, -1, 0);
  return Enqueue(info.Env(), s, [=]() {
    const auto deadline = Clock::now() + t;
    s->current = kAllToAllV;
    const size_t ranks = static_cast<size_t>(n);
    const size_t words = 2 * ranks;
    // Round 1: the split sizes (2n int64 words per rank; ≤ 4 KiB, well inside a slot).
    s->Round(&desc, [&](float* mine) {
      auto* w = reinterpret_cast<int64_t*>(mine);
      std::copy(inSplits.begin(), inSplits.end(), w);
      std::copy(outSplits.begin(), outSplits.end(), w + ranks);
    }, deadline);
    std::vector<int64_t> all(words * ranks);
    for (int q = 0; q < n; q++) {
      std::memcpy(all.data() + words * q, s->Slot(q, s->round), words * sizeof(int64_t));
    }
    const std::string bad = SplitMismatch(all, n);
    if (!bad.empty()) {
      throw CodedError{"COLLECTIVE_MISMATCH", "allToAllV split sizes disagree at sequence number " +
                                                  std::to_string(seq) + " (seen by rank " + std::to_string(s->rank) +
                                                  "): " + bad};
    }
    // Element offsets of this rank's blocks, and the largest block of any pair (the number of rounds).
    const size_t re = static_cast<size_t>(rowElems);
    std::vector<size_t> inOff(ranks + 1, 0), outOff(ranks + 1, 0);
    for (size_t q = 0; q < ranks; q++) {
      inOff[q + 1] = inOff[q] + static_cast<size_t>(inSplits[q]) * re;
      outOff[q + 1] = outOff[q] + static_cast<size_t>(outSplits[q]) * re;
    }
    size_t largest = 0;
    for (int64_t v : all) largest = std::max(largest, static_cast<size_t>(v) * re);
    const size_t piece = s->SlotFloats() / ranks;
    for (size_t off = 0; off < largest; off += piece) {
      s->Round(nullptr, [&](float* mine) {
        for (size_t q = 0; q < ranks; q++) {
          const size_t block = inOff[q + 1] - inOff[q];
          if (off < block) std::memcpy(mine + q * piece, in + inOff[q] + off, std::min(piece, block - off) * sizeof(float));
        }
      }, deadline);
      for (size_t q = 0; q < ranks; q++) {
        const size_t block = outOff[q + 1] - outOff[q];
        if (off < block) {
          std::memcpy(out + outOff[q] + off, s->Slot(static_cast<int>(q), s->round) + static_cast<size_t>(s->rank) * piece,
                      std::min(piece, block - off) * sizeof(float));
        }
      }
    }
  }, {info[0], info[1]});
}

// send(buf, count, dst, p2pSeq, timeoutMs?) / recv(buf, count, src, p2pSeq, timeoutMs?): through the pair's ring,
// on the p2p thread (a recv waiting for its peer holds up neither the collectives nor the event loop). Messages of
// one pair match in p2p sequence order, as Gloo's tags match them. Only when p2p() is true (groups of at most
// 16 ranks).
Napi::Value PostP2P(const Napi::CallbackInfo& info, const std::shared_ptr<ShmState>& s, bool isSend) {
  Napi::Env env = info.Env();
  const int64_t count = IntArg(info, 1, "count", 0, kMaxCount);
  float* buf = F32Data(info[0], static_cast<size_t>(count), "buffer");
  const int64_t peer = IntArg(info, 2, isSend ? "dst" : "src", 0, s->size - 1);
  if (peer == s->rank) throw Napi::RangeError::New(env, "a rank cannot send to or receive from itself");
  const int64_t seq = IntArg(info, 3, "p2pSeq", 0, int64_t{1} << 31);
  const ms t = OpTimeout(info, 4, *s);
  if (!s->started || s->chanBytes == 0) throw Napi::Error::New(env, "shared-memory point-to-point is not available");
  auto* job = new ShmJob(env);
  job->collective = false;
  job->refs.push_back(Napi::Persistent(info[0].As<Napi::Object>()));
  Napi::Promise p = job->deferred.Promise();
  auto* op = new P2POp();
  op->isSend = isSend;
  op->peer = static_cast<int>(peer);
  op->buf = buf;
  op->count = static_cast<size_t>(count);
  op->seq = seq;
  op->deadline = Clock::now() + t;
  op->header[0] = seq;
  op->header[1] = count;
  op->job = job;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->stopping || s->broken) {
      const bool destroyed = s->stopping;
      delete op;
      delete job;
      auto d = Napi::Promise::Deferred::New(env);
      d.Reject(MakeTpkitError(env, destroyed ? "GROUP_DESTROYED" : "GROUP_BROKEN",
                              destroyed ? "the process group was destroyed" : "communicator is broken by an earlier failure",
                              "gloo").Value());
      return d.Promise();
    }
    EnterPending(*s, env);
    job->state = s.get();
    s->p2pIncoming.push_back(op);
  }
  s->p2pCv.notify_one();
  s->WakeP2P();
  return p;
}

// poll() → true when no op is being polled any more (it completed here, or the communicator's thread has it now):
// completes the polled one-round op when every rank has published its round; hands it to the thread once
// kPollBudget has passed (or on an abort); else yields the CPU once and returns false (JavaScript calls again
// from the next turn of the event loop).
Napi::Value ShmComm::Poll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = state_;
  if (!s->inl) return Napi::Boolean::New(env, true);
  ShmState::Inline& in = *s->inl;
  if (s->AllAt(in.rnd)) {
    ShmJob* job = in.job;
    try {
      in.finish();
    } catch (const CodedError& e) {
      job->code = e.code;
      job->message = e.message;
      if (e.code != "COLLECTIVE_MISMATCH") s->broken = true;
    }
    s->inl.reset();
    SettleShmJob(env, Napi::Function(), nullptr, job);
    return Napi::Boolean::New(env, true);
  }
  if (Clock::now() >= in.handOffAt || s->header->aborted.load(std::memory_order_acquire) != 0 || s->localAbort) {
    HandOff(env, s);
    return Napi::Boolean::New(env, true);
  }
  sched_yield();
  return Napi::Boolean::New(env, false);
}

Napi::Value ShmComm::Send(const Napi::CallbackInfo& info) { return PostP2P(info, state_, true); }
Napi::Value ShmComm::Recv(const Napi::CallbackInfo& info) { return PostP2P(info, state_, false); }
Napi::Value ShmComm::P2P(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), state_->started && state_->chanBytes > 0);
}

// barrier(seq, timeoutMs?)
Napi::Value ShmComm::Barrier(const Napi::CallbackInfo& info) {
  auto s = state_;
  const int64_t seq = IntArg(info, 0, "seq", 0, int64_t{1} << 31);
  const ms t = OpTimeout(info, 1, *s);
  const Descriptor desc(seq, kBarrier, 0, 0, -1, -1, -1);
  return OneRound(info.Env(), s, desc, t, [](float*) {}, [](uint64_t) {}, {});
}

// close(): queued ops reject with GROUP_DESTROYED; the mapping goes with the last reference to the state.
Napi::Value ShmComm::Close(const Napi::CallbackInfo& info) {
  ShmState& s = *state_;
  if (s.inl) {  // the op being polled rejects now
    ShmJob* job = s.inl->job;
    s.inl.reset();
    job->code = "GROUP_DESTROYED";
    job->message = "the process group was destroyed before this operation ended";
    SettleShmJob(info.Env(), Napi::Function(), nullptr, job);
  }
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.stopping && s.pending > 0) s.tsfn.Unref(info.Env());
    s.stopping = true;
  }
  s.cv.notify_all();
  s.p2pCv.notify_all();
  if (s.header != nullptr) s.WakeP2P();
  return info.Env().Undefined();
}

// abort(): close() for a broken group, plus the segment's abort word, so that peers waiting on this rank fail at
// once (PEER_LOST naming it) instead of at their timeout; a wait of this rank's own ends too.
Napi::Value ShmComm::Abort(const Napi::CallbackInfo& info) {
  ShmState& s = *state_;
  s.localAbort = true;
  if (s.header != nullptr) {
    int32_t none = 0;
    s.header->aborted.compare_exchange_strong(none, s.rank + 1);
    s.header->futex.fetch_add(1, std::memory_order_seq_cst);
    Futex(&s.header->futex, FUTEX_WAKE, INT_MAX, nullptr);
    s.header->p2pFutex.fetch_add(1, std::memory_order_seq_cst);
    Futex(&s.header->p2pFutex, FUTEX_WAKE, INT_MAX, nullptr);
  }
  return Close(info);
}

}  // namespace tpkit
